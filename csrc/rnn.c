/* rnn.c - vanilla RNN (tanh or relu), forward over a sequence and its BPTT.
 *
 *   a_t = x_t w_ih^T + b_ih + h_{t-1} w_hh^T + b_hh      (B, H)
 *   h_t = act(a_t),  y_t = h_t                           act = tanh or relu
 *
 * Compiled once per dtype (see real.h). Backward needs only y: the activation's
 * derivative comes from its output (1 - y^2 for tanh, [y > 0] for relu). Recurrent
 * dropout (h_mask (B, H); NULL: none) reads h_{t-1} * h_mask in the product (seq.h).
 */
#include "act.h"
#include "seq.h"

/* One step of the forward time loop, as the recurrent product's epilogue sees it: y_t
 * (B, H) holds the input projection with both biases on entry (unless it is fused into the
 * product: then the epilogue adds the biases) and h_t on exit; h_next (B, H) gets h_t, or
 * h_{t-1} (h_prev) for rows past their length, whose y_t is zero. */
typedef struct {
    real *y_t, *h_next;
    const real *h_prev;
    const fr_input *in;     /* what each row adds to the product (input_addend) */
    real *hm_next;          /* (B, H) h_t * mask, the next product's operand */
    const real *mask;       /* (B, H) recurrent dropout mask, or NULL */
    const int64_t *lengths;
    ptrdiff_t t, H;
    int relu;
} rnn_step;

/* h = act(acc + pre) for `units` units of one row, into y and h_next; pre is the row's
 * input projection (y itself) or the biases. */
static FR_ALWAYS_INLINE void rnn_units_forward(const real *restrict acc, const real *pre, real *y,
                                     real *restrict h_next, int relu, ptrdiff_t units) {
    for (ptrdiff_t j = 0; j < units; j += FR_VLEN) {
        const ptrdiff_t n = fr_vlanes(units, j);
        fr_vec a = fr_vload(acc + j, n) + fr_vload(pre + j, n);
        fr_vec h = relu ? fr_vrelu(a) : fr_vtanh(a);
        fr_vstore(h_next + j, h, n);
        fr_vstore(y + j, h, n);
    }
}

static FR_ALWAYS_INLINE void rnn_rows_forward(const rnn_step *s, const real *acc,
                                              ptrdiff_t acc_ld, ptrdiff_t row0, ptrdiff_t rows,
                                              ptrdiff_t unit0, ptrdiff_t units) {
    for (ptrdiff_t i = 0; i < rows; i++) {
        ptrdiff_t b = row0 + i, at = b * s->H + unit0;
        if (fr_step_valid(s->lengths, s->t, b))
            rnn_units_forward(acc + i * acc_ld, FR_FN(input_addend)(s->in, s->y_t, b) + unit0,
                              s->y_t + at, s->h_next + at, s->relu, units);
        else {
            memcpy(s->h_next + at, s->h_prev + at, (size_t)units * sizeof(real));
            memset(s->y_t + at, 0, (size_t)units * sizeof(real));
        }
        if (s->mask)
            FR_FN(mask_units)(s->hm_next + at, s->h_next + at, s->mask + at, units);
    }
}

/* The epilogue, with units a constant when it is a whole block (4 vectors: every block
 * but the tail of H): straight-line vector code per row. */
static void rnn_epilogue(void *ctx, const real *acc, ptrdiff_t acc_ld, ptrdiff_t gate_stride,
                         ptrdiff_t row0, ptrdiff_t rows, ptrdiff_t unit0, ptrdiff_t units) {
    if (units == 4 * FR_VLEN)
        rnn_rows_forward(ctx, acc, acc_ld, row0, rows, unit0, 4 * FR_VLEN);
    else
        rnn_rows_forward(ctx, acc, acc_ld, row0, rows, unit0, units);
}

/* What the forward time loop reads and writes, for any part of it (threads.h). */
typedef struct {
    real *y, *hbuf, *scratch; /* (T, B, H); h_{t-1}, h_t alternating (2, B, H); (B, H) */
    real *hmbuf;              /* (2, B, H) as hbuf, times mask; NULL without a mask */
    const real *mask;         /* (B, H) or NULL */
    const fr_input *in;
    const fr_recurrent *rec;
    const int64_t *lengths;
    int relu;
    ptrdiff_t T, B, H;
} rnn_forward_loop;

static void rnn_forward_part(const void *ctx, fr_part part) {
    const rnn_forward_loop *a = ctx;
    const ptrdiff_t BH = a->B * a->H;
    for (ptrdiff_t t = 0; t < a->T; t++) {
        fr_part_step(&part, t);
        rnn_step s = {a->y + t * BH, a->hbuf + ((t + 1) & 1) * BH, a->hbuf + (t & 1) * BH,
                      a->in, a->mask ? a->hmbuf + ((t + 1) & 1) * BH : NULL, a->mask,
                      a->lengths, t, a->H, a->relu};
        const real *operand = a->mask ? a->hmbuf + (t & 1) * BH : s.h_prev;
        FR_FN(step_product)(a->in, a->rec, s.y_t, t, operand, a->H, &part, rnn_epilogue, &s,
                            a->scratch);
        fr_part_sync(&part);
    }
}

int FR_FN(rnn_forward)(real *y, real *h_n, const real *x, const real *h0, const real *w_ih,
                       const real *w_hh, const real *b_ih, const real *b_hh,
                       const int64_t *lengths, const real *h_mask, int relu, ptrdiff_t T,
                       ptrdiff_t B, ptrdiff_t I, ptrdiff_t H, const void *pack) {
    /* The pre-activations of step t are built in y[t] and activated in place. */
    real *hbuf = FR_FN(alloc)(2 * B * H), *scratch = FR_FN(alloc)(B * H);
    real *hmbuf = h_mask ? FR_FN(alloc)(2 * B * H) : NULL; /* (2, B, H) */
    fr_recurrent rec[2];
    fr_input in = {0};
    int status = FR_ERR_NOMEM;
    if (!hbuf || !scratch || (h_mask && !hmbuf) ||
        FR_FN(recurrent_setup_cell)(rec, FR_CELL_RNN, 0, w_hh, H, T, B, pack) != FR_OK)
        goto done;
    if (FR_FN(input_prepare)(&in, y, x, w_ih, b_ih, b_hh, T, B, I, 1, H, rec, pack) !=
        FR_OK) {
        FR_FN(recurrent_free)(rec);
        goto done;
    }
    FR_FN(init_state)(hbuf, h0, B * H);
    if (h_mask)
        FR_FN(mask_state)(hmbuf, h0, h_mask, B * H);
    rnn_forward_loop loop = {y, hbuf, scratch, hmbuf, h_mask, &in, rec, lengths, relu, T, B, H};
    fr_run_time_loop(B, FR_FN(recurrent_blocks)(rec), 2.0 * B * H * H, rnn_forward_part, &loop);
    memcpy(h_n, hbuf + (T & 1) * B * H, (size_t)(B * H) * sizeof(real));
    FR_FN(recurrent_free)(rec);
    status = FR_OK;
done:
    FR_FN(input_free)(&in);
    free(hbuf);
    free(hmbuf);
    free(scratch);
    return status;
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
    real *dG, *dh;                /* (steps, B, H) the chunk's, carried (B, H) */
    const real *dy, *y, *zeros;   /* (T, B, H) or NULL, (T, B, H), (H) zeros */
    const real *mask;             /* (B, H) recurrent dropout mask, or NULL */
    real *tmp;                    /* (B, H) workspace of the masked product */
    const fr_recurrent *rec;
    const fr_input_grad *dx;      /* dx_t = dG_t w_ih, step by step */
    const int64_t *lengths;
    int relu;
    ptrdiff_t t_lo, t_hi, B, H;   /* the chunk's steps [t_lo, t_hi), run newest first */
} rnn_backward_loop;

static void rnn_backward_rows(const void *ctx, fr_rows r) {
    const rnn_backward_loop *a = ctx;
    const ptrdiff_t B = a->B, H = a->H;
    real *dh = a->dh + r.b0 * H;
    const int64_t *lengths = a->lengths ? a->lengths + r.b0 : NULL;
    for (ptrdiff_t t = a->t_hi - 1; t >= a->t_lo; t--) {
        real *dG_t = a->dG + ((t - a->t_lo) * B + r.b0) * H;
        rnn_step_backward(dG_t, dh, a->dy ? a->dy + (t * B + r.b0) * H : a->zeros,
                          a->dy ? H : 0, a->y + (t * B + r.b0) * H, lengths, a->relu, t,
                          r.rows, H);
        /* dh += (dG_t w_hh) [* mask] */
        FR_FN(recurrent_product_masked)(a->rec, dh, dG_t, H, r.rows,
                                        a->mask ? a->mask + r.b0 * H : NULL, a->tmp + r.b0 * H);
        FR_FN(input_grad_step)(a->dx, dG_t, t, r.b0, r.rows); /* dx_t = dG_t w_ih */
    }
}

int FR_FN(rnn_backward)(real *dx, real *dh0, real *dw_ih, real *dw_hh, real *db_ih,
                        real *db_hh, const real *dy, const real *dh_n, const real *y,
                        const real *x, const real *h0, const real *w_ih, const real *w_hh,
                        const int64_t *lengths, const real *h_mask, int relu, ptrdiff_t T,
                        ptrdiff_t B, ptrdiff_t I, ptrdiff_t H, const void *pack) {
    const ptrdiff_t steps = FR_FN(grad_chunk_steps)(T, B);
    real *dG = FR_FN(alloc)(steps * B * H);         /* (steps, B, H) dL/da_t of a chunk */
    real *zeros = FR_FN(alloc_zeroed)(H);            /* stands in for a NULL dy row */
    real *tmp = h_mask ? FR_FN(alloc)(B * H) : NULL; /* (B, H) */
    real *hm = h_mask ? FR_FN(alloc)(steps * B * H) : NULL; /* (steps, B, H) h_{t-1} * mask */
    fr_recurrent rec[2];
    fr_input_grad dx_steps;
    if (!dG || !zeros || (h_mask && (!tmp || !hm)) ||
        FR_FN(recurrent_setup_cell)(rec, FR_CELL_RNN, 1, w_hh, H, T, B, pack) != FR_OK) {
        free(dG);
        free(zeros);
        free(tmp);
        free(hm);
        return FR_ERR_NOMEM;
    }
    if (FR_FN(input_grad_prepare)(&dx_steps, dx, w_ih, T, B, I, H) != FR_OK) {
        FR_FN(recurrent_free)(rec);
        free(dG);
        free(zeros);
        free(tmp);
        free(hm);
        return FR_ERR_NOMEM;
    }
    /* dh0 (B, H) carries dL/dh_t back through time and ends as dL/dh0 */
    FR_FN(init_state)(dh0, dh_n, B * H);
    rnn_backward_loop loop = {dG,      dh0,  dy, y, zeros, h_mask, tmp, rec, &dx_steps,
                              lengths, relu, 0,  T, B,     H};
    for (ptrdiff_t t_hi = T; t_hi > 0; t_hi = loop.t_lo) {
        ptrdiff_t t0 = fr_chunk_first(t_hi, steps);
        loop.t_lo = t0;
        loop.t_hi = t_hi;
        fr_for_row_blocks(B, 1, rnn_backward_rows, &loop);
        FR_FN(weight_grads)(dw_ih, dw_hh, db_ih, db_hh, dG, x + t0 * B * I,
                            t0 > 0 ? y + (t0 - 1) * B * H : h0, y + t0 * B * H, h_mask, hm,
                            t_hi - t0, B, I, H, H);
    }
    FR_FN(recurrent_free)(rec);
    FR_FN(input_grad_free)(&dx_steps);
    free(dG);
    free(zeros);
    free(tmp);
    free(hm);
    return FR_OK;
}
