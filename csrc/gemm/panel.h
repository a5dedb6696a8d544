/* panel.h - the recurrent weight packed for the microkernel, gate blocks interleaved.
 *
 * A recurrent step computes P (B, G*H) = A (B, K) . op(W), where op(W) (K, G*H) holds G
 * gate blocks of H hidden units each (forward: op(W) = w_hh^T, K = H; backward: op(W) =
 * w_hh, G = 1, K = G*H). The panel stores op(W) in column blocks of NB = nv * VLEN
 * columns: block j holds, for the `units` hidden units u0 = j*units .. u0+units-1, gate 0's
 * columns of those units, then gate 1's, ... (units = NB / G). One register tile of the
 * microkernel (rows x nv vectors) then holds every gate of the same hidden units, so the
 * cell's epilogue can finish those units while the tile is in registers. Each block is a
 * contiguous (K, NB) slab that the microkernel streams from the first k to the last; columns
 * past H are zero.
 *
 *   data (blocks, K, NB)     block-major, 64-byte aligned, NB = nv * VLEN
 *
 * A bfloat16 panel (gemm/bf16.h, float32 builds) has the same blocks and columns, each slab
 * (ceil(K/2), NB) of 32-bit pairs: rows 2q and 2q+1 of op(W) rounded to bf16 in the low and
 * high half (the operand layout of AVX512-BF16's vdpbf16ps), as many bytes as K/2 floats;
 * `slab` counts elements per block either way.
 */
#ifndef FASTRNN_GEMM_PANEL_H
#define FASTRNN_GEMM_PANEL_H

#include <stdlib.h>
#include <string.h>

#include "vec.h"

#define FR_PANEL_F32 0     /* reals */
#define FR_PANEL_BF16 1    /* bf16 pairs, widened to float32 for FMAs (any ISA) */
#define FR_PANEL_BF16_DP 2 /* bf16 pairs, multiplied by vdpbf16ps (AVX512-BF16) */
#define FR_PANEL_I8 3      /* int8 values as float32, float32 FMAs (any ISA; int8.h) */
#define FR_PANEL_I8_VNNI 4 /* int8 quads, multiplied by vpdpbusd (AVX512-VNNI) */
#define FR_PANEL_I8_PAIR 5 /* int8 as int16 pairs, multiplied by vpmaddwd (AVX2; int8.h) */

typedef struct {
    real *data;          /* (blocks, K, NB) */
    ptrdiff_t K, G, H;   /* op(W) is (K, G*H) */
    ptrdiff_t nv;        /* vectors per tile row, a multiple of G */
    ptrdiff_t units;     /* hidden units per block: nv / G * VLEN */
    ptrdiff_t blocks;    /* ceil(H / units) */
    ptrdiff_t slab;      /* elements per block: K * NB reals (bf16: ceil(K/2) * NB pairs) */
    int format;          /* FR_PANEL_* */
} fr_panel;

/* Vectors per tile row for G gate blocks: 4 (G = 1, 2, 4) or 3 (GRU). */
static inline ptrdiff_t FR_FN(panel_vectors)(ptrdiff_t G) { return G == 3 ? 3 : 4; }

/* The panel's geometry (data = NULL) for op(W) of K rows and G blocks of H columns. */
static inline fr_panel FR_FN(panel_shape)(ptrdiff_t K, ptrdiff_t G, ptrdiff_t H) {
    fr_panel p = {NULL, K, G, H, FR_FN(panel_vectors)(G), 0, 0, 0, FR_PANEL_F32};
    p.units = p.nv / G * FR_VLEN;
    p.blocks = (H + p.units - 1) / p.units;
    p.slab = K * p.nv * FR_VLEN;
    return p;
}

static inline ptrdiff_t FR_FN(panel_reals)(const fr_panel *p) { return p->blocks * p->slab; }

/* The column of op(W) that column c of block blk holds, or -1 past H. */
static inline ptrdiff_t FR_FN(panel_column)(const fr_panel *p, ptrdiff_t blk, ptrdiff_t c) {
    ptrdiff_t unit = blk * p->units + c % p->units;
    return unit < p->H ? (c / p->units) * p->H + unit : -1;
}

/* Element (k, col) of op(W): W^T (transpose: W (G*H, K)) or W (K, G*H) itself. */
static inline real FR_FN(panel_source)(const fr_panel *p, const real *W, int transpose,
                                       ptrdiff_t k, ptrdiff_t col) {
    return transpose ? W[col * p->K + k] : W[k * p->G * p->H + col];
}

/* Lanes of a and b interleaved: half = 0 takes the low halves (a0 b0 a1 b1 ...), half = 1
 * the high halves; one permute once inlined (vpermt2ps on AVX-512, unpcklps/unpckhps on
 * SSE2). GCC's __builtin_shuffle takes an index vector that folds to a constant; Clang's
 * __builtin_shufflevector needs the indices written out, one list per lane count. */
#ifdef FR_F64
#define FR_LANES (FR_VBYTES / 8)
#else
#define FR_LANES (FR_VBYTES / 4)
#endif
#if defined(__clang__)
#if FR_LANES == 16
#define FR_INTERLEAVE_LO 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23
#define FR_INTERLEAVE_HI 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31
#elif FR_LANES == 8
#define FR_INTERLEAVE_LO 0, 8, 1, 9, 2, 10, 3, 11
#define FR_INTERLEAVE_HI 4, 12, 5, 13, 6, 14, 7, 15
#elif FR_LANES == 4
#define FR_INTERLEAVE_LO 0, 4, 1, 5
#define FR_INTERLEAVE_HI 2, 6, 3, 7
#else
#define FR_INTERLEAVE_LO 0, 2
#define FR_INTERLEAVE_HI 1, 3
#endif
static FR_ALWAYS_INLINE fr_vec FR_FN(interleave)(fr_vec a, fr_vec b, const int half) {
    return half ? __builtin_shufflevector(a, b, FR_INTERLEAVE_HI)
                : __builtin_shufflevector(a, b, FR_INTERLEAVE_LO);
}
#else
#ifdef FR_F64
typedef int64_t fr_lanes __attribute__((vector_size(FR_VBYTES)));
#else
typedef int32_t fr_lanes __attribute__((vector_size(FR_VBYTES)));
#endif
static FR_ALWAYS_INLINE fr_vec FR_FN(interleave)(fr_vec a, fr_vec b, const int half) {
    fr_lanes index;
    for (int i = 0; i < FR_LANES / 2; i++) {
        index[2 * i] = half * (FR_LANES / 2) + i;
        index[2 * i + 1] = FR_LANES + half * (FR_LANES / 2) + i;
    }
    return __builtin_shuffle(a, b, index);
}
#endif

/* dst (VLEN, VLEN; row q at dst + q * dst_ld, aligned) = the transpose of src (VLEN, VLEN;
 * row r at src + r * src_ld): log2(VLEN) perfect shuffles of the rows (each rotates the
 * bits of an element's (row, lane) index by one), in registers. */
static FR_ALWAYS_INLINE void FR_FN(transpose_tile)(real *dst, ptrdiff_t dst_ld, const real *src,
                                                   ptrdiff_t src_ld) {
    fr_vec rows[FR_LANES], next[FR_LANES];
    for (int r = 0; r < FR_VLEN; r++)
        rows[r] = *(const fr_vec_u *)(src + r * src_ld);
    for (int shuffled = 1; shuffled < FR_VLEN; shuffled *= 2) { /* log2(VLEN) times */
        for (int r = 0; r < FR_VLEN / 2; r++) {
            next[2 * r] = FR_FN(interleave)(rows[r], rows[r + FR_VLEN / 2], 0);
            next[2 * r + 1] = FR_FN(interleave)(rows[r], rows[r + FR_VLEN / 2], 1);
        }
        memcpy(rows, next, sizeof rows);
    }
    for (int q = 0; q < FR_VLEN; q++)
        *(fr_vec *)(dst + q * dst_ld) = rows[q];
}

/* The transposed fill of one gate's run of `run` units (from W's row col0) into slab
 * columns c0.. : op(W)[k, col0 + j] = W[(col0 + j) * K + k], VLEN x VLEN tiles in registers,
 * the edges (K or run not a multiple of VLEN) element by element. */
static inline void FR_FN(panel_fill_run_transposed)(real *slab, ptrdiff_t NB, const real *W,
                                                    ptrdiff_t K, ptrdiff_t col0, ptrdiff_t c0,
                                                    ptrdiff_t run) {
    const ptrdiff_t full_k = K / FR_VLEN * FR_VLEN, full_run = run / FR_VLEN * FR_VLEN;
    for (ptrdiff_t j0 = 0; j0 < full_run; j0 += FR_VLEN)
        for (ptrdiff_t k0 = 0; k0 < full_k; k0 += FR_VLEN)
            FR_FN(transpose_tile)(slab + k0 * NB + c0 + j0, NB, W + (col0 + j0) * K + k0, K);
    for (ptrdiff_t j = 0; j < run; j++)
        for (ptrdiff_t k = j < full_run ? full_k : 0; k < K; k++)
            slab[k * NB + c0 + j] = W[(col0 + j) * K + k];
}

/* Fill p->data from W: transpose = 1 packs W^T for W (G*H, K) row-major (forward:
 * h w_hh^T); transpose = 0 packs W (K, G*H) itself (backward: dG w_hh). Each gate's run of
 * a block's units comes from a plain W as one copy out of W's row k, from a transposed W
 * as VLEN x VLEN tiles transposed in registers. */
static inline void FR_FN(panel_fill)(fr_panel *p, const real *W, int transpose) {
    const ptrdiff_t K = p->K, NB = p->nv * FR_VLEN;
    memset(p->data, 0, (size_t)FR_FN(panel_reals)(p) * sizeof(real));
    for (ptrdiff_t blk = 0; blk < p->blocks; blk++) {
        real *slab = p->data + blk * p->slab;
        const ptrdiff_t unit0 = blk * p->units;
        const ptrdiff_t run = p->H - unit0 < p->units ? p->H - unit0 : p->units;
        for (ptrdiff_t g = 0; g < p->G; g++) {
            for (ptrdiff_t k = 0; !transpose && k < K; k++)
                memcpy(slab + k * NB + g * p->units, W + k * p->G * p->H + g * p->H + unit0,
                       (size_t)run * sizeof(real));
            if (transpose)
                FR_FN(panel_fill_run_transposed)(slab, NB, W, K, g * p->H + unit0,
                                                 g * p->units, run);
        }
    }
}

/* A panel with its own 64-byte aligned storage (free it with panel_free), or one whose
 * data is NULL when the allocation fails. */
static inline fr_panel FR_FN(panel_new)(const real *W, int transpose, ptrdiff_t K, ptrdiff_t G,
                                        ptrdiff_t H) {
    fr_panel p = FR_FN(panel_shape)(K, G, H);
    size_t bytes = (size_t)FR_FN(panel_reals)(&p) * sizeof(real);
    p.data = (real *)aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (p.data)
        FR_FN(panel_fill)(&p, W, transpose);
    return p;
}

static inline void FR_FN(panel_free)(fr_panel *p) {
    free(p->data);
    p->data = NULL;
}

#endif
