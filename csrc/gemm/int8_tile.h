/* int8_tile.h - the integer dot-product tiles of an int8 panel (see int8.h): one tile
 * body, over the one dot instruction its build variant has:
 *
 *   FR_PANEL_I8_VNNI  vpdpbusd zmm (the AVX-512 variant, AVX512-VNNI added to these
 *                     functions only by a target pragma; run at ISA level
 *                     FR_ISA_AVX512_BF16 alone, which fr_detect_isa grants with VNNI);
 *   FR_PANEL_I8_PAIR  vpmaddwd + vpaddd ymm (the AVX2 variant, ISA level FR_ISA_AVX2).
 *
 *   acc (m, nv*VLEN) = float(sum_k a_q (m, K) W_q (K, nv*VLEN))     exact int32 sums
 *
 * from A's rows as 32-bit lanes of quads (u8 = a_q + 128; less 128 times the panel's
 * column sums) or int16 pairs, one lane broadcast per row and step, against the panel's
 * lanes of the same rows of W_q; with `pair` (m = 1) acc2 for slab2 in the same pass (as
 * tile_product). m, nv and pair are constants where this is inlined.
 */
#include <immintrin.h>

#if FR_HAVE_I8_VNNI
#if defined(__clang__) /* Clang ignores GCC's target pragma */
#pragma clang attribute push(__attribute__((target("avx512vnni"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512vnni")
#endif
#define FR_I8_DOT_FORMAT FR_PANEL_I8_VNNI

/* acc + the 4-product sums of a's u8 quads and w's int8 quads. */
static FR_ALWAYS_INLINE fr_i8_ivec i8_dot(fr_i8_ivec acc, fr_i8_ivec a, fr_i8_ivec w) {
    return (fr_i8_ivec)_mm512_dpbusd_epi32((__m512i)acc, (__m512i)a, (__m512i)w);
}

/* The tile's sums of vector v (slab of Kq lane rows): less 128 times the column sums. */
static FR_ALWAYS_INLINE fr_i8_ivec i8_exact(fr_i8_ivec acc, const uint32_t *slab,
                                            ptrdiff_t Kq, ptrdiff_t NB, int v) {
    return acc - (*(const fr_i8_ivec *)(slab + (Kq + 1) * NB + v * FR_VLEN) << 7);
}
#else
#define FR_I8_DOT_FORMAT FR_PANEL_I8_PAIR

/* acc + the 2-product sums of a's and w's int16 pairs (vpmaddwd; never saturates: the
 * values lie in [-127, 127]). */
static FR_ALWAYS_INLINE fr_i8_ivec i8_dot(fr_i8_ivec acc, fr_i8_ivec a, fr_i8_ivec w) {
    return acc + (fr_i8_ivec)_mm256_madd_epi16((__m256i)a, (__m256i)w);
}

static FR_ALWAYS_INLINE fr_i8_ivec i8_exact(fr_i8_ivec acc, const uint32_t *slab,
                                            ptrdiff_t Kq, ptrdiff_t NB, int v) {
    return acc;
}
#endif

/* float(the exact sums of vector v) stored to out. */
static FR_ALWAYS_INLINE void i8_store(real *out, fr_i8_ivec acc, const uint32_t *slab,
                                      ptrdiff_t Kq, ptrdiff_t NB, int v) {
    *(fr_vec *)out = __builtin_convertvector(i8_exact(acc, slab, Kq, NB, v), fr_vec);
}

static FR_ALWAYS_INLINE void i8_tile_product(real *acc_out, real *acc2_out, const real *A,
                                             ptrdiff_t lda, const uint32_t *slab,
                                             const uint32_t *slab2, ptrdiff_t K, const int m,
                                             const int nv, const int pair) {
    const ptrdiff_t NB = nv * FR_VLEN, Kq = fr_i8_slab_rows(K, FR_I8_DOT_FORMAT);
    const uint32_t *a = (const uint32_t *)A;
    fr_i8_ivec acc[FR_MR_MAX][4], acc2[4];
    for (int i = 0; i < m; i++)
        for (int v = 0; v < nv; v++)
            acc[i][v] = (fr_i8_ivec){0};
    for (int v = 0; v < nv; v++)
        acc2[v] = (fr_i8_ivec){0};
    for (ptrdiff_t q = 0; q < Kq; q++) {
        fr_i8_ivec w[4];
        for (int v = 0; v < nv; v++)
            w[v] = *(const fr_i8_ivec *)(slab + q * NB + v * FR_VLEN);
        for (int i = 0; i < m; i++) {
            fr_i8_ivec ai = (fr_i8_ivec){0} + (int32_t)a[i * lda + q];
            for (int v = 0; v < nv; v++)
                acc[i][v] = i8_dot(acc[i][v], ai, w[v]);
        }
        if (pair) {
            fr_i8_ivec a0 = (fr_i8_ivec){0} + (int32_t)a[q];
            for (int v = 0; v < nv; v++)
                acc2[v] = i8_dot(acc2[v], a0,
                                 *(const fr_i8_ivec *)(slab2 + q * NB + v * FR_VLEN));
        }
    }
    for (int i = 0; i < m; i++)
        for (int v = 0; v < nv; v++)
            i8_store(acc_out + i * NB + v * FR_VLEN, acc[i][v], slab, Kq, NB, v);
    if (pair)
        for (int v = 0; v < nv; v++)
            i8_store(acc2_out + v * FR_VLEN, acc2[v], slab2, Kq, NB, v);
}

FR_DEFINE_LOWP_TILES(i8_dot, i8_tile_product, uint32_t)

#if FR_HAVE_I8_VNNI
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
