/* bf16_tile.h - the vdpbf16ps tiles of a FR_PANEL_BF16_DP panel (see bf16.h), built into
 * the AVX-512 variant with AVX512-BF16 added to these functions only (target pragma); they
 * run at ISA level FR_ISA_AVX512_BF16 alone, which fr_detect_isa grants when the CPU has it.
 *
 *   acc (m, nv*VLEN) = bf16(A) (m, K) . slab (ceil(K/2) pairs, nv*VLEN)
 *
 * with the rows of A rounded once per product by bf16_round_rows_dp, and with `pair`
 * (m = 1) acc2 = bf16(A) . slab2 in the same pass, as tile_product does for float32
 * (microkernel.h): m, nv and pair are constants where this is inlined.
 */
#include <immintrin.h>

#if defined(__clang__) /* Clang ignores GCC's target pragma */
#pragma clang attribute push(__attribute__((target("avx512bf16"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512bf16")
#endif

#define FR_BF16_KC 32 /* k of A rounded per vcvtne2ps2bf16 */

/* dst (rows, ld) = A (rows, K; leading dimension lda) rounded to bf16 pairs, as
 * vdpbf16ps broadcasts them. */
static void bf16_round_rows_dp(void *dst, ptrdiff_t ld, const float *A, ptrdiff_t lda,
                               ptrdiff_t rows, ptrdiff_t K) {
    for (ptrdiff_t r = 0; r < rows; r++) {
        const float *a = A + r * lda;
        uint32_t *out = (uint32_t *)dst + r * ld;
        for (ptrdiff_t k0 = 0; k0 < K; k0 += FR_BF16_KC) {
            ptrdiff_t n = K - k0 < FR_BF16_KC ? K - k0 : FR_BF16_KC;
            __mmask16 lo = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
            __mmask16 hi = n >= 32 ? 0xffff : n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0;
            __m512bh b = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, a + k0 + 16),
                                             _mm512_maskz_loadu_ps(lo, a + k0));
            memcpy(out + k0 / 2, &b, (size_t)(n + 1) / 2 * sizeof(uint32_t));
        }
    }
}

typedef uint32_t fr_bf16_uvec __attribute__((vector_size(FR_VBYTES)));

static FR_ALWAYS_INLINE void bf16_tile_product(real *acc_out, real *acc2_out, const real *A,
                                               ptrdiff_t lda, const uint32_t *slab,
                                               const uint32_t *slab2, ptrdiff_t K,
                                               const int m, const int nv, const int pair) {
    const ptrdiff_t NB = nv * FR_VLEN, Kp = (K + 1) / 2;
    const uint32_t *a = (const uint32_t *)A;
    __m512 acc[FR_MR_MAX][4], acc2[4];
    for (int i = 0; i < m; i++)
        for (int v = 0; v < nv; v++)
            acc[i][v] = _mm512_setzero_ps();
    for (int v = 0; v < nv; v++)
        acc2[v] = _mm512_setzero_ps();
    for (ptrdiff_t q = 0; q < Kp; q++) {
        __m512bh w[4];
        for (int v = 0; v < nv; v++)
            w[v] = (__m512bh) * (const fr_bf16_uvec *)(slab + q * NB + v * FR_VLEN);
        for (int i = 0; i < m; i++) {
            __m512bh ai = (__m512bh)_mm512_set1_epi32((int)a[i * lda + q]);
            for (int v = 0; v < nv; v++)
                acc[i][v] = _mm512_dpbf16_ps(acc[i][v], ai, w[v]);
        }
        if (pair) {
            __m512bh a0 = (__m512bh)_mm512_set1_epi32((int)a[q]);
            for (int v = 0; v < nv; v++)
                acc2[v] = _mm512_dpbf16_ps(
                    acc2[v], a0, (__m512bh) * (const fr_bf16_uvec *)(slab2 + q * NB + v * FR_VLEN));
        }
    }
    for (int i = 0; i < m; i++)
        for (int v = 0; v < nv; v++)
            _mm512_store_ps(acc_out + i * NB + v * FR_VLEN, acc[i][v]);
    if (pair)
        for (int v = 0; v < nv; v++)
            _mm512_store_ps(acc2_out + v * FR_VLEN, acc2[v]);
}

FR_DEFINE_LOWP_TILES(bf16_dp, bf16_tile_product, uint32_t)

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
