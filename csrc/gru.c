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
 *
 * Recurrent dropout (h_mask (B, H); NULL: none, seq.h): the products read
 * hm = h_{t-1} * h_mask in place of h_{t-1} (reset before: r * hm), while the update
 * h_t = (1 - z) n + z h_{t-1} keeps the state itself.
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

/* The cell (FR_CELL_*) whose packs serve this GRU. */
static int gru_cell(int reset_after) {
    return reset_after ? FR_CELL_GRU : FR_CELL_GRU_RESET_BEFORE;
}

/* One step of the forward time loop, as the recurrent products' epilogues see it. */
typedef struct {
    real *y_t, *h_next;   /* (B, H) written */
    const real *h_prev;   /* (B, H) */
    real *gates_t;        /* (B, 3H): [xr xz xn] (with b_ih) on entry, [r z n] on exit */
    real *extra_t;        /* (B, H): hn + b_hn (reset_after) or r h_{t-1} (reset before) */
    const real *b_hh;     /* (3H), zeros when the layer has no bias */
    real *hm_next;        /* (B, H) h_t * mask, the next products' operand */
    const real *hm_prev;  /* (B, H) h_{t-1} * mask (what the products read), or h_prev */
    const real *mask;     /* (B, H) recurrent dropout mask, or NULL */
    const int64_t *lengths;
    ptrdiff_t t, H;
} gru_step;

/* The masked state of `units` units of row b for the next step's products. */
static inline void gru_store_masked(const gru_step *s, ptrdiff_t at, ptrdiff_t units) {
    if (s->mask)
        FR_FN(mask_units)(s->hm_next + at, s->h_next + at, s->mask + at, units);
}

/* reset_after, `units` units of one row: acc holds [hr hz hn] (gate stride gs). */
static FR_ALWAYS_INLINE void gru_units_after(const real *restrict acc, ptrdiff_t gs,
                                             real *restrict g, real *restrict extra,
                                             const real *restrict bh,
                                             const real *restrict h_prev,
                                             real *restrict h_next, real *restrict y,
                                             ptrdiff_t units, ptrdiff_t H) {
    for (ptrdiff_t j = 0; j < units; j += FR_VLEN) {
        const ptrdiff_t m = fr_vlanes(units, j);
        fr_vec r = fr_vsigmoid(fr_vload(g + j, m) + fr_vload(acc + j, m) + fr_vload(bh + j, m));
        fr_vec z = fr_vsigmoid(fr_vload(g + H + j, m) + fr_vload(acc + gs + j, m) +
                               fr_vload(bh + H + j, m));
        fr_vec hn = fr_vload(acc + 2 * gs + j, m) + fr_vload(bh + 2 * H + j, m);
        fr_vec n = fr_vtanh(fr_vload(g + 2 * H + j, m) + r * hn);
        fr_vec h = fr_vmuladd(z, fr_vload(h_prev + j, m), ((real)1 - z) * n);
        fr_vstore(g + j, r, m);
        fr_vstore(g + H + j, z, m);
        fr_vstore(g + 2 * H + j, n, m);
        fr_vstore(extra + j, hn, m);
        fr_vstore(h_next + j, h, m);
        fr_vstore(y + j, h, m);
    }
}

static FR_ALWAYS_INLINE void gru_rows_after(const gru_step *s, const real *acc,
                                            ptrdiff_t acc_ld, ptrdiff_t gs, ptrdiff_t row0,
                                            ptrdiff_t rows, ptrdiff_t unit0, ptrdiff_t units) {
    const ptrdiff_t H = s->H;
    for (ptrdiff_t i = 0; i < rows; i++) {
        ptrdiff_t b = row0 + i, at = b * H + unit0;
        if (!fr_step_valid(s->lengths, s->t, b)) {
            memcpy(s->h_next + at, s->h_prev + at, (size_t)units * sizeof(real));
            memset(s->y_t + at, 0, (size_t)units * sizeof(real));
        } else
            gru_units_after(acc + i * acc_ld, gs, s->gates_t + b * 3 * H + unit0,
                            s->extra_t + at, s->b_hh + unit0, s->h_prev + at, s->h_next + at,
                            s->y_t + at, units, H);
        gru_store_masked(s, at, units);
    }
}

/* reset_after's epilogue, with units a constant when it is one vector (the width of a
 * block on every ISA but the tail of H): straight-line vector code per row. */
static void gru_epilogue_after(void *ctx, const real *acc, ptrdiff_t acc_ld, ptrdiff_t gs,
                               ptrdiff_t row0, ptrdiff_t rows, ptrdiff_t unit0,
                               ptrdiff_t units) {
    if (units == FR_VLEN)
        gru_rows_after(ctx, acc, acc_ld, gs, row0, rows, unit0, FR_VLEN);
    else
        gru_rows_after(ctx, acc, acc_ld, gs, row0, rows, unit0, units);
}

/* reset before, first product: acc holds [hr hz] of h_{t-1}; r, z and r h_{t-1} out. */
static void gru_epilogue_reset(void *ctx, const real *acc, ptrdiff_t acc_ld, ptrdiff_t gs,
                               ptrdiff_t row0, ptrdiff_t rows, ptrdiff_t unit0,
                               ptrdiff_t units) {
    const gru_step *s = ctx;
    const ptrdiff_t H = s->H;
    for (ptrdiff_t i = 0; i < rows; i++) {
        ptrdiff_t b = row0 + i, at = b * H + unit0;
        real *restrict g = s->gates_t + b * 3 * H + unit0, *restrict rh = s->extra_t + at;
        const real *restrict a = acc + i * acc_ld, *restrict bh = s->b_hh + unit0;
        const real *restrict h = s->hm_prev + at; /* r * (h_{t-1} [* mask]) */
        for (ptrdiff_t j = 0; j < units; j += FR_VLEN) {
            const ptrdiff_t m = fr_vlanes(units, j);
            fr_vec r = fr_vsigmoid(fr_vload(g + j, m) + fr_vload(a + j, m) + fr_vload(bh + j, m));
            fr_vec z = fr_vsigmoid(fr_vload(g + H + j, m) + fr_vload(a + gs + j, m) +
                                   fr_vload(bh + H + j, m));
            fr_vstore(g + j, r, m);
            fr_vstore(g + H + j, z, m);
            fr_vstore(rh + j, r * fr_vload(h + j, m), m);
        }
    }
}

/* reset before, second product: acc holds (r h_{t-1}) w_hh[n]^T; n and h_t out. */
static void gru_epilogue_new(void *ctx, const real *acc, ptrdiff_t acc_ld, ptrdiff_t gs,
                             ptrdiff_t row0, ptrdiff_t rows, ptrdiff_t unit0, ptrdiff_t units) {
    const gru_step *s = ctx;
    const ptrdiff_t H = s->H;
    for (ptrdiff_t i = 0; i < rows; i++) {
        ptrdiff_t b = row0 + i, at = b * H + unit0;
        if (!fr_step_valid(s->lengths, s->t, b)) {
            memcpy(s->h_next + at, s->h_prev + at, (size_t)units * sizeof(real));
            memset(s->y_t + at, 0, (size_t)units * sizeof(real));
            gru_store_masked(s, at, units);
            continue;
        }
        real *restrict g = s->gates_t + b * 3 * H + unit0, *restrict y = s->y_t + at;
        real *restrict h_next = s->h_next + at;
        const real *restrict a = acc + i * acc_ld, *restrict bn = s->b_hh + 2 * H + unit0;
        const real *restrict h = s->h_prev + at;
        for (ptrdiff_t j = 0; j < units; j += FR_VLEN) {
            const ptrdiff_t m = fr_vlanes(units, j);
            fr_vec n = fr_vtanh(fr_vload(g + 2 * H + j, m) + fr_vload(a + j, m) +
                                fr_vload(bn + j, m));
            fr_vec z = fr_vload(g + H + j, m);
            fr_vec h_t = fr_vmuladd(z, fr_vload(h + j, m), ((real)1 - z) * n);
            fr_vstore(g + 2 * H + j, n, m);
            fr_vstore(h_next + j, h_t, m);
            fr_vstore(y + j, h_t, m);
        }
        gru_store_masked(s, at, units);
    }
}

/* What the forward time loop reads and writes, for any part of it (threads.h). */
typedef struct {
    real *y, *hbuf;         /* (T, B, H); h_{t-1}, h_t alternating (2, B, H) */
    real *hmbuf;            /* (2, B, H) as hbuf, times mask; NULL without a mask */
    const real *mask;       /* (B, H) or NULL */
    real *gates;            /* (T, B, 3H), or (B, 3H) reused when gates_step == 0 */
    real *extra;            /* (T, B, H) saved, or a (B, H) workspace when extra_step == 0 */
    real *scratch;          /* (B, 3H) for a direct product */
    ptrdiff_t gates_step, extra_step;
    const fr_input *in;
    const fr_recurrent *rec;
    const real *b_hh;
    const int64_t *lengths;
    int reset_after;
    ptrdiff_t T, B, H;
} gru_forward_loop;

static void gru_forward_part(const void *ctx, fr_part part) {
    const gru_forward_loop *a = ctx;
    const ptrdiff_t B = a->B, H = a->H, BH = B * H;
    for (ptrdiff_t t = 0; t < a->T; t++) {
        fr_part_step(&part, t);
        const real *h_prev = a->hbuf + (t & 1) * BH;
        const real *operand = a->mask ? a->hmbuf + (t & 1) * BH : h_prev;
        gru_step s = {a->y + t * BH, a->hbuf + ((t + 1) & 1) * BH, h_prev,
                      a->gates + t * a->gates_step, a->extra + t * a->extra_step, a->b_hh,
                      a->mask ? a->hmbuf + ((t + 1) & 1) * BH : NULL, operand, a->mask,
                      a->lengths, t, H};
        FR_FN(input_step)(a->in, s.gates_t, t, &part, a->scratch);
        if (a->reset_after) {
            FR_FN(recurrent_apply)(&a->rec[0], operand, H, &part, gru_epilogue_after, &s,
                                   a->scratch);
        } else {
            fr_part_sync(&part); /* the r, z blocks do not match the input's blocks */
            FR_FN(recurrent_apply)(&a->rec[0], operand, H, &part, gru_epilogue_reset, &s,
                                   a->scratch);
            fr_part_sync(&part); /* the n product reads r h_{t-1} of every unit */
            FR_FN(recurrent_apply)(&a->rec[1], s.extra_t, H, &part, gru_epilogue_new, &s,
                                   a->scratch);
        }
        fr_part_sync(&part);
    }
}

int FR_FN(gru_forward)(real *y, real *h_n, real *saved, const real *x, const real *h0,
                       const real *w_ih, const real *w_hh, const real *b_ih,
                       const real *b_hh, const int64_t *lengths, const real *h_mask,
                       int reset_after, ptrdiff_t T, ptrdiff_t B, ptrdiff_t I, ptrdiff_t H,
                       const void *pack) {
    const ptrdiff_t G = 3 * H;
    ptrdiff_t gates_step = saved || !FR_FN(input_per_step)(B) ? B * G : 0;
    real *gates = saved ? saved : FR_FN(alloc)(gates_step ? T * B * G : B * G);
    real *extra = saved ? NULL : FR_FN(alloc)(B * H);       /* (B, H) unsaved */
    real *hbuf = FR_FN(alloc)(2 * B * H);                   /* (2, B, H) */
    real *scratch = FR_FN(alloc)(B * G);                    /* (B, 3H) */
    real *bias = FR_FN(alloc_zeroed)(G);                    /* (3H) b_hh or zeros */
    real *hmbuf = h_mask ? FR_FN(alloc)(2 * B * H) : NULL;  /* (2, B, H) */
    fr_recurrent rec[2];
    fr_input in = {0};
    int status = FR_ERR_NOMEM;
    if (!gates || (!saved && !extra) || !hbuf || !scratch || !bias || (h_mask && !hmbuf) ||
        FR_FN(recurrent_setup_cell)(rec, gru_cell(reset_after), 0, w_hh, H, T, B, pack) !=
            FR_OK)
        goto done;
    if (FR_FN(input_prepare)(&in, gates, x, w_ih, b_ih, NULL, T, B, I, 3, H, NULL, pack) !=
        FR_OK) {
        FR_FN(recurrent_free)(&rec[0]);
        FR_FN(recurrent_free)(&rec[1]);
        goto done;
    }
    if (b_hh)
        memcpy(bias, b_hh, (size_t)G * sizeof(real));
    gru_saved s = gru_saved_views(gates, T, B, H);
    FR_FN(init_state)(hbuf, h0, B * H);
    if (h_mask)
        FR_FN(mask_state)(hmbuf, h0, h_mask, B * H);
    gru_forward_loop loop = {y,          hbuf,       hmbuf, h_mask, gates, saved ? s.extra : extra,
                             scratch,    gates_step, saved ? B * H : 0,
                             &in,        rec,        bias,  lengths,
                             reset_after, T,         B,     H};
    fr_run_time_loop(B, FR_FN(recurrent_blocks)(rec), 2.0 * B * H * G, gru_forward_part, &loop);
    memcpy(h_n, hbuf + (T & 1) * B * H, (size_t)(B * H) * sizeof(real));
    FR_FN(recurrent_free)(&rec[0]);
    FR_FN(recurrent_free)(&rec[1]);
    status = FR_OK;
done:
    FR_FN(input_free)(&in);
    if (!saved)
        free(gates);
    free(extra);
    free(hbuf);
    free(hmbuf);
    free(scratch);
    free(bias);
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
    const real *mask; /* (B, H) recurrent dropout mask, or NULL */
    real *tmp;        /* (B, H) workspace of the masked products */
} gru_step_inputs;

/* reset_after, one step: dG_t (B, 3H) written; dGh (B, 3H) is a workspace for this
 * step's dL/d[hr hz hn], whose n block is kept in dGhn_t (B, H) for dw_hh (its r and z
 * blocks equal dG_t's). */
static void gru_step_backward_after(real *dG_t, real *dGh, real *dGhn_t, real *dh,
                                    gru_step_inputs in, const fr_recurrent *rec,
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
    /* dh += (dGh w_hh) [* mask] */
    FR_FN(recurrent_product_masked)(&rec[0], dh, dGh_t, G, B, in.mask, in.tmp);
    for (ptrdiff_t b = 0; b < B; b++)
        memcpy(dGhn_t + b * H, dGh_t + b * G + 2 * H, (size_t)H * sizeof(real));
}

/* reset before: n = tanh(xn + (r h) w_hh[n]^T + b_hn). drh (B, H) = dL/d(r h) workspace. */
static void gru_step_backward_before(real *dG_t, real *drh, real *dh, gru_step_inputs in,
                                     const fr_recurrent *rec, const int64_t *lengths,
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
    FR_FN(recurrent_product)(&rec[1], drh, H, dG_t + 2 * H, G, B, 0); /* dGn w_hh[n] */
    for (ptrdiff_t b = 0; b < B; b++) {
        if (!fr_step_valid(lengths, t, b))
            continue;
        real *dGr = dG_t + b * G, *dh_row = dh + b * H;
        const real *r = in.gates + b * G, *drh_row = drh + b * H;
        const real *h_prev = in.h_prev + b * in.h_prev_stride;
        const real *m = in.mask ? in.mask + b * H : NULL;
        for (ptrdiff_t j = 0; j < H; j++) { /* r * hm, hm = h_prev [* m] */
            real m_j = m ? m[j] : (real)1;
            dGr[j] = drh_row[j] * h_prev[j] * m_j * fr_dsigmoid_from_output(r[j]);
            dh_row[j] += drh_row[j] * r[j] * m_j;
        }
    }
    /* dh += ([dGr dGz] w_hh[r,z]) [* mask] */
    FR_FN(recurrent_product_masked)(&rec[0], dh, dG_t, G, B, in.mask, in.tmp);
}

/* What the backward time loop reads and writes, for any block of rows. */
typedef struct {
    real *dG, *dh;   /* (steps, B, 3H) the chunk's, carried (B, H) */
    real *dGhn;      /* reset_after: (steps, B, H) n block of dL/d[hr hz hn]; else NULL */
    real *work;      /* reset_after: dGh (B, 3H); reset before: drh (B, H) */
    const real *dy, *y, *h0, *zeros, *gates, *extra;
    const real *mask;   /* (B, H) recurrent dropout mask, or NULL */
    real *tmp;          /* (B, H) workspace of the masked products, or NULL */
    const fr_recurrent *rec;
    const int64_t *lengths;
    int reset_after;
    ptrdiff_t t_lo, t_hi, B, H; /* the chunk's steps [t_lo, t_hi), run newest first */
} gru_backward_loop;

static void gru_backward_rows(const void *ctx, fr_rows r) {
    const gru_backward_loop *a = ctx;
    const ptrdiff_t B = a->B, H = a->H, G = 3 * H;
    real *dh = a->dh + r.b0 * H;
    const int64_t *lengths = a->lengths ? a->lengths + r.b0 : NULL;
    for (ptrdiff_t t = a->t_hi - 1; t >= a->t_lo; t--) {
        ptrdiff_t row = t * B + r.b0;            /* first row of this block at step t */
        ptrdiff_t chunk_row = row - a->t_lo * B; /* the same row in the chunk's buffers */
        gru_step_inputs in = {
            a->dy ? a->dy + row * H : a->zeros,
            t > 0 ? a->y + (row - B) * H : a->h0 ? a->h0 + r.b0 * H : a->zeros,
            a->gates + row * G,
            a->extra + row * H,
            a->dy ? H : 0,
            (t > 0 || a->h0) ? H : 0,
            a->mask ? a->mask + r.b0 * H : NULL,
            a->tmp ? a->tmp + r.b0 * H : NULL,
        };
        if (a->reset_after)
            gru_step_backward_after(a->dG + chunk_row * G, a->work + r.b0 * G,
                                    a->dGhn + chunk_row * H, dh, in, a->rec, lengths, t,
                                    r.rows, H);
        else
            gru_step_backward_before(a->dG + chunk_row * G, a->work + r.b0 * H, dh, in, a->rec,
                                     lengths, t, r.rows, H);
    }
}

/* After the chunk [a->t_lo, a->t_hi) of the time loop: dx for its steps, and its share of
 * the weight gradients (accumulated). x (T, B, I); dx (T, B, I) written; hm (steps, B, H)
 * the masked states' workspace, or NULL without a mask. */
static void gru_chunk_grads(real *dx, real *dw_ih, real *dw_hh, real *db_ih, real *db_hh,
                            const gru_backward_loop *a, const real *x, const real *w_ih,
                            real *hm, ptrdiff_t I) {
    const ptrdiff_t t0 = a->t_lo, n = a->t_hi - a->t_lo, B = a->B, H = a->H, G = 3 * H;
    FR_FN(input_grads)(dx + t0 * B * I, dw_ih, db_ih, a->dG, x + t0 * B * I, w_ih, n * B, I, G);
    const real *h_first, *h_rest; /* what the products read: h_{t-1} [* mask] */
    FR_FN(product_inputs)(&h_first, &h_rest, hm, t0 > 0 ? a->y + (t0 - 1) * B * H : a->h0,
                          a->y + t0 * B * H, a->mask, n, B, H);
    /* r and z: dL/d[hr hz] = dG's r, z blocks, fed by h_{t-1} */
    FR_FN(hidden_grads)(dw_hh, db_hh, a->dG, G, h_first, h_rest, n, B, H, 2 * H);
    real *dw_n = dw_hh + 2 * H * H, *db_n = db_hh ? db_hh + 2 * H : NULL;
    if (a->reset_after) /* n: dL/dhn = dGn * r, fed by h_{t-1} */
        FR_FN(hidden_grads)(dw_n, db_n, a->dGhn, H, h_first, h_rest, n, B, H, H);
    else /* n: dL/d(pre-n) = dGn, fed by r * h_{t-1} (saved for every step) */
        FR_FN(hidden_grads)(dw_n, db_n, a->dG + 2 * H, G, a->extra + t0 * B * H,
                            a->extra + (t0 + 1) * B * H, n, B, H, H);
}

int FR_FN(gru_backward)(real *dx, real *dh0, real *dw_ih, real *dw_hh, real *db_ih,
                        real *db_hh, const real *dy, const real *dh_n, const real *saved,
                        const real *y, const real *x, const real *h0, const real *w_ih,
                        const real *w_hh, const int64_t *lengths, const real *h_mask,
                        int reset_after, ptrdiff_t T, ptrdiff_t B, ptrdiff_t I, ptrdiff_t H,
                        const void *pack) {
    const ptrdiff_t G = 3 * H, steps = FR_FN(grad_chunk_steps)(T, B), rows = steps * B;
    real *dG = FR_FN(alloc)(rows * G); /* (steps, B, 3H) dL/d[xr xz xn] of a chunk */
    real *tmp = h_mask ? FR_FN(alloc)(B * H) : NULL;   /* (B, H) */
    real *hm = h_mask ? FR_FN(alloc)(rows * H) : NULL; /* (steps, B, H) masked h_{t-1} */
    real *dGhn = reset_after ? FR_FN(alloc)(rows * H) : NULL; /* (steps, B, H) */
    real *work = FR_FN(alloc)(B * (reset_after ? G : H));     /* per step, see the loop */
    real *zeros = FR_FN(alloc_zeroed)(H); /* stands in for a NULL dy or h0 row */
    fr_recurrent rec[2];
    int status = FR_ERR_NOMEM;
    if (!dG || (reset_after && !dGhn) || !work || !zeros || (h_mask && (!tmp || !hm)) ||
        FR_FN(recurrent_setup_cell)(rec, gru_cell(reset_after), 1, w_hh, H, T, B, pack) !=
            FR_OK)
        goto done;
    gru_saved s = gru_saved_views((real *)saved, T, B, H);
    /* dh0 (B, H) carries dL/dh_t back through time and ends as dL/dh0 */
    FR_FN(init_state)(dh0, dh_n, B * H);
    gru_backward_loop loop = {dG,      dh0,     dGhn,   work, dy,  y,       h0,          zeros,
                              s.gates, s.extra, h_mask, tmp,  rec, lengths, reset_after, 0,
                              T,       B,       H};
    for (ptrdiff_t t_hi = T; t_hi > 0; t_hi = loop.t_lo) {
        loop.t_lo = fr_chunk_first(t_hi, steps);
        loop.t_hi = t_hi;
        fr_for_row_blocks(B, 1, gru_backward_rows, &loop);
        gru_chunk_grads(dx, dw_ih, dw_hh, db_ih, db_hh, &loop, x, w_ih, hm, I);
    }
    FR_FN(recurrent_free)(&rec[0]);
    FR_FN(recurrent_free)(&rec[1]);
    status = FR_OK;
done:
    free(dG);
    free(tmp);
    free(hm);
    free(dGhn);
    free(work);
    free(zeros);
    return status;
}
