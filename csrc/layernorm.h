/* layernorm.h - layer norm over blocks of H units, for the layer-normalised cells
 * (lstm_ln.c, gru_ln.c): LN(v) = (v - mean) * rstd, rstd = 1 / sqrt(var + eps) per block,
 * and its backward from the saved normalised values and rstd. Compiled with each cell, once
 * per dtype and ISA (real.h).
 */
#ifndef FASTRNN_LAYERNORM_H
#define FASTRNN_LAYERNORM_H

#include <math.h>
#include <string.h>

#include "seq.h"

#define FR_LN_EPS ((real)1e-5) /* torch.nn.LayerNorm's default */

/* hat (n*H) = LN of each of the n blocks of v (n*H); rstd (n) of each. */
static inline void FR_FN(ln_blocks)(real *restrict hat, real *restrict rstd,
                                    const real *restrict v, ptrdiff_t n, ptrdiff_t H) {
    for (ptrdiff_t k = 0; k < n; k++) {
        const real *restrict a = v + k * H;
        real mean = 0, var = 0;
        for (ptrdiff_t j = 0; j < H; j++)
            mean += a[j];
        mean /= (real)H;
        for (ptrdiff_t j = 0; j < H; j++)
            var += (a[j] - mean) * (a[j] - mean);
        real r = (real)(1.0 / sqrt((double)(var / (real)H + FR_LN_EPS)));
        for (ptrdiff_t j = 0; j < H; j++)
            hat[k * H + j] = (a[j] - mean) * r;
        rstd[k] = r;
    }
}

/* Undo hat = LN(v) per block: dv (n*H) = rstd (dhat - mean(dhat) - hat mean(dhat hat)),
 * with dhat = d * gain (gain (n*H)). */
static inline void FR_FN(ln_blocks_backward)(real *restrict dv, const real *restrict d,
                                             const real *restrict gain,
                                             const real *restrict hat,
                                             const real *restrict rstd, ptrdiff_t n,
                                             ptrdiff_t H) {
    for (ptrdiff_t k = 0; k < n; k++) {
        real m1 = 0, m2 = 0;
        for (ptrdiff_t j = 0; j < H; j++) {
            real dh = d[k * H + j] * gain[k * H + j];
            m1 += dh;
            m2 += dh * hat[k * H + j];
        }
        m1 /= (real)H;
        m2 /= (real)H;
        for (ptrdiff_t j = 0; j < H; j++)
            dv[k * H + j] =
                rstd[k] * (d[k * H + j] * gain[k * H + j] - m1 - hat[k * H + j] * m2);
    }
}

/* The input side of a layer-normalised cell, for all R = T*B rows before the loop:
 *   pre (R, G*H) = gain * LN(x w_ih^T) + b_a + b_b      per gate block (NULL biases: 0)
 * with x_hat (R, G*H) and x_rstd (R, G) saved. */
static inline void FR_FN(ln_input_side)(real *pre, real *x_hat, real *x_rstd, const real *x,
                                        const real *w_ih, const real *b_a, const real *b_b,
                                        const real *gain, ptrdiff_t R, ptrdiff_t I,
                                        ptrdiff_t G, ptrdiff_t H) {
    const ptrdiff_t N = G * H;
    FR_FN(input_projection)(pre, x, w_ih, NULL, NULL, R, I, N);
    for (ptrdiff_t row = 0; row < R; row++) {
        real *p = pre + row * N, *hat = x_hat + row * N;
        FR_FN(ln_blocks)(hat, x_rstd + row * G, p, G, H);
        for (ptrdiff_t j = 0; j < N; j++)
            p[j] = gain[j] * hat[j] + (b_a ? b_a[j] : 0) + (b_b ? b_b[j] : 0);
    }
}

/* What a layer-normalised forward works in: the input side pre (T*B, G*H), the step's product
 * ah (B, G*H), h * mask (B, H) under dropout, the recurrent product's weights, and for
 * inference a stand-in (work) for the saved block. */
typedef struct {
    real *work, *pre, *ah, *hm;
    fr_recurrent rec[2];
    int ready;               /* rec set up */
} fr_ln_workspace;

static inline void FR_FN(ln_forward_free)(fr_ln_workspace *w) {
    if (w->ready)
        FR_FN(recurrent_free)(w->rec);
    free(w->work);
    free(w->pre);
    free(w->ah);
    free(w->hm);
}

/* Allocate and set up w for `cell` (FR_CELL_*, G gates) over T steps of B rows; *block is
 * the saved block, or w->work of saved_reals when it is NULL (inference). h (B, H) gets h0
 * (NULL: zeros), w->hm its masked copy. Returns 0, or FR_ERR_NOMEM (w freed). */
static inline int FR_FN(ln_forward_setup)(fr_ln_workspace *w, real **block,
                                          ptrdiff_t saved_reals, int cell, const real *w_hh,
                                          real *h, const real *h0, const real *mask,
                                          ptrdiff_t T, ptrdiff_t B, ptrdiff_t H, ptrdiff_t G) {
    w->work = *block ? NULL : FR_FN(alloc)(saved_reals);
    w->pre = FR_FN(alloc)(T * B * G * H);
    w->ah = FR_FN(alloc)(B * G * H);
    w->hm = mask ? FR_FN(alloc)(B * H) : NULL;
    w->ready = 0;
    if ((!*block && !w->work) || !w->pre || !w->ah || (mask && !w->hm) ||
        FR_FN(recurrent_setup_cell)(w->rec, cell, 0, w_hh, H, T, B, NULL) != FR_OK) {
        FR_FN(ln_forward_free)(w);
        return FR_ERR_NOMEM;
    }
    w->ready = 1;
    if (!*block)
        *block = w->work;
    FR_FN(init_state)(h, h0, B * H);
    if (mask)
        FR_FN(mask_state)(w->hm, h0, mask, B * H);
    return FR_OK;
}

/* The time loops of a layer-normalised cell, for one block of rows (fr_for_row_blocks: each
 * block its own loop; a norm needs whole rows, so the per-step product is stored and the
 * cell runs row by row). A cell's loop struct starts with one of these, and `row` gets
 * that struct. */
typedef struct {
    real *y, *h, *hm, *ah;   /* (T, B, H); carried (B, H); h * mask (B, H); (B, G*H) */
    const real *mask;        /* (B, H) recurrent dropout mask, or NULL */
    const fr_recurrent *rec; /* h w_hh^T, G gate blocks */
    const int64_t *lengths;
    ptrdiff_t T, B, H, G;
    void (*row)(const void *cell, ptrdiff_t t, ptrdiff_t b); /* one valid row of step t */
} fr_ln_forward;

/* Per step: ah = h_{t-1} [* mask] w_hh^T, then the cell's row for every row still inside
 * its sequence (it writes h and y); the others keep h and output zeros. */
static void FR_FN(ln_forward_rows)(const void *ctx, fr_rows r) {
    const fr_ln_forward *a = ctx;
    const ptrdiff_t H = a->H;
    for (ptrdiff_t t = 0; t < a->T; t++) {
        const real *operand = a->mask ? a->hm : a->h;
        FR_FN(recurrent_product)(a->rec, a->ah + r.b0 * a->G * H, a->G * H,
                                 operand + r.b0 * H, H, r.rows, 0);
        for (ptrdiff_t b = r.b0; b < r.b0 + r.rows; b++) {
            if (fr_step_valid(a->lengths, t, b))
                a->row(ctx, t, b);
            else
                memset(a->y + (t * a->B + b) * H, 0, (size_t)H * sizeof(real));
            if (a->mask)
                FR_FN(mask_units)(a->hm + b * H, a->h + b * H, a->mask + b * H, H);
        }
    }
}

/* The backward loop's shared part: per step (last first) the cell's row for every valid row
 * (writing dGr, the gradient of the step's h w_hh^T, and its own), `skip` zeroing the
 * gradients of the others, then dh += (dGr_t w_hh) [* mask]. */
typedef struct {
    real *dh, *tmp, *dGr;    /* carried (B, H); (B, H) or NULL; (T, B, G*H) */
    const real *mask;        /* (B, H) or NULL */
    const fr_recurrent *rec; /* backward: dGr w_hh */
    const int64_t *lengths;
    ptrdiff_t T, B, H, G;
    void (*row)(const void *cell, ptrdiff_t t, ptrdiff_t b);
    void (*skip)(const void *cell, ptrdiff_t row); /* row = t * B + b past its length */
} fr_ln_backward;

static void FR_FN(ln_backward_rows)(const void *ctx, fr_rows r) {
    const fr_ln_backward *a = ctx;
    const ptrdiff_t B = a->B, H = a->H, N = a->G * a->H;
    for (ptrdiff_t t = a->T - 1; t >= 0; t--) {
        for (ptrdiff_t b = r.b0; b < r.b0 + r.rows; b++) {
            if (fr_step_valid(a->lengths, t, b))
                a->row(ctx, t, b);
            else {
                memset(a->dGr + (t * B + b) * N, 0, (size_t)N * sizeof(real));
                a->skip(ctx, t * B + b);
            }
        }
        FR_FN(recurrent_product_masked)(a->rec, a->dh + r.b0 * H, a->dGr + (t * B + r.b0) * N,
                                        N, r.rows, a->mask ? a->mask + r.b0 * H : NULL,
                                        a->tmp ? a->tmp + r.b0 * H : NULL);
    }
}

#endif
