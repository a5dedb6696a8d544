/* bf16.h - bfloat16 products over a packed panel: bf16 operands, float32 accumulation.
 *
 * Each product first rounds the rows of A it multiplies (the state h_{t-1}, or x_t) to
 * bf16 into its workspace (fr_bf16_round_rows), then accumulates in float32:
 *
 *   acc[i][c] = sum over pairs q of  a[2q+1] w[2q+1][c]  then  a[2q] w[2q][c]   (float32)
 *
 * in exactly that order: the order of AVX512-BF16's vdpbf16ps, measured bit for bit on the
 * hardware (a product of two bf16 is exact in float32, so each step rounds once). Two
 * panel formats hold op(W) rounded to bf16 once:
 *
 *   FR_PANEL_BF16_DP  (AVX512-BF16) rows 2q and 2q+1 of a column in one 32-bit pair, the
 *                     operand of vdpbf16ps (bf16_tile.h); slabs (ceil(K/2), NB) of pairs.
 *   FR_PANEL_BF16     (every other ISA) the bf16 values as float32, rows swapped in pairs
 *                     (2q+1, 2q, ...) and A's rows swapped alike: the float32 microkernel
 *                     then makes the same FMAs in the same order -- the same bits as
 *                     vdpbf16ps, at float32 speed; slabs (2 ceil(K/2), NB) of floats.
 *
 * The cell epilogues see a float32 tile either way. Float32 subnormals round to zero (the
 * hardware reads them as zero). Float32 builds only.
 */
#ifndef FASTRNN_GEMM_BF16_H
#define FASTRNN_GEMM_BF16_H

#ifndef FR_F64
#include <stdint.h>
#include <string.h>

#include "../fastrnn.h"
#include "panel.h"

#if FR_VBYTES == 64 && defined(__x86_64__) && defined(__GNUC__)
#define FR_HAVE_BF16_DP 1 /* vdpbf16ps tiles are built (bf16_tile.h) */
#else
#define FR_HAVE_BF16_DP 0
#endif

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

/* x rounded to bf16, as a float32. */
static inline float fr_bf16_round(float x) {
    uint32_t bits = fr_bf16_bits(x) << 16;
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* The bf16 panel format products run in now: vdpbf16ps when built and allowed. */
static inline int fr_bf16_format(void) {
    return FR_HAVE_BF16_DP && fr_isa_level >= FR_ISA_AVX512_BF16 ? FR_PANEL_BF16_DP
                                                                 : FR_PANEL_BF16;
}

/* The geometry of a bf16 panel of op(W) (K, G*H) in `format` (data = NULL). */
static inline fr_panel FR_FN(panel_shape_bf16)(ptrdiff_t K, ptrdiff_t G, ptrdiff_t H,
                                               int format) {
    fr_panel p = FR_FN(panel_shape)((K + 1) / 2 * 2, G, H); /* rows padded to pairs */
    if (format == FR_PANEL_BF16_DP)
        p.slab /= 2; /* two rows per 32-bit pair */
    p.K = K;
    p.format = format;
    return p;
}

/* Fill the bf16 panel p->data (p from panel_shape_bf16) from W, as panel_fill does. */
static inline void FR_FN(panel_fill_bf16)(fr_panel *p, const real *W, int transpose) {
    const ptrdiff_t NB = p->nv * FR_VLEN;
    memset(p->data, 0, (size_t)FR_FN(panel_reals)(p) * sizeof(real));
    for (ptrdiff_t blk = 0; blk < p->blocks; blk++) {
        real *slab = p->data + blk * p->slab;
        uint32_t *pairs = (uint32_t *)slab;
        for (ptrdiff_t c = 0; c < NB; c++) {
            ptrdiff_t col = FR_FN(panel_column)(p, blk, c);
            for (ptrdiff_t k = 0; col >= 0 && k < p->K; k++) {
                real w = FR_FN(panel_source)(p, W, transpose, k, col);
                if (p->format == FR_PANEL_BF16_DP)
                    pairs[k / 2 * NB + c] |= fr_bf16_bits(w) << (16 * (k & 1));
                else
                    slab[(k ^ 1) * NB + c] = fr_bf16_round(w);
            }
        }
    }
}

#if FR_HAVE_BF16_DP
#include "bf16_tile.h"
#endif

/* 4-byte elements per row of A rounded by fr_bf16_round_rows (either format). */
static inline ptrdiff_t fr_bf16_row_elems(ptrdiff_t K) { return (K + 1) / 2 * 2; }

/* dst (rows, ld) = the rows of A (rows, K; leading dimension lda) rounded to bf16, laid out
 * for `format`: pairs (FR_PANEL_BF16_DP) or float32 swapped in pairs, zero past K. */
static inline void fr_bf16_round_rows(int format, void *dst, ptrdiff_t ld, const real *A,
                                      ptrdiff_t lda, ptrdiff_t rows, ptrdiff_t K) {
#if FR_HAVE_BF16_DP
    if (format == FR_PANEL_BF16_DP) {
        bf16_round_rows_dp(dst, ld, A, lda, rows, K);
        return;
    }
#endif
    for (ptrdiff_t r = 0; r < rows; r++) {
        const real *a = A + r * lda;
        real *out = (real *)dst + r * ld;
        for (ptrdiff_t k = 0; k < K; k++)
            out[k ^ 1] = fr_bf16_round(a[k]);
        if (K & 1)
            out[K - 1] = 0; /* the partner of row K-1 (stored at K) */
    }
}

#endif /* !FR_F64 */
#endif
