/* layernorm.h - layer norm over blocks of H units, for the layer-normalised cells
 * (lstm_ln.c, gru_ln.c): LN(v) = (v - mean) * rstd, rstd = 1 / sqrt(var + eps) per block,
 * and its backward from the saved normalised values and rstd. Compiled with each cell, once
 * per dtype and ISA (real.h).
 */
#ifndef FASTRNN_LAYERNORM_H
#define FASTRNN_LAYERNORM_H

#include <math.h>
#include <string.h>

#include "seq.h"

#define FR_LN_EPS ((real)1e-5) /* torch.nn.LayerNorm's default */

/* hat (n*H) = LN of each of the n blocks of v (n*H); rstd (n) of each. */
static inline void FR_FN(ln_blocks)(real *restrict hat, real *restrict rstd,
                                    const real *restrict v, ptrdiff_t n, ptrdiff_t H) {
    for (ptrdiff_t k = 0; k < n; k++) {
        const real *restrict a = v + k * H;
        real mean = 0, var = 0;
        for (ptrdiff_t j = 0; j < H; j++)
            mean += a[j];
        mean /= (real)H;
        for (ptrdiff_t j = 0; j < H; j++)
            var += (a[j] - mean) * (a[j] - mean);
        real r = (real)(1.0 / sqrt((double)(var / (real)H + FR_LN_EPS)));
        for (ptrdiff_t j = 0; j < H; j++)
            hat[k * H + j] = (a[j] - mean) * r;
        rstd[k] = r;
    }
}

/* Undo hat = LN(v) per block: dv (n*H) = rstd (dhat - mean(dhat) - hat mean(dhat hat)),
 * with dhat = d * gain (gain (n*H)). */
static inline void FR_FN(ln_blocks_backward)(real *restrict dv, const real *restrict d,
                                             const real *restrict gain,
                                             const real *restrict hat,
                                             const real *restrict rstd, ptrdiff_t n,
                                             ptrdiff_t H) {
    for (ptrdiff_t k = 0; k < n; k++) {
        real m1 = 0, m2 = 0;
        for (ptrdiff_t j = 0; j < H; j++) {
            real dh = d[k * H + j] * gain[k * H + j];
            m1 += dh;
            m2 += dh * hat[k * H + j];
        }
        m1 /= (real)H;
        m2 /= (real)H;
        for (ptrdiff_t j = 0; j < H; j++)
            dv[k * H + j] =
                rstd[k] * (d[k * H + j] * gain[k * H + j] - m1 - hat[k * H + j] * m2);
    }
}

/* The input side of a layer-normalised cell, for all R = T*B rows before the loop:
 *   pre (R, G*H) = gain * LN(x w_ih^T) + b_a + b_b      per gate block (NULL biases: 0)
 * with x_hat (R, G*H) and x_rstd (R, G) saved. */
static inline void FR_FN(ln_input_side)(real *pre, real *x_hat, real *x_rstd, const real *x,
                                        const real *w_ih, const real *b_a, const real *b_b,
                                        const real *gain, ptrdiff_t R, ptrdiff_t I,
                                        ptrdiff_t G, ptrdiff_t H) {
    const ptrdiff_t N = G * H;
    FR_FN(input_projection)(pre, x, w_ih, NULL, NULL, R, I, N);
    for (ptrdiff_t row = 0; row < R; row++) {
        real *p = pre + row * N, *hat = x_hat + row * N;
        FR_FN(ln_blocks)(hat, x_rstd + row * G, p, G, H);
        for (ptrdiff_t j = 0; j < N; j++)
            p[j] = gain[j] * hat[j] + (b_a ? b_a[j] : 0) + (b_b ? b_b[j] : 0);
    }
}

#endif
