/* seq.h - the parts of a recurrent layer that every cell shares.
 *
 * Forward hoists the input projection out of the time loop (one GEMM over all T*B
 * rows); backward runs only the per-step work inside the loop and leaves the
 * weight gradients, bias gradients and dx to a few GEMMs over all T*B rows after it.
 * Included by rnn.c, lstm.c and gru.c, so it is compiled once per dtype with them.
 */
#ifndef FASTRNN_SEQ_H
#define FASTRNN_SEQ_H

#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "fastrnn.h"
#include "gemm/direct.h"
#include "gemm/microkernel.h"
#include "threads.h"

/* Products with at most this many rows skip BLAS (its call overhead dominates). */
#define FR_DIRECT_ROWS 4

/* Whether row b is still inside its sequence at step t. */
static inline int fr_step_valid(const int64_t *lengths, ptrdiff_t t, ptrdiff_t b) {
    return lengths == NULL || t < lengths[b];
}

/* A workspace of n reals that the caller overwrites before reading (malloc: repeated calls
 * reuse the heap instead of faulting in fresh zeroed pages), or NULL on failure. */
static inline real *FR_FN(alloc)(ptrdiff_t n) {
    return (real *)malloc((size_t)(n > 0 ? n : 1) * sizeof(real));
}

/* A zeroed buffer of n reals, or NULL when the allocation fails. */
static inline real *FR_FN(alloc_zeroed)(ptrdiff_t n) {
    return (real *)calloc((size_t)(n > 0 ? n : 1), sizeof(real));
}

/* out (rows, cols) = bias_a + bias_b broadcast over rows (NULL biases count as 0). */
static inline void FR_FN(fill_bias_rows)(real *out, const real *bias_a, const real *bias_b,
                                         ptrdiff_t rows, ptrdiff_t cols) {
    if (rows <= 0) /* an empty batch: nothing to fill (not even row 0) */
        return;
    for (ptrdiff_t j = 0; j < cols; j++)
        out[j] = (bias_a ? bias_a[j] : 0) + (bias_b ? bias_b[j] : 0);
    for (ptrdiff_t r = 1; r < rows; r++)
        memcpy(out + r * cols, out, (size_t)cols * sizeof(real));
}

/* Hoisted input projection for the whole sequence:
 * proj (T*B, GH) = x (T*B, I) . w_ih^T (I, GH) + bias_a + bias_b */
static inline void FR_FN(input_projection)(real *proj, const real *x, const real *w_ih,
                                           const real *bias_a, const real *bias_b,
                                           ptrdiff_t rows, ptrdiff_t I, ptrdiff_t GH) {
    FR_FN(fill_bias_rows)(proj, bias_a, bias_b, rows, GH);
    if (rows <= FR_DIRECT_ROWS)
        FR_FN(gemm_direct_nt)(proj, GH, x, I, w_ih, rows, GH, I);
    else
        FR_FN(gemm)(0, 1, rows, GH, I, 1, x, I, w_ih, I, 1, proj, GH);
}

/* The initial state, or zeros when it is NULL: state (B, H) = init or 0. */
static inline void FR_FN(init_state)(real *state, const real *init, ptrdiff_t n) {
    if (init)
        memcpy(state, init, (size_t)n * sizeof(real));
    else
        memset(state, 0, (size_t)n * sizeof(real));
}

/* db (cols) += sum over rows of dG (rows, cols) with leading dimension ld. */
static inline void FR_FN(add_column_sums)(real *db, const real *dG, ptrdiff_t rows,
                                          ptrdiff_t cols, ptrdiff_t ld) {
    if (db == NULL)
        return;
    for (ptrdiff_t r = 0; r < rows; r++)
        for (ptrdiff_t j = 0; j < cols; j++)
            db[j] += dG[r * ld + j];
}

/* After the time loop, the input side in three passes over all rows:
 *   dx    (T*B, I)  = dG (T*B, GH) . w_ih (GH, I)      overwritten
 *   dw_ih (GH, I)  += dG^T (GH, T*B) . x (T*B, I)      accumulated
 *   db_ih (GH)     += column sums of dG                accumulated (skipped if NULL) */
static inline void FR_FN(input_grads)(real *dx, real *dw_ih, real *db_ih, const real *dG,
                                      const real *x, const real *w_ih, ptrdiff_t rows,
                                      ptrdiff_t I, ptrdiff_t GH) {
    FR_FN(gemm)(0, 0, rows, I, GH, 1, dG, GH, w_ih, I, 0, dx, I);
    FR_FN(gemm)(1, 0, GH, I, rows, 1, dG, GH, x, I, 1, dw_ih, I);
    FR_FN(add_column_sums)(db_ih, dG, rows, GH, GH);
}

/* After the time loop, the recurrent weights: with h_prev[t] the state fed to step t,
 *   dw_hh (n, H) += sum_t dG[t]^T (n, B) . h_prev[t] (B, H)
 *   db_hh (n)    += column sums of dG
 * where dG (T, B, n) has leading dimension ld, h_first (B, H) feeds step 0 (NULL =
 * zeros: no contribution) and h_rest ((T-1)*B, H) feeds steps 1..T-1. */
static inline void FR_FN(hidden_grads)(real *dw_hh, real *db_hh, const real *dG, ptrdiff_t ld,
                                       const real *h_first, const real *h_rest, ptrdiff_t T,
                                       ptrdiff_t B, ptrdiff_t H, ptrdiff_t n) {
    if (h_first)
        FR_FN(gemm)(1, 0, n, H, B, 1, dG, ld, h_first, H, 1, dw_hh, H);
    if (T > 1)
        FR_FN(gemm)(1, 0, n, H, (T - 1) * B, 1, dG + B * ld, ld, h_rest, H, 1, dw_hh, H);
    FR_FN(add_column_sums)(db_hh, dG, T * B, n, ld);
}

/* Recurrent (variational) dropout: one mask (B, H) per sequence multiplies h_{t-1} where
 * the recurrent product reads it, every step alike; the state itself is not masked.
 * hm (n) = h (n) * mask (n), the masked state of one row's units. */
static inline void FR_FN(mask_units)(real *restrict hm, const real *restrict h,
                                     const real *restrict mask, ptrdiff_t n) {
    for (ptrdiff_t j = 0; j < n; j++)
        hm[j] = h[j] * mask[j];
}

/* The masked copy (B, H) of a whole state: hm = h * mask, or 0 when h is NULL (zeros). */
static inline void FR_FN(mask_state)(real *hm, const real *h, const real *mask, ptrdiff_t n) {
    if (h)
        FR_FN(mask_units)(hm, h, mask, n);
    else
        memset(hm, 0, (size_t)n * sizeof(real));
}

/* The states the recurrent products of a forward read, for the weight gradients after the
 * backward loop: h_first (B, H) fed step 0 and h_rest ((T-1)*B, H) steps 1..T-1; h0 (NULL:
 * zeros) and y as they are without a mask, else their masked copies in hm (T, B, H). */
static inline void FR_FN(product_inputs)(const real **h_first, const real **h_rest, real *hm,
                                         const real *h0, const real *y, const real *mask,
                                         ptrdiff_t T, ptrdiff_t B, ptrdiff_t H) {
    *h_first = h0;
    *h_rest = y;
    if (!mask)
        return;
    FR_FN(mask_state)(hm, h0, mask, B * H);
    for (ptrdiff_t t = 1; t < T; t++)
        FR_FN(mask_state)(hm + t * B * H, y + (t - 1) * B * H, mask, B * H);
    *h_first = hm;
    *h_rest = hm + B * H;
}

/* Backward runs its time loop in chunks of steps, the newest first, so that dG is kept for
 * one chunk only: each chunk's weight gradients are taken (GEMMs with K = the chunk's
 * rows) right after its steps, and the next chunk reuses dG's buffer (LSTM medium: 26 MB
 * of dG down to 2 MB, and the GEMMs read dG from cache). A chunk holds at least
 * FR_GRAD_ROWS rows (steps * B) so the GEMMs stay efficient; its boundaries do not depend
 * on the thread count (the GEMMs run after each chunk's threads have joined). */
#define FR_GRAD_ROWS 512

static inline ptrdiff_t FR_FN(grad_chunk_steps)(ptrdiff_t T, ptrdiff_t B) {
    ptrdiff_t steps = B >= FR_GRAD_ROWS ? 1 : (FR_GRAD_ROWS + B - 1) / B;
    return steps < T ? steps : (T > 0 ? T : 1);
}

/* The first step of the chunk that ends (exclusive) at t_hi. */
static inline ptrdiff_t fr_chunk_first(ptrdiff_t t_hi, ptrdiff_t steps) {
    return t_hi > steps ? t_hi - steps : 0;
}

/* After a chunk of T steps, the weight gradients of a cell whose recurrent pre-activations
 * share their gradient dG (T*B, N) with the input side (RNN, LSTM), accumulated:
 *   dw_ih (N, I) += dG^T . x (T*B, I)        db_ih, db_hh (N) += column sums of dG
 *   dw_hh (N, H) += dG^T . h_prev (T*B, H)   (NULL biases: skipped)
 * with h_prev at the chunk's first step h_first (NULL = zeros), then y (the chunk's
 * outputs, (T, B, H)) one step behind, times mask (B, H) under recurrent dropout (NULL:
 * none; hm (T*B, H) is then the masked copy's workspace). x and y are read where they are:
 * an earlier version built [x | h_prev] and an (N, I+H) result for one GEMM, two
 * workspaces that took training's peak memory above PyTorch's for RNN. */
static inline void FR_FN(weight_grads)(real *dw_ih, real *dw_hh, real *db_ih, real *db_hh,
                                       const real *dG, const real *x, const real *h_first,
                                       const real *y, const real *mask, real *hm, ptrdiff_t T,
                                       ptrdiff_t B, ptrdiff_t I, ptrdiff_t H, ptrdiff_t N) {
    const real *hp_first, *hp_rest; /* h_prev [* mask] */
    FR_FN(gemm)(1, 0, N, I, T * B, 1, dG, N, x, I, 1, dw_ih, I);
    FR_FN(add_column_sums)(db_ih, dG, T * B, N, N);
    FR_FN(product_inputs)(&hp_first, &hp_rest, hm, h_first, y, mask, T, B, H);
    FR_FN(hidden_grads)(dw_hh, db_hh, dG, N, hp_first, hp_rest, T, B, H, N);
}

/* The weight side of the per-step recurrent products, set up once per sequence.
 *
 * A product  P (B, G*H) = A (B, K) . op(W)  runs on a packed panel (gemm/panel.h) with the
 * microkernel and an epilogue (gemm/microkernel.h) at every batch size, or, when the weight
 * serves fewer than FR_PACK_ROWS rows in the whole call (a streaming step of a batch of a
 * few), directly on W as it is. The panel comes from a pack made earlier (fr_pack_*, kept
 * by the layer while the weight is unchanged) when one matching this build is given, and is
 * made here otherwise. */
#define FR_PACK_ROWS 8

typedef struct {
    fr_panel panel;     /* packed op(W), or data == NULL: direct */
    int owned;          /* panel.data was allocated here */
    real *rows;         /* bf16, int8 panel: A's rows converted, (slots, B, row_ld) */
    ptrdiff_t row_ld, slot, slots; /* elements per row and per slot; slots (threads) */
    const real *w;      /* W in PyTorch layout */
    int transpose;      /* op(W) = W^T (forward) or W (backward) */
    ptrdiff_t K, G, H;  /* op(W) (K, G*H) */
} fr_recurrent;

/* What one product of a cell multiplies by (see fr_recurrent_specs). */
typedef struct {
    ptrdiff_t w_offset; /* first element of W inside w_hh */
    ptrdiff_t K, G;     /* op(W) (K, G*H) */
    int transpose;
} fr_recurrent_spec;

/* Gate blocks of `cell` (FR_CELL_*): 1 (RNN), 4 (LSTM) or 3 (GRU). */
static inline ptrdiff_t fr_cell_gates(int cell) {
    return cell == FR_CELL_LSTM ? 4 : cell == FR_CELL_RNN ? 1 : 3;
}

/* The products of `cell` (FR_CELL_*) in its forward or backward time loop: count of them
 * (1 or 2) written to specs. Forward multiplies h by w_hh^T with gate blocks interleaved;
 * backward multiplies dG by w_hh. GRU with the reset gate before its product needs the r, z
 * rows and the n rows of w_hh as two products. */
static inline int FR_FN(recurrent_specs)(fr_recurrent_spec specs[2], int cell, int backward,
                                         ptrdiff_t H) {
    ptrdiff_t G = fr_cell_gates(cell);
    if (cell == FR_CELL_GRU_RESET_BEFORE) {
        fr_recurrent_spec rz = {0, backward ? 2 * H : H, backward ? 1 : 2, !backward};
        fr_recurrent_spec n = {2 * H * H, H, 1, !backward};
        specs[0] = rz;
        specs[1] = n;
        return 2;
    }
    fr_recurrent_spec all = {0, backward ? G * H : H, backward ? 1 : G, !backward};
    specs[0] = all;
    return 1;
}

/* The panel format of the panels in pack header h (FR_PANEL_*), or -1 when this build
 * cannot run them (a bf16 pack: float32 forward only). */
static inline int FR_FN(pack_panel_format)(const fr_pack_header *h) {
    if (h->format == FR_PACK_F32)
        return FR_PANEL_F32;
#ifndef FR_F64
    if (h->format == FR_PACK_BF16 && !h->backward)
        return FR_PANEL_BF16;
    if (h->format == FR_PACK_BF16_DP && !h->backward && fr_bf16_format() == FR_PANEL_BF16_DP)
        return FR_PANEL_BF16_DP;
    if (h->format == FR_PACK_I8 && !h->backward)
        return FR_PANEL_I8;
    if (h->format == FR_PACK_I8_VNNI && !h->backward && fr_i8_format() == FR_PANEL_I8_VNNI)
        return FR_PANEL_I8_VNNI;
    if (h->format == FR_PACK_I8_PAIR && !h->backward && fr_i8_format() == FR_PANEL_I8_PAIR)
        return FR_PANEL_I8_PAIR;
#endif
    return -1;
}

/* The header of `pack` when it was made by fr_pack_* for (cell, backward, H) under this
 * build (vector width, dtype) and its panels can run here; NULL otherwise. */
static inline const fr_pack_header *FR_FN(pack_header)(const void *pack, int cell,
                                                       int backward, ptrdiff_t H) {
    const fr_pack_header *h = pack;
    if (h == NULL || ((uintptr_t)pack & 63) != 0 || h->magic != FR_PACK_MAGIC ||
        h->vector_bytes != FR_VBYTES || h->real_bytes != (int32_t)sizeof(real) ||
        h->cell != cell || h->backward != backward || h->H != H ||
        FR_FN(pack_panel_format)(h) < 0)
        return NULL;
    return h;
}

/* The panel for spec inside a pack made by fr_pack_* for (cell, backward, H), or NULL when
 * `pack` is NULL or was made for something else (another cell, size or vector width);
 * *format gets the panel's format. */
static inline real *FR_FN(pack_panel_data)(const void *pack, int cell, int backward,
                                            ptrdiff_t H, int index, int *format) {
    const fr_pack_header *h = FR_FN(pack_header)(pack, cell, backward, H);
    if (h == NULL || index >= h->count)
        return NULL;
    *format = FR_FN(pack_panel_format)(h);
    return (real *)((char *)pack + h->offset[index]);
}

/* The panel of w_ih^T (G gate blocks, K = I) in a bf16 forward pack for H, or NULL; *format
 * gets its format. */
static inline real *FR_FN(pack_input_data)(const void *pack, ptrdiff_t I, ptrdiff_t G,
                                           ptrdiff_t H, int *format) {
    const fr_pack_header *h = pack;
    if (h == NULL)
        return NULL;
    h = FR_FN(pack_header)(pack, h->cell, 0, H);
    if (h == NULL || h->format == FR_PACK_F32 || h->I != I ||
        fr_cell_gates(h->cell) != G)
        return NULL;
    *format = FR_FN(pack_panel_format)(h);
    return (real *)((char *)pack + h->input_offset);
}

/* The geometry of a panel of op(W) (K, G*H) in `format` (data = NULL). */
static inline fr_panel FR_FN(panel_shape_as)(ptrdiff_t K, ptrdiff_t G, ptrdiff_t H,
                                             int format) {
#ifndef FR_F64
    if (fr_lowp_is_i8(format))
        return FR_FN(panel_shape_i8)(K, G, H, format);
    if (format != FR_PANEL_F32)
        return FR_FN(panel_shape_bf16)(K, G, H, format);
#endif
    return FR_FN(panel_shape)(K, G, H);
}

/* A reduced-precision panel multiplies A's rows rounded first: room for B of them per
 * thread (the hidden split runs every row on each thread). Returns 0, or FR_ERR_NOMEM. */
static inline int FR_FN(recurrent_workspace)(fr_recurrent *r, ptrdiff_t B) {
    r->slots = fr_get_num_threads() > 1 ? fr_get_num_threads() : 1;
#ifndef FR_F64
    if (r->panel.format != FR_PANEL_F32) {
        r->row_ld = fr_lowp_row_elems(r->panel.format, r->K);
        r->slot = B * r->row_ld;
        r->rows = FR_FN(alloc)(r->slots * r->slot);
        return r->rows ? FR_OK : FR_ERR_NOMEM;
    }
#endif
    return FR_OK;
}

/* Set r up for the product `spec` of w_hh, over T steps of B rows: on the matching panel of
 * `pack` (`packed`, in `format`), on a panel packed now, or direct. Returns 0, or
 * FR_ERR_NOMEM. */
static inline int FR_FN(recurrent_setup)(fr_recurrent *r, const real *w_hh,
                                         fr_recurrent_spec spec, ptrdiff_t H, ptrdiff_t T,
                                         ptrdiff_t B, real *packed, int format) {
    r->w = w_hh + spec.w_offset;
    r->transpose = spec.transpose;
    r->K = spec.K;
    r->G = spec.G;
    r->H = H;
    r->owned = 0;
    r->rows = NULL;
    r->panel = FR_FN(panel_shape_as)(spec.K, spec.G, H, format);
    if (packed) {
        r->panel.data = packed;
        return FR_FN(recurrent_workspace)(r, B);
    }
    if (T * B < FR_PACK_ROWS)
        return FR_OK; /* direct */
    r->panel = FR_FN(panel_new)(r->w, spec.transpose, spec.K, spec.G, H);
    r->owned = 1;
    return r->panel.data ? FR_OK : FR_ERR_NOMEM;
}

/* Set up every product of `cell` (recs[0], and recs[1] for GRU reset before). */
static inline int FR_FN(recurrent_setup_cell)(fr_recurrent recs[2], int cell, int backward,
                                              const real *w_hh, ptrdiff_t H, ptrdiff_t T,
                                              ptrdiff_t B, const void *pack) {
    fr_recurrent_spec specs[2];
    int n = FR_FN(recurrent_specs)(specs, cell, backward, H);
    recs[1].owned = 0;
    recs[1].rows = NULL;
    recs[1].panel.data = NULL;
    for (int i = 0; i < n; i++) {
        int format = FR_PANEL_F32;
        real *packed = FR_FN(pack_panel_data)(pack, cell, backward, H, i, &format);
        if (FR_FN(recurrent_setup)(&recs[i], w_hh, specs[i], H, T, B, packed, format) !=
            FR_OK) {
            for (int j = 0; j < i; j++) {
                free(recs[j].rows);
                if (recs[j].owned)
                    FR_FN(panel_free)(&recs[j].panel);
            }
            return FR_ERR_NOMEM;
        }
    }
    return FR_OK;
}

/* The general form kept for kernels with a product of their own: op(W) (K, N) of W (N, K)
 * (transpose) or W (K, N), no gate interleaving. */
static inline int FR_FN(recurrent_init)(fr_recurrent *r, const real *w, ptrdiff_t K,
                                        ptrdiff_t N, int transpose, ptrdiff_t T, ptrdiff_t B) {
    fr_recurrent_spec spec = {0, K, 1, transpose};
    return FR_FN(recurrent_setup)(r, w, spec, N, T, B, NULL, FR_PANEL_F32);
}

/* Our own kernel runs every product now, so the time loop may always be split. */
static inline int FR_FN(recurrent_own_kernel)(const fr_recurrent *r) {
    (void)r;
    return 1;
}

static inline void FR_FN(recurrent_free)(fr_recurrent *r) {
    free(r->rows);
    r->rows = NULL;
    if (r->owned)
        FR_FN(panel_free)(&r->panel);
    r->panel.data = NULL;
    r->owned = 0;
}

/* Column blocks of the product (threads may split them); a direct product is one block. */
static inline ptrdiff_t FR_FN(recurrent_blocks)(const fr_recurrent *r) {
    return r->panel.data ? r->panel.blocks : 1;
}

/* A (rows of A at A + r * lda) as r's panel takes the rows of `part`: A itself (*ld = lda)
 * for a float32 panel; for a bf16 or int8 one, those rows converted (fr_lowp_rows) into
 * this part's slot of r's workspace (*ld = row_ld; part->row0 first). The hidden split
 * has a slot per thread, the batch split its rows of slot 0. */
static inline const real *FR_FN(recurrent_rows)(const fr_recurrent *r, const real *A,
                                                ptrdiff_t lda, const fr_part *part,
                                                ptrdiff_t *ld) {
    *ld = lda;
#ifndef FR_F64
    if (r->rows) {
        real *slot = r->rows + (part->slice % r->slots) * r->slot +
                     part->row0 % (r->slot / r->row_ld) * r->row_ld;
        fr_lowp_rows(r->panel.format, slot, r->row_ld, A + part->row0 * lda, lda, part->rows,
                     r->K);
        *ld = r->row_ld;
        return slot;
    }
#endif
    return A;
}

/* For the rows and column blocks of `part`: P = A . op(W), handed tile by tile to
 * epilogue(ctx, ...). A direct product goes through `scratch` (B, G*H) and reaches the
 * epilogue as one tile of every unit (it is never split by hidden units). */
static inline void FR_FN(recurrent_apply)(const fr_recurrent *r, const real *A, ptrdiff_t lda,
                                          const fr_part *part, fr_epilogue_fn epilogue,
                                          void *ctx, real *scratch) {
    const ptrdiff_t row0 = part->row0, rows = part->rows;
    if (r->panel.data) {
        ptrdiff_t first, last, ld;
        fr_part_blocks(part, r->panel.blocks, &first, &last);
        const real *rows_A = FR_FN(recurrent_rows)(r, A, lda, part, &ld);
        FR_FN(panel_product)(&r->panel, rows_A, ld, row0, rows, first, last, part->reverse,
                             epilogue, ctx);
        return;
    }
    const ptrdiff_t N = r->G * r->H;
    real *P = scratch + row0 * N;
    memset(P, 0, (size_t)(rows * N) * sizeof(real));
    if (r->transpose)
        FR_FN(gemm_direct_nt)(P, N, A + row0 * lda, lda, r->w, rows, N, r->K);
    else
        FR_FN(gemm_direct_nn)(P, N, A + row0 * lda, lda, r->w, rows, N, r->K);
    epilogue(ctx, P, N, r->H, row0, rows, 0, r->H);
}

/* C (B, N) = A (B, K) . op(W) + (accumulate ? C : 0), rows with leading dims lda, ldc. */
static inline void FR_FN(recurrent_product)(const fr_recurrent *r, real *C, ptrdiff_t ldc,
                                            const real *A, ptrdiff_t lda, ptrdiff_t B,
                                            int accumulate) {
    const ptrdiff_t N = r->G * r->H;
    if (!accumulate)
        for (ptrdiff_t b = 0; b < B; b++)
            memset(C + b * ldc, 0, (size_t)N * sizeof(real));
    if (r->panel.data) {
        fr_accumulate acc = {C, ldc, r->H, r->G};
        FR_FN(panel_product)(&r->panel, A, lda, 0, B, 0, r->panel.blocks, 0,
                             FR_FN(accumulate_epilogue), &acc); /* float32 panels only */
    } else if (r->transpose)
        FR_FN(gemm_direct_nt)(C, ldc, A, lda, r->w, B, N, r->K);
    else
        FR_FN(gemm_direct_nn)(C, ldc, A, lda, r->w, B, N, r->K);
}

/* The input side of a backward time loop: dx_t (B, I) = dG_t (B, N) . w_ih (N, I), right
 * after each step's dG_t is made (still in L1/L2), on a panel of w_ih packed once per call
 * (direct for tiny calls), instead of a GEMM over all T*B rows after the loop that reads and
 * repacks the whole dG again. A row's sums run in the same order in every thread split. */
typedef struct {
    fr_recurrent rec; /* op(W) = w_ih (N, I) */
    real *dx;         /* (T, B, I) written */
    ptrdiff_t B, I, N;
} fr_input_grad;

static inline int FR_FN(input_grad_prepare)(fr_input_grad *g, real *dx, const real *w_ih,
                                            ptrdiff_t T, ptrdiff_t B, ptrdiff_t I,
                                            ptrdiff_t N) {
    g->dx = dx;
    g->B = B;
    g->I = I;
    g->N = N;
    return FR_FN(recurrent_init)(&g->rec, w_ih, N, I, 0, T, B);
}

/* dx_t rows [b0, b0 + rows) = dG_t rows (dG_t points at row b0, leading dimension N). */
static inline void FR_FN(input_grad_step)(const fr_input_grad *g, const real *dG_t,
                                          ptrdiff_t t, ptrdiff_t b0, ptrdiff_t rows) {
    FR_FN(recurrent_product)(&g->rec, g->dx + (t * g->B + b0) * g->I, g->I, dG_t, g->N, rows,
                             0);
}

static inline void FR_FN(input_grad_free)(fr_input_grad *g) { FR_FN(recurrent_free)(&g->rec); }


/* Backward of a product that read masked rows (recurrent dropout):
 *   C (B, N) += (A (B, K) . op(W)) * mask      mask (B, N), through tmp (B, N)
 * and without a mask (NULL) C += A . op(W). C, mask and tmp have leading dimension N. */
static inline void FR_FN(recurrent_product_masked)(const fr_recurrent *r, real *C,
                                                   const real *A, ptrdiff_t lda, ptrdiff_t B,
                                                   const real *mask, real *tmp) {
    const ptrdiff_t N = r->G * r->H;
    if (!mask) {
        FR_FN(recurrent_product)(r, C, N, A, lda, B, 1);
        return;
    }
    FR_FN(recurrent_product)(r, tmp, N, A, lda, B, 0);
    for (ptrdiff_t i = 0; i < B * N; i++)
        C[i] += tmp[i] * mask[i];
}

/* The input side of a forward time loop: P_t (B, G*H) = x_t (B, I) . w_ih^T + bias.
 *
 * Small batches compute it for the whole sequence before the loop; batches of at least
 * FR_STEP_PROJECTION_ROWS rows compute it step by step inside the loop, on a panel of
 * w_ih with the same column blocks as the recurrent product, each part of the loop for its
 * own rows and units: P_t is then still in L2 when the epilogue reads it (a whole-sequence
 * buffer of that size would come back from L3 or memory), and no BLAS call repacks w_ih.
 *
 * Cells that add the input and recurrent products of every gate before their math (RNN,
 * LSTM: input_prepare's fuse_with) go further: the product runs inside the recurrent tile
 * (`fused`), as a first segment of one K = I + H product per tile from 16 rows on, and
 * below that as tiles stored before the loop (`start`, in the panel's block layout) that
 * each step's tile starts from. Either way a row's sums run in the same order, so its bits
 * never depend on how many rows share its batch; the epilogue adds the biases. A bf16 or
 * int8 pack fuses too: its two products are finished apart and added in the tile
 * (lowp_tile_sum: an int8 product carries its own operands' scales). Otherwise
 * (GRU) small batches run all T*B rows through the w_ih panel before the loop (the same
 * sums as step by step), and calls of fewer than FR_PACK_ROWS rows in all take BLAS. */
#define FR_STEP_PROJECTION_ROWS 16
#define FR_INPUT_ROWS 96 /* rows per pass of a projection before the loop on a panel */

typedef struct {
    int per_step;     /* 1: input_step computes P_t (or the fused tile does) */
    int fused;        /* the projection is inside the recurrent tile (step_product) */
    fr_recurrent rec; /* op(W) = w_ih^T, gate blocks interleaved (per_step or fused) */
    real *bias;       /* (G*H) bias_a + bias_b (per_step or fused) */
    real *start;      /* fused below 16 rows: (T*B, blocks*NB) x . w_ih^T tiles, or NULL */
    ptrdiff_t start_ld;
    const real *x;    /* (T, B, I) */
    ptrdiff_t B, I, N;
} fr_input;

/* Whether a forward over B rows projects its input step by step. */
static inline int FR_FN(input_per_step)(ptrdiff_t B) { return B >= FR_STEP_PROJECTION_ROWS; }

/* Rows [0, rows) of x through the w_ih panel into epilogue(ctx, ...), before the loop,
 * `chunk` rows at a time (what a bf16 or int8 panel's workspace converts at once). */
static inline void FR_FN(input_rows)(const fr_input *in, ptrdiff_t rows, ptrdiff_t chunk,
                                     fr_epilogue_fn epilogue, void *ctx) {
    for (ptrdiff_t r0 = 0; r0 < rows; r0 += chunk) {
        fr_part part = {r0, rows - r0 < chunk ? rows - r0 : chunk, 0, 1, NULL, 0};
        FR_FN(recurrent_apply)(&in->rec, in->x, in->I, &part, epilogue, ctx, NULL);
    }
}

/* The whole sequence's x . w_ih^T as tiles to start from (fused, below 16 rows), `chunk`
 * rows at a time. */
static inline int FR_FN(input_start_tiles)(fr_input *in, ptrdiff_t rows, ptrdiff_t chunk) {
    const fr_panel *p = &in->rec.panel;
    in->start_ld = p->blocks * p->nv * FR_VLEN;
    in->start = FR_FN(alloc)(rows * in->start_ld);
    if (!in->start)
        return FR_ERR_NOMEM;
    fr_store_tiles s = {in->start, in->start_ld};
    FR_FN(input_rows)(in, rows, chunk, FR_FN(store_tile_epilogue), &s);
    return FR_OK;
}

/* Whether input_prepare fuses the projection into fuse_with's tiles (when it succeeds):
 * both products on float32 panels, which a call of at least FR_PACK_ROWS rows always has,
 * or both on bf16 or int8 panels of one forward pack (its w_ih panel made for I). */
static inline int FR_FN(input_fusable)(const fr_recurrent *fuse_with, ptrdiff_t T,
                                       ptrdiff_t B, ptrdiff_t I, const void *pack) {
    if (!fuse_with || !fuse_with->panel.data)
        return 0;
    if (fuse_with->panel.format == FR_PANEL_F32)
        return T * B >= FR_PACK_ROWS;
    int format = FR_PANEL_F32;
    return FR_FN(pack_input_data)(pack, I, fuse_with->G, fuse_with->H, &format) &&
           format == fuse_with->panel.format;
}

/* The epilogue of the per-step projection: P (B, G*H) = tile + bias. */
typedef struct {
    real *P;
    const real *bias;
    ptrdiff_t G, H;
} fr_bias_store;

static void FR_FN(bias_store_epilogue)(void *ctx, const real *acc, ptrdiff_t acc_ld,
                                       ptrdiff_t gate_stride, ptrdiff_t row0, ptrdiff_t rows,
                                       ptrdiff_t unit0, ptrdiff_t units) {
    const fr_bias_store *s = ctx;
    const ptrdiff_t N = s->G * s->H;
    for (ptrdiff_t i = 0; i < rows; i++)
        for (ptrdiff_t g = 0; g < s->G; g++) {
            real *restrict p = s->P + (row0 + i) * N + g * s->H + unit0;
            const real *restrict t = acc + i * acc_ld + g * gate_stride;
            const real *restrict b = s->bias + g * s->H + unit0;
            for (ptrdiff_t j = 0; j < units; j++)
                p[j] = t[j] + b[j];
        }
}

/* Set the input side up; when it is neither per step nor fused, P (T, B, G*H) gets the
 * whole projection now. `fuse_with`: the recurrent product of a cell that adds the input
 * and recurrent products of every gate before its math (RNN, LSTM; not GRU, whose n gate
 * needs them apart), or NULL; the projection is then fused into that product's tiles when
 * input_fusable says so. A bf16 or int8 forward pack (fr_pack_bf16_*, fr_pack_int8_*)
 * supplies the panel of w_ih instead (fused with its own w_hh panel; for a GRU per step or
 * over all T*B rows here, FR_INPUT_ROWS at a time). Returns 0, or FR_ERR_NOMEM. */
static inline int FR_FN(input_prepare)(fr_input *in, real *P, const real *x, const real *w_ih,
                                       const real *bias_a, const real *bias_b, ptrdiff_t T,
                                       ptrdiff_t B, ptrdiff_t I, ptrdiff_t G, ptrdiff_t H,
                                       const fr_recurrent *fuse_with, const void *pack) {
    int format = FR_PANEL_F32;
    real *packed = FR_FN(pack_input_data)(pack, I, G, H, &format);
    const int fuse = FR_FN(input_fusable)(fuse_with, T, B, I, pack);
    in->per_step = FR_FN(input_per_step)(B);
    in->fused = 0;
    in->x = x;
    in->B = B;
    in->I = I;
    in->N = G * H;
    in->bias = NULL;
    in->start = NULL;
    in->rec.owned = 0;
    in->rec.rows = NULL;
    in->rec.panel.data = NULL;
    const int before_loop = !in->per_step && !fuse; /* all T*B rows now, into P */
    if (before_loop && !packed && T * B < FR_PACK_ROWS) { /* too few rows for a panel */
        FR_FN(input_projection)(P, x, w_ih, bias_a, bias_b, T * B, I, G * H);
        return FR_OK;
    }
    fr_recurrent_spec spec = {0, I, G, 1};
    /* before the loop: all T*B rows through the panel, a chunk at a time (no BLAS call, so
     * no BLAS threads woken for a small product, and a row's sums run in the same order as
     * in the per-step projection of a bigger batch) */
    const int start_tiles = fuse && !in->per_step; /* or, fused, tiles stored now */
    ptrdiff_t chunk = !before_loop && !start_tiles ? B
                      : T * B < FR_INPUT_ROWS      ? T * B
                                                   : FR_INPUT_ROWS;
    in->bias = FR_FN(alloc)(G * H);
    if (!in->bias ||
        FR_FN(recurrent_setup)(&in->rec, w_ih, spec, H, T, chunk, packed, format) != FR_OK)
        return FR_ERR_NOMEM;
    FR_FN(fill_bias_rows)(in->bias, bias_a, bias_b, 1, G * H);
    in->fused = fuse && in->rec.panel.data;
    if (in->fused && !in->per_step)
        return FR_FN(input_start_tiles)(in, T * B, in->rec.rows ? chunk : T * B);
    fr_bias_store s = {P, in->bias, G, H};
    if (before_loop)
        FR_FN(input_rows)(in, T * B, chunk, FR_FN(bias_store_epilogue), &s);
    return FR_OK;
}

static inline void FR_FN(input_free)(fr_input *in) {
    FR_FN(recurrent_free)(&in->rec);
    free(in->bias);
    free(in->start);
    in->bias = NULL;
    in->start = NULL;
}

/* P_t (B, G*H) for step t, this part's rows and units (nothing when it was done before the
 * loop). `scratch` (B, G*H) serves a direct product. */
static inline void FR_FN(input_step)(const fr_input *in, real *P_t, ptrdiff_t t,
                                     const fr_part *part, real *scratch) {
    if (!in->per_step || in->fused)
        return;
    fr_bias_store s = {P_t, in->bias, in->rec.G, in->rec.H};
    FR_FN(recurrent_apply)(&in->rec, in->x + t * in->B * in->I, in->I, part,
                           FR_FN(bias_store_epilogue), &s, scratch);
}

/* What the epilogue adds to the step's product for row b: the row of P_t (B, G*H), or,
 * when the projection is fused into the product, the bias (G*H) alone (every row). */
static inline const real *FR_FN(input_addend)(const fr_input *in, const real *P_t,
                                              ptrdiff_t b) {
    return in->fused ? in->bias : P_t + b * in->N;
}

/* One step's products for the rows and column blocks of `part`, tile by tile into
 * epilogue(ctx, ...): the recurrent h_prev (B, K) . op(w_hh), plus x_t w_ih^T in the same
 * tile when fused; otherwise P_t gets the input projection first (when per step). */
static inline void FR_FN(step_product)(const fr_input *in, const fr_recurrent *rec,
                                       real *P_t, ptrdiff_t t, const real *h_prev,
                                       ptrdiff_t ldh, const fr_part *part,
                                       fr_epilogue_fn epilogue, void *ctx, real *scratch) {
    if (in->fused) {
        ptrdiff_t first, last, ld_h, ld_x = in->I;
        fr_part_blocks(part, rec->panel.blocks, &first, &last);
        const real *start = in->start ? in->start + t * in->B * in->start_ld : NULL;
        const real *x_t = in->x + t * in->B * in->I;
        const real *rows_h = FR_FN(recurrent_rows)(rec, h_prev, ldh, part, &ld_h);
        const real *rows_x = start ? NULL : FR_FN(recurrent_rows)(&in->rec, x_t, in->I, part,
                                                                  &ld_x);
        FR_FN(panel_product_sum)(&rec->panel, rows_h, ld_h, start ? NULL : &in->rec.panel,
                                 rows_x, ld_x, start, in->start_ld, part->row0, part->rows,
                                 first, last, part->reverse, epilogue, ctx);
        return;
    }
    FR_FN(input_step)(in, P_t, t, part, scratch);
    FR_FN(recurrent_apply)(rec, h_prev, ldh, part, epilogue, ctx, scratch);
}

/* Bytes of a pack for (cell, backward, H) in `format` (FR_PACK_*; a bf16 pack adds the
 * panel of w_ih^T for input size I): a header, then each panel 64-byte aligned. */
static inline size_t FR_FN(pack_layout_as)(fr_pack_header *h, int cell, int backward,
                                           ptrdiff_t I, ptrdiff_t H, int format) {
    fr_recurrent_spec specs[2];
    int n = FR_FN(recurrent_specs)(specs, cell, backward, H);
    static const int panel_formats[] = {FR_PANEL_F32, FR_PANEL_BF16, FR_PANEL_BF16_DP,
                                        FR_PANEL_I8, FR_PANEL_I8_VNNI,
                                        FR_PANEL_I8_PAIR}; /* by FR_PACK_* */
    int panel_format = panel_formats[format];
    size_t at = (sizeof(fr_pack_header) + 63) / 64 * 64;
    memset(h, 0, sizeof *h);
    h->magic = FR_PACK_MAGIC;
    h->vector_bytes = FR_VBYTES;
    h->real_bytes = (int32_t)sizeof(real);
    h->cell = cell;
    h->backward = backward;
    h->count = n;
    h->H = H;
    h->format = format;
    for (int i = 0; i < n; i++) {
        fr_panel p = FR_FN(panel_shape_as)(specs[i].K, specs[i].G, H, panel_format);
        h->offset[i] = (int64_t)at;
        at += ((size_t)FR_FN(panel_reals)(&p) * sizeof(real) + 63) / 64 * 64;
    }
    if (format != FR_PACK_F32) { /* w_ih^T (I, G*H), every gate block */
        fr_panel p = FR_FN(panel_shape_as)(I, fr_cell_gates(cell), H, panel_format);
        h->input_offset = (int64_t)at;
        at += ((size_t)FR_FN(panel_reals)(&p) * sizeof(real) + 63) / 64 * 64;
    }
    h->I = format != FR_PACK_F32 ? I : 0;
    return at;
}

static inline size_t FR_FN(pack_layout)(fr_pack_header *h, int cell, int backward,
                                        ptrdiff_t H) {
    return FR_FN(pack_layout_as)(h, cell, backward, 0, H, FR_PACK_F32);
}

#endif
