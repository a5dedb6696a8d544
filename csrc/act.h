/* act.h - activations on vectors of reals (gemm/vec.h's fr_vec), and their derivatives
 * written in terms of the activation's own output (so backward never recomputes an
 * exponential).
 *
 * The cells' elementwise loops run a vector of hidden units at a time (fr_vload/fr_vstore
 * take the tail of a row as a zero-padded vector). float64 applies libm's exp and tanh lane
 * by lane. float32 uses branch-free approximations accurate to a few ulp with a real
 * division, so they are safe for training:
 *   exp:  Cephes' range reduction x = n ln2 + r and a degree-6 polynomial in r, scaled by
 *         2^n through the exponent bits;
 *   tanh: the [13/6] rational approximation on [-7.9, 7.9] that Eigen and MLAS use
 *         (beyond that range float32 tanh is +-1, and so is this one);
 *   sigmoid(a) = 1 / (1 + exp(-a)).
 * Their clamps are the ISA's max/min instructions (fr_vclamp): written as comparisons,
 * which GCC must vectorize as compare + blend to keep NaN a NaN, they cost the LSTM
 * epilogue a fifth of its time (docs/perf-notes.md 65).
 */
#ifndef FASTRNN_ACT_H
#define FASTRNN_ACT_H

#include "gemm/vec.h"

#if defined(__SSE2__) || defined(__AVX__)
#include <immintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif

/* n <= FR_VLEN reals at p as a vector, the lanes past n zero; fr_vstore writes n lanes
 * back. Where n is the constant FR_VLEN (a whole block) each is one unaligned access. */
static FR_ALWAYS_INLINE fr_vec fr_vload(const real *p, ptrdiff_t n) {
    if (n == FR_VLEN)
        return *(const fr_vec_u *)p;
    fr_vec v = {0};
    for (ptrdiff_t k = 0; k < n; k++)
        v[k] = p[k];
    return v;
}

static FR_ALWAYS_INLINE void fr_vstore(real *p, fr_vec v, ptrdiff_t n) {
    if (n == FR_VLEN)
        *(fr_vec_u *)p = v;
    else
        for (ptrdiff_t k = 0; k < n; k++)
            p[k] = v[k];
}

/* How many of a row's `units - j` remaining units the vector at j holds. */
static FR_ALWAYS_INLINE ptrdiff_t fr_vlanes(ptrdiff_t units, ptrdiff_t j) {
    return units - j < FR_VLEN ? units - j : FR_VLEN;
}

static FR_ALWAYS_INLINE fr_vec fr_vset(real a) { return (fr_vec){0} + a; }

/* a * b + c in one rounding where the ISA has FMA. The cells write a sum of two products
 * with it, so which product is fused is fixed, not the compiler's choice (which differed
 * between a block's straight-line code and a tail's, and so between ISA levels). */
static FR_ALWAYS_INLINE fr_vec fr_vmuladd(fr_vec a, fr_vec b, fr_vec c) {
#if defined(__AVX512F__) && defined(FR_F64)
    return _mm512_fmadd_pd(a, b, c);
#elif defined(__AVX512F__)
    return _mm512_fmadd_ps(a, b, c);
#elif defined(__FMA__) && defined(FR_F64)
    return _mm256_fmadd_pd(a, b, c);
#elif defined(__FMA__)
    return _mm256_fmadd_ps(a, b, c);
#elif defined(__ARM_FEATURE_FMA) && defined(__aarch64__) && defined(FR_F64)
    return vfmaq_f64(c, a, b);
#elif defined(__ARM_FEATURE_FMA) && defined(__aarch64__)
    return vfmaq_f32(c, a, b);
#else
    return a * b + c;
#endif
}

/* relu keeps NaN a NaN (as NumPy's maximum and PyTorch): a < 0 is false for NaN */
static FR_ALWAYS_INLINE fr_vec fr_vrelu(fr_vec a) {
    return (fr_vec)((fr_ivec)a & ~(fr_ivec)(a < (fr_vec){0}));
}

#ifdef FR_F64

static FR_ALWAYS_INLINE fr_vec fr_vexp(fr_vec a) {
    for (ptrdiff_t k = 0; k < FR_VLEN; k++)
        a[k] = exp(a[k]);
    return a;
}

static FR_ALWAYS_INLINE fr_vec fr_vtanh(fr_vec a) {
    for (ptrdiff_t k = 0; k < FR_VLEN; k++)
        a[k] = tanh(a[k]);
    return a;
}

#else

/* min(hi, max(lo, a)) with a NaN passed through: the instructions return their second
 * operand when either is NaN, as `a < lo ? lo : a` does. */
static FR_ALWAYS_INLINE fr_vec fr_vclamp(fr_vec a, float lo, float hi) {
#if defined(__AVX512F__)
    return _mm512_min_ps(fr_vset(hi), _mm512_max_ps(fr_vset(lo), a));
#elif defined(__AVX__)
    return _mm256_min_ps(fr_vset(hi), _mm256_max_ps(fr_vset(lo), a));
#elif defined(__SSE2__)
    return _mm_min_ps(fr_vset(hi), _mm_max_ps(fr_vset(lo), a));
#elif defined(__ARM_NEON)
    return vminq_f32(fr_vset(hi), vmaxq_f32(fr_vset(lo), a)); /* NaN if either is NaN */
#else
    fr_ivec below = a < fr_vset(lo), above = a > fr_vset(hi);
    fr_ivec bits = ((fr_ivec)a & ~(below | above)) | ((fr_ivec)fr_vset(lo) & below) |
                   ((fr_ivec)fr_vset(hi) & above);
    return (fr_vec)bits;
#endif
}

static FR_ALWAYS_INLINE fr_vec fr_vexp(fr_vec a) {
    /* Up to 88.8 (n = 128): 2^n is then infinity, so exp overflows as float32's does (from
     * 88.38, where the exact one overflows from 88.72), and sigmoid(a) reaches 0 for a <
     * -88.38 as the exact float32 one does; a clamp below 88.38 left sigmoid at 4.6e-39 for
     * every a below, which a huge recurrent weight (1e30 * h) turned into an unbounded
     * difference. */
    a = fr_vclamp(a, -87.3f, 88.8f);
    /* n = round(a / ln2) by the 1.5 * 2^23 trick, r = a - n ln2 in two parts. */
    fr_vec t = a * 1.44269504088896341f + 12582912.0f; /* n in t's low mantissa bits */
    fr_vec n = t - 12582912.0f;
    fr_vec r = a - n * 0.693359375f + n * 2.12194440e-4f;   /* NaN stays NaN through r */
    /* n as an integer read from t's bits, not converted (a NaN converted to int is
     * undefined); for a NaN the bits are garbage, but p is NaN. */
    fr_uvec n_int = (fr_uvec)t - 0x4B400000u;
    fr_vec p = fr_vset(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    fr_uvec scale = (n_int + 127u) << 23; /* 2^n, n in [-126, 128]; 2^128 = inf */
    return p * (fr_vec)scale;
}

static FR_ALWAYS_INLINE fr_vec fr_vtanh(fr_vec a) {
    fr_vec x = fr_vclamp(a, -7.90531110763549805f, 7.90531110763549805f);
    fr_vec x2 = x * x;
    fr_vec p = fr_vset(-2.76076847742355e-16f);
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    fr_vec q = fr_vset(1.19825839466702e-06f);
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    /* Exactly +-1 beyond the clamp, as float32 tanh (the approximation there is 1 - 4.8e-7,
     * and 1 - y^2 = 9.5e-7 times a huge recurrent weight is an unbounded gradient). */
    fr_ivec above = a > fr_vset(7.90531110763549805f), below = a < fr_vset(-7.90531110763549805f);
    fr_ivec bits = ((fr_ivec)(x * p / q) & ~(above | below)) |
                   ((fr_ivec)fr_vset(1.0f) & above) | ((fr_ivec)fr_vset(-1.0f) & below);
    return (fr_vec)bits;
}

#endif

static FR_ALWAYS_INLINE fr_vec fr_vsigmoid(fr_vec a) { return (real)1 / ((real)1 + fr_vexp(-a)); }

/* d sigmoid(a)/da = s (1 - s), with s = sigmoid(a) */
static inline real fr_dsigmoid_from_output(real s) { return s * ((real)1 - s); }

/* d tanh(a)/da = 1 - y^2, with y = tanh(a) */
static inline real fr_dtanh_from_output(real y) { return (real)1 - y * y; }

/* d relu(a)/da = [y > 0], with y = relu(a) */
static inline real fr_drelu_from_output(real y) { return y > 0 ? (real)1 : (real)0; }

#endif
