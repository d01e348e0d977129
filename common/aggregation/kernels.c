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
 *
 * Portable C with GCC/Clang vector extensions: the vector width and tile sizes follow the
 * target (AVX-512: 16 floats and 32 registers; AVX/AVX2: 8 and 16; otherwise 4 floats, e.g.
 * SSE or NEON). Compiled on first use by common/native.py with -O3 -march=native. Sums over
 * columns (dot products, distances) accumulate in float32 vectors within a column chunk and in
 * float64 across chunks; sums over rows run in row order, like the torch code they replace.
 */
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

/* Floats per vector of this build (for the rounding bounds of native.py). */
int vector_width(void) { return W; }

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

/* ------------------------------------------------------------------------------------------
 * Gram matrix
 * ---------------------------------------------------------------------------------------- */

/* rows per tile: GB x GB accumulators + GB + 1 loaded vectors. 5 x 5 (31 of 32 registers) over
 * 4 x 4: 25 FMAs per 10 loads instead of 16 per 8, and n = 25 splits into whole tiles (9.6 -> 8.1
 * ms at (25, 1e6)). */
#define GB (REGS >= 32 ? 5 : 3)

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

typedef void tile_fn(const float *const *a, const float *const *b, const float *z, long kv,
                     long ke, double *g, long n, long i0, long j0, cursor *pf);

/* g[i0 + r, j0 + c] += (a[r] - z) . (b[c] - z) over columns [0, ke), for all r < RA, c < RB
 * (CENTER 0: z is not read and the rows are used as they are; UPPER: only r <= c, for a tile on
 * the diagonal). Columns [0, kv) run in vectors, [kv, ke) scalar. */
#define TILE(NAME, RA, RB, UPPER, CENTER)                                                      \
    static void NAME(const float *const *a, const float *const *b, const float *z, long kv,   \
                     long ke, double *g, long n, long i0, long j0, cursor *pf) {               \
        vf acc[RA][RB];                                                                        \
        _Pragma("GCC unroll 8") for (int r = 0; r < RA; ++r)                                   \
            _Pragma("GCC unroll 8") for (int c = 0; c < RB; ++c) acc[r][c] = (vf){0};          \
        for (long k = 0; k < kv; k += W) {                                                     \
            vf av[RA], zk = (vf){0};                                                           \
            if (CENTER) {                                                                      \
                zk = load(z + k);                                                              \
                KEEP(zk);                                                                      \
            }                                                                                  \
            _Pragma("GCC unroll 8") for (int r = 0; r < RA; ++r) {                             \
                av[r] = CENTER ? load(a[r] + k) - zk : load(a[r] + k);                         \
                KEEP(av[r]);                                                                   \
            }                                                                                  \
            _Pragma("GCC unroll 8") for (int c = 0; c < RB; ++c) {                             \
                vf bv = CENTER ? load(b[c] + k) - zk : load(b[c] + k);                         \
                KEEP(bv);                                                                      \
                _Pragma("GCC unroll 8") for (int r = 0; r < RA; ++r)                           \
                    if (!(UPPER) || r <= c) acc[r][c] += av[r] * bv;                           \
            }                                                                                  \
            prefetch_next(pf);                                                                 \
            prefetch_next(pf);                                                                 \
        }                                                                                      \
        for (int r = 0; r < RA; ++r)                                                           \
            for (int c = 0; c < RB; ++c) {                                                     \
                if ((UPPER) && r > c) continue;                                                \
                double s = hsum(acc[r][c]);                                                    \
                for (long k = kv; k < ke; ++k)                                                 \
                    s += CENTER ? (double)(a[r][k] - z[k]) * (b[c][k] - z[k])                  \
                                : (double)a[r][k] * b[c][k];                                   \
                g[(i0 + r) * n + j0 + c] += s;                                                 \
            }                                                                                  \
    }

/* Tiles of up to GB rows (GC when centered: the vector of z takes a register too): off the
 * diagonal G x 1 .. G x 3, on it 1 x 1 .. 3 x 3. */
#define GC (REGS >= 32 ? 4 : 3)
#define TILES(OFF, DIAG, G, CENTER)                                                            \
    TILE(OFF##_1, G, 1, 0, CENTER) TILE(OFF##_2, G, 2, 0, CENTER) TILE(OFF##_3, G, 3, 0, CENTER) \
    TILE(DIAG##_1, 1, 1, 1, CENTER) TILE(DIAG##_2, 2, 2, 1, CENTER)                            \
    TILE(DIAG##_3, 3, 3, 1, CENTER)
TILES(tile, diag, GB, 0)
TILES(ctile, cdiag, GC, 1)
#if GB == 5
TILE(tile_4, GB, 4, 0, 0)
TILE(tile_5, GB, 5, 0, 0)
TILE(diag_4, 4, 4, 1, 0)
TILE(diag_5, 5, 5, 1, 0)
TILE(ctile_4, GC, 4, 0, 1)
TILE(cdiag_4, 4, 4, 1, 1)
static tile_fn *const off_tiles[] = {0, tile_1, tile_2, tile_3, tile_4, tile_5};
static tile_fn *const diag_tiles[] = {0, diag_1, diag_2, diag_3, diag_4, diag_5};
static tile_fn *const coff_tiles[] = {0, ctile_1, ctile_2, ctile_3, ctile_4};
static tile_fn *const cdiag_tiles[] = {0, cdiag_1, cdiag_2, cdiag_3, cdiag_4};
#else
static tile_fn *const off_tiles[] = {0, tile_1, tile_2, tile_3};
static tile_fn *const diag_tiles[] = {0, diag_1, diag_2, diag_3};
static tile_fn *const coff_tiles[] = {0, ctile_1, ctile_2, ctile_3};
static tile_fn *const cdiag_tiles[] = {0, cdiag_1, cdiag_2, cdiag_3};
#endif

/* Upper triangle (j >= i) of g (n x n, row-major float64) += y y^T over the columns [k0, k1),
 * y = x, or y = x - z (every row minus the vector z) if z is not NULL: the centered Gram matrix
 * of CClip's iterations. Row i of x starts at x + i * ld. chunk: columns per L2-resident
 * chunk. */
void gram_f32(const float *x, long n, long ld, const float *z, long k0, long k1, long chunk,
              double *g) {
    int gb = z ? GC : GB;
    tile_fn *const *offt = z ? coff_tiles : off_tiles, *const *diagt = z ? cdiag_tiles : diag_tiles;
    for (long kc = k0; kc < k1; kc += chunk) {
        long len = kc + chunk < k1 ? chunk : k1 - kc, kv = len / W * W;
        cursor pf = next_chunk(x, n, ld, kc + len, chunk, k1);
        const float *zc = z ? z + kc : NULL;
        for (long i0 = 0; i0 < n; i0 += gb) {
            int ra = n - i0 < gb ? (int)(n - i0) : gb;
            const float *a[GB];
            for (int r = 0; r < ra; ++r) a[r] = x + (i0 + r) * ld + kc;
            diagt[ra](a, a, zc, kv, len, g, n, i0, i0, &pf);
            /* only the last row block can be short, and it is never an `a` block here */
            for (long j0 = i0 + gb; j0 < n; j0 += gb) {
                int rb = n - j0 < gb ? (int)(n - j0) : gb;
                const float *b[GB];
                for (int c = 0; c < rb; ++c) b[c] = x + (j0 + c) * ld + kc;
                offt[rb](a, b, zc, kv, len, g, n, i0, j0, &pf);
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------
 * Distances to one point
 * ---------------------------------------------------------------------------------------- */

#define DCHUNK 32768 /* columns of z kept in L2 while the rows stream past it */
#define DROWS 4       /* rows per sweep: fewer reads of z, several memory streams at once */

/* out[i] += sum_{k in [k0, k1)} (x[i, k] - z[k])^2 for i < n (CClip, RFA): one read of x, where
 * a difference and a norm per row read it twice and write a buffer. */
void sqdist_to_f32(const float *x, long n, long ld, const float *z, long k0, long k1,
                   double *out) {
    for (long kc = k0; kc < k1; kc += DCHUNK) {
        long ke = kc + DCHUNK < k1 ? kc + DCHUNK : k1, kv = kc + (ke - kc) / W * W;
        for (long i0 = 0; i0 < n; i0 += DROWS) {
            const float *r[DROWS];
            for (int q = 0; q < DROWS; ++q) r[q] = x + (i0 + q < n ? i0 + q : n - 1) * ld;
            vf acc[DROWS];
            for (int q = 0; q < DROWS; ++q) acc[q] = (vf){0};
            for (long k = kc; k < kv; k += W) {
                vf zk = load(z + k);
                _Pragma("GCC unroll 4") for (int q = 0; q < DROWS; ++q) {
                    vf t = load(r[q] + k) - zk;
                    acc[q] += t * t;
                }
            }
            for (int q = 0; q < DROWS && i0 + q < n; ++q) {
                double s = hsum(acc[q]);
                for (long k = kv; k < ke; ++k) s += (double)(r[q][k] - z[k]) * (r[q][k] - z[k]);
                out[i0 + q] += s;
            }
        }
    }
}

/* out[k] = sum_{i: w[i] != 0} w[i] x[i, k] + alpha v[k] for k in [k0, k1) (v unread when alpha
 * is 0), and, if dist is not NULL, dist[i] += sum_k (x[i, k] - out[k])^2: one CClip or Weiszfeld
 * step and the distances the next step needs, in one read of x from memory (each column of the
 * new point depends on that column of x only). chunk: columns whose n rows stay in L2 between
 * the two sweeps. Rows of zero weight are skipped, so an infinite entry there cannot make NaN. */
void wsum_sqdist_f32(const float *x, long n, long ld, const float *w, float alpha, const float *v,
                     long k0, long k1, long chunk, float *out, double *dist) {
    for (long kc = k0; kc < k1; kc += chunk) {
        long ke = kc + chunk < k1 ? kc + chunk : k1, kv = kc + (ke - kc) / W * W;
        cursor pf = next_chunk(x, n, ld, ke, chunk, k1); /* the next chunk, into L2 */
        memset(out + kc, 0, (size_t)(ke - kc) * sizeof(float));
        /* eight rows at a time, added in row order in registers: out is read and written once
         * per eight rows instead of once per row */
        long i = 0;
        while (i < n) {
            const float *r[8];
            float c[8];
            int m = 0;
            for (; i < n && m < 8; ++i)
                if (w[i] != 0.0f) {
                    r[m] = x + i * ld;
                    c[m++] = w[i];
                }
            for (long k = kc; k < kv; k += W) {
                vf t = load(out + k);
                for (int q = 0; q < m; ++q) t += c[q] * load(r[q] + k);
                store(out + k, t);
                for (int q = 0; q < 4; ++q) prefetch_next(&pf);
            }
            for (long k = kv; k < ke; ++k)
                for (int q = 0; q < m; ++q) out[k] += c[q] * r[q][k];
        }
        if (alpha != 0.0f) {
            for (long k = kc; k < kv; k += W) store(out + k, load(out + k) + alpha * load(v + k));
            for (long k = kv; k < ke; ++k) out[k] += alpha * v[k];
        }
        if (!dist) continue;
        for (long i = 0; i < n; ++i) {
            const float *xi = x + i * ld;
            vf a0 = {0};
            for (long k = kc; k < kv; k += W) {
                vf t = load(xi + k) - load(out + k);
                a0 += t * t;
                prefetch_next(&pf);
            }
            double s = hsum(a0);
            for (long k = kv; k < ke; ++k) s += (double)(xi[k] - out[k]) * (xi[k] - out[k]);
            dist[i] += s;
        }
    }
}

/* ------------------------------------------------------------------------------------------
 * Column mean and variance
 * ---------------------------------------------------------------------------------------- */

#define VCHUNK 1024 /* columns per chunk: the sums stay in L1, this chunk's and the next one's
                     * n rows in L2 (2048 measured slower at n = 80) */

/* mean[k] = (1/n) sum_i x[i, k] and var[k] = sum_i (x[i, k] - mean[k])^2 / (n - 1) (0 when
 * n = 1) for k in [k0, k1) (ALIE): the two-pass formula, reading x from memory once. Each pass
 * sweeps the chunk row by row (one memory stream at a time; walking down a column across n
 * rows measured 1.6x slower at n = 80), summing in row order. */
#define VROWS 20 /* up to this many rows, one vector of each row is held while both sums run */

/* mean_var_f32 for n <= VROWS: each column vector of all rows is read once and both passes run
 * on the held values (the same sums in the same order: 0.44 -> 0.34 ms over 16 rows of 2e5;
 * beyond ~20 rows the chunked passes below are faster). */
static void mean_var_held(const float *x, long n, long ld, long k0, long k1, float *mean,
                          float *var, int std) {
    float cnt = (float)n, cnt1 = n > 1 ? (float)(n - 1) : 1.0f;
    long kv = k0 + (k1 - k0) / W * W;
    for (long k = k0; k < kv; k += W) {
        vf r[VROWS], t = r[0] = load(x + k), q = (vf){0};
        for (long i = 1; i < n; ++i) {
            r[i] = load(x + i * ld + k);
            t += r[i];
        }
        vf m = t / cnt;
        for (long i = 0; i < n; ++i) {
            vf u = r[i] - m;
            q += u * u;
        }
        store(mean + k, m);
        store(var + k, q / cnt1);
    }
    for (long k = kv; k < k1; ++k) {
        float t = x[k], q = 0;
        for (long i = 1; i < n; ++i) t += x[i * ld + k];
        float m = t / cnt;
        for (long i = 0; i < n; ++i) {
            float u = x[i * ld + k] - m;
            q += u * u;
        }
        mean[k] = m;
        var[k] = q / cnt1;
    }
    if (std)
        for (long k = k0; k < k1; ++k) var[k] = __builtin_sqrtf(var[k]);
}

void mean_var_f32(const float *x, long n, long ld, long k0, long k1, float *mean, float *var,
                  int std) {
    if (n <= VROWS) {
        mean_var_held(x, n, ld, k0, k1, mean, var, std);
        return;
    }
    float cnt = (float)n, cnt1 = n > 1 ? (float)(n - 1) : 1.0f; /* n = 1: q = 0, var 0 */
    for (long kc = k0; kc < k1; kc += VCHUNK) {
        long ke = kc + VCHUNK < k1 ? kc + VCHUNK : k1, kv = kc + (ke - kc) / W * W;
        cursor pf = next_chunk(x, n, ld, ke, VCHUNK, k1); /* the next chunk, into L2 */
        memcpy(mean + kc, x + kc, (size_t)(ke - kc) * sizeof(float));
        for (long i = 1; i < n; i += 4) { /* four rows per sweep, added in row order */
            long m = n - i < 4 ? n - i : 4;
            const float *r0 = x + i * ld, *r1 = r0 + (m > 1) * ld, *r2 = r0 + 2 * (m > 2) * ld,
                        *r3 = r0 + 3 * (m > 3) * ld;
            for (long k = kc; k < kv; k += W) {
                vf t = load(mean + k) + load(r0 + k);
                if (m > 1) t += load(r1 + k);
                if (m > 2) t += load(r2 + k);
                if (m > 3) t += load(r3 + k);
                store(mean + k, t);
                prefetch_next(&pf);
            }
            for (long q = 0; q < m; ++q)
                for (long k = kv; k < ke; ++k) mean[k] += x[(i + q) * ld + k];
        }
        for (long k = kc; k < kv; k += W) store(mean + k, load(mean + k) / cnt);
        for (long k = kv; k < ke; ++k) mean[k] /= cnt;
        memset(var + kc, 0, (size_t)(ke - kc) * sizeof(float));
        for (long i = 0; i < n; i += 4) {
            long m = n - i < 4 ? n - i : 4;
            const float *r0 = x + i * ld, *r1 = r0 + (m > 1) * ld, *r2 = r0 + 2 * (m > 2) * ld,
                        *r3 = r0 + 3 * (m > 3) * ld;
            for (long k = kc; k < kv; k += W) {
                vf mk = load(mean + k), q = load(var + k), t = load(r0 + k) - mk;
                q += t * t;
                if (m > 1) { t = load(r1 + k) - mk; q += t * t; }
                if (m > 2) { t = load(r2 + k) - mk; q += t * t; }
                if (m > 3) { t = load(r3 + k) - mk; q += t * t; }
                store(var + k, q);
                prefetch_next(&pf);
            }
            for (long q = 0; q < m; ++q)
                for (long k = kv; k < ke; ++k) {
                    float t = x[(i + q) * ld + k] - mean[k];
                    var[k] += t * t;
                }
        }
        for (long k = kc; k < kv; k += W) store(var + k, load(var + k) / cnt1);
        for (long k = kv; k < ke; ++k) var[k] /= cnt1;
        if (std) /* vectorised with -fno-math-errno; correctly rounded */
            for (long k = kc; k < ke; ++k) var[k] = __builtin_sqrtf(var[k]);
    }
}

/* ------------------------------------------------------------------------------------------
 * Group means
 * ---------------------------------------------------------------------------------------- */

/* dst[q][k] = (first[k] + rows[0][k] + ... + rows[np - 1][k]) / c for k in [0, kv), vectors;
 * mode 0: no divide (c = 1), 1: times 1/c (c a power of two: the same result), 2: divide.
 * Inlined with a constant np for the common small groups. */
static inline __attribute__((always_inline)) void group_sum(
        const float *first, const float *const *rows, long np, float c, int mode,
        float *const *dst, long no, int stream, long kv) {
    vf inv = (vf){0} + 1.0f / c;
    for (long k = 0; k < kv; k += W) {
        vf t = load(first + k);
        for (long j = 0; j < np; ++j) t += load(rows[j] + k);
        if (mode == 1) t = t * inv;
        else if (mode == 2) t = t / c;
        if (no == 1 && !stream) {
            store(dst[0] + k, t);
            continue;
        }
        for (long q = 0; q < no; ++q) {
            if (stream) store_stream(dst[q] + k, t);
            else store(dst[q] + k, t);
        }
    }
}

#define GCHUNK 16384 /* columns per chunk (64 KiB of the core's partial sums per chunk; 4K and 8K
                      * measured slower, 32K and 64K no faster) */

/* Means of row groups that share members (bucketing, resampling, NNM). Group g has the members
 * core[0 .. ncore) (shared by every group) followed by idx[start[g] .. start[g + 1]); its mean
 *     t[k] = ((x[core_0, k] + x[core_1, k] + ...) + x[idx_0, k] + x[idx_1, k] + ...) / count[g]
 * (summed in that order, no divide for count 1) is written to the output rows
 * orow[ostart[g] .. ostart[g + 1]) (groups with the same members are computed once), for k in
 * [k0, k1). Over column chunks whose rows stay in cache, so a row in several groups is read from
 * memory once, and the core is summed once per chunk into a buffer instead of once per group
 * (NNM's n - f nearest neighbours are mostly the same rows for every output; without the
 * buffer, e.g. if it cannot be allocated, each group sums the core itself: the same values).
 * stream: non-temporal stores (used when out is aligned to the vector size). */
void group_mean_f32(const float *x, long ld, const int *core, long ncore, const int *idx,
                    const int *start, const float *count, const int *orow, const int *ostart,
                    long groups, long k0, long k1, float *out, long ldo, int stream) {
    float *base = ncore > 1 ? aligned_alloc(64, GCHUNK * sizeof(float)) : NULL;
    stream = stream && (uintptr_t)(out + k0) % (W * sizeof(float)) == 0 && ldo % W == 0;
    for (long kc = k0; kc < k1; kc += GCHUNK) {
        long ke = kc + GCHUNK < k1 ? kc + GCHUNK : k1, kv = (ke - kc) / W * W;
        if (base) {
            for (long k = 0; k < kv; k += W) {
                vf t = load(x + core[0] * ld + kc + k);
                for (long j = 1; j < ncore; ++j) t += load(x + core[j] * ld + kc + k);
                store(base + k, t);
            }
            for (long k = kv; k < ke - kc; ++k) {
                float t = x[core[0] * ld + kc + k];
                for (long j = 1; j < ncore; ++j) t += x[core[j] * ld + kc + k];
                base[k] = t;
            }
        }
        for (long g = 0; g < groups; ++g) {
            const int *m = idx + start[g], *o = orow + ostart[g];
            long ne = start[g + 1] - start[g], no = ostart[g + 1] - ostart[g];
            /* the first term and the rows added to it, in order, offset to this chunk */
            long nc = base ? 0 : ncore, np = nc + ne - 1 + (base != NULL);
            const float *first = base ? base : x + (ncore ? core[0] : m[0]) * ld + kc;
            const float *rows[np > 0 ? np : 1];
            for (long j = 0; j < np; ++j) {
                long r = j + 1 - (base != NULL); /* member index after the first term */
                rows[j] = x + (r < nc ? core[r] : m[r - nc]) * ld + kc;
            }
            float *dst[no];
            for (long q = 0; q < no; ++q) dst[q] = out + o[q] * ldo + kc;
            float c = count[g];
            long ci = (long)c;
            int mode = ci == 1 ? 0 : (ci & (ci - 1)) == 0 ? 1 : 2;
            switch (np < 4 ? np : 4) {
            case 0: group_sum(first, rows, 0, c, mode, dst, no, stream, kv); break;
            case 1: group_sum(first, rows, 1, c, mode, dst, no, stream, kv); break;
            case 2: group_sum(first, rows, 2, c, mode, dst, no, stream, kv); break;
            case 3: group_sum(first, rows, 3, c, mode, dst, no, stream, kv); break;
            default: group_sum(first, rows, np, c, mode, dst, no, stream, kv);
            }
            for (long k = kv; k < ke - kc; ++k) {
                float t = first[k];
                for (long j = 0; j < np; ++j) t += rows[j][k];
                if (c != 1.0f) t = t / c;
                for (long q = 0; q < no; ++q) dst[q][k] = t;
            }
        }
    }
    free(base);
#if defined(__AVX__)
    if (stream) _mm_sfence(); /* streaming stores are weakly ordered */
#endif
}

/* ------------------------------------------------------------------------------------------
 * Order statistics by a sorting network
 * ---------------------------------------------------------------------------------------- */

#define SBUF_BYTES (16 << 10) /* a column block of all n rows, in L1 */
#define BVMAX 8               /* vectors per row in a block (n <= 32 gets 8) */

typedef int vi __attribute__((vector_size(W * sizeof(float))));

static inline vf select_v(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }

/* (a < b ? a : b) and (a < b ? b : a) per lane: one instruction each where the ISA has it */
#if defined(__AVX512F__)
static inline vf min_v(vf a, vf b) { return (vf)_mm512_min_ps((__m512)a, (__m512)b); }
static inline vf max_v(vf a, vf b) { return (vf)_mm512_max_ps((__m512)b, (__m512)a); }
#elif defined(__AVX__)
static inline vf min_v(vf a, vf b) { return (vf)_mm256_min_ps((__m256)a, (__m256)b); }
static inline vf max_v(vf a, vf b) { return (vf)_mm256_max_ps((__m256)b, (__m256)a); }
#else
static inline vf min_v(vf a, vf b) { return select_v(a < b, a, b); }
static inline vf max_v(vf a, vf b) { return select_v(a < b, b, a); }
#endif

/* The comparators on a block of bv vectors per row: the fast path (no NaN in the block), with
 * the widest block as a constant so that a comparator's vectors are unrolled. Wide blocks keep
 * a comparator's loads far from the stores of the comparators before it: with one vector per
 * row, loads that overtake the store they depend on made the median 20x slower. */
static void run_comparators_8(vf *buf, const int *comps, long ncomp) {
    for (long c = 0; c < ncomp; ++c) {
        vf *ra = buf + comps[2 * c] * 8, *rb = buf + comps[2 * c + 1] * 8;
        vf a[8], b[8];
        _Pragma("GCC unroll 8") for (int v = 0; v < 8; ++v) {
            a[v] = ra[v];
            b[v] = rb[v];
        }
        _Pragma("GCC unroll 8") for (int v = 0; v < 8; ++v) {
            ra[v] = min_v(a[v], b[v]);
            rb[v] = max_v(a[v], b[v]);
        }
    }
}

static void run_comparators_any(vf *buf, long bv, const int *comps, long ncomp) {
    for (long c = 0; c < ncomp; ++c) {
        vf *ra = buf + comps[2 * c] * bv, *rb = buf + comps[2 * c + 1] * bv;
        for (long v = 0; v < bv; ++v) {
            vf a = ra[v], b = rb[v];
            ra[v] = min_v(a, b);
            rb[v] = max_v(a, b);
        }
    }
}

/* NaN in a or b gives NaN in both outputs, as torch.minimum/maximum. */
static void run_comparators_nan(vf *buf, long bv, const int *comps, long ncomp) {
    for (long c = 0; c < ncomp; ++c) {
        vf *ra = buf + comps[2 * c] * bv, *rb = buf + comps[2 * c + 1] * bv;
        for (long v = 0; v < bv; ++v) {
            vf a = ra[v], b = rb[v];
            vi bad = (a != a) | (b != b);
            ra[v] = select_v(bad, a + b, min_v(a, b));
            rb[v] = select_v(bad, a + b, max_v(a, b));
        }
    }
}

/* Per column of x (n rows): run the comparators comps[0..2*ncomp) ((a, b) pairs: row a gets
 * the minimum, row b the maximum; NaN in either gives NaN in both, as torch.minimum/maximum),
 * then combine the sorted rows pos[0..npos) into out: kind 0 "pick" (pos[0]), 1 "halves"
 * (0.5 a + 0.5 b), 2 "mean" (sum in order, times 1/npos), 3 "window" (Bulyan: the mean of the
 * beta consecutive values of least max-distance to the median, ties to the lowest; see
 * common/sortnet.py). Columns [k0, k1). Returns 0, or -1 if n is too large for the buffer. */
int sortnet_f32(const float *x, long n, long ld, long k0, long k1, const int *comps, long ncomp,
                const int *pos, long npos, int kind, long beta, float *out) {
    static __thread vf buf[SBUF_BYTES / sizeof(vf)];
    long bv = (long)(SBUF_BYTES / sizeof(vf)) / n; /* vectors per row in a block */
    if (bv < 1) return -1;
    if (bv > BVMAX) bv = BVMAX;
    long step = bv * W;
    for (long kc = k0; kc < k1; kc += step) {
        long cols = k1 - kc < step ? k1 - kc : step;
        vi nan = {0};
        for (long i = 0; i < n; ++i) {
            const float *xi = x + i * ld + kc;
            vf *row = buf + i * bv;
            if (cols == step) {
                if (kc + 3 * step <= k1) /* the row's block after next: the rows are n streams */
                    for (long c = 0; c < step; c += 64 / (long)sizeof(float))
                        __builtin_prefetch(xi + 2 * step + c, 0, 1);
                for (long v = 0; v < bv; ++v) {
                    vf t = load(xi + v * W);
                    nan |= t != t;
                    row[v] = t;
                }
            } else { /* last, partial block: zero padding, never stored */
                float *r = (float *)row;
                for (long c = 0; c < step; ++c) r[c] = c < cols ? xi[c] : 0.0f;
                for (long v = 0; v < bv; ++v) nan |= row[v] != row[v];
            }
        }
        int any_nan = 0;
        for (int l = 0; l < W; ++l) any_nan |= nan[l];
        if (any_nan)
            run_comparators_nan(buf, bv, comps, ncomp);
        else if (bv == 8)
            run_comparators_8(buf, comps, ncomp);
        else
            run_comparators_any(buf, bv, comps, ncomp);
        for (long v = 0; v < bv; ++v) {
            vf r;
            if (kind == 0) {
                r = buf[pos[0] * bv + v];
            } else if (kind == 1) {
                r = 0.5f * buf[pos[0] * bv + v] + 0.5f * buf[pos[1] * bv + v];
            } else if (kind == 2) {
                r = buf[pos[0] * bv + v];
                for (long p = 1; p < npos; ++p) r += buf[pos[p] * bv + v];
                r *= (float)(1.0 / (double)npos);
            } else {
                long theta = npos, h = theta / 2;
                vf med = theta % 2 ? buf[pos[h] * bv + v]
                                   : 0.5f * buf[pos[h - 1] * bv + v] + 0.5f * buf[pos[h] * bv + v];
                vf best_cost = {0}, best_sum = {0}, core = {0};
                long c_lo = theta - beta, c_hi = beta; /* rows in every window (sortnet.py) */
                if (c_lo < c_hi) {
                    core = buf[pos[c_lo] * bv + v];
                    for (long q = c_lo + 1; q < c_hi; ++q) core += buf[pos[q] * bv + v];
                }
                for (long j = 0; j + beta <= theta; ++j) {
                    vf lo = med - buf[pos[j] * bv + v], hi = buf[pos[j + beta - 1] * bv + v] - med;
                    vi m = lo > hi; /* torch.maximum: NaN in either gives NaN */
                    vf cost = select_v(m, lo, hi);
                    vi bad = (lo != lo) | (hi != hi);
                    cost = select_v(bad, lo + hi, cost);
                    vf total;
                    if (c_lo < c_hi) {
                        total = core;
                        for (long q = j; q < c_lo; ++q) total += buf[pos[q] * bv + v];
                        for (long q = c_hi; q < j + beta; ++q) total += buf[pos[q] * bv + v];
                    } else {
                        total = buf[pos[j] * bv + v];
                        for (long q = 1; q < beta; ++q) total += buf[pos[j + q] * bv + v];
                    }
                    if (j == 0) {
                        best_cost = cost;
                        best_sum = total;
                    } else {
                        vi better = cost < best_cost;
                        best_cost = select_v(better, cost, best_cost);
                        best_sum = select_v(better, total, best_sum);
                    }
                }
                r = best_sum / (float)beta;
            }
            float *o = out + kc + v * W;
            if (cols == step) {
                store(o, r);
            } else {
                for (long c = 0; c < W && v * W + c < cols; ++c) o[c] = r[c];
            }
        }
    }
    return 0;
}
