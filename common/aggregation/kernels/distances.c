/* The Gram matrix and distances to one point (see vec.h for the conventions shared by every kernel). */
#include "vec.h"

/* Floats per vector of this build (for the rounding bounds of native.py). */
int vector_width(void) { return W; }

/* ------------------------------------------------------------------------------------------
 * Gram matrix
 * ---------------------------------------------------------------------------------------- */

/* rows per tile: GB x GB accumulators + GB + 1 loaded vectors. 5 x 5 (31 of 32 registers) over
 * 4 x 4: 25 FMAs per 10 loads instead of 16 per 8, and n = 25 splits into whole tiles (9.6 -> 8.1
 * ms at (25, 1e6)). */
#define GB (REGS >= 32 ? 5 : 3)

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
