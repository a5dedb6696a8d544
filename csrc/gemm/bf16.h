/* bf16.h - bfloat16 products over a packed panel: bf16 operands, float32 accumulation.
 *
 * A bf16 panel (panel.h) holds op(W) rounded to bfloat16 once, rows 2q and 2q+1 of a column
 * in one 32-bit pair. A tile product rounds the rows of A (the state h_{t-1}, or x_t) to
 * bf16 as it streams them, 32 k at a time, and accumulates in float32:
 *
 *   acc[i][c] = sum over pairs q of  a[2q+1] w[2q+1][c]  then  a[2q] w[2q][c]   (float32)
 *
 * in exactly that order: the order of AVX512-BF16's vdpbf16ps, measured bit for bit on the
 * hardware (every product of two bf16 is exact in float32, so each step is one rounding).
 * The widening path (bf16_tile.h with FR_BF16_DP 0: AVX2, AVX-512F or the portable build)
 * follows the same order and so gives the same bits as vdpbf16ps; the cell epilogues then
 * see a float32 tile as from any other panel. Float32 subnormals round to zero (the
 * hardware reads them as zero). Float32 builds only.
 */
#ifndef FASTRNN_GEMM_BF16_H
#define FASTRNN_GEMM_BF16_H

#ifndef FR_F64
#include <stdint.h>
#include <string.h>

#include "../fastrnn.h"
#include "panel.h"

#define FR_BF16_KC 32 /* k of A rounded per chunk: one vcvtne2ps2bf16 */

/* float32 -> bfloat16 bits: round to nearest even; subnormals to signed zero; a NaN stays
 * a quiet NaN (the bits of vcvtne2ps2bf16). NumPy twin: fastrnn.reference.bf16_round. */
static inline uint32_t fr_bf16_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint32_t mag = u & 0x7fffffffu;
    if (mag > 0x7f800000u)
        return (u >> 16) | 0x40u;
    if (mag < 0x00800000u)
        return (u >> 16) & 0x8000u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

/* pairs[q] = bf16(a[2q]) | bf16(a[2q+1]) << 16 for the n <= FR_BF16_KC floats of a, zero
 * past n. */
static inline void fr_bf16_pairs(uint32_t *restrict pairs, const float *restrict a,
                                 ptrdiff_t n) {
    float chunk[FR_BF16_KC] = {0};
    memcpy(chunk, a, (size_t)n * sizeof(float));
    for (int q = 0; q < FR_BF16_KC / 2; q++)
        pairs[q] = fr_bf16_bits(chunk[2 * q]) | fr_bf16_bits(chunk[2 * q + 1]) << 16;
}

/* The bf16 twin of panel_shape: same blocks, slabs of ceil(K/2) pairs. */
static inline fr_panel FR_FN(panel_shape_bf16)(ptrdiff_t K, ptrdiff_t G, ptrdiff_t H) {
    fr_panel p = FR_FN(panel_shape)(K, G, H);
    p.slab = (K + 1) / 2 * p.nv * FR_VLEN;
    p.format = FR_PANEL_BF16;
    return p;
}

/* Fill the bf16 panel p->data (p from panel_shape_bf16) from W, as panel_fill does. */
static inline void FR_FN(panel_fill_bf16)(fr_panel *p, const real *W, int transpose) {
    const ptrdiff_t K = p->K, NB = p->nv * FR_VLEN;
    uint32_t *data = (uint32_t *)p->data;
    memset(data, 0, (size_t)FR_FN(panel_reals)(p) * sizeof(uint32_t));
    for (ptrdiff_t blk = 0; blk < p->blocks; blk++) {
        uint32_t *slab = data + blk * p->slab;
        for (ptrdiff_t c = 0; c < NB; c++) {
            ptrdiff_t col = FR_FN(panel_column)(p, blk, c);
            for (ptrdiff_t k = 0; col >= 0 && k < K; k++)
                slab[k / 2 * NB + c] |= fr_bf16_bits(FR_FN(panel_source)(p, W, transpose, k, col))
                                        << (16 * (k & 1));
        }
    }
}

/* The widening tiles on every build; vdpbf16ps tiles where AVX-512 code is built (the
 * target pragma adds AVX512-BF16 to those functions only; they run only at ISA level
 * FR_ISA_AVX512_BF16, which fr_detect_isa grants when the CPU has it). */
#define FR_BF16_DP 0
#include "bf16_tile.h"
#undef FR_BF16_DP

#if FR_VBYTES == 64 && defined(__x86_64__) && defined(__GNUC__)
#define FR_HAVE_BF16_DP 1
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx512bf16")
#define FR_BF16_DP 1
#include "bf16_tile.h"
#undef FR_BF16_DP
#pragma GCC pop_options
#else
#define FR_HAVE_BF16_DP 0
#endif

/* The panel format a bf16 product runs in now: vdpbf16ps when built and allowed. */
static inline int fr_bf16_format(void) {
    return FR_HAVE_BF16_DP && fr_isa_level >= FR_ISA_AVX512_BF16 ? FR_PANEL_BF16_DP
                                                                 : FR_PANEL_BF16;
}

/* acc (m, NB) = bf16(A) (m, K) . slab of a bf16 panel, m <= FR_ACC_REGS / nv. */
static inline void fr_bf16_tile(int format, real *acc, const real *A, ptrdiff_t lda,
                                const uint32_t *slab, ptrdiff_t K, ptrdiff_t m, ptrdiff_t nv) {
#if FR_HAVE_BF16_DP
    if (format == FR_PANEL_BF16_DP) {
        bf16_tile_dp(acc, A, lda, slab, K, m, nv);
        return;
    }
#endif
    bf16_tile_widen(acc, A, lda, slab, K, m, nv);
}

/* One row of A against two column blocks (slab, slab2) in one pass. */
static inline void fr_bf16_pair(int format, real *acc, real *acc2, const real *A,
                                const uint32_t *slab, const uint32_t *slab2, ptrdiff_t K,
                                ptrdiff_t nv) {
#if FR_HAVE_BF16_DP
    if (format == FR_PANEL_BF16_DP) {
        bf16_pair_dp(acc, acc2, A, slab, slab2, K, nv);
        return;
    }
#endif
    bf16_pair_widen(acc, acc2, A, slab, slab2, K, nv);
}

#endif /* !FR_F64 */
#endif
