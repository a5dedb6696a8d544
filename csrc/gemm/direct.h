/* direct.h - products that do not repay packing: a few rows, or a sequence of a step or two.
 *
 * C (M, N) += A (M, K) . W^T (dot products along W's contiguous rows) or A . W (row
 * updates), straight from the weight in PyTorch layout. The input projection of a batch of
 * at most a few rows and the streaming step without a cached pack use these.
 */
#ifndef FASTRNN_GEMM_DIRECT_H
#define FASTRNN_GEMM_DIRECT_H

#include "vec.h"

/* The sum of a vector's lanes: halve the vector (through unions, which the compiler
 * keeps in registers) down to 16 bytes, then add the last 4 floats or 2 doubles. */
typedef real fr_v16 __attribute__((vector_size(16)));
#if FR_VBYTES >= 32
typedef real fr_v32 __attribute__((vector_size(32)));
#endif

static inline real FR_FN(lane_sum)(fr_vec v) {
#if FR_VBYTES == 64
    union { fr_vec whole; fr_v32 half[2]; } u64 = {v};
    fr_v32 v32 = u64.half[0] + u64.half[1];
#elif FR_VBYTES == 32
    fr_v32 v32 = v;
#endif
#if FR_VBYTES >= 32
    union { fr_v32 whole; fr_v16 half[2]; } u32 = {v32};
    fr_v16 v16 = u32.half[0] + u32.half[1];
#else
    fr_v16 v16 = v;
#endif
    real sum = 0;
    for (ptrdiff_t i = 0; i < (ptrdiff_t)(16 / sizeof(real)); i++)
        sum += v16[i];
    return sum;
}

/* out[j] += a (K) . w_j (K) for the `ways` rows w_j = W + j K of W, each summed as a
 * vector of partial sums, its lanes, then the tail. `ways` is a constant where this is
 * inlined: several independent sums hide the FMA latency that one alone waits on. */
static FR_ALWAYS_INLINE void FR_FN(dot_rows)(real *out, const real *a, const real *W,
                                             ptrdiff_t K, const int ways) {
    fr_vec acc[4];
    for (int j = 0; j < ways; j++)
        acc[j] = (fr_vec){0};
    ptrdiff_t k = 0;
    for (; k + FR_VLEN <= K; k += FR_VLEN) {
        fr_vec va = *(const fr_vec_u *)(a + k);
        for (int j = 0; j < ways; j++)
            acc[j] += va * *(const fr_vec_u *)(W + j * K + k);
    }
    for (int j = 0; j < ways; j++) {
        real sum = FR_FN(lane_sum)(acc[j]);
        for (ptrdiff_t t = k; t < K; t++)
            sum += a[t] * W[j * K + t];
        out[j] += sum;
    }
}

/* Short sequences do not repay packing: C (M, N) += A (M, K) . W^T with W (N, K) row-major,
 * as dot products along W's contiguous rows (forward: h w_hh^T), four rows of W at a time
 * (a streaming LSTM step, H = I = 64: 3.6 -> ~1 us for x w_ih^T on Zen 3). Each sum runs in
 * the same order whichever group it is in. */
static inline void FR_FN(gemm_direct_nt)(real *C, ptrdiff_t ldc, const real *A, ptrdiff_t lda,
                                         const real *W, ptrdiff_t M, ptrdiff_t N,
                                         ptrdiff_t K) {
    for (ptrdiff_t m = 0; m < M; m++) {
        ptrdiff_t n = 0;
        for (; n + 4 <= N; n += 4)
            FR_FN(dot_rows)(C + m * ldc + n, A + m * lda, W + n * K, K, 4);
        for (; n < N; n++)
            FR_FN(dot_rows)(C + m * ldc + n, A + m * lda, W + n * K, K, 1);
    }
}

/* C (M, N) += A (M, K) . W with W (K, N) row-major, as row updates C[m] += A[m, k] W[k]
 * (backward: dG w_hh). */
static inline void FR_FN(gemm_direct_nn)(real *C, ptrdiff_t ldc, const real *A, ptrdiff_t lda,
                                         const real *W, ptrdiff_t M, ptrdiff_t N,
                                         ptrdiff_t K) {
    for (ptrdiff_t m = 0; m < M; m++) {
        real *restrict c = C + m * ldc;
        for (ptrdiff_t k = 0; k < K; k++) {
            real a = A[m * lda + k];
            const real *restrict w = W + k * N;
            for (ptrdiff_t n = 0; n < N; n++)
                c[n] += a * w[n];
        }
    }
}

#endif
