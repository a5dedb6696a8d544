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

/* The cell's math for `units` hidden units of one row, fused behind the recurrent product.
 * acc holds the product of those units, gate g at acc[g * gate_stride + j]; pre (4H, offset
 * to the first unit) what is added to it (the row of the input projection with both biases,
 * or the biases alone when the projection is inside the product). c (the carried cell
 * state) is updated; h_next and y get h_t; when `save`, gates (4H, offset like pre, a buffer
 * of its own) gets the activated gates and c_save, tanh_c_save get c_t and tanh(c_t).
 * `save` is a constant where this is inlined, and no two pointers alias, so each variant
 * vectorizes (an in-place pre/gates kept the saving variant scalar: half the speed). */
static FR_ALWAYS_INLINE void lstm_units_forward(const real *restrict acc, ptrdiff_t gate_stride,
                                                const real *restrict pre,
                                                real *restrict gates,
                                                real *restrict c, real *restrict h_next,
                                                real *restrict y, real *restrict c_save,
                                                real *restrict tanh_c_save, ptrdiff_t units,
                                                ptrdiff_t H, const int save) {
    const real *restrict ai = acc, *restrict af = acc + gate_stride;
    const real *restrict ag = acc + 2 * gate_stride, *restrict ao = acc + 3 * gate_stride;
    for (ptrdiff_t j = 0; j < units; j++) {
        real i = fr_sigmoid(ai[j] + pre[j]), f = fr_sigmoid(af[j] + pre[H + j]);
        real g = fr_tanh(ag[j] + pre[2 * H + j]), o = fr_sigmoid(ao[j] + pre[3 * H + j]);
        real c_new = f * c[j] + i * g;
        real tc = fr_tanh(c_new);
        c[j] = c_new;
        h_next[j] = y[j] = o * tc;
        if (save) {
            gates[j] = i;
            gates[H + j] = f;
            gates[2 * H + j] = g;
            gates[3 * H + j] = o;
            c_save[j] = c_new;
            tanh_c_save[j] = tc;
        }
    }
}

/* One step of the forward time loop, as the recurrent product's epilogue sees it. */
typedef struct {
    real *y_t, *h_next;     /* (B, H) written */
    const real *h_prev;     /* (B, H) */
    real *c;                /* (B, H) carried cell state, updated */
    const real *proj_t;     /* (B, 4H) input projection with both biases, unless fused */
    real *gates_t;          /* (B, 4H) saved activated gates, or NULL (inference) */
    real *c_t, *tanh_c_t;   /* (B, H) saved c_t and tanh(c_t), or NULL (inference) */
    const fr_input *in;     /* what each row adds to the product (input_addend) */
    const int64_t *lengths;
    ptrdiff_t t, H;
} lstm_step;

/* Rows past their length keep their state (h and c) and output zeros. */
static void lstm_epilogue(void *ctx, const real *acc, ptrdiff_t acc_ld, ptrdiff_t gate_stride,
                          ptrdiff_t row0, ptrdiff_t rows, ptrdiff_t unit0, ptrdiff_t units) {
    const lstm_step *s = ctx;
    const ptrdiff_t H = s->H;
    for (ptrdiff_t i = 0; i < rows; i++) {
        ptrdiff_t b = row0 + i, at = b * H + unit0;
        if (!fr_step_valid(s->lengths, s->t, b)) {
            memcpy(s->h_next + at, s->h_prev + at, (size_t)units * sizeof(real));
            memset(s->y_t + at, 0, (size_t)units * sizeof(real));
            continue;
        }
        const real *pre = FR_FN(input_addend)(s->in, s->proj_t, b) + unit0;
        if (s->gates_t)
            lstm_units_forward(acc + i * acc_ld, gate_stride, pre,
                               s->gates_t + b * 4 * H + unit0, s->c + at, s->h_next + at,
                               s->y_t + at, s->c_t + at, s->tanh_c_t + at, units, H, 1);
        else
            lstm_units_forward(acc + i * acc_ld, gate_stride, pre, NULL, s->c + at,
                               s->h_next + at, s->y_t + at, NULL, NULL, units, H, 0);
    }
}

/* What the forward time loop reads and writes, for any part of it (threads.h). */
typedef struct {
    real *y, *hbuf, *c;     /* (T, B, H); h_{t-1}, h_t alternating in (2, B, H); (B, H) */
    real *proj;             /* (T, B, 4H) or (B, 4H) reused (proj_step 0), or NULL (fused) */
    ptrdiff_t proj_step;    /* B * 4H, or 0 */
    real *gates;            /* (T, B, 4H) saved gates, or NULL (inference) */
    real *c_save, *tc_save; /* (T, B, H) each, or NULL (inference) */
    real *scratch;          /* (B, 4H) for a direct product */
    const fr_input *in;
    const fr_recurrent *rec;
    const int64_t *lengths;
    ptrdiff_t T, B, H;
} lstm_forward_loop;

static void lstm_forward_part(const void *ctx, fr_part part) {
    const lstm_forward_loop *a = ctx;
    const ptrdiff_t B = a->B, H = a->H, BH = B * H;
    for (ptrdiff_t t = 0; t < a->T; t++) {
        real *proj_t = a->proj ? a->proj + t * a->proj_step : NULL;
        lstm_step s = {a->y + t * BH, a->hbuf + ((t + 1) & 1) * BH, a->hbuf + (t & 1) * BH,
                       a->c, proj_t, a->gates ? a->gates + t * B * 4 * H : NULL,
                       a->c_save ? a->c_save + t * BH : NULL,
                       a->tc_save ? a->tc_save + t * BH : NULL, a->in, a->lengths, t, H};
        FR_FN(step_product)(a->in, a->rec, proj_t, t, s.h_prev, H, &part, lstm_epilogue, &s,
                            a->scratch);
        fr_part_sync(&part);
    }
}

int FR_FN(lstm_forward)(real *y, real *h_n, real *c_n, real *saved, const real *x,
                        const real *h0, const real *c0, const real *w_ih, const real *w_hh,
                        const real *b_ih, const real *b_hh, const int64_t *lengths,
                        ptrdiff_t T, ptrdiff_t B, ptrdiff_t I, ptrdiff_t H, const void *pack) {
    const ptrdiff_t G = 4 * H;
    real *hbuf = FR_FN(alloc)(2 * B * H); /* (2, B, H) */
    real *scratch = FR_FN(alloc)(B * G);  /* (B, 4H) */
    real *proj = NULL;                    /* the input projection, unless fused */
    ptrdiff_t proj_step = FR_FN(input_per_step)(B) ? 0 : B * G;
    fr_recurrent rec[2];
    fr_input in = {0};
    int status = FR_ERR_NOMEM;
    if (!hbuf || !scratch ||
        FR_FN(recurrent_setup_cell)(rec, FR_CELL_LSTM, 0, w_hh, H, T, B, pack) != FR_OK)
        goto done;
    if (!FR_FN(input_fusable)(rec, T, B)) {
        proj = FR_FN(alloc)(proj_step ? T * B * G : B * G);
        if (!proj) {
            FR_FN(recurrent_free)(rec);
            goto done;
        }
    }
    if (FR_FN(input_prepare)(&in, proj, x, w_ih, b_ih, b_hh, T, B, I, 4, H, rec, pack) !=
        FR_OK) {
        FR_FN(recurrent_free)(rec);
        goto done;
    }
    lstm_saved s = {NULL, NULL, NULL}; /* inference saves nothing */
    if (saved)
        s = lstm_saved_views(saved, T, B, H);
    FR_FN(init_state)(hbuf, h0, B * H);
    FR_FN(init_state)(c_n, c0, B * H);
    lstm_forward_loop loop = {y,    hbuf,    c_n,   proj, proj_step, s.gates, s.c, s.tanh_c,
                              scratch, &in, rec, lengths, T, B, H};
    fr_run_time_loop(B, FR_FN(recurrent_blocks)(rec), 2.0 * B * H * G, lstm_forward_part, &loop);
    memcpy(h_n, hbuf + (T & 1) * B * H, (size_t)(B * H) * sizeof(real));
    FR_FN(recurrent_free)(rec);
    status = FR_OK;
done:
    FR_FN(input_free)(&in);
    free(proj);
    free(hbuf);
    free(scratch);
    return status;
}

/* One row backward (restrict: the loop vectorizes). dh, dc (H) hold dL/dh_t, dL/dc_t
 * carried from step t+1; on exit dc holds dL/dc_{t-1} and dh is 0, ready for the
 * recurrent GEMM to add dG w_hh. dG (4H) = dL/d[a_i a_f a_g a_o]; c_prev (H) is c_{t-1}. */
static inline void lstm_cell_backward(real *restrict dG, real *restrict dh, real *restrict dc,
                                      const real *restrict dy, const real *restrict gates,
                                      const real *restrict tanh_c,
                                      const real *restrict c_prev, ptrdiff_t H) {
    const real *restrict gi = gates, *restrict gf = gates + H;
    const real *restrict gg = gates + 2 * H, *restrict go = gates + 3 * H;
    for (ptrdiff_t j = 0; j < H; j++) {
        real dh_j = dy[j] + dh[j];
        /* h = o tanh(c);  c = f c_prev + i g */
        real dc_j = dc[j] + dh_j * go[j] * fr_dtanh_from_output(tanh_c[j]);
        dG[3 * H + j] = dh_j * tanh_c[j] * fr_dsigmoid_from_output(go[j]);
        dG[j] = dc_j * gg[j] * fr_dsigmoid_from_output(gi[j]);
        dG[H + j] = dc_j * c_prev[j] * fr_dsigmoid_from_output(gf[j]);
        dG[2 * H + j] = dc_j * gi[j] * fr_dtanh_from_output(gg[j]);
        dc[j] = dc_j * gf[j];
        dh[j] = 0;
    }
}

/* One step backward over the batch. dh, dc (B, H) carried; dG_t (B, 4H) written; rows
 * past their length keep dh and dc and get dG_t = 0. dy_t (B, H) and c_prev (B, H)
 * may be a zero row with stride 0 (no upstream gradient, zero initial cell state). */
static void lstm_step_backward(real *dG_t, real *dh, real *dc, const real *dy_t,
                               ptrdiff_t dy_stride, const real *gates_t, const real *tanh_c_t,
                               const real *c_prev, ptrdiff_t c_prev_stride,
                               const int64_t *lengths, ptrdiff_t t, ptrdiff_t B, ptrdiff_t H) {
    for (ptrdiff_t b = 0; b < B; b++) {
        if (!fr_step_valid(lengths, t, b)) {
            memset(dG_t + b * 4 * H, 0, (size_t)(4 * H) * sizeof(real));
            continue;
        }
        lstm_cell_backward(dG_t + b * 4 * H, dh + b * H, dc + b * H, dy_t + b * dy_stride,
                           gates_t + b * 4 * H, tanh_c_t + b * H, c_prev + b * c_prev_stride,
                           H);
    }
}

/* What the backward time loop reads and writes, for any block of rows. */
typedef struct {
    real *dG, *dh, *dc;                /* (T, B, 4H), carried (B, H), (B, H) */
    const real *dy, *gates, *tanh_c;   /* (T, B, H) or NULL, (T, B, 4H), (T, B, H) */
    const real *c, *c0, *zeros;        /* saved c (T, B, H), c0 (B, H) or NULL, (H) zeros */
    const fr_recurrent *rec;
    const fr_input_grad *dx;           /* dx_t = dG_t w_ih, step by step */
    const int64_t *lengths;
    ptrdiff_t T, B, H;
} lstm_backward_loop;

static void lstm_backward_rows(const void *ctx, fr_rows r) {
    const lstm_backward_loop *a = ctx;
    const ptrdiff_t B = a->B, H = a->H, G = 4 * H;
    real *dh = a->dh + r.b0 * H, *dc = a->dc + r.b0 * H;
    const int64_t *lengths = a->lengths ? a->lengths + r.b0 : NULL;
    for (ptrdiff_t t = a->T - 1; t >= 0; t--) {
        real *dG_t = a->dG + (t * B + r.b0) * G;
        const real *c_prev = t > 0  ? a->c + ((t - 1) * B + r.b0) * H
                             : a->c0 ? a->c0 + r.b0 * H
                                     : a->zeros;
        lstm_step_backward(dG_t, dh, dc, a->dy ? a->dy + (t * B + r.b0) * H : a->zeros,
                           a->dy ? H : 0, a->gates + (t * B + r.b0) * G,
                           a->tanh_c + (t * B + r.b0) * H, c_prev, (t > 0 || a->c0) ? H : 0,
                           lengths, t, r.rows, H);
        FR_FN(recurrent_product)(a->rec, dh, H, dG_t, G, r.rows, 1); /* dh += dG_t w_hh */
        FR_FN(input_grad_step)(a->dx, dG_t, t, r.b0, r.rows);         /* dx_t = dG_t w_ih */
    }
}

int FR_FN(lstm_backward)(real *dx, real *dh0, real *dc0, real *dw_ih, real *dw_hh,
                         real *db_ih, real *db_hh, const real *dy, const real *dh_n,
                         const real *dc_n, const real *saved, const real *y, const real *x,
                         const real *h0, const real *c0, const real *w_ih, const real *w_hh,
                         const int64_t *lengths, ptrdiff_t T, ptrdiff_t B, ptrdiff_t I,
                         ptrdiff_t H, const void *pack) {
    const ptrdiff_t G = 4 * H;
    real *dG = FR_FN(alloc)(T * B * G); /* (T, B, 4H) dL/d pre-activations */
    real *zeros = FR_FN(alloc_zeroed)(H);      /* stands in for a NULL dy or c0 row */
    fr_recurrent rec[2];
    fr_input_grad dx_steps;
    if (!dG || !zeros ||
        FR_FN(recurrent_setup_cell)(rec, FR_CELL_LSTM, 1, w_hh, H, T, B, pack) != FR_OK) {
        free(dG);
        free(zeros);
        return FR_ERR_NOMEM;
    }
    if (FR_FN(input_grad_prepare)(&dx_steps, dx, w_ih, T, B, I, G) != FR_OK) {
        FR_FN(recurrent_free)(rec);
        free(dG);
        free(zeros);
        return FR_ERR_NOMEM;
    }
    lstm_saved s = lstm_saved_views((real *)saved, T, B, H);
    /* dh0, dc0 (B, H) carry dL/dh_t, dL/dc_t back through time and end as dL/dh0, dL/dc0 */
    FR_FN(init_state)(dh0, dh_n, B * H);
    FR_FN(init_state)(dc0, dc_n, B * H);
    lstm_backward_loop loop = {dG, dh0,   dc0, dy,      s.gates, s.tanh_c, s.c,
                               c0, zeros, rec, &dx_steps, lengths, T, B, H};
    fr_for_row_blocks(B, 1, lstm_backward_rows, &loop);
    FR_FN(recurrent_free)(rec);
    FR_FN(input_grad_free)(&dx_steps);
    int status = FR_FN(weight_grads)(NULL, dw_ih, dw_hh, db_ih, db_hh, dG, x, h0, y, w_ih, T,
                                     B, I, H, G);
    free(dG);
    free(zeros);
    return status;
}
