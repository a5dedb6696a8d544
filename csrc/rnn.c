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

/* One row of the elementwise pass: y (H) holds a_t on entry and h_t on exit; the
 * carried state h (H) gets h_t too. One loop per activation, so each vectorizes. */
static inline void rnn_cell_forward(real *restrict y, real *restrict h, int relu, ptrdiff_t H) {
    if (relu)
        for (ptrdiff_t j = 0; j < H; j++)
            h[j] = y[j] = fr_relu(y[j]);
    else
        for (ptrdiff_t j = 0; j < H; j++)
            h[j] = y[j] = fr_tanh(y[j]);
}

/* One step of the elementwise pass: y_t (B, H) holds a_t on entry; writes y_t and the
 * carried state h (B, H) for rows inside their sequence, zeros y_t past a length. */
static void rnn_step_forward(real *y_t, real *h, const int64_t *lengths, int relu, ptrdiff_t t,
                             ptrdiff_t B, ptrdiff_t H) {
    for (ptrdiff_t b = 0; b < B; b++) {
        if (fr_step_valid(lengths, t, b))
            rnn_cell_forward(y_t + b * H, h + b * H, relu, H);
        else
            memset(y_t + b * H, 0, (size_t)H * sizeof(real));
    }
}

/* What the forward time loop reads and writes, for any block of rows (threads.h). */
typedef struct {
    real *y, *h; /* (T, B, H), carried (B, H) */
    const fr_recurrent *rec;
    const int64_t *lengths;
    int relu;
    ptrdiff_t T, B, H;
} rnn_forward_loop;

static void rnn_forward_rows(const void *ctx, fr_rows r) {
    const rnn_forward_loop *a = ctx;
    const ptrdiff_t B = a->B, H = a->H;
    real *h = a->h + r.b0 * H;
    const int64_t *lengths = a->lengths ? a->lengths + r.b0 : NULL;
    for (ptrdiff_t t = 0; t < a->T; t++) {
        real *y_t = a->y + (t * B + r.b0) * H;
        FR_FN(recurrent_product)(a->rec, y_t, H, h, H, r.rows, 1); /* a_t += h w_hh^T */
        rnn_step_forward(y_t, h, lengths, a->relu, t, r.rows, H);
    }
}

int FR_FN(rnn_forward)(real *y, real *h_n, const real *x, const real *h0, const real *w_ih,
                       const real *w_hh, const real *b_ih, const real *b_hh,
                       const int64_t *lengths, int relu, ptrdiff_t T, ptrdiff_t B,
                       ptrdiff_t I, ptrdiff_t H) {
    /* The pre-activations of step t are built in y[t] and activated in place; h_n
     * carries the state (it differs from y[t] for rows past their length). */
    fr_recurrent rec;
    if (FR_FN(recurrent_init)(&rec, w_hh, H, H, 1, T, B) != FR_OK)
        return FR_ERR_NOMEM;
    FR_FN(input_projection)(y, x, w_ih, b_ih, b_hh, T * B, I, H);
    FR_FN(init_state)(h_n, h0, B * H);
    rnn_forward_loop loop = {y, h_n, &rec, lengths, relu, T, B, H};
    fr_for_row_blocks(B, FR_FN(recurrent_own_kernel)(&rec), rnn_forward_rows, &loop);
    FR_FN(recurrent_free)(&rec);
    return FR_OK;
}

/* One row backward: dG (H) = dL/da_t from dy (H) and the carried dh (H) = dL/dh_t;
 * then dh = 0, ready for the recurrent GEMM to add dG w_hh. */
static inline void rnn_cell_backward(real *restrict dG, real *restrict dh,
                                     const real *restrict dy, const real *restrict y, int relu,
                                     ptrdiff_t H) {
    if (relu)
        for (ptrdiff_t j = 0; j < H; j++)
            dG[j] = (dy[j] + dh[j]) * fr_drelu_from_output(y[j]);
    else
        for (ptrdiff_t j = 0; j < H; j++)
            dG[j] = (dy[j] + dh[j]) * fr_dtanh_from_output(y[j]);
    memset(dh, 0, (size_t)H * sizeof(real));
}

/* One step backward: dG_t (B, H) written; dh (B, H) carried. Rows past their length
 * keep dh and get dG_t = 0. dy_t may be a zero row with stride 0. */
static void rnn_step_backward(real *dG_t, real *dh, const real *dy_t, ptrdiff_t dy_stride,
                              const real *y_t, const int64_t *lengths, int relu, ptrdiff_t t,
                              ptrdiff_t B, ptrdiff_t H) {
    for (ptrdiff_t b = 0; b < B; b++) {
        if (fr_step_valid(lengths, t, b))
            rnn_cell_backward(dG_t + b * H, dh + b * H, dy_t + b * dy_stride, y_t + b * H,
                              relu, H);
        else
            memset(dG_t + b * H, 0, (size_t)H * sizeof(real));
    }
}

/* What the backward time loop reads and writes, for any block of rows. */
typedef struct {
    real *dG, *dh;                /* (T, B, H), carried (B, H) */
    const real *dy, *y, *zeros;   /* (T, B, H) or NULL, (T, B, H), (H) zeros */
    const fr_recurrent *rec;
    const int64_t *lengths;
    int relu;
    ptrdiff_t T, B, H;
} rnn_backward_loop;

static void rnn_backward_rows(const void *ctx, fr_rows r) {
    const rnn_backward_loop *a = ctx;
    const ptrdiff_t B = a->B, H = a->H;
    real *dh = a->dh + r.b0 * H;
    const int64_t *lengths = a->lengths ? a->lengths + r.b0 : NULL;
    for (ptrdiff_t t = a->T - 1; t >= 0; t--) {
        real *dG_t = a->dG + (t * B + r.b0) * H;
        rnn_step_backward(dG_t, dh, a->dy ? a->dy + (t * B + r.b0) * H : a->zeros,
                          a->dy ? H : 0, a->y + (t * B + r.b0) * H, lengths, a->relu, t,
                          r.rows, H);
        FR_FN(recurrent_product)(a->rec, dh, H, dG_t, H, r.rows, 1); /* dh += dG_t w_hh */
    }
}

int FR_FN(rnn_backward)(real *dx, real *dh0, real *dw_ih, real *dw_hh, real *db_ih,
                        real *db_hh, const real *dy, const real *dh_n, const real *y,
                        const real *x, const real *h0, const real *w_ih, const real *w_hh,
                        const int64_t *lengths, int relu, ptrdiff_t T, ptrdiff_t B,
                        ptrdiff_t I, ptrdiff_t H) {
    real *dG = FR_FN(alloc)(T * B * H); /* (T, B, H) dL/da_t */
    real *zeros = FR_FN(alloc_zeroed)(H);      /* stands in for a NULL dy row */
    fr_recurrent rec;
    if (!dG || !zeros || FR_FN(recurrent_init)(&rec, w_hh, H, H, 0, T, B) != FR_OK) {
        free(dG);
        free(zeros);
        return FR_ERR_NOMEM;
    }
    /* dh0 (B, H) carries dL/dh_t back through time and ends as dL/dh0 */
    FR_FN(init_state)(dh0, dh_n, B * H);
    rnn_backward_loop loop = {dG, dh0, dy, y, zeros, &rec, lengths, relu, T, B, H};
    fr_for_row_blocks(B, FR_FN(recurrent_own_kernel)(&rec), rnn_backward_rows, &loop);
    FR_FN(recurrent_free)(&rec);
    FR_FN(input_grads)(dx, dw_ih, db_ih, dG, x, w_ih, T * B, I, H);
    FR_FN(hidden_grads)(dw_hh, db_hh, dG, H, h0, y, T, B, H, H);
    free(dG);
    free(zeros);
    return FR_OK;
}
