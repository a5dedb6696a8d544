/* blas.c - storage for the BLAS entry points handed over by fastrnn._core, and the
 * blocked GEMM that every product outside our own panels goes through (blas.h). */
#include "blas.h"
#include "threads.h"

fr_sgemm_fn fr_sgemm = 0;
fr_dgemm_fn fr_dgemm = 0;

void fr_set_blas(fr_sgemm_fn sgemm, fr_dgemm_fn dgemm) {
    fr_sgemm = sgemm;
    fr_dgemm = dgemm;
}

typedef struct {
    int f64, trans_a, trans_b;
    ptrdiff_t M, N, K, lda, ldb, ldc, block;
    const void *alpha, *A, *B, *beta;
    void *C;
} gemm_call;

/* Rows [i * block, ...) of C: one column-major BLAS call, C^T = op(B)^T op(A)^T. */
static void gemm_block(const void *ctx, ptrdiff_t i) {
    const gemm_call *g = ctx;
    ptrdiff_t r0 = i * g->block, rows = g->M - r0 < g->block ? g->M - r0 : g->block;
    size_t size = g->f64 ? sizeof(double) : sizeof(float);
    /* row r0 of op(A): row r0 of A, or column r0 of the stored (K, M) A */
    const char *A = (const char *)g->A + (size_t)(g->trans_a ? r0 : r0 * g->lda) * size;
    char *C = (char *)g->C + (size_t)(r0 * g->ldc) * size;
    char ta = g->trans_b ? 'T' : 'N', tb = g->trans_a ? 'T' : 'N';
    int m = (int)g->N, n = (int)rows, k = (int)g->K;
    int la = (int)g->ldb, lb = (int)g->lda, lc = (int)g->ldc;
    if (g->f64)
        fr_dgemm(&ta, &tb, &m, &n, &k, (double *)g->alpha, (double *)g->B, &la, (double *)A,
                 &lb, (double *)g->beta, (double *)C, &lc);
    else
        fr_sgemm(&ta, &tb, &m, &n, &k, (float *)g->alpha, (float *)g->B, &la, (float *)A,
                 &lb, (float *)g->beta, (float *)C, &lc);
}

void fr_gemm_blocks(int f64, int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                    const void *alpha, const void *A, ptrdiff_t lda, const void *B,
                    ptrdiff_t ldb, const void *beta, void *C, ptrdiff_t ldc) {
    if (M <= 0 || N <= 0)
        return;
    gemm_call g = {f64, trans_a, trans_b, M, N, K, lda, ldb, ldc, fr_gemm_block_rows(M),
                   alpha, A, B, beta, C};
    fr_for_items((M + g.block - 1) / g.block, gemm_block, &g);
}
