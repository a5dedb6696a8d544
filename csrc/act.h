/* act.h - activations, and their derivatives written in terms of the activation's own
 * output (so backward never recomputes an exponential).
 *
 * float64 uses libm's exp and tanh. float32 uses branch-free approximations that the
 * compiler vectorizes (the loops that call them run 8 or 16 lanes wide), accurate to a
 * few ulp with a real division, so they are safe for training:
 *   exp:  Cephes' range reduction x = n ln2 + r and a degree-6 polynomial in r, scaled by
 *         2^n through the exponent bits;
 *   tanh: the [13/6] rational approximation on [-7.9, 7.9] that Eigen and MLAS use
 *         (beyond that range float32 tanh is +-1 anyway);
 *   sigmoid(a) = 1 / (1 + exp(-a)).
 */
#ifndef FASTRNN_ACT_H
#define FASTRNN_ACT_H

#include <string.h>

#include "real.h"

#ifdef FR_F64

static inline double fr_exp(double a) { return exp(a); }
static inline double fr_tanh(double a) { return tanh(a); }

#else

/* min/max as comparisons: they vectorize, where fminf/fmaxf become libm calls. */
static inline float fr_clamp(float a, float lo, float hi) {
    a = a < lo ? lo : a;
    return a > hi ? hi : a;
}

static inline float fr_exp(float a) {
    /* Up to 88.8 (n = 128): 2^n is then infinity, so exp overflows as float32's does (from
     * 88.38, where the exact one overflows from 88.72), and sigmoid(a) reaches 0 for a <
     * -88.38 as the exact float32 one does; a clamp below 88.38 left sigmoid at 4.6e-39 for
     * every a below, which a huge recurrent weight (1e30 * h) turned into an unbounded
     * difference. */
    a = fr_clamp(a, -87.3f, 88.8f);
    /* n = round(a / ln2) by the 1.5 * 2^23 trick, r = a - n ln2 in two parts. */
    float t = a * 1.44269504088896341f + 12582912.0f; /* n in t's low mantissa bits */
    float n = t - 12582912.0f;
    float r = a - n * 0.693359375f + n * 2.12194440e-4f;   /* NaN stays NaN through r */
    /* n as an integer read from t's bits, not converted (a NaN converted to int is
     * undefined, and a select to avoid it cost the LSTM epilogue ~15 %); for a NaN the
     * bits are garbage, but p is NaN. */
    int32_t t_bits;
    memcpy(&t_bits, &t, sizeof t_bits);
    int32_t n_int = t_bits - 0x4B400000;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t bits = (uint32_t)(n_int + 127) << 23; /* 2^n, n in [-126, 128]; 2^128 = inf */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float fr_tanh(float a) {
    float x = fr_clamp(a, -7.90531110763549805f, 7.90531110763549805f);
    float x2 = x * x;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return x * p / q;
}

#endif

static inline real fr_sigmoid(real a) { return (real)1 / ((real)1 + fr_exp(-a)); }

/* relu keeps NaN a NaN (as NumPy's maximum and PyTorch): a < 0 is false for NaN */
static inline real fr_relu(real a) { return a < 0 ? (real)0 : a; }

/* d sigmoid(a)/da = s (1 - s), with s = sigmoid(a) */
static inline real fr_dsigmoid_from_output(real s) { return s * ((real)1 - s); }

/* d tanh(a)/da = 1 - y^2, with y = tanh(a) */
static inline real fr_dtanh_from_output(real y) { return (real)1 - y * y; }

/* d relu(a)/da = [y > 0], with y = relu(a) */
static inline real fr_drelu_from_output(real y) { return y > 0 ? (real)1 : (real)0; }

#endif
