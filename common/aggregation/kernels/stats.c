/* Column means and variances; means of row groups (see vec.h for the conventions shared by every kernel). */
#include "vec.h"

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
