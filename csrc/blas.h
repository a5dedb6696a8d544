/* blas.h - GEMM from SciPy's BLAS, called row-major.
 *
 * The Cython module takes sgemm/dgemm from scipy.linalg.cython_blas and hands the
 * pointers to fr_set_blas() once at import, so there is no system BLAS and no extra
 * shared library to find at run time. BLAS is column-major: the row-major product
 * C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T, in blocks of
 * rows on our own threads (fr_gemm_blocks, blas.c).
 */
#ifndef FASTRNN_BLAS_H
#define FASTRNN_BLAS_H

#include "real.h"

typedef void (*fr_sgemm_fn)(char *transa, char *transb, int *m, int *n, int *k,
                            float *alpha, float *a, int *lda, float *b, int *ldb,
                            float *beta, float *c, int *ldc);
typedef void (*fr_dgemm_fn)(char *transa, char *transb, int *m, int *n, int *k,
                            double *alpha, double *a, int *lda, double *b, int *ldb,
                            double *beta, double *c, int *ldc);

extern fr_sgemm_fn fr_sgemm;
extern fr_dgemm_fn fr_dgemm;

/* Called once at import by fastrnn._core. */
void fr_set_blas(fr_sgemm_fn sgemm, fr_dgemm_fn dgemm);

/* Row-major C (M, N) = alpha * op(A) (M, K) * op(B) (K, N) + beta * C, of doubles when
 * `f64`, else of floats (alpha, beta point to one of the same type). C is computed in
 * blocks of fr_gemm_block_rows(M) rows, one BLAS call per block with the BLAS held to one
 * thread, the blocks spread over our own threads (threads.h fr_for_items). So BLAS never
 * wakes threads of its own for us (its idle threads spin for tens of milliseconds after a
 * threaded call, on the cores our next time loop needs), and as the blocks depend on the
 * shape alone, a block's bits never depend on the thread count. */
#define FR_GEMM_ROWS 128  /* the smallest block */
#define FR_GEMM_BLOCKS 4  /* blocks of a taller C: each BLAS call packs all of op(B) anew */

/* Rows per block of a C of M rows: M / FR_GEMM_BLOCKS (a multiple of 64), at least
 * FR_GEMM_ROWS. Fewer, taller blocks repack op(B) less often (LSTM medium training on Zen 3,
 * M = 1024: OpenBLAS's copies 25 -> 16 % of the tile's time with 256-row blocks, not 128). */
static inline ptrdiff_t fr_gemm_block_rows(ptrdiff_t M) {
    ptrdiff_t rows = (M / FR_GEMM_BLOCKS + 63) / 64 * 64;
    return rows > FR_GEMM_ROWS ? rows : FR_GEMM_ROWS;
}
void fr_gemm_blocks(int f64, int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                    const void *alpha, const void *A, ptrdiff_t lda, const void *B,
                    ptrdiff_t ldb, const void *beta, void *C, ptrdiff_t ldc);

/* Row-major C (M, N) = alpha * op(A) (M, K) * op(B) (K, N) + beta * C.
 * op(A) = A (M, K) with leading dimension lda, or A^T when trans_a (A stored (K, M));
 * likewise for B. All dimensions fit in int (checked by the Python layer). */
static inline void FR_FN(gemm)(int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N,
                               ptrdiff_t K, real alpha, const real *A, ptrdiff_t lda,
                               const real *B, ptrdiff_t ldb, real beta, real *C,
                               ptrdiff_t ldc) {
#ifdef FR_F64
    const int f64 = 1;
#else
    const int f64 = 0;
#endif
    fr_gemm_blocks(f64, trans_a, trans_b, M, N, K, &alpha, A, lda, B, ldb, &beta, C, ldc);
}

#endif
