/* lstm.c - LSTM forward over a sequence and its BPTT (PyTorch gate order i, f, g, o).
 *
 *   [a_i a_f a_g a_o] = x_t w_ih^T + b_ih + h_{t-1} w_hh^T + b_hh        (B, 4H)
 *   i = sigma(a_i)  f = sigma(a_f)  g = tanh(a_g)  o = sigma(a_o)
 *   c_t = f * c_{t-1} + i * g
 *   h_t = o * tanh(c_t),  y_t = h_t
 *
 * Training forward saves, per step, the activated gates (B, 4H), c_t and tanh(c_t)
 * (B, H each); backward takes every derivative from those saved outputs.
 * Compiled once per dtype (see real.h).
 */
#include "act.h"
#include "seq.h"

/* Views of the saved block: gates (T, B, 4H), then c (T, B, H), then tanh(c) (T, B, H). */
typedef struct {
    real *gates, *c, *tanh_c;
} lstm_saved;

static lstm_saved lstm_saved_views(real *saved, ptrdiff_t T, ptrdiff_t B, ptrdiff_t H) {
    lstm_saved s = {saved, saved + T * B * 4 * H, saved + T * B * 5 * H};
    return s;
}

/* One step of the elementwise pass. gates_t (B, 4H) holds the pre-activations on entry
 * and the activated gates on exit; h, c (B, H) carry the state; y_t (B, H) gets h_t;
 * c_t, tanh_c_t (B, H) save c_t and tanh(c_t) when not NULL (training). */
static void lstm_step_forward(real *y_t, real *h, real *c, real *gates_t, real *c_t,
                              real *tanh_c_t, const int64_t *lengths, ptrdiff_t t,
                              ptrdiff_t B, ptrdiff_t H) {
    for (ptrdiff_t b = 0; b < B; b++) {
        real *y_row = y_t + b * H, *h_row = h + b * H, *c_row = c + b * H;
        if (!fr_step_valid(lengths, t, b)) {
            memset(y_row, 0, (size_t)H * sizeof(real));
            continue;
        }
        real *gi = gates_t + b * 4 * H, *gf = gi + H, *gg = gi + 2 * H, *go = gi + 3 * H;
        for (ptrdiff_t j = 0; j < H; j++) {
            gi[j] = fr_sigmoid(gi[j]);
            gf[j] = fr_sigmoid(gf[j]);
            gg[j] = fr_tanh(gg[j]);
            go[j] = fr_sigmoid(go[j]);
            real c_new = gf[j] * c_row[j] + gi[j] * gg[j];
            real tc = fr_tanh(c_new);
            c_row[j] = c_new;
            h_row[j] = y_row[j] = go[j] * tc;
            if (c_t) {
                c_t[b * H + j] = c_new;
                tanh_c_t[b * H + j] = tc;
            }
        }
    }
}

int FR_FN(lstm_forward)(real *y, real *h_n, real *c_n, real *saved, const real *x,
                        const real *h0, const real *c0, const real *w_ih, const real *w_hh,
                        const real *b_ih, const real *b_hh, const int64_t *lengths,
                        ptrdiff_t T, ptrdiff_t B, ptrdiff_t I, ptrdiff_t H) {
    const ptrdiff_t G = 4 * H;
    /* Inference keeps no saved block: the gates go to a workspace freed on return. */
    real *gates = saved ? saved : FR_FN(alloc_zeroed)(T * B * G); /* (T, B, 4H) */
    if (!gates)
        return FR_ERR_NOMEM;
    lstm_saved s = lstm_saved_views(gates, T, B, H);
    FR_FN(input_projection)(gates, x, w_ih, b_ih, b_hh, T * B, I, G);
    FR_FN(init_state)(h_n, h0, B * H);
    FR_FN(init_state)(c_n, c0, B * H);
    for (ptrdiff_t t = 0; t < T; t++) {
        real *gates_t = gates + t * B * G;
        FR_FN(gemm)(0, 1, B, G, H, 1, h_n, H, w_hh, H, 1, gates_t, G); /* += h w_hh^T */
        lstm_step_forward(y + t * B * H, h_n, c_n, gates_t, saved ? s.c + t * B * H : NULL,
                          saved ? s.tanh_c + t * B * H : NULL, lengths, t, B, H);
    }
    if (!saved)
        free(gates);
    return FR_OK;
}

/* One step backward. dh, dc (B, H) hold dL/dh_t, dL/dc_t carried from step t+1; on
 * exit dc holds dL/dc_{t-1} and dh is 0 for rows inside their sequence (the recurrent
 * GEMM then adds dG_t w_hh); rows past their length keep dh and dc and get dG_t = 0.
 * dG_t (B, 4H) = dL/d[a_i a_f a_g a_o]. c_prev (B, H) is c_{t-1} (NULL = zeros). */
static void lstm_step_backward(real *dG_t, real *dh, real *dc, const real *dy_t,
                               const real *gates_t, const real *tanh_c_t,
                               const real *c_prev, const int64_t *lengths, ptrdiff_t t,
                               ptrdiff_t B, ptrdiff_t H) {
    for (ptrdiff_t b = 0; b < B; b++) {
        real *dGi = dG_t + b * 4 * H, *dGf = dGi + H, *dGg = dGi + 2 * H, *dGo = dGi + 3 * H;
        if (!fr_step_valid(lengths, t, b)) {
            memset(dGi, 0, (size_t)(4 * H) * sizeof(real));
            continue;
        }
        const real *gi = gates_t + b * 4 * H, *gf = gi + H, *gg = gi + 2 * H, *go = gi + 3 * H;
        const real *tc = tanh_c_t + b * H, *dy_row = dy_t ? dy_t + b * H : NULL;
        real *dh_row = dh + b * H, *dc_row = dc + b * H;
        for (ptrdiff_t j = 0; j < H; j++) {
            real dh_j = fr_upstream(dy_row, j) + dh_row[j];
            /* h = o tanh(c);  c = f c_prev + i g */
            real dc_j = dc_row[j] + dh_j * go[j] * fr_dtanh_from_output(tc[j]);
            real c_prev_j = c_prev ? c_prev[b * H + j] : (real)0;
            dGo[j] = dh_j * tc[j] * fr_dsigmoid_from_output(go[j]);
            dGi[j] = dc_j * gg[j] * fr_dsigmoid_from_output(gi[j]);
            dGf[j] = dc_j * c_prev_j * fr_dsigmoid_from_output(gf[j]);
            dGg[j] = dc_j * gi[j] * fr_dtanh_from_output(gg[j]);
            dc_row[j] = dc_j * gf[j];
            dh_row[j] = 0;
        }
    }
}

int FR_FN(lstm_backward)(real *dx, real *dh0, real *dc0, real *dw_ih, real *dw_hh,
                         real *db_ih, real *db_hh, const real *dy, const real *dh_n,
                         const real *dc_n, const real *saved, const real *y, const real *x,
                         const real *h0, const real *c0, const real *w_ih, const real *w_hh,
                         const int64_t *lengths, ptrdiff_t T, ptrdiff_t B, ptrdiff_t I,
                         ptrdiff_t H) {
    const ptrdiff_t G = 4 * H;
    real *dG = FR_FN(alloc_zeroed)(T * B * G); /* (T, B, 4H) dL/d pre-activations */
    if (!dG)
        return FR_ERR_NOMEM;
    lstm_saved s = lstm_saved_views((real *)saved, T, B, H);
    real *dh = dh0, *dc = dc0; /* (B, H) carried; they end as dL/dh0 and dL/dc0 */
    FR_FN(init_state)(dh, dh_n, B * H);
    FR_FN(init_state)(dc, dc_n, B * H);
    for (ptrdiff_t t = T - 1; t >= 0; t--) {
        real *dG_t = dG + t * B * G;
        const real *c_prev = t > 0 ? s.c + (t - 1) * B * H : c0;
        lstm_step_backward(dG_t, dh, dc, dy ? dy + t * B * H : NULL, s.gates + t * B * G,
                           s.tanh_c + t * B * H, c_prev, lengths, t, B, H);
        FR_FN(gemm)(0, 0, B, H, G, 1, dG_t, G, w_hh, H, 1, dh, H); /* dh += dG_t w_hh */
    }
    FR_FN(input_grads)(dx, dw_ih, db_ih, dG, x, w_ih, T * B, I, G);
    FR_FN(hidden_grads)(dw_hh, db_hh, dG, G, h0, y, T, B, H, G);
    free(dG);
    return FR_OK;
}
