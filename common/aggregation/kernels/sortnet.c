/* Order statistics by a pruned sorting network (see vec.h for the conventions shared by every kernel). */
#include "vec.h"

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
