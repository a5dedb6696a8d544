/* gemm_small.h - our own GEMM for the per-step recurrent products of small batches.
 *
 * A recurrent step multiplies a few rows (the batch) by the same weight matrix T
 * times. A BLAS call pays its overhead and its own packing every step; here the weight
 * is packed once per sequence into a row-major (K, Np) panel, Np = N rounded up to a
 * whole register tile and zero-padded, and every step is one pass of broadcast FMAs
 * over register tiles of MR rows x NR vectors. Written with GCC/Clang vector
 * extensions, so the same source becomes SSE2, AVX2 or AVX-512 code per build variant.
 */
#ifndef FASTRNN_GEMM_SMALL_H
#define FASTRNN_GEMM_SMALL_H

#include <stdlib.h>
#include <string.h>

#include "real.h"

#if defined(__AVX512F__)
#define FR_VBYTES 64
#define FR_TILE_NR 4
#elif defined(__AVX2__)
#define FR_VBYTES 32
#define FR_TILE_NR 2
#else
#define FR_VBYTES 16
#define FR_TILE_NR 2
#endif
#define FR_TILE_MR 4
#define FR_VLEN ((ptrdiff_t)(FR_VBYTES / sizeof(real)))
#define FR_TILE_N (FR_TILE_NR * FR_VLEN) /* columns per register tile */

/* A vector register of reals; the aligned(sizeof(real)) variant loads unaligned. */
typedef real fr_vec __attribute__((vector_size(FR_VBYTES)));
typedef real fr_vec_u __attribute__((vector_size(FR_VBYTES), aligned(sizeof(real))));

/* Columns of a packed panel for N columns: N rounded up to a whole tile. */
static inline ptrdiff_t FR_FN(packed_cols)(ptrdiff_t N) {
    return (N + FR_TILE_N - 1) / FR_TILE_N * FR_TILE_N;
}

/* A packed panel (K, Np) from W: op = 1 packs W^T for W (N, K) row-major (forward:
 * h w_hh^T); op = 0 packs W (K, N) itself (backward: dG w_hh). Columns past N are 0.
 * Returns NULL when the allocation fails; free() it. K * Np * sizeof(real) is a multiple
 * of 64 because Np is a whole tile. */
static inline real *FR_FN(pack_panel)(const real *W, ptrdiff_t K, ptrdiff_t N, int transpose) {
    ptrdiff_t Np = FR_FN(packed_cols)(N);
    size_t bytes = (size_t)(K * Np) * sizeof(real); /* a whole number of 64-byte lines */
    real *panel = (real *)aligned_alloc(64, bytes);
    if (!panel)
        return NULL;
    memset(panel, 0, bytes);
    if (!transpose) {
        for (ptrdiff_t k = 0; k < K; k++)
            memcpy(panel + k * Np, W + k * N, (size_t)N * sizeof(real));
        return panel;
    }
    /* W^T in blocks of 16 rows of W: each k then writes 16 neighbours in one line. */
    for (ptrdiff_t n0 = 0; n0 < N; n0 += 16) {
        ptrdiff_t n1 = n0 + 16 < N ? n0 + 16 : N;
        for (ptrdiff_t k = 0; k < K; k++)
            for (ptrdiff_t n = n0; n < n1; n++)
                panel[k * Np + n] = W[n * K + k];
    }
    return panel;
}

/* One register tile: C[rows, n0 : n0+TILE_N] += A[rows, :K] . panel[:K, n0 : ...] for
 * `rows` (1..MR) rows; `cols` (<= TILE_N) of them are real columns of C. */
static inline void FR_FN(gemm_tile)(real *C, ptrdiff_t ldc, const real *A, ptrdiff_t lda,
                                     const real *panel, ptrdiff_t Np, ptrdiff_t K,
                                     ptrdiff_t rows, ptrdiff_t cols) {
    fr_vec acc[FR_TILE_MR][FR_TILE_NR];
    memset(acc, 0, sizeof acc);
    for (ptrdiff_t k = 0; k < K; k++) {
        fr_vec b[FR_TILE_NR];
        for (int v = 0; v < FR_TILE_NR; v++)
            b[v] = *(const fr_vec *)(panel + k * Np + v * FR_VLEN);
        for (ptrdiff_t i = 0; i < rows; i++) {
            real a = A[i * lda + k];
            for (int v = 0; v < FR_TILE_NR; v++)
                acc[i][v] += a * b[v];
        }
    }
    for (ptrdiff_t i = 0; i < rows; i++) {
        real *c = C + i * ldc;
        if (cols == FR_TILE_N) {
            for (int v = 0; v < FR_TILE_NR; v++)
                *(fr_vec_u *)(c + v * FR_VLEN) += acc[i][v];
        } else {
            real tail[FR_TILE_N];
            memcpy(tail, acc[i], sizeof tail);
            for (ptrdiff_t j = 0; j < cols; j++)
                c[j] += tail[j];
        }
    }
}

/* One row: C[0, n0 : n0+TILE_N] += A[0, :K] . panel[:K, n0 : ...]. A single row has no
 * other rows to hide the FMA latency behind, so even and odd k go to two accumulator
 * sets. */
static inline void FR_FN(gemm_tile_row)(real *C, const real *A, const real *panel,
                                         ptrdiff_t Np, ptrdiff_t K, ptrdiff_t cols) {
    fr_vec even[FR_TILE_NR], odd[FR_TILE_NR];
    memset(even, 0, sizeof even);
    memset(odd, 0, sizeof odd);
    ptrdiff_t k = 0;
    for (; k + 1 < K; k += 2)
        for (int v = 0; v < FR_TILE_NR; v++) {
            even[v] += A[k] * *(const fr_vec *)(panel + k * Np + v * FR_VLEN);
            odd[v] += A[k + 1] * *(const fr_vec *)(panel + (k + 1) * Np + v * FR_VLEN);
        }
    for (; k < K; k++)
        for (int v = 0; v < FR_TILE_NR; v++)
            even[v] += A[k] * *(const fr_vec *)(panel + k * Np + v * FR_VLEN);
    real sums[FR_TILE_N];
    for (int v = 0; v < FR_TILE_NR; v++)
        even[v] += odd[v];
    memcpy(sums, even, sizeof sums);
    for (ptrdiff_t j = 0; j < cols; j++)
        C[j] += sums[j];
}

/* C (M, N) += A (M, K) . panel (K, Np), the panel from pack_panel (64-byte aligned, Np a
 * whole tile, so every vector load from it is aligned). */
static inline void FR_FN(gemm_packed)(real *C, ptrdiff_t ldc, const real *A, ptrdiff_t lda,
                                       const real *panel, ptrdiff_t M, ptrdiff_t N,
                                       ptrdiff_t K) {
    ptrdiff_t Np = FR_FN(packed_cols)(N);
    for (ptrdiff_t n0 = 0; n0 < Np; n0 += FR_TILE_N) {
        ptrdiff_t cols = N - n0 < FR_TILE_N ? N - n0 : FR_TILE_N;
        ptrdiff_t m0 = 0;
        for (; m0 + FR_TILE_MR <= M; m0 += FR_TILE_MR)
            FR_FN(gemm_tile)(C + m0 * ldc + n0, ldc, A + m0 * lda, lda, panel + n0, Np, K,
                             FR_TILE_MR, cols);
        for (; m0 < M; m0++)
            FR_FN(gemm_tile_row)(C + m0 * ldc + n0, A + m0 * lda, panel + n0, Np, K, cols);
    }
}

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

/* Short sequences do not repay packing: C (M, N) += A (M, K) . W^T with W (N, K) row-major,
 * as dot products along W's contiguous rows (forward: h w_hh^T). */
static inline void FR_FN(gemm_direct_nt)(real *C, ptrdiff_t ldc, const real *A, ptrdiff_t lda,
                                         const real *W, ptrdiff_t M, ptrdiff_t N,
                                         ptrdiff_t K) {
    for (ptrdiff_t m = 0; m < M; m++) {
        const real *a = A + m * lda;
        for (ptrdiff_t n = 0; n < N; n++) {
            const real *w = W + n * K;
            fr_vec acc = {0};
            ptrdiff_t k = 0;
            for (; k + FR_VLEN <= K; k += FR_VLEN)
                acc += *(const fr_vec_u *)(a + k) * *(const fr_vec_u *)(w + k);
            real sum = FR_FN(lane_sum)(acc);
            for (; k < K; k++)
                sum += a[k] * w[k];
            C[m * ldc + n] += sum;
        }
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
