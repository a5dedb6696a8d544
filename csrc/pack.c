/* pack.c - packs of the recurrent weights that outlive one call (see "Packs" in fastrnn.h).
 *
 * A layer that runs the same w_hh many times (a streaming step per call, or every batch of
 * an epoch between two optimizer steps) packs it once here and hands the pack to each
 * forward and backward; the kernels read the panels straight from it (seq.h,
 * recurrent_setup_cell). Compiled once per dtype and instruction set (see real.h): a pack
 * is laid out for one vector width.
 */
#include "seq.h"

size_t FR_FN(pack_bytes)(int cell, int backward, ptrdiff_t H) {
    fr_pack_header h;
    return FR_FN(pack_layout)(&h, cell, backward, H);
}

int FR_FN(pack)(void *dst, size_t bytes, const real *w_hh, int cell, int backward,
                ptrdiff_t H) {
    fr_pack_header h;
    fr_recurrent_spec specs[2];
    if (((uintptr_t)dst & 63) != 0 || bytes < FR_FN(pack_layout)(&h, cell, backward, H))
        return FR_ERR_NOMEM;
    int n = FR_FN(recurrent_specs)(specs, cell, backward, H);
    for (int i = 0; i < n; i++) {
        fr_panel p = FR_FN(panel_shape)(specs[i].K, specs[i].G, H);
        p.data = (real *)((char *)dst + h.offset[i]);
        FR_FN(panel_fill)(&p, w_hh + specs[i].w_offset, specs[i].transpose);
    }
    memcpy(dst, &h, sizeof h);
    return FR_OK;
}

#ifndef FR_F64
/* A reduced-precision forward pack at dst in pack_format: each product of w_hh, then the
 * input panel (K = I, every gate block), filled from float32 weights (bf16) or from int8
 * weights and their row scales (int8). Returns 0 or FR_ERR_NOMEM. */
static int pack_lowp(void *dst, size_t bytes, int pack_format, int cell, ptrdiff_t I,
                     ptrdiff_t H, const void *w_ih, const float *s_ih, const void *w_hh,
                     const float *s_hh) {
    fr_pack_header h;
    fr_recurrent_spec specs[2];
    if (((uintptr_t)dst & 63) != 0 ||
        bytes < FR_FN(pack_layout_as)(&h, cell, 0, I, H, pack_format))
        return FR_ERR_NOMEM;
    int n = FR_FN(recurrent_specs)(specs, cell, 0, H), format = FR_FN(pack_panel_format)(&h);
    for (int i = 0; i <= n; i++) {
        ptrdiff_t K = i < n ? specs[i].K : I, G = i < n ? specs[i].G : fr_cell_gates(cell);
        ptrdiff_t w_offset = i < n ? specs[i].w_offset : 0; /* row w_offset / K of W */
        fr_panel p = FR_FN(panel_shape_as)(K, G, H, format);
        p.data = (real *)((char *)dst + (i < n ? h.offset[i] : h.input_offset));
        if (fr_lowp_is_i8(format))
            FR_FN(panel_fill_i8)(&p, (const int8_t *)(i < n ? w_hh : w_ih) + w_offset,
                                 (i < n ? s_hh : s_ih) + w_offset / K);
        else
            FR_FN(panel_fill_bf16)(&p, (const float *)(i < n ? w_hh : w_ih) + w_offset, 1);
    }
    memcpy(dst, &h, sizeof h);
    return FR_OK;
}

/* The bf16 and int8 pack formats for this ISA level. */
static int pack_bf16_format(void) {
    return fr_bf16_format() == FR_PANEL_BF16_DP ? FR_PACK_BF16_DP : FR_PACK_BF16;
}

static int pack_int8_format(void) {
    const int format = fr_i8_format();
    return format == FR_PANEL_I8_VNNI   ? FR_PACK_I8_VNNI
           : format == FR_PANEL_I8_PAIR ? FR_PACK_I8_PAIR
                                        : FR_PACK_I8;
}

size_t FR_FN(pack_bf16_bytes)(int cell, ptrdiff_t I, ptrdiff_t H) {
    fr_pack_header h;
    return FR_FN(pack_layout_as)(&h, cell, 0, I, H, pack_bf16_format());
}

int FR_FN(pack_bf16)(void *dst, size_t bytes, const float *w_ih, const float *w_hh, int cell,
                     ptrdiff_t I, ptrdiff_t H) {
    return pack_lowp(dst, bytes, pack_bf16_format(), cell, I, H, w_ih, NULL, w_hh, NULL);
}

size_t FR_FN(pack_int8_bytes)(int cell, ptrdiff_t I, ptrdiff_t H) {
    fr_pack_header h;
    return FR_FN(pack_layout_as)(&h, cell, 0, I, H, pack_int8_format());
}

int FR_FN(pack_int8)(void *dst, size_t bytes, const int8_t *w_ih, const float *s_ih,
                     const int8_t *w_hh, const float *s_hh, int cell, ptrdiff_t I,
                     ptrdiff_t H) {
    return pack_lowp(dst, bytes, pack_int8_format(), cell, I, H, w_ih, s_ih, w_hh, s_hh);
}

/* The product of one panel of a bf16 or int8 forward pack (a test hook, fastrnn._core
 * lowp_product): C (rows, N) = A (rows, K) . op(W) for panel `index` (the pack's count:
 * the input panel, K = I), gate blocks in PyTorch order, on the tiles the forward runs
 * (A's rows converted; int8: exact sums, dequantized). Returns 0, FR_ERR_NOMEM, or -1
 * when the pack cannot run here, `index` is out of range or (K, N) is not its shape. */
int FR_FN(pack_lowp_product)(float *C, const void *pack, int index, const float *A,
                             ptrdiff_t rows, ptrdiff_t K, ptrdiff_t N) {
    const fr_pack_header *h = pack;
    fr_recurrent_spec specs[2];
    if (h == NULL || (h = FR_FN(pack_header)(pack, h->cell, 0, h->H)) == NULL ||
        h->format == FR_PACK_F32 || index < 0 || index > h->count)
        return -1;
    FR_FN(recurrent_specs)(specs, h->cell, 0, h->H);
    fr_recurrent_spec spec = {0, h->I, fr_cell_gates(h->cell), 1}; /* the input panel */
    if (index < h->count)
        spec = specs[index];
    if (spec.K != K || spec.G * h->H != N)
        return -1;
    spec.w_offset = 0; /* the panel is packed: no W to read */
    fr_recurrent r;
    real *data = (real *)((char *)pack + (index < h->count ? h->offset[index] : h->input_offset));
    if (FR_FN(recurrent_setup)(&r, A, spec, h->H, 1, rows, data, FR_FN(pack_panel_format)(h)))
        return FR_ERR_NOMEM;
    fr_part part = {0, rows, 0, 1, NULL, 0};
    fr_accumulate acc = {C, N, h->H, spec.G};
    memset(C, 0, (size_t)(rows * N) * sizeof(float));
    FR_FN(recurrent_apply)(&r, A, K, &part, FR_FN(accumulate_epilogue), &acc, NULL);
    FR_FN(recurrent_free)(&r);
    return FR_OK;
}
#endif
