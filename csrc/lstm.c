/* lstm.c - LSTM forward over a sequence and its BPTT (PyTorch gate order i, f, g, o).
 *
 *   [a_i a_f a_g a_o] = x_t w_ih^T + b_ih + h_{t-1} w_hh^T + b_hh        (B, 4H)
 *   i = sigma(a_i)  f = sigma(a_f)  g = tanh(a_g)  o = sigma(a_o)
 *   c_t = f * c_{t-1} + i * g
 *   h_t = o * tanh(c_t),  y_t = h_t
 *
 * Peepholes (w_p (3H) = [p_i p_o p_f], ONNX's order; NULL: none) add the cell state to the
 * gates' pre-activations:  a_i += p_i * c_{t-1},  a_f += p_f * c_{t-1},  a_o += p_o * c_t.
 * Recurrent dropout (h_mask (B, H); NULL: none) reads h_{t-1} * h_mask in the recurrent
 * product (seq.h).
 * Projection (PyTorch's proj_size; w_hr (P, H), NULL: none, P = H): h_t = m_t w_hr^T with
 * m_t = o * tanh(c_t), so h, y and w_hh's columns have P units and c has H: a second
 * product per step, after the cell's epilogue.
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
 * of its own) gets the activated gates and c_save, tanh_c_save get c_t and tanh(c_t). With
 * `peep`, p (3H, offset to the first unit) holds p_i, p_o, p_f. `save` and `peep` are
 * constants where this is inlined, and no two pointers alias, so each variant vectorizes
 * (an in-place pre/gates kept the saving variant scalar: half the speed). */
static FR_ALWAYS_INLINE void lstm_units_forward(const real *restrict acc, ptrdiff_t gate_stride,
                                                const real *restrict pre,
                                                real *restrict gates,
                                                real *restrict c, real *restrict h_next,
                                                real *restrict y, real *restrict c_save,
                                                real *restrict tanh_c_save,
                                                const real *restrict p, ptrdiff_t units,
                                                ptrdiff_t H, const int save, const int peep) {
    const real *restrict ai = acc, *restrict af = acc + gate_stride;
    const real *restrict ag = acc + 2 * gate_stride, *restrict ao = acc + 3 * gate_stride;
    for (ptrdiff_t j = 0; j < units; j += FR_VLEN) {
        const ptrdiff_t n = fr_vlanes(units, j);
        fr_vec c_prev = fr_vload(c + j, n);
        fr_vec a_i = fr_vload(ai + j, n) + fr_vload(pre + j, n);
        fr_vec a_f = fr_vload(af + j, n) + fr_vload(pre + H + j, n);
        if (peep) {
            a_i += fr_vload(p + j, n) * c_prev;
            a_f += fr_vload(p + 2 * H + j, n) * c_prev;
        }
        fr_vec i = fr_vsigmoid(a_i), f = fr_vsigmoid(a_f);
        fr_vec g = fr_vtanh(fr_vload(ag + j, n) + fr_vload(pre + 2 * H + j, n));
        fr_vec c_new = fr_vmuladd(f, c_prev, i * g);
        fr_vec a_o = fr_vload(ao + j, n) + fr_vload(pre + 3 * H + j, n);
        if (peep)
            a_o += fr_vload(p + H + j, n) * c_new;
        fr_vec o = fr_vsigmoid(a_o), tc = fr_vtanh(c_new), h = o * tc;
        fr_vstore(c + j, c_new, n);
        fr_vstore(h_next + j, h, n);
        fr_vstore(y + j, h, n);
        if (save) {
            fr_vstore(gates + j, i, n);
            fr_vstore(gates + H + j, f, n);
            fr_vstore(gates + 2 * H + j, g, n);
            fr_vstore(gates + 3 * H + j, o, n);
            fr_vstore(c_save + j, c_new, n);
            fr_vstore(tanh_c_save + j, tc, n);
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
    const real *w_p;        /* (3H) peepholes p_i, p_o, p_f, or NULL */
    real *hm_next;          /* (B, H) h_t * mask, the next product's operand */
    const real *mask;       /* (B, H) recurrent dropout mask, or NULL */
    int out_proj;           /* 1: h_next gets m_t (B, H) and a projection finishes h_t */
    const int64_t *lengths;
    ptrdiff_t t, H;
} lstm_step;

/* The epilogue for rows [row0, row0 + rows) of one tile: lstm_units_forward for the rows
 * inside their sequence; rows past their length keep their state (h and c) and output
 * zeros. With a projection (s->out_proj) the step's h is finished by lstm_proj_epilogue:
 * this one only writes m_t = o * tanh(c_t) to h_next (B, H) for the valid rows. `save` and
 * `peep` are constants where this is inlined: the row loop has no per-row dispatch, and
 * the activations' constants are set up once per tile, not once per row. */
static FR_ALWAYS_INLINE void lstm_rows_forward(const lstm_step *s, const real *acc,
                                               ptrdiff_t acc_ld, ptrdiff_t gate_stride,
                                               ptrdiff_t row0, ptrdiff_t rows,
                                               ptrdiff_t unit0, ptrdiff_t units,
                                               const int save, const int peep) {
    const ptrdiff_t H = s->H;
    const real *p = peep ? s->w_p + unit0 : NULL;
    for (ptrdiff_t i = 0; i < rows; i++) {
        ptrdiff_t b = row0 + i, at = b * H + unit0;
        if (fr_step_valid(s->lengths, s->t, b))
            lstm_units_forward(acc + i * acc_ld, gate_stride,
                               FR_FN(input_addend)(s->in, s->proj_t, b) + unit0,
                               save ? s->gates_t + b * 4 * H + unit0 : NULL, s->c + at,
                               s->h_next + at, s->y_t + at, save ? s->c_t + at : NULL,
                               save ? s->tanh_c_t + at : NULL, p, units, H, save, peep);
        else if (!s->out_proj) {
            memcpy(s->h_next + at, s->h_prev + at, (size_t)units * sizeof(real));
            memset(s->y_t + at, 0, (size_t)units * sizeof(real));
        }
        if (s->mask && !s->out_proj)
            FR_FN(mask_units)(s->hm_next + at, s->h_next + at, s->mask + at, units);
    }
}

/* lstm_rows_forward with units a constant when it is one vector, the width of a block on
 * every ISA but the tail of H: straight-line vector code, no loop set-up per row. */
static FR_ALWAYS_INLINE void lstm_rows_forward_units(const lstm_step *s, const real *acc,
                                                     ptrdiff_t acc_ld, ptrdiff_t gate_stride,
                                                     ptrdiff_t row0, ptrdiff_t rows,
                                                     ptrdiff_t unit0, ptrdiff_t units,
                                                     const int save, const int peep) {
    if (units == FR_VLEN)
        lstm_rows_forward(s, acc, acc_ld, gate_stride, row0, rows, unit0, FR_VLEN, save, peep);
    else
        lstm_rows_forward(s, acc, acc_ld, gate_stride, row0, rows, unit0, units, save, peep);
}

/* The recurrent product's epilogue: lstm_rows_forward with its flags picked once per tile. */
static void lstm_epilogue(void *ctx, const real *acc, ptrdiff_t acc_ld, ptrdiff_t gate_stride,
                          ptrdiff_t row0, ptrdiff_t rows, ptrdiff_t unit0, ptrdiff_t units) {
    const lstm_step *s = ctx;
    const int save = s->gates_t != NULL, peep = s->w_p != NULL;
    if (save && peep)
        lstm_rows_forward_units(s, acc, acc_ld, gate_stride, row0, rows, unit0, units, 1, 1);
    else if (save)
        lstm_rows_forward_units(s, acc, acc_ld, gate_stride, row0, rows, unit0, units, 1, 0);
    else if (peep)
        lstm_rows_forward_units(s, acc, acc_ld, gate_stride, row0, rows, unit0, units, 0, 1);
    else
        lstm_rows_forward_units(s, acc, acc_ld, gate_stride, row0, rows, unit0, units, 0, 0);
}

/* With a projection (PyTorch's proj_size), the step's second product:
 *   h_t (B, P) = m_t (B, H) w_hr^T,   m_t = o * tanh(c_t)
 * acc holds it for the units [unit0, unit0 + units) of P; h_next and y_t get it, rows past
 * their length keep h (h_prev) and output zeros; hm_next = h_t * mask under dropout. */
typedef struct {
    real *y_t, *h_next;     /* (B, P) written */
    const real *h_prev;     /* (B, P) */
    real *hm_next;          /* (B, P) or NULL */
    const real *mask;       /* (B, P) or NULL */
    const int64_t *lengths;
    ptrdiff_t t, P;
} lstm_proj_step;

static void lstm_proj_epilogue(void *ctx, const real *acc, ptrdiff_t acc_ld,
                               ptrdiff_t gate_stride, ptrdiff_t row0, ptrdiff_t rows,
                               ptrdiff_t unit0, ptrdiff_t units) {
    const lstm_proj_step *s = ctx;
    (void)gate_stride; /* one block: G = 1 */
    for (ptrdiff_t i = 0; i < rows; i++) {
        ptrdiff_t b = row0 + i, at = b * s->P + unit0;
        if (fr_step_valid(s->lengths, s->t, b)) {
            const real *restrict a = acc + i * acc_ld;
            real *restrict h = s->h_next + at, *restrict y = s->y_t + at;
            for (ptrdiff_t j = 0; j < units; j++)
                h[j] = y[j] = a[j];
        } else {
            memcpy(s->h_next + at, s->h_prev + at, (size_t)units * sizeof(real));
            memset(s->y_t + at, 0, (size_t)units * sizeof(real));
        }
        if (s->mask)
            FR_FN(mask_units)(s->hm_next + at, s->h_next + at, s->mask + at, units);
    }
}

/* What the forward time loop reads and writes, for any part of it (threads.h). */
typedef struct {
    real *y, *hbuf, *c;     /* (T, B, P); h_{t-1}, h_t alternating in (2, B, P); (B, H) */
    real *hmbuf;            /* (2, B, P) as hbuf, times mask; NULL without a mask */
    const real *mask;       /* (B, P) or NULL */
    real *proj;             /* (T, B, 4H) or (B, 4H) reused (proj_step 0), or NULL (fused) */
    ptrdiff_t proj_step;    /* B * 4H, or 0 */
    real *gates;            /* (T, B, 4H) saved gates, or NULL (inference) */
    real *c_save, *tc_save; /* (T, B, H) each, or NULL (inference) */
    real *scratch;          /* (B, 4H) for a direct product */
    const real *w_p;        /* (3H) or NULL */
    real *m, *m_copy;       /* (B, H) each: m_t, and a second output the cell writes; proj */
    const fr_input *in;
    const fr_recurrent *rec, *out; /* h w_hh^T; m w_hr^T (NULL without a projection) */
    const int64_t *lengths;
    ptrdiff_t T, B, H, P;   /* P = H without a projection */
} lstm_forward_loop;

static void lstm_forward_part(const void *ctx, fr_part part) {
    const lstm_forward_loop *a = ctx;
    const ptrdiff_t B = a->B, H = a->H, BP = B * a->P;
    for (ptrdiff_t t = 0; t < a->T; t++) {
        fr_part_step(&part, t);
        real *h_next = a->hbuf + ((t + 1) & 1) * BP, *h_prev = a->hbuf + (t & 1) * BP;
        real *hm_next = a->mask ? a->hmbuf + ((t + 1) & 1) * BP : NULL;
        real *proj_t = a->proj ? a->proj + t * a->proj_step : NULL;
        lstm_step s = {a->out ? a->m_copy : a->y + t * BP, a->out ? a->m : h_next, h_prev,
                       a->c, proj_t, a->gates ? a->gates + t * B * 4 * H : NULL,
                       a->c_save ? a->c_save + t * B * H : NULL,
                       a->tc_save ? a->tc_save + t * B * H : NULL, a->in, a->w_p, hm_next,
                       a->mask, a->out != NULL, a->lengths, t, H};
        const real *operand = a->mask ? a->hmbuf + (t & 1) * BP : h_prev;
        FR_FN(step_product)(a->in, a->rec, proj_t, t, operand, a->P, &part, lstm_epilogue, &s,
                            a->scratch);
        if (a->out) {
            fr_part_sync(&part); /* the projection reads m_t of every unit */
            lstm_proj_step ps = {a->y + t * BP, h_next, h_prev, hm_next, a->mask,
                                 a->lengths, t, a->P};
            FR_FN(recurrent_apply)(a->out, a->m, H, &part, lstm_proj_epilogue, &ps,
                                   a->scratch);
        }
        fr_part_sync(&part);
    }
}

/* The products of the forward (backward = 0) or backward time loop: rec[0] over w_hh, and
 * with a projection (w_hr (P, H) not NULL) *proj over w_hr. Packs serve only P = H. */
static int lstm_products(fr_recurrent rec[2], fr_recurrent *proj, int backward,
                         const real *w_hh, const real *w_hr, ptrdiff_t T, ptrdiff_t B,
                         ptrdiff_t H, ptrdiff_t P, const void *pack) {
    proj->owned = 0;
    proj->rows = NULL;
    proj->panel.data = NULL;
    if (!w_hr)
        return FR_FN(recurrent_setup_cell)(rec, FR_CELL_LSTM, backward, w_hh, H, T, B, pack);
    /* forward: (B, P) . w_hh^T (P, 4H) gate-interleaved, then (B, H) . w_hr^T (H, P);
     * backward: (B, 4H) . w_hh (4H, P), and (B, P) . w_hr (P, H) */
    fr_recurrent_spec gates = {0, backward ? 4 * H : P, backward ? 1 : 4, !backward};
    fr_recurrent_spec out = {0, backward ? P : H, 1, !backward};
    rec[1].owned = 0;
    rec[1].rows = NULL;
    rec[1].panel.data = NULL;
    if (FR_FN(recurrent_setup)(&rec[0], w_hh, gates, backward ? P : H, T, B, NULL,
                               FR_PANEL_F32) != FR_OK)
        return FR_ERR_NOMEM;
    if (FR_FN(recurrent_setup)(proj, w_hr, out, backward ? H : P, T, B, NULL, FR_PANEL_F32) !=
        FR_OK) {
        FR_FN(recurrent_free)(&rec[0]);
        return FR_ERR_NOMEM;
    }
    return FR_OK;
}

int FR_FN(lstm_forward)(real *y, real *h_n, real *c_n, real *saved, const real *x,
                        const real *h0, const real *c0, const real *w_ih, const real *w_hh,
                        const real *b_ih, const real *b_hh, const real *w_p,
                        const real *w_hr, const int64_t *lengths, const real *h_mask,
                        ptrdiff_t T, ptrdiff_t B, ptrdiff_t I, ptrdiff_t H, ptrdiff_t P,
                        const void *pack) {
    const ptrdiff_t G = 4 * H;
    real *hbuf = FR_FN(alloc)(2 * B * P); /* (2, B, P) */
    real *scratch = FR_FN(alloc)(B * G);  /* (B, 4H) */
    real *hmbuf = h_mask ? FR_FN(alloc)(2 * B * P) : NULL; /* (2, B, P) */
    real *m = w_hr ? FR_FN(alloc)(2 * B * H) : NULL;       /* (2, B, H): m_t, its copy */
    real *proj = NULL;                    /* the input projection, unless fused */
    ptrdiff_t proj_step = FR_FN(input_per_step)(B) ? 0 : B * G;
    fr_recurrent rec[2], out;
    fr_input in = {0};
    int status = FR_ERR_NOMEM;
    if (!hbuf || !scratch || (h_mask && !hmbuf) || (w_hr && !m) ||
        lstm_products(rec, &out, 0, w_hh, w_hr, T, B, H, P, pack) != FR_OK)
        goto done;
    const int fusable = FR_FN(input_fusable)(rec, T, B, I, pack);
    if (!fusable)
        proj = FR_FN(alloc)(proj_step ? T * B * G : B * G);
    if ((!proj && !fusable) ||
        FR_FN(input_prepare)(&in, proj, x, w_ih, b_ih, b_hh, T, B, I, 4, H, rec,
                              pack) != FR_OK) {
        FR_FN(recurrent_free)(rec);
        FR_FN(recurrent_free)(&out);
        goto done;
    }
    lstm_saved s = {NULL, NULL, NULL}; /* inference saves nothing */
    if (saved)
        s = lstm_saved_views(saved, T, B, H);
    FR_FN(init_state)(hbuf, h0, B * P);
    FR_FN(init_state)(c_n, c0, B * H);
    if (h_mask)
        FR_FN(mask_state)(hmbuf, h0, h_mask, B * P);
    lstm_forward_loop loop = {y,       hbuf,      c_n,     hmbuf,   h_mask,
                              proj,    proj_step, s.gates, s.c,     s.tanh_c,
                              scratch, w_p,       m,       m ? m + B * H : NULL,
                              &in,     rec,       w_hr ? &out : NULL,
                              lengths, T,         B,       H,       P};
    double flops = 2.0 * B * P * G + (w_hr ? 2.0 * B * H * P : 0);
    fr_run_time_loop(B, FR_FN(recurrent_blocks)(rec), flops, lstm_forward_part, &loop);
    memcpy(h_n, hbuf + (T & 1) * B * P, (size_t)(B * P) * sizeof(real));
    FR_FN(recurrent_free)(rec);
    FR_FN(recurrent_free)(&out);
    status = FR_OK;
done:
    FR_FN(input_free)(&in);
    free(proj);
    free(hbuf);
    free(hmbuf);
    free(m);
    free(scratch);
    return status;
}

/* One row backward (restrict: the loop vectorizes). dh, dc (H) hold dL/dh_t, dL/dc_t
 * carried from step t+1; on exit dc holds dL/dc_{t-1} and dh is 0, ready for the
 * recurrent GEMM to add dG w_hh. dG (4H) = dL/d[a_i a_f a_g a_o]; c_prev (H) is c_{t-1}.
 * With `peep` (a constant where inlined), p (3H) = [p_i p_o p_f] also carry dc through
 * a_o += p_o c_t and a_i, a_f += p_{i,f} c_{t-1}. */
static FR_ALWAYS_INLINE void lstm_cell_backward(real *restrict dG, real *restrict dh,
                                                real *restrict dc, const real *restrict dy,
                                                const real *restrict gates,
                                                const real *restrict tanh_c,
                                                const real *restrict c_prev,
                                                const real *restrict p, ptrdiff_t H,
                                                const int peep) {
    const real *restrict gi = gates, *restrict gf = gates + H;
    const real *restrict gg = gates + 2 * H, *restrict go = gates + 3 * H;
    for (ptrdiff_t j = 0; j < H; j++) {
        real dh_j = dy[j] + dh[j];
        /* h = o tanh(c);  o = sigma(a_o [+ p_o c]);  c = f c_prev + i g */
        real da_o = dh_j * tanh_c[j] * fr_dsigmoid_from_output(go[j]);
        real dc_j = dc[j] + dh_j * go[j] * fr_dtanh_from_output(tanh_c[j]) +
                    (peep ? da_o * p[H + j] : 0);
        real da_i = dc_j * gg[j] * fr_dsigmoid_from_output(gi[j]);
        real da_f = dc_j * c_prev[j] * fr_dsigmoid_from_output(gf[j]);
        dG[3 * H + j] = da_o;
        dG[j] = da_i;
        dG[H + j] = da_f;
        dG[2 * H + j] = dc_j * gi[j] * fr_dtanh_from_output(gg[j]);
        /* c = f c_prev + ...;  a_i, a_f [+= p_i c_prev, p_f c_prev] */
        dc[j] = dc_j * gf[j] + (peep ? da_i * p[j] + da_f * p[2 * H + j] : 0);
        dh[j] = 0;
    }
}

/* One step backward over the batch. dh, dc (B, H) carried; dG_t (B, 4H) written; rows
 * past their length keep dh and dc and get dG_t = 0. dy_t (B, H) and c_prev (B, H)
 * may be a zero row with stride 0 (no upstream gradient, zero initial cell state). */
static void lstm_step_backward(real *dG_t, real *dh, real *dc, const real *dy_t,
                               ptrdiff_t dy_stride, const real *gates_t, const real *tanh_c_t,
                               const real *c_prev, ptrdiff_t c_prev_stride, const real *w_p,
                               const int64_t *lengths, ptrdiff_t t, ptrdiff_t B, ptrdiff_t H) {
    for (ptrdiff_t b = 0; b < B; b++) {
        if (!fr_step_valid(lengths, t, b)) {
            memset(dG_t + b * 4 * H, 0, (size_t)(4 * H) * sizeof(real));
            continue;
        }
        real *dG = dG_t + b * 4 * H, *dh_b = dh + b * H, *dc_b = dc + b * H;
        const real *dy = dy_t + b * dy_stride, *g = gates_t + b * 4 * H, *tc = tanh_c_t + b * H;
        const real *cp = c_prev + b * c_prev_stride;
        if (w_p)
            lstm_cell_backward(dG, dh_b, dc_b, dy, g, tc, cp, w_p, H, 1);
        else
            lstm_cell_backward(dG, dh_b, dc_b, dy, g, tc, cp, NULL, H, 0);
    }
}

/* After a chunk of the time loop (steps [t0, t0 + T)), the peephole gradients
 * (accumulated, rows past their length skipped: their dG is 0 and their saved c unset):
 *   dp_i += sum_{t,b} dG_i c_{t-1},  dp_f += sum dG_f c_{t-1},  dp_o += sum dG_o c_t
 * dw_p (3H) = [dp_i dp_o dp_f]; dG (T, B, 4H) and c (T, B, H) (saved c_t) the chunk's;
 * c_before (B, H) = c_{t0-1}, or NULL (zeros). */
static void lstm_peephole_grads(real *dw_p, const real *dG, const real *c,
                                const real *c_before, const int64_t *lengths, ptrdiff_t t0,
                                ptrdiff_t T, ptrdiff_t B, ptrdiff_t H) {
    for (ptrdiff_t s = 0; s < T; s++)
        for (ptrdiff_t b = 0; b < B; b++) {
            if (!fr_step_valid(lengths, t0 + s, b))
                continue;
            const real *d = dG + (s * B + b) * 4 * H, *c_t = c + (s * B + b) * H;
            const real *c_prev = s > 0     ? c + ((s - 1) * B + b) * H
                                 : c_before ? c_before + b * H
                                            : NULL;
            for (ptrdiff_t j = 0; j < H; j++) {
                dw_p[H + j] += d[3 * H + j] * c_t[j];
                if (c_prev) {
                    dw_p[j] += d[j] * c_prev[j];
                    dw_p[2 * H + j] += d[H + j] * c_prev[j];
                }
            }
        }
}

/* With a projection, the start of one backward step: dhs_t (B, P) = dL/dh_t = dy_t + the
 * carried dh for the valid rows (then dh = 0, ready for dG w_hh), 0 for rows past their
 * length (which keep dh). dy_t may be a zero row with stride 0. */
static void lstm_proj_step_backward(real *dhs_t, real *dh, const real *dy_t,
                                    ptrdiff_t dy_stride, const int64_t *lengths, ptrdiff_t t,
                                    ptrdiff_t B, ptrdiff_t P) {
    for (ptrdiff_t b = 0; b < B; b++) {
        real *restrict d = dhs_t + b * P, *restrict carried = dh + b * P;
        const real *restrict up = dy_t + b * dy_stride;
        if (!fr_step_valid(lengths, t, b)) {
            memset(d, 0, (size_t)P * sizeof(real));
            continue;
        }
        for (ptrdiff_t j = 0; j < P; j++) {
            d[j] = up[j] + carried[j];
            carried[j] = 0;
        }
    }
}

/* After a chunk of the time loop (steps [t0, t0 + T)), the projection's gradient:
 *   dw_hr (P, H) += sum_{t,b} dhs[t, b]^T m_t[b],   m_t = o * tanh(c_t)
 * dhs (T, B, P), gates (T, B, 4H), tanh_c (T, B, H) the chunk's; m (T*B, H), a workspace,
 * rebuilt from the saved gates (0 past a length, whose dhs is 0 and saved values unset). */
static void lstm_projection_grads(real *dw_hr, real *m, const real *dhs, const real *gates,
                                  const real *tanh_c, const int64_t *lengths, ptrdiff_t t0,
                                  ptrdiff_t T, ptrdiff_t B, ptrdiff_t H, ptrdiff_t P) {
    for (ptrdiff_t s = 0; s < T; s++)
        for (ptrdiff_t b = 0; b < B; b++) {
            real *restrict m_tb = m + (s * B + b) * H;
            const real *restrict o = gates + (s * B + b) * 4 * H + 3 * H;
            const real *restrict tc = tanh_c + (s * B + b) * H;
            for (ptrdiff_t j = 0; j < H; j++)
                m_tb[j] = fr_step_valid(lengths, t0 + s, b) ? o[j] * tc[j] : 0;
        }
    FR_FN(gemm)(1, 0, P, H, T * B, 1, dhs, P, m, H, 1, dw_hr, H);
}

/* What the backward time loop reads and writes, for any block of rows. */
typedef struct {
    real *dG, *dh, *dc;                /* (steps, B, 4H) the chunk's, carried (B, P), (B, H) */
    const real *dy, *gates, *tanh_c;   /* (T, B, P) or NULL, (T, B, 4H), (T, B, H) */
    const real *c, *c0, *zeros;        /* saved c (T, B, H), c0 (B, H) or NULL, zeros */
    const real *w_p;                   /* (3H) or NULL */
    const real *mask;                  /* (B, P) recurrent dropout mask, or NULL */
    real *tmp;                         /* (B, P) workspace of the masked product */
    real *dhs, *dm, *zero_h;           /* proj: (steps, B, P) dL/dh_t, (B, H) dL/dm_t, (B, H) 0 */
    const fr_recurrent *rec, *proj;    /* dG w_hh; dh w_hr (NULL without a projection) */
    const fr_input_grad *dx;           /* dx_t = dG_t w_ih, step by step */
    const int64_t *lengths;
    ptrdiff_t t_lo, t_hi, B, H, P;     /* the chunk's steps [t_lo, t_hi), run newest first */
} lstm_backward_loop;

static void lstm_backward_rows(const void *ctx, fr_rows r) {
    const lstm_backward_loop *a = ctx;
    const ptrdiff_t B = a->B, H = a->H, P = a->P, G = 4 * H;
    real *dh = a->dh + r.b0 * P, *dc = a->dc + r.b0 * H;
    const int64_t *lengths = a->lengths ? a->lengths + r.b0 : NULL;
    for (ptrdiff_t t = a->t_hi - 1; t >= a->t_lo; t--) {
        ptrdiff_t row = t * B + r.b0;                /* first row of this block at step t */
        ptrdiff_t chunk_row = row - a->t_lo * B;     /* the same row in the chunk's buffers */
        real *dG_t = a->dG + chunk_row * G;
        const real *c_prev = t > 0  ? a->c + (row - B) * H
                             : a->c0 ? a->c0 + r.b0 * H
                                     : a->zeros;
        const real *dy_t = a->dy ? a->dy + row * P : a->zeros;
        ptrdiff_t c_stride = (t > 0 || a->c0) ? H : 0;
        if (a->proj) { /* h_t = m_t w_hr^T: dL/dm_t = dL/dh_t w_hr, then the cell as usual */
            real *dhs_t = a->dhs + chunk_row * P, *dm = a->dm + r.b0 * H;
            lstm_proj_step_backward(dhs_t, dh, dy_t, a->dy ? P : 0, lengths, t, r.rows, P);
            FR_FN(recurrent_product)(a->proj, dm, H, dhs_t, P, r.rows, 0);
            lstm_step_backward(dG_t, a->zero_h + r.b0 * H, dc, dm, H, a->gates + row * G,
                               a->tanh_c + row * H, c_prev, c_stride, a->w_p, lengths, t,
                               r.rows, H);
        } else
            lstm_step_backward(dG_t, dh, dc, dy_t, a->dy ? H : 0, a->gates + row * G,
                               a->tanh_c + row * H, c_prev, c_stride, a->w_p, lengths, t,
                               r.rows, H);
        /* dh += (dG_t w_hh) [* mask] */
        FR_FN(recurrent_product_masked)(a->rec, dh, dG_t, G, r.rows,
                                        a->mask ? a->mask + r.b0 * P : NULL, a->tmp + r.b0 * P);
        FR_FN(input_grad_step)(a->dx, dG_t, t, r.b0, r.rows); /* dx_t = dG_t w_ih */
    }
}

/* The weight gradients (accumulated) and what they read besides the loop's buffers. */
typedef struct {
    real *dw_ih, *dw_hh, *db_ih, *db_hh, *dw_p, *dw_hr; /* dw_p, dw_hr: NULL to skip */
    const real *x, *y, *h0;                             /* (T, B, I), (T, B, P), (B, P) */
    real *hm;                                           /* (steps, B, P) if masked */
    real *m;                                            /* (steps, B, H) if projected */
    ptrdiff_t I;
} lstm_weight_grads;

/* After the chunk [a->t_lo, a->t_hi) of the time loop: its share of every weight gradient. */
static void lstm_chunk_grads(const lstm_weight_grads *w, const lstm_backward_loop *a) {
    const ptrdiff_t t0 = a->t_lo, n = a->t_hi - a->t_lo, B = a->B, H = a->H, P = a->P;
    if (w->dw_p && a->w_p)
        lstm_peephole_grads(w->dw_p, a->dG, a->c + t0 * B * H,
                            t0 > 0 ? a->c + (t0 - 1) * B * H : a->c0, a->lengths, t0, n, B, H);
    FR_FN(weight_grads)(w->dw_ih, w->dw_hh, w->db_ih, w->db_hh, a->dG, w->x + t0 * B * w->I,
                        t0 > 0 ? w->y + (t0 - 1) * B * P : w->h0, w->y + t0 * B * P, a->mask,
                        w->hm, n, B, w->I, P, 4 * H);
    if (w->dw_hr && a->proj)
        lstm_projection_grads(w->dw_hr, w->m, a->dhs, a->gates + t0 * B * 4 * H,
                              a->tanh_c + t0 * B * H, a->lengths, t0, n, B, H, P);
}

int FR_FN(lstm_backward)(real *dx, real *dh0, real *dc0, real *dw_ih, real *dw_hh,
                         real *db_ih, real *db_hh, real *dw_p, real *dw_hr, const real *dy,
                         const real *dh_n, const real *dc_n, const real *saved, const real *y,
                         const real *x, const real *h0, const real *c0, const real *w_ih,
                         const real *w_hh, const real *w_p, const real *w_hr,
                         const int64_t *lengths, const real *h_mask, ptrdiff_t T, ptrdiff_t B,
                         ptrdiff_t I, ptrdiff_t H, ptrdiff_t P, const void *pack) {
    const ptrdiff_t G = 4 * H, steps = FR_FN(grad_chunk_steps)(T, B);
    real *dG = FR_FN(alloc)(steps * B * G); /* (steps, B, 4H) dL/d pre-activations */
    real *zeros = FR_FN(alloc_zeroed)(H > P ? H : P); /* stands in for a NULL dy or c0 row */
    real *tmp = h_mask ? FR_FN(alloc)(B * P) : NULL;       /* (B, P) */
    real *hm = h_mask ? FR_FN(alloc)(steps * B * P) : NULL; /* (steps, B, P) h_{t-1} * mask */
    real *dhs = w_hr ? FR_FN(alloc)(steps * B * P) : NULL; /* (steps, B, P) */
    real *m = w_hr ? FR_FN(alloc)(steps * B * H) : NULL;   /* (steps, B, H) m_t rebuilt */
    real *dm = w_hr ? FR_FN(alloc)(B * H) : NULL;          /* (B, H) */
    real *zero_h = w_hr ? FR_FN(alloc_zeroed)(B * H) : NULL;
    fr_recurrent rec[2], proj;
    fr_input_grad dx_steps;
    int status = FR_ERR_NOMEM;
    if (!dG || !zeros || (h_mask && (!tmp || !hm)) || (w_hr && (!dhs || !m || !dm || !zero_h)) ||
        lstm_products(rec, &proj, 1, w_hh, w_hr, T, B, H, P, pack) != FR_OK)
        goto done;
    if (FR_FN(input_grad_prepare)(&dx_steps, dx, w_ih, T, B, I, G) != FR_OK) {
        FR_FN(recurrent_free)(rec);
        FR_FN(recurrent_free)(&proj);
        goto done;
    }
    lstm_saved s = lstm_saved_views((real *)saved, T, B, H);
    /* dh0 (B, P), dc0 (B, H) carry dL/dh_t, dL/dc_t back through time and end as dL/dh0,
     * dL/dc0 */
    FR_FN(init_state)(dh0, dh_n, B * P);
    FR_FN(init_state)(dc0, dc_n, B * H);
    lstm_backward_loop loop = {dG,  dh0,    dc0,     dy,     s.gates,
                               s.tanh_c, s.c, c0,    zeros,  w_p,
                               h_mask, tmp, dhs,     dm,     zero_h,
                               rec, w_hr ? &proj : NULL, &dx_steps, lengths,
                               0,   T,      B,       H,      P};
    lstm_weight_grads grads = {dw_ih, dw_hh, db_ih, db_hh, dw_p, dw_hr, x, y, h0, hm, m, I};
    for (ptrdiff_t t_hi = T; t_hi > 0; t_hi = loop.t_lo) {
        loop.t_lo = fr_chunk_first(t_hi, steps);
        loop.t_hi = t_hi;
        fr_for_row_blocks(B, 1, lstm_backward_rows, &loop);
        lstm_chunk_grads(&grads, &loop);
    }
    status = FR_OK;
    FR_FN(recurrent_free)(rec);
    FR_FN(recurrent_free)(&proj);
    FR_FN(input_grad_free)(&dx_steps);
done:
    free(dG);
    free(zeros);
    free(tmp);
    free(hm);
    free(dhs);
    free(m);
    free(dm);
    free(zero_h);
    return status;
}
