/* int8_tile.h - the vpdpbusd tiles of a FR_PANEL_I8_VNNI panel (see int8.h), built into
 * the AVX-512 variant with AVX512-VNNI added to these functions only (target pragma); they
 * run at ISA level FR_ISA_AVX512_BF16 alone (fr_detect_isa grants it with VNNI present).
 *
 *   acc (m, nv*VLEN) = float(sum_k a_q (m, K) W_q (K, nv*VLEN))     exact int32 sums
 *
 * from A's rows as u8 quads (a_q + 128) and the panel's int8 quads, less 128 times the
 * column sums; with `pair` (m = 1) acc2 for slab2 in the same pass (as tile_product).
 */
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512vnni")

typedef uint32_t fr_i8_uvec __attribute__((vector_size(FR_VBYTES)));

/* float(acc - 128 * the column sums after the slab of Kq quad rows) stored to out. */
static FR_ALWAYS_INLINE void i8_store(real *out, __m512i acc, const uint32_t *slab,
                                      ptrdiff_t Kq, ptrdiff_t NB, int v) {
    __m512i sums = _mm512_load_si512(slab + (Kq + 1) * NB + v * FR_VLEN);
    _mm512_store_ps(out, _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_slli_epi32(sums, 7))));
}

static FR_ALWAYS_INLINE void i8_tile_product(real *acc_out, real *acc2_out, const real *A,
                                             ptrdiff_t lda, const uint32_t *slab,
                                             const uint32_t *slab2, ptrdiff_t K, const int m,
                                             const int nv, const int pair) {
    const ptrdiff_t NB = nv * FR_VLEN, Kq = (K + 3) / 4;
    const uint32_t *a = (const uint32_t *)A;
    __m512i acc[FR_MR_MAX][4], acc2[4];
    for (int i = 0; i < m; i++)
        for (int v = 0; v < nv; v++)
            acc[i][v] = _mm512_setzero_si512();
    for (int v = 0; v < nv; v++)
        acc2[v] = _mm512_setzero_si512();
    for (ptrdiff_t q = 0; q < Kq; q++) {
        __m512i w[4];
        for (int v = 0; v < nv; v++)
            w[v] = (__m512i) * (const fr_i8_uvec *)(slab + q * NB + v * FR_VLEN);
        for (int i = 0; i < m; i++) {
            __m512i ai = _mm512_set1_epi32((int)a[i * lda + q]);
            for (int v = 0; v < nv; v++)
                acc[i][v] = _mm512_dpbusd_epi32(acc[i][v], ai, w[v]);
        }
        if (pair) {
            __m512i a0 = _mm512_set1_epi32((int)a[q]);
            for (int v = 0; v < nv; v++)
                acc2[v] = _mm512_dpbusd_epi32(
                    acc2[v], a0, (__m512i) * (const fr_i8_uvec *)(slab2 + q * NB + v * FR_VLEN));
        }
    }
    for (int i = 0; i < m; i++)
        for (int v = 0; v < nv; v++)
            i8_store(acc_out + i * NB + v * FR_VLEN, acc[i][v], slab, Kq, NB, v);
    if (pair)
        for (int v = 0; v < nv; v++)
            i8_store(acc2_out + v * FR_VLEN, acc2[v], slab2, Kq, NB, v);
}

FR_DEFINE_LOWP_TILES(i8_vnni, i8_tile_product, uint32_t)

#pragma GCC pop_options
