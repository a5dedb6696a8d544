/* lowp.h - what a reduced-precision panel adds around the microkernel (bf16.h, int8.h):
 * the rows of A converted once per product (rounded to bf16, or quantized to int8) into
 * the product's workspace before the tiles, and (int8) the dequantization of each tile
 * after them, before the cell's epilogue sees it. Float32 builds only. */
#ifndef FASTRNN_GEMM_LOWP_H
#define FASTRNN_GEMM_LOWP_H

#ifndef FR_F64
#include "bf16.h"
#include "int8.h"

static inline int fr_lowp_is_i8(int format) {
    return format == FR_PANEL_I8 || format == FR_PANEL_I8_VNNI || format == FR_PANEL_I8_PAIR;
}

/* 4-byte elements per row of A converted by fr_lowp_rows for a panel of `format`. */
static inline ptrdiff_t fr_lowp_row_elems(int format, ptrdiff_t K) {
    return fr_lowp_is_i8(format) ? fr_i8_row_elems(K, format) : fr_bf16_row_elems(K);
}

/* dst (rows, ld) = the rows of A (rows, K; leading dimension lda) converted for `format`. */
static inline void fr_lowp_rows(int format, void *dst, ptrdiff_t ld, const real *A,
                                ptrdiff_t lda, ptrdiff_t rows, ptrdiff_t K) {
    if (fr_lowp_is_i8(format))
        fr_i8_quantize_rows(format, dst, ld, A, lda, rows, K);
    else
        fr_bf16_round_rows(format, dst, ld, A, lda, rows, K);
}
#endif

#endif
