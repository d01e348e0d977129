/* CPU kernels for the robust rules, pre-aggregators and attack statistics, where torch's generic
 * kernels are slow on an (n, d) stack with n << d.
 *
 * gram_f32: G += X X^T over a column range (Krum, Multi-Krum, Bulyan and NNM's distances), or
 *   the centered (X - z)(X - z)^T (CClip's iterations for few rows). MKL treats the (n, d) x
 *   (d, n) product with n << d as a general GEMM: it packs both operands, computes both
 *   triangles and pads n to its tile: 32 ms at (25, 1e6) on the project machine, where the
 *   symmetric product's arithmetic takes 5.5 ms at one FMA instruction per cycle. Here each
 *   column chunk of all n rows is loaded into L2 once (with the next chunk prefetched
 *   meanwhile) and 5 x 5 row tiles of the upper triangle accumulate in registers: 8 ms.
 * sqdist_to_f32: ||x_i - z||^2 for every row in one pass (CClip, RFA).
 * wsum_sqdist_f32: a weighted sum of the rows plus alpha v, and every row's distance to it, in
 *   one pass (one CClip or Weiszfeld iteration).
 * mean_var_f32: column means and variances (or standard deviations) in one read (ALIE).
 * group_mean_f32: means of row groups in one pass, members shared by every group summed once
 *   (bucketing, resampling, NNM).
 * sortnet_f32: a pruned sorting network per column, on blocks held in L1 (coordinate-wise
 *   median, trimmed mean, Bulyan).
 * clip_row_f32, scale_row_f32: a row's norm and the row clipped (clip, ARC), one read of the
 *   row from memory and stores that bypass the cache.
 *
 * One file per family (distances.c, stats.c, sortnet.c, rows.c), all built into one library;
 * this header holds what they share.
 *
 * Portable C with GCC/Clang vector extensions: the vector width and tile sizes follow the
 * target (AVX-512: 16 floats and 32 registers; AVX/AVX2: 8 and 16; otherwise 4 floats, e.g.
 * SSE or NEON). Compiled on first use by common/native.py with -O3 -march=native. Sums over
 * columns (dot products, distances) accumulate in float32 vectors within a column chunk and in
 * float64 across chunks; sums over rows run in row order, like the torch code they replace.
 */
#ifndef BYZROBUST_VEC_H
#define BYZROBUST_VEC_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define W 16
#define REGS 32
#elif defined(__AVX__)
#define W 8
#define REGS 16
#else
#define W 4
#if defined(__aarch64__)
#define REGS 32
#else
#define REGS 16
#endif
#endif

/* Pin a value in a register: without this GCC folds the loads into the FMAs' memory operands
 * and re-reads each vector once per use, which made the Gram tile load-bound (20 loads per
 * 16 FMAs). */
#if defined(__x86_64__) || defined(__i386__)
#define KEEP(v) __asm__("" : "+v"(v))
#elif defined(__aarch64__)
#define KEEP(v) __asm__("" : "+w"(v))
#else
#define KEEP(v) ((void)0)
#endif

typedef float vf __attribute__((vector_size(W * sizeof(float))));

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline double hsum(vf v) { double s = 0; for (int l = 0; l < W; ++l) s += v[l]; return s; }

/* A store that bypasses the cache, for outputs too large to stay in it. */
static inline void store_stream(float *p, vf v) {
#if defined(__AVX512F__)
    _mm512_stream_ps(p, (__m512)v);
#elif defined(__AVX__)
    _mm256_stream_ps(p, (__m256)v);
#else
    store(p, v);
#endif
}

/* Walks the lines of the next column chunk, one prefetch per call, so that its first sweep
 * finds the rows in L2 instead of stalling on memory (measured 12.6 -> 9.7 ms at (25, 1e6)). */
typedef struct { const float *x; long ld, rows, row, k, k0, k1; } cursor;

/* A cursor over the n rows of the chunk after [.., ke): columns [ke, min(ke + chunk, k1)). */
static inline cursor next_chunk(const float *x, long n, long ld, long ke, long chunk, long k1) {
    long end = ke + chunk < k1 ? ke + chunk : k1;
    cursor c = {x, ld, end > ke ? n : 0, 0, ke, ke, end};
    return c;
}

static inline void prefetch_next(cursor *p) {
    if (p->row >= p->rows) return;
    __builtin_prefetch(p->x + p->row * p->ld + p->k, 0, 1);
    p->k += 64 / sizeof(float);
    if (p->k >= p->k1) { p->k = p->k0; p->row++; }
}

#endif
