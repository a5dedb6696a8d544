/* gru.c - GRU forward over a sequence and its BPTT (PyTorch gate order r, z, n).
 *
 *   [xr xz xn] = x_t w_ih^T + b_ih                                       (B, 3H)
 *   reset_after (PyTorch, cuDNN; Keras reset_after=True):
 *     [hr hz hn] = h_{t-1} w_hh^T + b_hh
 *     r = sigma(xr + hr)  z = sigma(xz + hz)  n = tanh(xn + r * hn)
 *   reset before (Keras reset_after=False, ONNX linear_before_reset=0):
 *     [hr hz] = h_{t-1} w_hh[r,z]^T + b_hh[r,z];  r, z as above
 *     n = tanh(xn + (r * h_{t-1}) w_hh[n]^T + b_hh[n])
 *   h_t = (1 - z) * n + z * h_{t-1},  y_t = h_t
 *
 * Training forward saves the activated gates r, z, n (B, 3H) and one more (B, H)
 * per step: hn (reset_after) or r * h_{t-1} (reset before).
 * Compiled once per dtype (see real.h).
 */
#include "act.h"
#include "seq.h"

/* Views of the saved block: gates (T, B, 3H), then extra (T, B, H). */
typedef struct {
    real *gates, *extra;
} gru_saved;

static gru_saved gru_saved_views(real *saved, ptrdiff_t T, ptrdiff_t B, ptrdiff_t H) {
    gru_saved s = {saved, saved + T * B * 3 * H};
    return s;
}

/* r and z for one row: gates (3H) holds xr, xz on entry and r, z on exit. */
static inline void gru_reset_update(real *gates, const real *hg, ptrdiff_t H) {
    for (ptrdiff_t j = 0; j < 2 * H; j++)
        gates[j] = fr_sigmoid(gates[j] + hg[j]);
}

/* n and the new state for one row: gates (3H) holds r, z, xn on entry and r, z, n on
 * exit; hn_pre (H) is what enters n besides xn: r * hn (reset_after) or the already
 * projected (r h) w_hh[n]^T + b_hn; h (H) is updated in place, y (H) gets it. */
static inline void gru_new_state(real *gates, real *h, real *y, const real *hn,
                                 int reset_after, ptrdiff_t H) {
    const real *r = gates, *z = gates + H;
    real *n = gates + 2 * H;
    for (ptrdiff_t j = 0; j < H; j++) {
        n[j] = fr_tanh(n[j] + (reset_after ? r[j] * hn[j] : hn[j]));
        h[j] = y[j] = ((real)1 - z[j]) * n[j] + z[j] * h[j];
    }
}

/* Forward workspaces: hg (B, 3H) = recurrent projection of the current step; for the
 * reset-before variant rh (B, H) = r * h_{t-1} when not saving. */
typedef struct {
    real *hg, *rh;
} gru_work;

static void gru_step_reset_after(real *y_t, real *h, real *gates_t, real *hn_t,
                                 gru_work w, const real *w_hh, const real *b_hh,
                                 const int64_t *lengths, ptrdiff_t t, ptrdiff_t B,
                                 ptrdiff_t H) {
    const ptrdiff_t G = 3 * H;
    FR_FN(fill_bias_rows)(w.hg, b_hh, NULL, B, G);
    FR_FN(gemm)(0, 1, B, G, H, 1, h, H, w_hh, H, 1, w.hg, G); /* hg = h w_hh^T + b_hh */
    for (ptrdiff_t b = 0; b < B; b++) {
        if (!fr_step_valid(lengths, t, b)) {
            memset(y_t + b * H, 0, (size_t)H * sizeof(real));
            continue;
        }
        const real *hn = w.hg + b * G + 2 * H;
        gru_reset_update(gates_t + b * G, w.hg + b * G, H);
        if (hn_t)
            memcpy(hn_t + b * H, hn, (size_t)H * sizeof(real));
        gru_new_state(gates_t + b * G, h + b * H, y_t + b * H, hn, 1, H);
    }
}

static void gru_step_reset_before(real *y_t, real *h, real *gates_t, real *rh_t,
                                  gru_work w, const real *w_hh, const real *b_hh,
                                  const int64_t *lengths, ptrdiff_t t, ptrdiff_t B,
                                  ptrdiff_t H) {
    const ptrdiff_t G = 3 * H;
    real *rh = rh_t ? rh_t : w.rh; /* (B, H) */
    FR_FN(fill_bias_rows)(w.hg, b_hh, NULL, B, G);
    FR_FN(gemm)(0, 1, B, 2 * H, H, 1, h, H, w_hh, H, 1, w.hg, G); /* [hr hz] */
    for (ptrdiff_t b = 0; b < B; b++) {
        real *r = gates_t + b * G;
        gru_reset_update(r, w.hg + b * G, H);
        for (ptrdiff_t j = 0; j < H; j++)
            rh[b * H + j] = r[j] * h[b * H + j];
    }
    /* hg[n] = (r h) w_hh[n]^T + b_hn */
    FR_FN(gemm)(0, 1, B, H, H, 1, rh, H, w_hh + 2 * H * H, H, 1, w.hg + 2 * H, G);
    for (ptrdiff_t b = 0; b < B; b++) {
        if (!fr_step_valid(lengths, t, b)) {
            memset(y_t + b * H, 0, (size_t)H * sizeof(real));
            continue;
        }
        gru_new_state(gates_t + b * G, h + b * H, y_t + b * H, w.hg + b * G + 2 * H, 0, H);
    }
}

int FR_FN(gru_forward)(real *y, real *h_n, real *saved, const real *x, const real *h0,
                       const real *w_ih, const real *w_hh, const real *b_ih,
                       const real *b_hh, const int64_t *lengths, int reset_after,
                       ptrdiff_t T, ptrdiff_t B, ptrdiff_t I, ptrdiff_t H) {
    const ptrdiff_t G = 3 * H;
    real *gates = saved ? saved : FR_FN(alloc_zeroed)(T * B * G); /* (T, B, 3H) */
    gru_work w = {FR_FN(alloc_zeroed)(B * G), FR_FN(alloc_zeroed)(B * H)};
    int status = FR_OK;
    if (!gates || !w.hg || !w.rh) {
        status = FR_ERR_NOMEM;
        goto done;
    }
    gru_saved s = gru_saved_views(gates, T, B, H);
    FR_FN(input_projection)(gates, x, w_ih, b_ih, NULL, T * B, I, G);
    FR_FN(init_state)(h_n, h0, B * H);
    for (ptrdiff_t t = 0; t < T; t++) {
        real *extra_t = saved ? s.extra + t * B * H : NULL;
        if (reset_after)
            gru_step_reset_after(y + t * B * H, h_n, gates + t * B * G, extra_t, w, w_hh,
                                 b_hh, lengths, t, B, H);
        else
            gru_step_reset_before(y + t * B * H, h_n, gates + t * B * G, extra_t, w, w_hh,
                                  b_hh, lengths, t, B, H);
    }
done:
    if (!saved)
        free(gates);
    free(w.hg);
    free(w.rh);
    return status;
}

/* Backward of h_t = (1 - z) n + z h_{t-1} and n = tanh(...) for one row: writes
 * dz_pre and dn_pre (dL/d of the pre-activations of z and n) and returns nothing;
 * dh (H) holds dL/dh_t on entry and the direct part dL/dh_t * z on exit. */
static inline void gru_update_backward(real *dGz, real *dGn, real *dh, const real *dy,
                                       const real *z, const real *n, const real *h_prev,
                                       ptrdiff_t H) {
    for (ptrdiff_t j = 0; j < H; j++) {
        real dh_j = fr_upstream(dy, j) + dh[j];
        real h_prev_j = h_prev ? h_prev[j] : (real)0;
        dGn[j] = dh_j * ((real)1 - z[j]) * fr_dtanh_from_output(n[j]);
        dGz[j] = dh_j * (h_prev_j - n[j]) * fr_dsigmoid_from_output(z[j]);
        dh[j] = dh_j * z[j];
    }
}

/* Backward workspaces: dGh (T, B, 3H) = dL/d[hr hz hn] (reset_after only, where it
 * differs from dG in its n block); drh (B, H) = dL/d(r h_{t-1}) (reset before only). */
typedef struct {
    real *dGh, *drh;
} gru_back_work;

/* reset_after: n = tanh(xn + r hn). dG_t, dGh_t (B, 3H); dh (B, H) carried. */
static void gru_step_backward_reset_after(real *dG_t, real *dGh_t, real *dh, const real *dy_t,
                                          const real *gates_t, const real *hn_t,
                                          const real *h_prev, const real *w_hh,
                                          const int64_t *lengths, ptrdiff_t t, ptrdiff_t B,
                                          ptrdiff_t H) {
    const ptrdiff_t G = 3 * H;
    for (ptrdiff_t b = 0; b < B; b++) {
        real *dGr = dG_t + b * G, *dGz = dGr + H, *dGn = dGr + 2 * H, *dGh_row = dGh_t + b * G;
        if (!fr_step_valid(lengths, t, b)) {
            memset(dGr, 0, (size_t)G * sizeof(real));
            memset(dGh_row, 0, (size_t)G * sizeof(real));
            continue;
        }
        const real *r = gates_t + b * G, *z = r + H, *n = r + 2 * H, *hn = hn_t + b * H;
        gru_update_backward(dGz, dGn, dh + b * H, dy_t ? dy_t + b * H : NULL, z, n,
                            h_prev ? h_prev + b * H : NULL, H);
        for (ptrdiff_t j = 0; j < H; j++) {
            dGr[j] = dGn[j] * hn[j] * fr_dsigmoid_from_output(r[j]);
            dGh_row[j] = dGr[j];
            dGh_row[H + j] = dGz[j];
            dGh_row[2 * H + j] = dGn[j] * r[j];
        }
    }
    FR_FN(gemm)(0, 0, B, H, G, 1, dGh_t, G, w_hh, H, 1, dh, H); /* dh += dGh_t w_hh */
}

/* reset before: n = tanh(xn + (r h) w_hh[n]^T + b_hn). dG_t (B, 3H); dh (B, H). */
static void gru_step_backward_reset_before(real *dG_t, real *drh, real *dh, const real *dy_t,
                                           const real *gates_t, const real *h_prev,
                                           const real *w_hh, const int64_t *lengths,
                                           ptrdiff_t t, ptrdiff_t B, ptrdiff_t H) {
    const ptrdiff_t G = 3 * H;
    for (ptrdiff_t b = 0; b < B; b++) {
        real *dGr = dG_t + b * G;
        if (!fr_step_valid(lengths, t, b)) {
            memset(dGr, 0, (size_t)G * sizeof(real));
            continue;
        }
        const real *z = gates_t + b * G + H, *n = z + H;
        gru_update_backward(dGr + H, dGr + 2 * H, dh + b * H, dy_t ? dy_t + b * H : NULL, z,
                            n, h_prev ? h_prev + b * H : NULL, H);
    }
    /* drh (B, H) = dGn (B, H) w_hh[n] (H, H) */
    FR_FN(gemm)(0, 0, B, H, H, 1, dG_t + 2 * H, G, w_hh + 2 * H * H, H, 0, drh, H);
    for (ptrdiff_t b = 0; b < B; b++) {
        if (!fr_step_valid(lengths, t, b))
            continue;
        real *dGr = dG_t + b * G, *dh_row = dh + b * H;
        const real *r = gates_t + b * G, *drh_row = drh + b * H;
        for (ptrdiff_t j = 0; j < H; j++) {
            real h_prev_j = h_prev ? h_prev[b * H + j] : (real)0;
            dGr[j] = drh_row[j] * h_prev_j * fr_dsigmoid_from_output(r[j]);
            dh_row[j] += drh_row[j] * r[j];
        }
    }
    /* dh += [dGr dGz] (B, 2H) w_hh[r, z] (2H, H) */
    FR_FN(gemm)(0, 0, B, H, 2 * H, 1, dG_t, G, w_hh, H, 1, dh, H);
}

int FR_FN(gru_backward)(real *dx, real *dh0, real *dw_ih, real *dw_hh, real *db_ih,
                        real *db_hh, const real *dy, const real *dh_n, const real *saved,
                        const real *y, const real *x, const real *h0, const real *w_ih,
                        const real *w_hh, const int64_t *lengths, int reset_after,
                        ptrdiff_t T, ptrdiff_t B, ptrdiff_t I, ptrdiff_t H) {
    const ptrdiff_t G = 3 * H;
    real *dG = FR_FN(alloc_zeroed)(T * B * G); /* (T, B, 3H) dL/d[xr xz xn] */
    gru_back_work w = {reset_after ? FR_FN(alloc_zeroed)(T * B * G) : NULL,
                       reset_after ? NULL : FR_FN(alloc_zeroed)(B * H)};
    if (!dG || (reset_after ? !w.dGh : !w.drh)) {
        free(dG);
        free(w.dGh);
        free(w.drh);
        return FR_ERR_NOMEM;
    }
    gru_saved s = gru_saved_views((real *)saved, T, B, H);
    real *dh = dh0; /* (B, H) carried; ends as dL/dh0 */
    FR_FN(init_state)(dh, dh_n, B * H);
    for (ptrdiff_t t = T - 1; t >= 0; t--) {
        const real *h_prev = t > 0 ? y + (t - 1) * B * H : h0;
        const real *dy_t = dy ? dy + t * B * H : NULL, *gates_t = s.gates + t * B * G;
        if (reset_after)
            gru_step_backward_reset_after(dG + t * B * G, w.dGh + t * B * G, dh, dy_t, gates_t,
                                          s.extra + t * B * H, h_prev, w_hh, lengths, t, B, H);
        else
            gru_step_backward_reset_before(dG + t * B * G, w.drh, dh, dy_t, gates_t, h_prev,
                                           w_hh, lengths, t, B, H);
    }
    FR_FN(input_grads)(dx, dw_ih, db_ih, dG, x, w_ih, T * B, I, G);
    if (reset_after) {
        FR_FN(hidden_grads)(dw_hh, db_hh, w.dGh, G, h0, y, T, B, H, G);
    } else {
        /* r and z see h_{t-1}; n sees r * h_{t-1}, saved for every step t. */
        FR_FN(hidden_grads)(dw_hh, db_hh, dG, G, h0, y, T, B, H, 2 * H);
        FR_FN(hidden_grads)(dw_hh + 2 * H * H, db_hh ? db_hh + 2 * H : NULL, dG + 2 * H, G,
                            s.extra, s.extra + B * H, T, B, H, H);
    }
    free(dG);
    free(w.dGh);
    free(w.drh);
    return FR_OK;
}
