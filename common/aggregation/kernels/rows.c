/* Row clipping: x_i min(1, c_i / ||x_i||) (see vec.h for the conventions shared by every
 * kernel). The output is as large as the input and only the next stage reads it, so it is
 * written with stores that bypass the cache: a plain store first reads the line it overwrites,
 * a third pass over memory. */
#include "vec.h"

#define RCHUNK 32768 /* columns per float32 partial sum before the float64 total */

/* out[0, d) = s x[0, d), streamed; s == 0 writes zeros (a row of infinite norm: 0 * inf would
 * be NaN). */
void scale_row_f32(const float *x, long d, float s, float *out) {
    long k = 0;
    while (k < d && ((uintptr_t)(out + k) % sizeof(vf))) { /* stream stores need alignment */
        out[k] = s == 0.0f ? 0.0f : x[k] * s;
        ++k;
    }
    if (s == 0.0f) {
        for (; k + W <= d; k += W) store_stream(out + k, (vf){0});
    } else if (s == 1.0f) {
        for (; k + W <= d; k += W) store_stream(out + k, load(x + k));
    } else {
        vf sv = (vf){0} + s;
        for (; k + W <= d; k += W) store_stream(out + k, load(x + k) * sv);
    }
    for (; k < d; ++k) out[k] = s == 0.0f ? 0.0f : x[k] * s;
#if defined(__AVX__)
    _mm_sfence(); /* streaming stores are weakly ordered */
#endif
}

/* The norm of the row x[0, d) and out = x min(1, c / ||x||), the row read from memory once (the
 * second sweep finds it in cache while a row fits in L3). The squared norm accumulates as in
 * sqdist_to_f32 (float32 vectors within a chunk of RCHUNK columns, float64 across chunks), so
 * the norm is the one row_norms computes. Returns the norm, or -1 with nothing written when the
 * squared norm overflowed or is NaN: the caller takes its overflow-safe path for that row. */
float clip_row_f32(const float *x, long d, float c, float *out) {
    double sq = 0;
    for (long kc = 0; kc < d; kc += RCHUNK) {
        long ke = kc + RCHUNK < d ? kc + RCHUNK : d, kv = kc + (ke - kc) / W * W;
        vf acc = (vf){0};
        for (long k = kc; k < kv; k += W) {
            vf t = load(x + k);
            acc += t * t;
        }
        double s = hsum(acc);
        for (long k = kv; k < ke; ++k) s += (double)x[k] * x[k];
        sq += s;
    }
    if (!(sq <= 1.7976931348623157e308)) return -1.0f;
    float norm = (float)__builtin_sqrt(sq);
    scale_row_f32(x, d, norm > c ? c / norm : 1.0f, out);
    return norm;
}
