/* bf16_tile.h - the bf16 tile product, included twice by bf16.h (no include guard):
 *   FR_BF16_DP 0: bf16 widened to float32 (a shift or a mask), two FMAs per pair (any ISA);
 *   FR_BF16_DP 1: one vdpbf16ps per pair (AVX512-BF16).
 * Both sum every column in the order bf16.h states, so they give the same bits.
 *
 *   acc (m, nv*VLEN) = bf16(A) (m, K; leading dimension lda) . slab (ceil(K/2), nv*VLEN)
 *
 * and with `pair` (m = 1) acc2 = bf16(A) . slab2 in the same pass, as tile_product does
 * for float32 (microkernel.h): m, nv and pair are constants where this is inlined.
 */
#if FR_BF16_DP
#define FR_BT(name) name##_dp
#else
#define FR_BT(name) name##_widen
#endif

typedef uint32_t FR_BT(fr_bf16_uvec) __attribute__((vector_size(FR_VBYTES)));

/* pairs (FR_BF16_KC/2) = bf16 pairs of the n <= FR_BF16_KC floats of a, zero past n. */
static FR_ALWAYS_INLINE void FR_BT(bf16_round_chunk)(uint32_t *pairs, const float *a,
                                                     ptrdiff_t n) {
#if FR_BF16_DP
    __mmask16 lo = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
    __mmask16 hi = n >= 32 ? 0xffff : n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0;
    __m512bh b = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, a + 16),
                                     _mm512_maskz_loadu_ps(lo, a));
    memcpy(pairs, &b, sizeof b);
#else
    fr_bf16_pairs(pairs, a, n);
#endif
}

/* acc += the pair a (two bf16 of A) times the pair vector w (two bf16 per column). */
static FR_ALWAYS_INLINE fr_vec FR_BT(bf16_step)(fr_vec acc, uint32_t a,
                                                FR_BT(fr_bf16_uvec) w) {
#if FR_BF16_DP
    return (fr_vec)_mm512_dpbf16_ps((__m512)acc, (__m512bh)_mm512_set1_epi32((int)a),
                                    (__m512bh)w);
#else
    uint32_t odd_bits = a & 0xffff0000u, even_bits = a << 16;
    float odd, even;
    memcpy(&odd, &odd_bits, sizeof odd);
    memcpy(&even, &even_bits, sizeof even);
    acc += odd * (fr_vec)(w & 0xffff0000u); /* row 2q+1 first, as vdpbf16ps */
    acc += even * (fr_vec)(w << 16);
    return acc;
#endif
}

static FR_ALWAYS_INLINE void FR_BT(bf16_tile_product)(real *acc_out, real *acc2_out,
                                                      const real *A, ptrdiff_t lda,
                                                      const uint32_t *slab,
                                                      const uint32_t *slab2, ptrdiff_t K,
                                                      const int m, const int nv,
                                                      const int pair) {
    const ptrdiff_t NB = nv * FR_VLEN;
    fr_vec acc[FR_MR_MAX][4], acc2[4];
    uint32_t a[FR_MR_MAX][FR_BF16_KC / 2] __attribute__((aligned(64)));
    for (int i = 0; i < m; i++)
        for (int v = 0; v < nv; v++)
            acc[i][v] = (fr_vec){0};
    for (int v = 0; v < nv; v++)
        acc2[v] = (fr_vec){0};
    for (ptrdiff_t k0 = 0; k0 < K; k0 += FR_BF16_KC) {
        ptrdiff_t n = K - k0 < FR_BF16_KC ? K - k0 : FR_BF16_KC;
        for (int i = 0; i < m; i++)
            FR_BT(bf16_round_chunk)(a[i], A + i * lda + k0, n);
        for (ptrdiff_t q = 0; q < (n + 1) / 2; q++) {
            const uint32_t *p = slab + (k0 / 2 + q) * NB;
            FR_BT(fr_bf16_uvec) w[4];
            for (int v = 0; v < nv; v++)
                w[v] = *(const FR_BT(fr_bf16_uvec) *)(p + v * FR_VLEN);
            for (int i = 0; i < m; i++)
                for (int v = 0; v < nv; v++)
                    acc[i][v] = FR_BT(bf16_step)(acc[i][v], a[i][q], w[v]);
            if (pair)
                for (int v = 0; v < nv; v++)
                    acc2[v] = FR_BT(bf16_step)(
                        acc2[v], a[0][q],
                        *(const FR_BT(fr_bf16_uvec) *)(slab2 + (k0 / 2 + q) * NB +
                                                       v * FR_VLEN));
        }
    }
    for (int i = 0; i < m; i++)
        for (int v = 0; v < nv; v++)
            *(fr_vec *)(acc_out + i * NB + v * FR_VLEN) = acc[i][v];
    if (pair)
        for (int v = 0; v < nv; v++)
            *(fr_vec *)(acc2_out + v * FR_VLEN) = acc2[v];
}

/* bf16_tile_product with m and nv turned into constants (m <= FR_ACC_REGS / nv). */
#define FR_BT_CASE(rows, NV)                                                               \
    case rows:                                                                             \
        if (rows <= FR_ACC_REGS / NV)                                                      \
            FR_BT(bf16_tile_product)(acc, NULL, A, lda, slab, NULL, K, rows, NV, 0);       \
        break;

static void FR_BT(bf16_tile)(real *acc, const real *A, ptrdiff_t lda, const uint32_t *slab,
                             ptrdiff_t K, ptrdiff_t m, ptrdiff_t nv) {
    if (nv == 3)
        switch (m) {
            FR_BT_CASE(1, 3) FR_BT_CASE(2, 3) FR_BT_CASE(3, 3) FR_BT_CASE(4, 3)
            FR_BT_CASE(5, 3) FR_BT_CASE(6, 3) FR_BT_CASE(7, 3) FR_BT_CASE(8, 3)
        }
    else
        switch (m) {
            FR_BT_CASE(1, 4) FR_BT_CASE(2, 4) FR_BT_CASE(3, 4)
            FR_BT_CASE(4, 4) FR_BT_CASE(5, 4) FR_BT_CASE(6, 4)
        }
}
#undef FR_BT_CASE

static void FR_BT(bf16_pair)(real *acc, real *acc2, const real *A, const uint32_t *slab,
                             const uint32_t *slab2, ptrdiff_t K, ptrdiff_t nv) {
    if (nv == 3)
        FR_BT(bf16_tile_product)(acc, acc2, A, 0, slab, slab2, K, 1, 3, 1);
    else
        FR_BT(bf16_tile_product)(acc, acc2, A, 0, slab, slab2, K, 1, 4, 1);
}

#undef FR_BT
