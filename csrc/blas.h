/* blas.h - GEMM from SciPy's BLAS, called row-major.
 *
 * The Cython module takes sgemm/dgemm from scipy.linalg.cython_blas and hands the
 * pointers to fr_set_blas() once at import, so there is no system BLAS and no extra
 * shared library to find at run time. BLAS is column-major: the row-major product
 * C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T.
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

#ifdef FR_F64
#define FR_BLAS_GEMM fr_dgemm
#else
#define FR_BLAS_GEMM fr_sgemm
#endif

/* Row-major C (M, N) = alpha * op(A) (M, K) * op(B) (K, N) + beta * C.
 * op(A) = A (M, K) with leading dimension lda, or A^T when trans_a (A stored (K, M));
 * likewise for B. All dimensions fit in int (checked by the Python layer). */
static inline void FR_FN(gemm)(int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N,
                               ptrdiff_t K, real alpha, const real *A, ptrdiff_t lda,
                               const real *B, ptrdiff_t ldb, real beta, real *C,
                               ptrdiff_t ldc) {
    char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
    int m = (int)N, n = (int)M, k = (int)K;
    int la = (int)ldb, lb = (int)lda, lc = (int)ldc;
    FR_BLAS_GEMM(&ta, &tb, &m, &n, &k, &alpha, (real *)B, &la, (real *)A, &lb, &beta, C, &lc);
}

#endif
