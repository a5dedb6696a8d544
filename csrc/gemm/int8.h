/* int8.h - int8 products over a packed panel: int8 weights and activations, exact int32
 * sums, dequantized to float32 before the cell epilogue.
 *
 * Weights: per output row r of W (a column of op(W)) a symmetric scale s_w[r] = max|W[r]|
 * / 127 and W_q = rint(W / s_w) in [-127, 127], made once, in NumPy
 * (fastrnn.reference.quantize_rows, W_q = rint(W * (1 / s_w))) and handed to
 * fr_pack_int8_*. Activations: each row
 * of A (x_t, h_{t-1}) as it enters a product, the same way (fr_i8_quantize_rows, twin
 * reference.quantize_rows): s_a = max|a| / 127, a_q = rint(a * (1 / s_a)). Then
 *
 *   P[i][c] = float(sum_k a_q[i][k] W_q[k][c]) * (s_a[i] * s_w[c])          (float32)
 *
 * where the sum is an exact integer, so every ISA -- and the NumPy twin -- gets the same
 * bits. Three panel formats:
 *
 *   FR_PANEL_I8_VNNI  (AVX512-VNNI) 4 rows of a column in one 32-bit quad of int8, the
 *                     operand of vpdpbusd; A's rows as u8 = a_q + 128 quads, the excess
 *                     128 sum_k W_q[k][c] taken off with per-column sums kept in the panel.
 *   FR_PANEL_I8_PAIR  (AVX2) rows 2q and 2q+1 of a column sign-extended to int16 in one
 *                     32-bit pair, the operand of vpmaddwd; A's rows as int16 pairs alike.
 *                     Exact int32 sums while K * 2 * 127^2 < 2^31 (K < 66,000).
 *   FR_PANEL_I8       (every other ISA) the int8 values as float32, multiplied by the
 *                     float32 microkernel: products and sums of these integers are exact
 *                     in float32 while K <= FR_I8_EXACT_K, so it gives the same bits;
 *                     a longer K runs in chunks of FR_I8_EXACT_K added in int32.
 *
 * Each block of the panel is its slab, then the NB column scales s_w (float), then (VNNI)
 * the NB column sums (int32). Float32 builds only.
 */
#ifndef FASTRNN_GEMM_INT8_H
#define FASTRNN_GEMM_INT8_H

#ifndef FR_F64
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../fastrnn.h"
#include "panel.h"

#define FR_I8_EXACT_K 1040 /* K * 127 * 127 < 2^24: float32 sums of int8 products exact
                            * (FR_PANEL_I8 sums longer K in chunks of it: i8_chunked_tile) */

#if FR_VBYTES == 64 && defined(__x86_64__) && defined(__GNUC__)
#define FR_HAVE_I8_VNNI 1 /* vpdpbusd tiles are built (int8_tile.h) */
#else
#define FR_HAVE_I8_VNNI 0
#endif
#if FR_VBYTES == 32 && defined(__x86_64__) && defined(__GNUC__)
#define FR_HAVE_I8_PAIR 1 /* vpmaddwd tiles are built (int8_tile.h) */
#else
#define FR_HAVE_I8_PAIR 0
#endif

/* The int8 panel format products run in now: vpdpbusd or vpmaddwd when built and
 * allowed. */
static inline int fr_i8_format(void) {
    if (FR_HAVE_I8_VNNI && fr_isa_level >= FR_ISA_AVX512_BF16)
        return FR_PANEL_I8_VNNI;
    return FR_HAVE_I8_PAIR && fr_isa_level >= FR_ISA_AVX2 ? FR_PANEL_I8_PAIR : FR_PANEL_I8;
}

/* Rows of op(W) in one 32-bit element of a slab: 4 (quads), 2 (pairs) or 1 (float32). */
static inline int fr_i8_per_lane(int format) {
    return format == FR_PANEL_I8_VNNI ? 4 : format == FR_PANEL_I8_PAIR ? 2 : 1;
}

/* Rows of the slab of an int8 panel: ceil(K / fr_i8_per_lane). */
static inline ptrdiff_t fr_i8_slab_rows(ptrdiff_t K, int format) {
    const int per = fr_i8_per_lane(format);
    return (K + per - 1) / per;
}

/* The geometry of an int8 panel of op(W) (K, G*H) in `format` (data = NULL). */
static inline fr_panel FR_FN(panel_shape_i8)(ptrdiff_t K, ptrdiff_t G, ptrdiff_t H,
                                             int format) {
    fr_panel p = FR_FN(panel_shape)(K, G, H);
    const ptrdiff_t NB = p.nv * FR_VLEN;
    p.slab = (fr_i8_slab_rows(K, format) + (format == FR_PANEL_I8_VNNI ? 2 : 1)) * NB;
    p.format = format;
    return p;
}

/* The NB column scales of block `slab` of an int8 panel. */
static inline const float *fr_i8_column_scales(const fr_panel *p, const real *slab) {
    return slab + fr_i8_slab_rows(p->K, p->format) * p->nv * FR_VLEN;
}

/* Fill the int8 panel p->data (p from panel_shape_i8) from W_q (G*H, K) and its row
 * scales s_w (G*H): op(W) = W_q^T, as panel_fill does with transpose = 1. */
static inline void FR_FN(panel_fill_i8)(fr_panel *p, const int8_t *Wq, const float *s_w) {
    const ptrdiff_t NB = p->nv * FR_VLEN, rows = fr_i8_slab_rows(p->K, p->format);
    const int per = fr_i8_per_lane(p->format);
    const uint32_t mask = per == 4 ? 0xffu : 0xffffu;
    memset(p->data, 0, (size_t)FR_FN(panel_reals)(p) * sizeof(real));
    for (ptrdiff_t blk = 0; blk < p->blocks; blk++) {
        real *slab = p->data + blk * p->slab;
        uint32_t *lanes = (uint32_t *)slab; /* quads, pairs */
        int32_t *sums = (int32_t *)(slab + (rows + 1) * NB);
        for (ptrdiff_t c = 0; c < NB; c++) {
            ptrdiff_t col = FR_FN(panel_column)(p, blk, c);
            if (col < 0)
                continue;
            slab[rows * NB + c] = s_w[col];
            for (ptrdiff_t k = 0; k < p->K; k++) {
                int8_t w = Wq[col * p->K + k];
                if (per == 1)
                    slab[k * NB + c] = w;
                else /* 8-bit (quads) or 16-bit (pairs) two's complement fields */
                    lanes[k / per * NB + c] |= ((uint32_t)(int32_t)w & mask)
                                               << (32 / per * (k % per));
                if (p->format == FR_PANEL_I8_VNNI)
                    sums[c] += w;
            }
        }
    }
}

typedef int32_t fr_i8_ivec __attribute__((vector_size(FR_VBYTES))); /* lanes of a fr_vec */

/* max(most, x) lane by lane; a NaN x never wins (as in a scalar `>`). */
static FR_ALWAYS_INLINE fr_vec fr_i8_max(fr_vec most, fr_vec x) {
    fr_i8_ivec up = x > most;
    return (fr_vec)(((fr_i8_ivec)x & up) | ((fr_i8_ivec)most & ~up));
}

/* max(most, |a[0 .. VLEN)|) lane by lane. */
static FR_ALWAYS_INLINE fr_vec fr_i8_max_abs(fr_vec most, const float *a) {
    return fr_i8_max(most, (fr_vec)((fr_i8_ivec) * (const fr_vec_u *)a & 0x7fffffff));
}

/* The scale of a row of activations: max|a| / 127, or 1 for a row of zeros (a NaN is
 * never the max). Four vectors of maxima (four dependency chains), then their lanes: max
 * is exact in any order. */
static inline float fr_i8_row_scale(const float *a, ptrdiff_t K) {
    fr_vec most[4] = {{0}, {0}, {0}, {0}};
    ptrdiff_t k = 0;
    for (; k + 4 * FR_VLEN <= K; k += 4 * FR_VLEN)
        for (int j = 0; j < 4; j++)
            most[j] = fr_i8_max_abs(most[j], a + k + j * FR_VLEN);
    for (; k + FR_VLEN <= K; k += FR_VLEN)
        most[0] = fr_i8_max_abs(most[0], a + k);
    most[0] = fr_i8_max(fr_i8_max(most[0], most[1]), fr_i8_max(most[2], most[3]));
    float m = 0;
    for (ptrdiff_t l = 0; l < FR_VLEN; l++)
        m = most[0][l] > m ? most[0][l] : m;
    for (; k < K; k++)
        m = fabsf(a[k]) > m ? fabsf(a[k]) : m;
    return m > 0 ? m / 127.0f : 1.0f;
}

#if FR_HAVE_I8_PAIR
#include <immintrin.h>

/* out[k] = rint(a[k] * inv) as int16 for k below K rounded down to 16 (vcvtps2dq rounds
 * to nearest even, as nearbyintf); returns that count. */
static inline ptrdiff_t fr_i8_quantize_pairs_avx2(void *out, const float *a, ptrdiff_t K,
                                                  float inv) {
    const __m256 scale = _mm256_set1_ps(inv);
    ptrdiff_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(a + k), scale));
        __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(a + k + 8), scale));
        __m256i packed = _mm256_packs_epi32(lo, hi); /* lanes lo0-3 hi0-3 lo4-7 hi4-7 */
        _mm256_storeu_si256((__m256i *)((int16_t *)out + k),
                            _mm256_permute4x64_epi64(packed, 0xd8));
    }
    return k;
}
#endif

/* An int16 of a row of pairs, which the tiles read as 32-bit lanes: may alias them. */
typedef int16_t fr_i8_half __attribute__((may_alias));

/* out (K rounded up to pairs) = rint(a * inv) as int16, 0 past K. */
static inline void fr_i8_quantize_pairs(fr_i8_half *restrict out, const float *restrict a,
                                        ptrdiff_t K, float inv) {
    ptrdiff_t k = 0;
#if FR_HAVE_I8_PAIR
    k = fr_i8_quantize_pairs_avx2(out, a, K, inv);
#endif
    for (; k < K; k++)
        out[k] = (int16_t)nearbyintf(a[k] * inv);
    if (K & 1)
        out[K] = 0;
}

/* 4-byte elements per row of A quantized by fr_i8_quantize_rows: the values, then s_a. */
static inline ptrdiff_t fr_i8_row_elems(ptrdiff_t K, int format) {
    return fr_i8_slab_rows(K, format) + 1;
}

/* dst (rows, ld) = the rows of A (rows, K; leading dimension lda) quantized for `format`:
 * a_q = rint(a * (1 / s_a)) as float32, as bytes u8 = a_q + 128 (little-endian quads, 128
 * past K), or as int16 (little-endian pairs, 0 past K); each row's s_a in its last
 * element. */
static inline void fr_i8_quantize_rows(int format, void *dst, ptrdiff_t ld, const real *A,
                                       ptrdiff_t lda, ptrdiff_t rows, ptrdiff_t K) {
    for (ptrdiff_t r = 0; r < rows; r++) {
        const real *restrict a = A + r * lda;
        real *restrict out = (real *)dst + r * ld;
        const float s = fr_i8_row_scale(a, K), inv = 1.0f / s;
        if (format == FR_PANEL_I8_VNNI) {
            uint8_t *restrict bytes = (uint8_t *)out;
            for (ptrdiff_t k = 0; k < K; k++)
                bytes[k] = (uint8_t)(int32_t)(nearbyintf(a[k] * inv) + 128.0f);
            for (ptrdiff_t k = K; k < (K + 3) / 4 * 4; k++)
                bytes[k] = 128;
        } else if (format == FR_PANEL_I8_PAIR) {
            fr_i8_quantize_pairs((fr_i8_half *)out, a, K, inv);
        } else {
            for (ptrdiff_t k = 0; k < K; k++)
                out[k] = nearbyintf(a[k] * inv);
        }
        out[ld - 1] = s;
    }
}

/* The exact sums of a tile (m, NB) -> P = sum * (s_a * s_w), s_a of each row in the last
 * element of its row of A (leading dimension lda), s_w the block's column scales. */
static inline void fr_i8_dequantize(real *acc, ptrdiff_t NB, const real *A, ptrdiff_t lda,
                                    ptrdiff_t m, const float *s_w) {
    for (ptrdiff_t i = 0; i < m; i++) {
        const float s_a = A[i * lda + lda - 1];
        for (ptrdiff_t c = 0; c < NB; c++)
            acc[i * NB + c] *= s_a * s_w[c];
    }
}

/* A FR_PANEL_I8 tile past FR_I8_EXACT_K rows of op(W): the float32 tiles (microkernel.h,
 * which includes this header after them) over chunks of FR_I8_EXACT_K rows, each chunk's
 * sums exact in float32, added up in int32 -- the exact sums at any K, as float32 in acc
 * (m, NB), and with `pair` (m = 1) in acc2 for the next block. */
static inline void FR_FN(i8_chunked_tile)(const fr_panel *p, real *acc, real *acc2,
                                          const real *A, ptrdiff_t lda, const real *slab,
                                          ptrdiff_t m, int pair) {
    const ptrdiff_t NB = p->nv * FR_VLEN, n = m * NB;
    real part[(FR_MR_MAX + 1) * 4 * FR_VLEN] __attribute__((aligned(64))); /* +1: acc2 */
    int32_t sums[(FR_MR_MAX + 1) * 4 * FR_VLEN] = {0};
    for (ptrdiff_t k0 = 0; k0 < p->K; k0 += FR_I8_EXACT_K) {
        const ptrdiff_t kc = p->K - k0 < FR_I8_EXACT_K ? p->K - k0 : FR_I8_EXACT_K;
        const fr_segment seg = {A + k0, lda, kc, slab + k0 * NB,
                                pair ? slab + p->slab + k0 * NB : NULL};
        FR_FN(float_tile)(part, part + n, &seg, 1, NULL, 0, m, p->nv, pair);
        for (ptrdiff_t i = 0; i < n + (pair ? NB : 0); i++)
            sums[i] += (int32_t)part[i];
    }
    for (ptrdiff_t i = 0; i < n; i++)
        acc[i] = (real)sums[i];
    for (ptrdiff_t i = 0; pair && i < NB; i++)
        acc2[i] = (real)sums[n + i];
}

#if FR_HAVE_I8_VNNI || FR_HAVE_I8_PAIR
#include "int8_tile.h"
#endif

/* The tile of an int8 panel (see panel_dot_tile in microkernel.h): on the dot instruction
 * of its format, or for FR_PANEL_I8 past FR_I8_EXACT_K in chunks; returns 0 where the
 * float32 tiles run it as they are. */
static inline int FR_FN(i8_panel_tile)(const fr_panel *p, real *acc, real *acc2,
                                       const real *A, ptrdiff_t lda, const real *slab,
                                       ptrdiff_t m, int pair) {
#if FR_HAVE_I8_VNNI || FR_HAVE_I8_PAIR
    if (p->format == FR_I8_DOT_FORMAT) {
        i8_dot_run(p, acc, acc2, A, lda, slab, m, pair);
        return 1;
    }
#endif
    if (p->format == FR_PANEL_I8 && p->K > FR_I8_EXACT_K) {
        FR_FN(i8_chunked_tile)(p, acc, acc2, A, lda, slab, m, pair);
        return 1;
    }
    return 0;
}

#endif /* !FR_F64 */
#endif
