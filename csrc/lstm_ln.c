/* lstm_ln.c - layer-normalised LSTM (Ba et al. 2016; per gate block, as TF Addons'
 * LayerNormLSTMCell, each product normalised on its own), forward and BPTT.
 *
 *   a_t = g_ih * LN(x_t w_ih^T) + g_hh * LN(h_{t-1} w_hh^T) + b_ih + b_hh    (B, 4H)
 *   i, f, g, o as lstm.c;  c_t = f * c_{t-1} + i * g
 *   h_t = o * tanh(g_c * LN(c_t) + b_c),  y_t = h_t
 *
 * LN(v) = (v - mean) * rstd, rstd = 1 / sqrt(var + eps), over each block of H units (the 4
 * gate blocks of a product, the cell state). ln (10H) = [g_ih (4H) g_hh (4H) g_c (H)
 * b_c (H)]. A norm needs whole rows, so the per-step product is stored (B, 4H) and the cell
 * runs row by row after it, each block of rows its own time loop (fr_for_row_blocks).
 * Recurrent dropout (h_mask) as in seq.h. Saved per (t, b): gates (4H), c_t, tanh(n_t),
 * x_hat (4H), h_hat (4H), c_hat (H), then rstd of x (4), h (4), c (1).
 */
#include "act.h"
#include "layernorm.h"

/* Views of the saved block (layout in fastrnn.h). */
typedef struct {
    real *gates, *c, *tanh_n, *x_hat, *h_hat, *c_hat, *x_rstd, *h_rstd, *c_rstd;
} ln_saved;

static ln_saved ln_saved_views(real *s, ptrdiff_t T, ptrdiff_t B, ptrdiff_t H) {
    const ptrdiff_t R = T * B;
    ln_saved v = {s,               s + R * 4 * H,  s + R * 5 * H,  s + R * 6 * H,
                  s + R * 10 * H,  s + R * 14 * H, s + R * 15 * H, s + R * (15 * H + 4),
                  s + R * (15 * H + 8)};
    return v;
}

/* What the forward time loop reads and writes (the shared part first, layernorm.h). */
typedef struct {
    fr_ln_forward loop;           /* y, h, hm, ah (B, 4H), mask, rec, lengths, sizes */
    real *c;                      /* (B, H) carried cell state */
    ln_saved s;                   /* views of the saved block */
    const real *pre;              /* (T, B, 4H) g_ih LN(x w_ih^T) + b_ih + b_hh */
    const real *ln;               /* (10H) */
} ln_forward_loop;

/* One valid row of one step: the cell after the product ah (4H). */
static void ln_row_forward(const void *ctx, ptrdiff_t t, ptrdiff_t b) {
    const ln_forward_loop *a = ctx;
    const ptrdiff_t H = a->loop.H, row = t * a->loop.B + b;
    const real *g_hh = a->ln + 4 * H, *g_c = a->ln + 8 * H, *b_c = a->ln + 9 * H;
    real *gates = a->s.gates + row * 4 * H, *h_hat = a->s.h_hat + row * 4 * H;
    real *c_hat = a->s.c_hat + row * H, *tn = a->s.tanh_n + row * H, *c = a->c + b * H;
    const real *pre = a->pre + row * 4 * H;
    FR_FN(ln_blocks)(h_hat, a->s.h_rstd + row * 4, a->loop.ah + b * 4 * H, 4, H);
    for (ptrdiff_t j = 0; j < 4 * H; j++) /* i, f, g, o */
        gates[j] = pre[j] + g_hh[j] * h_hat[j];
    for (ptrdiff_t j = 0; j < H; j += FR_VLEN) {
        const ptrdiff_t n = fr_vlanes(H, j);
        fr_vec i = fr_vsigmoid(fr_vload(gates + j, n));
        fr_vec f = fr_vsigmoid(fr_vload(gates + H + j, n));
        fr_vec g = fr_vtanh(fr_vload(gates + 2 * H + j, n));
        fr_vec o = fr_vsigmoid(fr_vload(gates + 3 * H + j, n));
        fr_vstore(gates + j, i, n);
        fr_vstore(gates + H + j, f, n);
        fr_vstore(gates + 2 * H + j, g, n);
        fr_vstore(gates + 3 * H + j, o, n);
        fr_vstore(c + j, fr_vmuladd(f, fr_vload(c + j, n), i * g), n);
    }
    memcpy(a->s.c + row * H, c, (size_t)H * sizeof(real));
    FR_FN(ln_blocks)(c_hat, a->s.c_rstd + row, c, 1, H);
    for (ptrdiff_t j = 0; j < H; j += FR_VLEN) {
        const ptrdiff_t n = fr_vlanes(H, j);
        fr_vec tanh_n = fr_vtanh(fr_vload(g_c + j, n) * fr_vload(c_hat + j, n) +
                                 fr_vload(b_c + j, n));
        fr_vec h = fr_vload(gates + 3 * H + j, n) * tanh_n;
        fr_vstore(tn + j, tanh_n, n);
        fr_vstore(a->loop.h + b * H + j, h, n);
        fr_vstore(a->loop.y + row * H + j, h, n);
    }
}

int FR_FN(lstm_ln_forward)(real *y, real *h_n, real *c_n, real *saved, const real *x,
                           const real *h0, const real *c0, const real *w_ih, const real *w_hh,
                           const real *b_ih, const real *b_hh, const real *ln,
                           const int64_t *lengths, const real *h_mask, ptrdiff_t T,
                           ptrdiff_t B, ptrdiff_t I, ptrdiff_t H) {
    const ptrdiff_t R = T * B;
    fr_ln_workspace w;
    real *block = saved; /* inference: a workspace of the saved block's size */
    if (FR_FN(ln_forward_setup)(&w, &block, R * (FR_LSTM_LN_SAVED_PER_UNIT * H +
                                                 FR_LSTM_LN_SAVED_PER_ROW),
                                FR_CELL_LSTM, w_hh, h_n, h0, h_mask, T, B, H, 4) != FR_OK)
        return FR_ERR_NOMEM;
    ln_saved s = ln_saved_views(block, T, B, H);
    FR_FN(ln_input_side)(w.pre, s.x_hat, s.x_rstd, x, w_ih, b_ih, b_hh, ln, R, I, 4, H);
    FR_FN(init_state)(c_n, c0, B * H);
    ln_forward_loop loop = {
        {y, h_n, w.hm, w.ah, h_mask, w.rec, lengths, T, B, H, 4, ln_row_forward},
        c_n, s, w.pre, ln};
    fr_for_row_blocks(B, 1, FR_FN(ln_forward_rows), &loop);
    FR_FN(ln_forward_free)(&w);
    return FR_OK;
}

/* What the backward time loop reads and writes (the shared part first, layernorm.h). */
typedef struct {
    fr_ln_backward loop;          /* dh, tmp, dGr = dL/d(h w_hh^T) (T, B, 4H), mask, rec */
    real *dG, *dn, *dc;           /* (T, B, 4H) dL/da; (T, B, H) dL/dn; carried (B, H) */
    const real *dy, *zeros;       /* (T, B, H) or NULL; (H) zeros */
    ln_saved s;
    const real *c0, *ln;
} ln_backward_loop;

/* One valid row of one step backward: dG, dGh, dn of (t, b) written, dh (H) zeroed for the
 * recurrent product, dc (H) carried to step t-1. */
static void ln_row_backward(const void *ctx, ptrdiff_t t, ptrdiff_t b) {
    const ln_backward_loop *a = ctx;
    const ptrdiff_t H = a->loop.H, row = t * a->loop.B + b;
    const real *g = a->s.gates + row * 4 * H, *tn = a->s.tanh_n + row * H;
    const real *c_prev = t > 0   ? a->s.c + (row - a->loop.B) * H
                         : a->c0 ? a->c0 + b * H
                                 : a->zeros;
    const real *dy = a->dy ? a->dy + row * H : a->zeros;
    real *dG = a->dG + row * 4 * H, *dn = a->dn + row * H, *dh = a->loop.dh + b * H;
    real *dc = a->dc + b * H;
    for (ptrdiff_t j = 0; j < H; j++) { /* h = o tanh(n) */
        real dh_j = dy[j] + dh[j];
        dG[3 * H + j] = dh_j * tn[j] * fr_dsigmoid_from_output(g[3 * H + j]);
        dn[j] = dh_j * g[3 * H + j] * fr_dtanh_from_output(tn[j]);
        dh[j] = 0;
    }
    /* n = g_c LN(c) + b_c: dG's f block holds dL/dc from it for a moment */
    FR_FN(ln_blocks_backward)(dG + H, dn, a->ln + 8 * H, a->s.c_hat + row * H,
                              a->s.c_rstd + row, 1, H);
    for (ptrdiff_t j = 0; j < H; j++) { /* c = f c_prev + i g */
        real dc_j = dc[j] + dG[H + j];
        dG[j] = dc_j * g[2 * H + j] * fr_dsigmoid_from_output(g[j]);
        dG[H + j] = dc_j * c_prev[j] * fr_dsigmoid_from_output(g[H + j]);
        dG[2 * H + j] = dc_j * g[j] * fr_dtanh_from_output(g[2 * H + j]);
        dc[j] = dc_j * g[H + j];
    }
    /* a = ... + g_hh LN(h w_hh^T) */
    FR_FN(ln_blocks_backward)(a->loop.dGr + row * 4 * H, dG, a->ln + 4 * H,
                              a->s.h_hat + row * 4 * H, a->s.h_rstd + row * 4, 4, H);
}

/* Past a length: dG and dn of the row are 0 (the shared loop zeroes dGr). */
static void ln_row_skip(const void *ctx, ptrdiff_t row) {
    const ln_backward_loop *a = ctx;
    const ptrdiff_t H = a->loop.H;
    memset(a->dG + row * 4 * H, 0, (size_t)(4 * H) * sizeof(real));
    memset(a->dn + row * H, 0, (size_t)H * sizeof(real));
}

/* After the loop: dln (10H) += [sum dG x_hat, sum dG h_hat, sum dn c_hat, sum dn] over the
 * valid rows (past a length dG and dn are 0 and h_hat, c_hat unset); then dG becomes
 * dL/d(x w_ih^T) (LN backward of g_ih x_hat, row by row, through dv (4H)). */
static void ln_param_grads(real *dln, real *dG, real *dv, const real *dn, ln_saved s,
                           const real *ln, const int64_t *lengths, ptrdiff_t T, ptrdiff_t B,
                           ptrdiff_t H) {
    for (ptrdiff_t row = 0; row < T * B; row++) {
        if (!fr_step_valid(lengths, row / B, row % B))
            continue; /* dG stays 0: so is dL/d(x w_ih^T) */
        real *d = dG + row * 4 * H;
        const real *xh = s.x_hat + row * 4 * H, *hh = s.h_hat + row * 4 * H;
        const real *ch = s.c_hat + row * H, *n = dn + row * H;
        for (ptrdiff_t j = 0; j < 4 * H; j++) {
            dln[j] += d[j] * xh[j];
            dln[4 * H + j] += d[j] * hh[j];
        }
        for (ptrdiff_t j = 0; j < H; j++) {
            dln[8 * H + j] += n[j] * ch[j];
            dln[9 * H + j] += n[j];
        }
        FR_FN(ln_blocks_backward)(dv, d, ln, xh, s.x_rstd + row * 4, 4, H);
        memcpy(d, dv, (size_t)(4 * H) * sizeof(real));
    }
}

int FR_FN(lstm_ln_backward)(real *dx, real *dh0, real *dc0, real *dw_ih, real *dw_hh,
                            real *db_ih, real *db_hh, real *dln, const real *dy,
                            const real *dh_n, const real *dc_n, const real *saved,
                            const real *y, const real *x, const real *h0, const real *c0,
                            const real *w_ih, const real *w_hh, const real *ln,
                            const int64_t *lengths, const real *h_mask, ptrdiff_t T,
                            ptrdiff_t B, ptrdiff_t I, ptrdiff_t H) {
    const ptrdiff_t R = T * B;
    real *dG = FR_FN(alloc)(R * 4 * H), *dGh = FR_FN(alloc)(R * 4 * H);
    real *dn = FR_FN(alloc)(R * H), *zeros = FR_FN(alloc_zeroed)(H), *dv = FR_FN(alloc)(4 * H);
    real *tmp = h_mask ? FR_FN(alloc)(B * H) : NULL;
    real *hm = h_mask ? FR_FN(alloc)(R * H) : NULL; /* (T, B, H) masked h_{t-1} */
    fr_recurrent rec[2];
    int status = FR_ERR_NOMEM;
    if (!dG || !dGh || !dn || !zeros || !dv || (h_mask && (!tmp || !hm)) ||
        FR_FN(recurrent_setup_cell)(rec, FR_CELL_LSTM, 1, w_hh, H, T, B, NULL) != FR_OK)
        goto done;
    ln_saved s = ln_saved_views((real *)saved, T, B, H);
    FR_FN(init_state)(dh0, dh_n, B * H);
    FR_FN(init_state)(dc0, dc_n, B * H);
    ln_backward_loop loop = {{dh0, tmp, dGh, h_mask, rec, lengths, T, B, H, 4, ln_row_backward,
                              ln_row_skip},
                             dG, dn, dc0, dy, zeros, s, c0, ln};
    fr_for_row_blocks(B, 1, FR_FN(ln_backward_rows), &loop);
    FR_FN(recurrent_free)(rec);
    FR_FN(add_column_sums)(db_ih, dG, R, 4 * H, 4 * H);
    FR_FN(add_column_sums)(db_hh, dG, R, 4 * H, 4 * H);
    ln_param_grads(dln, dG, dv, dn, s, ln, lengths, T, B, H);
    FR_FN(input_grads)(dx, dw_ih, NULL, dG, x, w_ih, R, I, 4 * H);
    const real *h_first, *h_rest; /* what the products read: h_{t-1} [* mask] */
    FR_FN(product_inputs)(&h_first, &h_rest, hm, h0, y, h_mask, T, B, H);
    FR_FN(hidden_grads)(dw_hh, NULL, dGh, 4 * H, h_first, h_rest, T, B, H, 4 * H);
    status = FR_OK;
done:
    free(dG);
    free(dGh);
    free(dn);
    free(zeros);
    free(dv);
    free(tmp);
    free(hm);
    return status;
}
