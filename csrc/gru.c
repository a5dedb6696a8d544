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
 * Training forward saves the activated gates r, z, n (B, 3H) and one more (B, H) per
 * step: hn (reset_after) or r * h_{t-1} (reset before). Compiled once per dtype and
 * instruction set (see real.h).
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

/* The per-step recurrent products: reset_after needs one over all of w_hh (3H, H);
 * reset before needs one over the r, z rows (2H, H) and one over the n rows (H, H). */
typedef struct {
    fr_recurrent all_or_rz, n;
} gru_recurrent;

static int gru_recurrent_init(gru_recurrent *rec, const real *w_hh, int reset_after,
                              int forward, ptrdiff_t T, ptrdiff_t B, ptrdiff_t H) {
    /* forward: h (B, H) . w^T;  backward: dG (B, rows) . w */
    ptrdiff_t rows = reset_after ? 3 * H : 2 * H;
    rec->n.panel = NULL;
    if (FR_FN(recurrent_init)(&rec->all_or_rz, w_hh, forward ? H : rows, forward ? rows : H,
                              forward, T, B) != FR_OK)
        return FR_ERR_NOMEM;
    if (!reset_after &&
        FR_FN(recurrent_init)(&rec->n, w_hh + 2 * H * H, H, H, forward, T, B) != FR_OK) {
        FR_FN(recurrent_free)(&rec->all_or_rz);
        return FR_ERR_NOMEM;
    }
    return FR_OK;
}

static void gru_recurrent_free(gru_recurrent *rec) {
    FR_FN(recurrent_free)(&rec->all_or_rz);
    FR_FN(recurrent_free)(&rec->n);
}

/* r and z for one row: gates (2H of 3H) hold xr, xz on entry and r, z on exit. */
static inline void gru_cell_reset_update(real *restrict gates, const real *restrict hg,
                                         ptrdiff_t H) {
    for (ptrdiff_t j = 0; j < 2 * H; j++)
        gates[j] = fr_sigmoid(gates[j] + hg[j]);
}

/* n and the new state for one row: gates (3H) hold r, z, xn on entry and r, z, n on
 * exit; hn (H) is the recurrent part of n: r * hn (reset_after) or hn itself (already
 * (r h) w_hh[n]^T + b_hn); h (H) is updated in place and y (H) gets it. */
static inline void gru_cell_new_state(real *restrict gates, real *restrict h, real *restrict y,
                                      const real *restrict hn, int reset_after, ptrdiff_t H) {
    const real *restrict r = gates, *restrict z = gates + H;
    real *restrict n = gates + 2 * H;
    for (ptrdiff_t j = 0; j < H; j++) {
        real n_j = fr_tanh(n[j] + (reset_after ? r[j] * hn[j] : hn[j]));
        n[j] = n_j;
        h[j] = y[j] = ((real)1 - z[j]) * n_j + z[j] * h[j];
    }
}

/* One forward step. gates_t (B, 3H) holds [xr xz xn] on entry, the activated gates on
 * exit; h (B, H) is the carried state; hg (B, 3H) workspace for the recurrent
 * projections; extra_t (B, H) gets hn or r h (a workspace when not training). */
static void gru_step_forward(real *y_t, real *h, real *gates_t, real *extra_t, real *hg,
                             const gru_recurrent *rec, const real *b_hh, int reset_after,
                             const int64_t *lengths, ptrdiff_t t, ptrdiff_t B, ptrdiff_t H) {
    const ptrdiff_t G = 3 * H;
    FR_FN(fill_bias_rows)(hg, b_hh, NULL, B, G);
    FR_FN(recurrent_product)(&rec->all_or_rz, hg, G, h, H, B, 1); /* hg += h w^T */
    if (!reset_after) {
        for (ptrdiff_t b = 0; b < B; b++) {
            gru_cell_reset_update(gates_t + b * G, hg + b * G, H);
            for (ptrdiff_t j = 0; j < H; j++) /* r h */
                extra_t[b * H + j] = gates_t[b * G + j] * h[b * H + j];
        }
        FR_FN(recurrent_product)(&rec->n, hg + 2 * H, G, extra_t, H, B, 1);
    }
    for (ptrdiff_t b = 0; b < B; b++) {
        if (!fr_step_valid(lengths, t, b)) {
            memset(y_t + b * H, 0, (size_t)H * sizeof(real));
            continue;
        }
        const real *hn = hg + b * G + 2 * H;
        if (reset_after) {
            gru_cell_reset_update(gates_t + b * G, hg + b * G, H);
            memcpy(extra_t + b * H, hn, (size_t)H * sizeof(real));
        }
        gru_cell_new_state(gates_t + b * G, h + b * H, y_t + b * H, hn, reset_after, H);
    }
}

/* What the forward time loop reads and writes, for any block of rows (threads.h). */
typedef struct {
    real *y, *h, *gates; /* (T, B, H), carried (B, H), (T, B, 3H) */
    real *extra;         /* (T, B, H) saved, or a (B, H) workspace when extra_step == 0 */
    real *hg;            /* (B, 3H) workspace */
    ptrdiff_t extra_step;
    const gru_recurrent *rec;
    const real *b_hh;
    const int64_t *lengths;
    int reset_after;
    ptrdiff_t T, B, H;
} gru_forward_loop;

static void gru_forward_rows(const void *ctx, fr_rows r) {
    const gru_forward_loop *a = ctx;
    const ptrdiff_t B = a->B, H = a->H, G = 3 * H;
    const int64_t *lengths = a->lengths ? a->lengths + r.b0 : NULL;
    for (ptrdiff_t t = 0; t < a->T; t++)
        gru_step_forward(a->y + (t * B + r.b0) * H, a->h + r.b0 * H,
                         a->gates + (t * B + r.b0) * G, a->extra + t * a->extra_step + r.b0 * H,
                         a->hg + r.b0 * G, a->rec, a->b_hh, a->reset_after, lengths, t, r.rows,
                         H);
}

int FR_FN(gru_forward)(real *y, real *h_n, real *saved, const real *x, const real *h0,
                       const real *w_ih, const real *w_hh, const real *b_ih,
                       const real *b_hh, const int64_t *lengths, int reset_after,
                       ptrdiff_t T, ptrdiff_t B, ptrdiff_t I, ptrdiff_t H) {
    const ptrdiff_t G = 3 * H;
    real *gates = saved ? saved : FR_FN(alloc)(T * B * G); /* (T, B, 3H) */
    real *hg = FR_FN(alloc)(B * G);                         /* (B, 3H) */
    real *extra = saved ? NULL : FR_FN(alloc)(B * H);       /* (B, H) unsaved */
    gru_recurrent rec;
    int status = FR_ERR_NOMEM;
    if (!gates || !hg || (!saved && !extra) ||
        gru_recurrent_init(&rec, w_hh, reset_after, 1, T, B, H) != FR_OK)
        goto done;
    gru_saved s = gru_saved_views(gates, T, B, H);
    FR_FN(input_projection)(gates, x, w_ih, b_ih, NULL, T * B, I, G);
    FR_FN(init_state)(h_n, h0, B * H);
    gru_forward_loop loop = {y,       h_n,     gates, saved ? s.extra : extra, hg,
                             saved ? B * H : 0, &rec, b_hh, lengths, reset_after, T, B, H};
    fr_for_row_blocks(B, FR_FN(recurrent_own_kernel)(&rec.all_or_rz), gru_forward_rows, &loop);
    gru_recurrent_free(&rec);
    status = FR_OK;
done:
    if (!saved)
        free(gates);
    free(hg);
    free(extra);
    return status;
}

/* Backward of h_t = (1 - z) n + z h_{t-1} for one row: dGz, dGn (H) get dL/d of the
 * pre-activations of z and n (n's up to the tanh); dh (H) holds dL/dh_t on entry and
 * its direct part dL/dh_t * z on exit. */
static inline void gru_cell_update_backward(real *restrict dGz, real *restrict dGn,
                                            real *restrict dh, const real *restrict dy,
                                            const real *restrict z, const real *restrict n,
                                            const real *restrict h_prev, ptrdiff_t H) {
    for (ptrdiff_t j = 0; j < H; j++) {
        real dh_j = dy[j] + dh[j];
        dGn[j] = dh_j * ((real)1 - z[j]) * fr_dtanh_from_output(n[j]);
        dGz[j] = dh_j * (h_prev[j] - n[j]) * fr_dsigmoid_from_output(z[j]);
        dh[j] = dh_j * z[j];
    }
}

/* reset_after, one row: n = tanh(xn + r hn). dG (3H) = dL/d[xr xz xn]; dGh (3H) =
 * dL/d[hr hz hn] (its n block is dGn * r). */
static inline void gru_cell_backward_after(real *restrict dG, real *restrict dGh,
                                           real *restrict dh, const real *restrict dy,
                                           const real *restrict gates, const real *restrict hn,
                                           const real *restrict h_prev, ptrdiff_t H) {
    const real *restrict r = gates;
    gru_cell_update_backward(dG + H, dG + 2 * H, dh, dy, gates + H, gates + 2 * H, h_prev, H);
    for (ptrdiff_t j = 0; j < H; j++) {
        real dGr = dG[2 * H + j] * hn[j] * fr_dsigmoid_from_output(r[j]);
        dG[j] = dGh[j] = dGr;
        dGh[H + j] = dG[H + j];
        dGh[2 * H + j] = dG[2 * H + j] * r[j];
    }
}

/* Rows and strides of one backward step; dy and h_prev may be a zero row (stride 0). */
typedef struct {
    const real *dy, *h_prev, *gates, *extra;
    ptrdiff_t dy_stride, h_prev_stride;
} gru_step_inputs;

/* reset_after, one step: dG_t (B, 3H) written; dGh (B, 3H) is a workspace for this
 * step's dL/d[hr hz hn], whose n block is kept in dGhn_t (B, H) for dw_hh (its r and z
 * blocks equal dG_t's). */
static void gru_step_backward_after(real *dG_t, real *dGh, real *dGhn_t, real *dh,
                                    gru_step_inputs in, const gru_recurrent *rec,
                                    const int64_t *lengths, ptrdiff_t t, ptrdiff_t B,
                                    ptrdiff_t H) {
    const ptrdiff_t G = 3 * H;
    real *dGh_t = dGh;
    for (ptrdiff_t b = 0; b < B; b++) {
        if (!fr_step_valid(lengths, t, b)) {
            memset(dG_t + b * G, 0, (size_t)G * sizeof(real));
            memset(dGh_t + b * G, 0, (size_t)G * sizeof(real));
            continue;
        }
        gru_cell_backward_after(dG_t + b * G, dGh_t + b * G, dh + b * H, in.dy + b * in.dy_stride,
                                in.gates + b * G, in.extra + b * H,
                                in.h_prev + b * in.h_prev_stride, H);
    }
    FR_FN(recurrent_product)(&rec->all_or_rz, dh, H, dGh_t, G, B, 1); /* dh += dGh w_hh */
    for (ptrdiff_t b = 0; b < B; b++)
        memcpy(dGhn_t + b * H, dGh_t + b * G + 2 * H, (size_t)H * sizeof(real));
}

/* reset before: n = tanh(xn + (r h) w_hh[n]^T + b_hn). drh (B, H) = dL/d(r h) workspace. */
static void gru_step_backward_before(real *dG_t, real *drh, real *dh, gru_step_inputs in,
                                     const gru_recurrent *rec, const int64_t *lengths,
                                     ptrdiff_t t, ptrdiff_t B, ptrdiff_t H) {
    const ptrdiff_t G = 3 * H;
    for (ptrdiff_t b = 0; b < B; b++) {
        if (!fr_step_valid(lengths, t, b)) {
            memset(dG_t + b * G, 0, (size_t)G * sizeof(real));
            continue;
        }
        const real *z = in.gates + b * G + H;
        gru_cell_update_backward(dG_t + b * G + H, dG_t + b * G + 2 * H, dh + b * H,
                                 in.dy + b * in.dy_stride, z, z + H,
                                 in.h_prev + b * in.h_prev_stride, H);
    }
    FR_FN(recurrent_product)(&rec->n, drh, H, dG_t + 2 * H, G, B, 0); /* dGn w_hh[n] */
    for (ptrdiff_t b = 0; b < B; b++) {
        if (!fr_step_valid(lengths, t, b))
            continue;
        real *dGr = dG_t + b * G, *dh_row = dh + b * H;
        const real *r = in.gates + b * G, *drh_row = drh + b * H;
        const real *h_prev = in.h_prev + b * in.h_prev_stride;
        for (ptrdiff_t j = 0; j < H; j++) {
            dGr[j] = drh_row[j] * h_prev[j] * fr_dsigmoid_from_output(r[j]);
            dh_row[j] += drh_row[j] * r[j];
        }
    }
    FR_FN(recurrent_product)(&rec->all_or_rz, dh, H, dG_t, G, B, 1); /* [dGr dGz] w_hh[r,z] */
}

/* What the backward time loop reads and writes, for any block of rows. */
typedef struct {
    real *dG, *dh;   /* (T, B, 3H), carried (B, H) */
    real *dGhn;      /* reset_after: (T, B, H) n block of dL/d[hr hz hn]; else NULL */
    real *work;      /* reset_after: dGh (B, 3H); reset before: drh (B, H) */
    const real *dy, *y, *h0, *zeros, *gates, *extra;
    const gru_recurrent *rec;
    const int64_t *lengths;
    int reset_after;
    ptrdiff_t T, B, H;
} gru_backward_loop;

static void gru_backward_rows(const void *ctx, fr_rows r) {
    const gru_backward_loop *a = ctx;
    const ptrdiff_t B = a->B, H = a->H, G = 3 * H;
    real *dh = a->dh + r.b0 * H;
    const int64_t *lengths = a->lengths ? a->lengths + r.b0 : NULL;
    for (ptrdiff_t t = a->T - 1; t >= 0; t--) {
        ptrdiff_t row = t * B + r.b0; /* first row of this block at step t */
        gru_step_inputs in = {
            a->dy ? a->dy + row * H : a->zeros,
            t > 0 ? a->y + (row - B) * H : a->h0 ? a->h0 + r.b0 * H : a->zeros,
            a->gates + row * G,
            a->extra + row * H,
            a->dy ? H : 0,
            (t > 0 || a->h0) ? H : 0,
        };
        if (a->reset_after)
            gru_step_backward_after(a->dG + row * G, a->work + r.b0 * G, a->dGhn + row * H, dh,
                                    in, a->rec, lengths, t, r.rows, H);
        else
            gru_step_backward_before(a->dG + row * G, a->work + r.b0 * H, dh, in, a->rec,
                                     lengths, t, r.rows, H);
    }
}

int FR_FN(gru_backward)(real *dx, real *dh0, real *dw_ih, real *dw_hh, real *db_ih,
                        real *db_hh, const real *dy, const real *dh_n, const real *saved,
                        const real *y, const real *x, const real *h0, const real *w_ih,
                        const real *w_hh, const int64_t *lengths, int reset_after,
                        ptrdiff_t T, ptrdiff_t B, ptrdiff_t I, ptrdiff_t H) {
    const ptrdiff_t G = 3 * H;
    real *dG = FR_FN(alloc)(T * B * G); /* (T, B, 3H) dL/d[xr xz xn] */
    real *dGhn = reset_after ? FR_FN(alloc)(T * B * H) : NULL; /* (T, B, H) */
    real *work = FR_FN(alloc)(B * (reset_after ? G : H));      /* per step, see the loop */
    real *zeros = FR_FN(alloc_zeroed)(H); /* stands in for a NULL dy or h0 row */
    gru_recurrent rec;
    int status = FR_ERR_NOMEM;
    if (!dG || (reset_after && !dGhn) || !work || !zeros ||
        gru_recurrent_init(&rec, w_hh, reset_after, 0, T, B, H) != FR_OK)
        goto done;
    gru_saved s = gru_saved_views((real *)saved, T, B, H);
    /* dh0 (B, H) carries dL/dh_t back through time and ends as dL/dh0 */
    FR_FN(init_state)(dh0, dh_n, B * H);
    gru_backward_loop loop = {dG, dh0,     dGhn,    work, dy,      y,           h0, zeros,
                              s.gates, s.extra, &rec, lengths, reset_after, T,  B, H};
    fr_for_row_blocks(B, FR_FN(recurrent_own_kernel)(&rec.all_or_rz), gru_backward_rows,
                      &loop);
    FR_FN(input_grads)(dx, dw_ih, db_ih, dG, x, w_ih, T * B, I, G);
    /* r and z: dL/d[hr hz] = dG's r, z blocks, fed by h_{t-1} */
    FR_FN(hidden_grads)(dw_hh, db_hh, dG, G, h0, y, T, B, H, 2 * H);
    if (reset_after) /* n: dL/dhn = dGn * r, fed by h_{t-1} */
        FR_FN(hidden_grads)(dw_hh + 2 * H * H, db_hh ? db_hh + 2 * H : NULL, dGhn, H, h0, y, T,
                            B, H, H);
    else /* n: dL/d(pre-n) = dGn, fed by r * h_{t-1} (saved for every step) */
        FR_FN(hidden_grads)(dw_hh + 2 * H * H, db_hh ? db_hh + 2 * H : NULL, dG + 2 * H, G,
                            s.extra, s.extra + B * H, T, B, H, H);
    gru_recurrent_free(&rec);
    status = FR_OK;
done:
    free(dG);
    free(dGhn);
    free(work);
    free(zeros);
    return status;
}
