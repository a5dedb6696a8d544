/* rnn.c - vanilla RNN (tanh or relu), forward over a sequence and its BPTT.
 *
 *   a_t = x_t w_ih^T + b_ih + h_{t-1} w_hh^T + b_hh      (B, H)
 *   h_t = act(a_t),  y_t = h_t                           act = tanh or relu
 *
 * Compiled once per dtype (see real.h). Backward needs only y: the activation's
 * derivative comes from its output (1 - y^2 for tanh, [y > 0] for relu).
 */
#include "act.h"
#include "seq.h"

static inline real rnn_act(real a, int relu) { return relu ? fr_relu(a) : fr_tanh(a); }

static inline real rnn_dact(real y, int relu) {
    return relu ? fr_drelu_from_output(y) : fr_dtanh_from_output(y);
}

/* One step of the elementwise pass: pre (B, H) holds a_t on entry; writes y_t (B, H)
 * and the carried state h (B, H) for rows still inside their sequence. */
static void rnn_step_forward(real *y_t, real *h, const real *pre, const int64_t *lengths,
                             int relu, ptrdiff_t t, ptrdiff_t B, ptrdiff_t H) {
    for (ptrdiff_t b = 0; b < B; b++) {
        real *y_row = y_t + b * H, *h_row = h + b * H;
        const real *a_row = pre + b * H;
        if (!fr_step_valid(lengths, t, b)) {
            memset(y_row, 0, (size_t)H * sizeof(real));
            continue;
        }
        for (ptrdiff_t j = 0; j < H; j++)
            h_row[j] = y_row[j] = rnn_act(a_row[j], relu);
    }
}

int FR_FN(rnn_forward)(real *y, real *h_n, const real *x, const real *h0, const real *w_ih,
                       const real *w_hh, const real *b_ih, const real *b_hh,
                       const int64_t *lengths, int relu, ptrdiff_t T, ptrdiff_t B,
                       ptrdiff_t I, ptrdiff_t H) {
    /* The pre-activations of step t are built in y[t] and activated in place; h_n
     * carries the state (it differs from y[t] for rows past their length). */
    FR_FN(input_projection)(y, x, w_ih, b_ih, b_hh, T * B, I, H);
    FR_FN(init_state)(h_n, h0, B * H);
    for (ptrdiff_t t = 0; t < T; t++) {
        real *y_t = y + t * B * H;
        FR_FN(gemm)(0, 1, B, H, H, 1, h_n, H, w_hh, H, 1, y_t, H); /* a_t += h w_hh^T */
        rnn_step_forward(y_t, h_n, y_t, lengths, relu, t, B, H);
    }
    return FR_OK;
}

/* One step backward: dh (B, H) holds dL/dh_t carried from step t+1. Writes
 * dG_t (B, H) = dL/da_t and, for rows inside their sequence, resets dh to 0 so the
 * recurrent GEMM can add dG_t w_hh onto it; rows past their length keep dh. */
static void rnn_step_backward(real *dG_t, real *dh, const real *dy_t, const real *y_t,
                              const int64_t *lengths, int relu, ptrdiff_t t, ptrdiff_t B,
                              ptrdiff_t H) {
    for (ptrdiff_t b = 0; b < B; b++) {
        real *dG_row = dG_t + b * H, *dh_row = dh + b * H;
        if (!fr_step_valid(lengths, t, b)) {
            memset(dG_row, 0, (size_t)H * sizeof(real));
            continue;
        }
        const real *dy_row = dy_t ? dy_t + b * H : NULL, *y_row = y_t + b * H;
        for (ptrdiff_t j = 0; j < H; j++) {
            dG_row[j] = (fr_upstream(dy_row, j) + dh_row[j]) * rnn_dact(y_row[j], relu);
            dh_row[j] = 0;
        }
    }
}

int FR_FN(rnn_backward)(real *dx, real *dh0, real *dw_ih, real *dw_hh, real *db_ih,
                        real *db_hh, const real *dy, const real *dh_n, const real *y,
                        const real *x, const real *h0, const real *w_ih, const real *w_hh,
                        const int64_t *lengths, int relu, ptrdiff_t T, ptrdiff_t B,
                        ptrdiff_t I, ptrdiff_t H) {
    real *dG = FR_FN(alloc_zeroed)(T * B * H); /* (T, B, H) dL/da_t */
    if (!dG)
        return FR_ERR_NOMEM;
    real *dh = dh0; /* (B, H) carried dL/dh_t, ends as dL/dh0 */
    FR_FN(init_state)(dh, dh_n, B * H);
    for (ptrdiff_t t = T - 1; t >= 0; t--) {
        real *dG_t = dG + t * B * H;
        rnn_step_backward(dG_t, dh, dy ? dy + t * B * H : NULL, y + t * B * H, lengths, relu,
                          t, B, H);
        FR_FN(gemm)(0, 0, B, H, H, 1, dG_t, H, w_hh, H, 1, dh, H); /* dh += dG_t w_hh */
    }
    FR_FN(input_grads)(dx, dw_ih, db_ih, dG, x, w_ih, T * B, I, H);
    FR_FN(hidden_grads)(dw_hh, db_hh, dG, H, h0, y, T, B, H, H);
    free(dG);
    return FR_OK;
}
