/* act.h - activations, and their derivatives written in terms of the
 * activation's own output (so backward never recomputes an exponential). */
#ifndef FASTRNN_ACT_H
#define FASTRNN_ACT_H

#include "real.h"

static inline real fr_sigmoid(real a) {
    /* Split on the sign so exp never overflows. */
    if (a >= 0) {
        real e = FR_EXP(-a);
        return (real)1 / ((real)1 + e);
    }
    real e = FR_EXP(a);
    return e / ((real)1 + e);
}

static inline real fr_tanh(real a) { return FR_TANH(a); }

static inline real fr_relu(real a) { return a > 0 ? a : (real)0; }

/* d sigmoid(a)/da = s (1 - s), with s = sigmoid(a) */
static inline real fr_dsigmoid_from_output(real s) { return s * ((real)1 - s); }

/* d tanh(a)/da = 1 - y^2, with y = tanh(a) */
static inline real fr_dtanh_from_output(real y) { return (real)1 - y * y; }

/* d relu(a)/da = [y > 0], with y = relu(a) */
static inline real fr_drelu_from_output(real y) { return y > 0 ? (real)1 : (real)0; }

#endif
