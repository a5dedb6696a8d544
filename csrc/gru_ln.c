/* gru_ln.c - layer-normalised GRU (PyTorch's reset-after GRU with each product normalised
 * per gate block, as in Ba et al. 2016), forward and BPTT.
 *
 *   [xr xz xn] = g_ih * LN(x_t w_ih^T) + b_ih                            (B, 3H)
 *   [hr hz hn] = g_hh * LN(h_{t-1} w_hh^T) + b_hh
 *   r = sigma(xr + hr)  z = sigma(xz + hz)  n = tanh(xn + r * hn)
 *   h_t = (1 - z) * n + z * h_{t-1},  y_t = h_t
 *
 * LN and its backward in layernorm.h; ln (6H) = [g_ih (3H) g_hh (3H)]. As lstm_ln.c, the
 * per-step product is stored and the cell runs row by row (a norm needs whole rows).
 * Recurrent dropout (h_mask) as in seq.h. Saved per (t, b): gates r, z, n (3H), hn (H),
 * x_hat (3H), h_hat (3H), then rstd of x (3) and h (3).
 */
#include "act.h"
#include "layernorm.h"

/* Views of the saved block (layout in fastrnn.h). */
typedef struct {
    real *gates, *hn, *x_hat, *h_hat, *x_rstd, *h_rstd;
} gln_saved;

static gln_saved gln_saved_views(real *s, ptrdiff_t T, ptrdiff_t B, ptrdiff_t H) {
    const ptrdiff_t R = T * B;
    gln_saved v = {s, s + R * 3 * H, s + R * 4 * H, s + R * 7 * H, s + R * 10 * H,
                   s + R * (10 * H + 3)};
    return v;
}

/* What the forward time loop reads and writes (the shared part first, layernorm.h). */
typedef struct {
    fr_ln_forward loop;           /* y, h, hm, ah (B, 3H), mask, rec, lengths, sizes */
    gln_saved s;
    const real *pre;              /* (T, B, 3H) g_ih LN(x w_ih^T) + b_ih */
    const real *ln, *b_hh;        /* (6H); (3H) or NULL */
} gln_forward_loop;

/* One valid row of one step: the cell after the product ah (3H). */
static void gln_row_forward(const void *ctx, ptrdiff_t t, ptrdiff_t b) {
    const gln_forward_loop *a = ctx;
    const ptrdiff_t H = a->loop.H, row = t * a->loop.B + b;
    const real *g_hh = a->ln + 3 * H, *px = a->pre + row * 3 * H;
    real *g = a->s.gates + row * 3 * H, *hat = a->s.h_hat + row * 3 * H;
    real *hn = a->s.hn + row * H, *h = a->loop.h + b * H;
    FR_FN(ln_blocks)(hat, a->s.h_rstd + row * 3, a->loop.ah + b * 3 * H, 3, H);
    for (ptrdiff_t j = 0; j < 3 * H; j++) /* ph = g_hh h_hat + b_hh, kept in g for now */
        g[j] = g_hh[j] * hat[j] + (a->b_hh ? a->b_hh[j] : 0);
    for (ptrdiff_t j = 0; j < H; j += FR_VLEN) {
        const ptrdiff_t m = fr_vlanes(H, j);
        fr_vec r = fr_vsigmoid(fr_vload(px + j, m) + fr_vload(g + j, m));
        fr_vec z = fr_vsigmoid(fr_vload(px + H + j, m) + fr_vload(g + H + j, m));
        fr_vec ph_n = fr_vload(g + 2 * H + j, m);
        fr_vec n = fr_vtanh(fr_vload(px + 2 * H + j, m) + r * ph_n);
        fr_vec h_t = fr_vmuladd(z, fr_vload(h + j, m), ((real)1 - z) * n);
        fr_vstore(hn + j, ph_n, m);
        fr_vstore(g + j, r, m);
        fr_vstore(g + H + j, z, m);
        fr_vstore(g + 2 * H + j, n, m);
        fr_vstore(h + j, h_t, m);
        fr_vstore(a->loop.y + row * H + j, h_t, m);
    }
}

int FR_FN(gru_ln_forward)(real *y, real *h_n, real *saved, const real *x, const real *h0,
                          const real *w_ih, const real *w_hh, const real *b_ih,
                          const real *b_hh, const real *ln, const int64_t *lengths,
                          const real *h_mask, ptrdiff_t T, ptrdiff_t B, ptrdiff_t I,
                          ptrdiff_t H) {
    const ptrdiff_t R = T * B;
    fr_ln_workspace w;
    real *block = saved; /* inference: a workspace of the saved block's size */
    if (FR_FN(ln_forward_setup)(&w, &block, R * (FR_GRU_LN_SAVED_PER_UNIT * H +
                                                 FR_GRU_LN_SAVED_PER_ROW),
                                FR_CELL_GRU, w_hh, h_n, h0, h_mask, T, B, H, 3) != FR_OK)
        return FR_ERR_NOMEM;
    gln_saved s = gln_saved_views(block, T, B, H);
    FR_FN(ln_input_side)(w.pre, s.x_hat, s.x_rstd, x, w_ih, b_ih, NULL, ln, R, I, 3, H);
    gln_forward_loop loop = {
        {y, h_n, w.hm, w.ah, h_mask, w.rec, lengths, T, B, H, 3, gln_row_forward},
        s, w.pre, ln, b_hh};
    fr_for_row_blocks(B, 1, FR_FN(ln_forward_rows), &loop);
    FR_FN(ln_forward_free)(&w);
    return FR_OK;
}

/* What the backward time loop reads and writes (the shared part first, layernorm.h). */
typedef struct {
    fr_ln_backward loop;          /* dh, tmp, dGr = dL/d(h w_hh^T) (T, B, 3H), mask, rec */
    real *dG, *dGh;               /* (T, B, 3H) dL/d[xr xz xn], dL/d[hr hz hn] */
    const real *dy, *y, *h0, *zeros;
    gln_saved s;
    const real *ln;
} gln_backward_loop;

/* One valid row of one step backward: dG, dGh, dGr of (t, b) written; dh (H) becomes the
 * direct part dL/dh_t * z, the recurrent product adds the rest. */
static void gln_row_backward(const void *ctx, ptrdiff_t t, ptrdiff_t b) {
    const gln_backward_loop *a = ctx;
    const ptrdiff_t H = a->loop.H, row = t * a->loop.B + b;
    const real *g = a->s.gates + row * 3 * H, *hn = a->s.hn + row * H;
    const real *h_prev = t > 0   ? a->y + (row - a->loop.B) * H
                         : a->h0 ? a->h0 + b * H
                                 : a->zeros;
    const real *dy = a->dy ? a->dy + row * H : a->zeros;
    real *dG = a->dG + row * 3 * H, *dGh = a->dGh + row * 3 * H, *dh = a->loop.dh + b * H;
    for (ptrdiff_t j = 0; j < H; j++) { /* h = (1 - z) n + z h_prev;  n = tanh(xn + r hn) */
        real r = g[j], z = g[H + j], n = g[2 * H + j], dh_j = dy[j] + dh[j];
        real da_n = dh_j * ((real)1 - z) * fr_dtanh_from_output(n);
        real da_r = da_n * hn[j] * fr_dsigmoid_from_output(r);
        real da_z = dh_j * (h_prev[j] - n) * fr_dsigmoid_from_output(z);
        dG[j] = dGh[j] = da_r;
        dG[H + j] = dGh[H + j] = da_z;
        dG[2 * H + j] = da_n;
        dGh[2 * H + j] = da_n * r;
        dh[j] = dh_j * z;
    }
    /* [hr hz hn] = g_hh LN(h w_hh^T) + b_hh */
    FR_FN(ln_blocks_backward)(a->loop.dGr + row * 3 * H, dGh, a->ln + 3 * H,
                              a->s.h_hat + row * 3 * H, a->s.h_rstd + row * 3, 3, H);
}

/* Past a length: dG and dGh of the row are 0 (the shared loop zeroes dGr). */
static void gln_row_skip(const void *ctx, ptrdiff_t row) {
    const gln_backward_loop *a = ctx;
    const ptrdiff_t N = 3 * a->loop.H;
    memset(a->dG + row * N, 0, (size_t)N * sizeof(real));
    memset(a->dGh + row * N, 0, (size_t)N * sizeof(real));
}

/* After the loop: dln (6H) += [sum dG x_hat, sum dGh h_hat] over the valid rows; then dG
 * becomes dL/d(x w_ih^T) (LN backward of g_ih x_hat, through dv (3H)). */
static void gln_param_grads(real *dln, real *dG, const real *dGh, real *dv, gln_saved s,
                            const real *ln, const int64_t *lengths, ptrdiff_t T, ptrdiff_t B,
                            ptrdiff_t H) {
    for (ptrdiff_t row = 0; row < T * B; row++) {
        if (!fr_step_valid(lengths, row / B, row % B))
            continue; /* dG stays 0: so is dL/d(x w_ih^T) */
        real *d = dG + row * 3 * H;
        const real *dh = dGh + row * 3 * H;
        const real *xh = s.x_hat + row * 3 * H, *hh = s.h_hat + row * 3 * H;
        for (ptrdiff_t j = 0; j < 3 * H; j++) {
            dln[j] += d[j] * xh[j];
            dln[3 * H + j] += dh[j] * hh[j];
        }
        FR_FN(ln_blocks_backward)(dv, d, ln, xh, s.x_rstd + row * 3, 3, H);
        memcpy(d, dv, (size_t)(3 * H) * sizeof(real));
    }
}

int FR_FN(gru_ln_backward)(real *dx, real *dh0, real *dw_ih, real *dw_hh, real *db_ih,
                           real *db_hh, real *dln, const real *dy, const real *dh_n,
                           const real *saved, const real *y, const real *x, const real *h0,
                           const real *w_ih, const real *w_hh, const real *ln,
                           const int64_t *lengths, const real *h_mask, ptrdiff_t T,
                           ptrdiff_t B, ptrdiff_t I, ptrdiff_t H) {
    const ptrdiff_t R = T * B;
    real *dG = FR_FN(alloc)(R * 3 * H), *dGh = FR_FN(alloc)(R * 3 * H);
    real *dGr = FR_FN(alloc)(R * 3 * H), *zeros = FR_FN(alloc_zeroed)(H);
    real *dv = FR_FN(alloc)(3 * H), *tmp = h_mask ? FR_FN(alloc)(B * H) : NULL;
    real *hm = h_mask ? FR_FN(alloc)(R * H) : NULL; /* (T, B, H) masked h_{t-1} */
    fr_recurrent rec[2];
    int status = FR_ERR_NOMEM;
    if (!dG || !dGh || !dGr || !zeros || !dv || (h_mask && (!tmp || !hm)) ||
        FR_FN(recurrent_setup_cell)(rec, FR_CELL_GRU, 1, w_hh, H, T, B, NULL) != FR_OK)
        goto done;
    gln_saved s = gln_saved_views((real *)saved, T, B, H);
    FR_FN(init_state)(dh0, dh_n, B * H);
    gln_backward_loop loop = {{dh0, tmp, dGr, h_mask, rec, lengths, T, B, H, 3, gln_row_backward,
                               gln_row_skip},
                              dG, dGh, dy, y, h0, zeros, s, ln};
    fr_for_row_blocks(B, 1, FR_FN(ln_backward_rows), &loop);
    FR_FN(recurrent_free)(rec);
    FR_FN(add_column_sums)(db_ih, dG, R, 3 * H, 3 * H);
    FR_FN(add_column_sums)(db_hh, dGh, R, 3 * H, 3 * H);
    gln_param_grads(dln, dG, dGh, dv, s, ln, lengths, T, B, H);
    FR_FN(input_grads)(dx, dw_ih, NULL, dG, x, w_ih, R, I, 3 * H);
    const real *h_first, *h_rest; /* what the products read: h_{t-1} [* mask] */
    FR_FN(product_inputs)(&h_first, &h_rest, hm, h0, y, h_mask, T, B, H);
    FR_FN(hidden_grads)(dw_hh, NULL, dGr, 3 * H, h_first, h_rest, T, B, H, 3 * H);
    status = FR_OK;
done:
    free(dG);
    free(dGh);
    free(dGr);
    free(zeros);
    free(dv);
    free(tmp);
    free(hm);
    return status;
}
