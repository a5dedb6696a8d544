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
#include "gemm_small.h"
#include "threads.h"

/* Batches up to this size run their per-step recurrent products on our own kernels
 * (gemm_small.h), larger ones on BLAS. Sequences of at least FR_PACK_STEPS steps pack
 * the weight first; shorter ones (a streaming step) use it as it is. */
#define FR_SMALL_BATCH 32
#define FR_PACK_STEPS 8
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

/* The weight side of a per-step recurrent product C (B, N) (+)= A (B, K) . op(W), set
 * up once per sequence: op(W) = W^T for W (N, K) (transpose) or W (K, N); packed for
 * small batches, else handed to BLAS as is. */
typedef struct {
    const real *w;
    real *panel; /* packed op(W), or NULL */
    int direct;  /* 1: our unpacked loops; 0 with no panel: BLAS */
    ptrdiff_t K, N;
    int transpose;
} fr_recurrent;

/* Set up for T steps of batch B. Returns 0, or FR_ERR_NOMEM when packing fails. */
static inline int FR_FN(recurrent_init)(fr_recurrent *r, const real *w, ptrdiff_t K,
                                        ptrdiff_t N, int transpose, ptrdiff_t T, ptrdiff_t B) {
    r->w = w;
    r->K = K;
    r->N = N;
    r->transpose = transpose;
    r->panel = NULL;
    r->direct = B <= FR_SMALL_BATCH && T < FR_PACK_STEPS;
    if (B > FR_SMALL_BATCH || r->direct)
        return FR_OK;
    r->panel = FR_FN(pack_panel)(w, K, N, transpose);
    return r->panel ? FR_OK : FR_ERR_NOMEM;
}

/* Whether the per-step products run on our own kernel (not BLAS): then the time loop may
 * be split across threads by rows (threads.c). */
static inline int FR_FN(recurrent_own_kernel)(const fr_recurrent *r) {
    return r->panel != NULL || r->direct;
}

static inline void FR_FN(recurrent_free)(fr_recurrent *r) {
    free(r->panel);
    r->panel = NULL;
}

/* C (B, N) = A (B, K) . op(W) + (accumulate ? C : 0), rows with leading dims lda, ldc. */
static inline void FR_FN(recurrent_product)(const fr_recurrent *r, real *C, ptrdiff_t ldc,
                                            const real *A, ptrdiff_t lda, ptrdiff_t B,
                                            int accumulate) {
    if (r->panel == NULL && !r->direct) {
        ptrdiff_t ldw = r->transpose ? r->K : r->N;
        FR_FN(gemm)(0, r->transpose, B, r->N, r->K, 1, A, lda, r->w, ldw,
                    accumulate ? 1 : 0, C, ldc);
        return;
    }
    if (!accumulate)
        for (ptrdiff_t b = 0; b < B; b++)
            memset(C + b * ldc, 0, (size_t)r->N * sizeof(real));
    if (r->panel)
        FR_FN(gemm_packed)(C, ldc, A, lda, r->panel, B, r->N, r->K);
    else if (r->transpose)
        FR_FN(gemm_direct_nt)(C, ldc, A, lda, r->w, B, r->N, r->K);
    else
        FR_FN(gemm_direct_nn)(C, ldc, A, lda, r->w, B, r->N, r->K);
}

#endif
