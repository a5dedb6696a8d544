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
/* The bf16 pack format for this ISA level. */
static int pack_bf16_format(void) {
    return fr_bf16_format() == FR_PANEL_BF16_DP ? FR_PACK_BF16_DP : FR_PACK_BF16;
}

size_t FR_FN(pack_bf16_bytes)(int cell, ptrdiff_t I, ptrdiff_t H) {
    fr_pack_header h;
    return FR_FN(pack_layout_as)(&h, cell, 0, I, H, pack_bf16_format());
}

/* The forward pack of w_hh and w_ih (the input panel: K = I, every gate block) in bf16. */
int FR_FN(pack_bf16)(void *dst, size_t bytes, const float *w_ih, const float *w_hh, int cell,
                     ptrdiff_t I, ptrdiff_t H) {
    fr_pack_header h;
    fr_recurrent_spec specs[2];
    if (((uintptr_t)dst & 63) != 0 ||
        bytes < FR_FN(pack_layout_as)(&h, cell, 0, I, H, pack_bf16_format()))
        return FR_ERR_NOMEM;
    int n = FR_FN(recurrent_specs)(specs, cell, 0, H), format = FR_FN(pack_panel_format)(&h);
    for (int i = 0; i <= n; i++) {
        fr_panel p = i < n ? FR_FN(panel_shape_bf16)(specs[i].K, specs[i].G, H, format)
                           : FR_FN(panel_shape_bf16)(I, fr_cell_gates(cell), H, format);
        p.data = (real *)((char *)dst + (i < n ? h.offset[i] : h.input_offset));
        FR_FN(panel_fill_bf16)(&p, i < n ? w_hh + specs[i].w_offset : w_ih, 1);
    }
    memcpy(dst, &h, sizeof h);
    return FR_OK;
}

/* The int8 pack format for this ISA level. */
static int pack_int8_format(void) {
    return fr_i8_format() == FR_PANEL_I8_VNNI ? FR_PACK_I8_VNNI : FR_PACK_I8;
}

size_t FR_FN(pack_int8_bytes)(int cell, ptrdiff_t I, ptrdiff_t H) {
    fr_pack_header h;
    return FR_FN(pack_layout_as)(&h, cell, 0, I, H, pack_int8_format());
}

/* The forward pack of the quantized w_hh and w_ih (the input panel as in pack_bf16). */
int FR_FN(pack_int8)(void *dst, size_t bytes, const int8_t *w_ih, const float *s_ih,
                     const int8_t *w_hh, const float *s_hh, int cell, ptrdiff_t I,
                     ptrdiff_t H) {
    fr_pack_header h;
    fr_recurrent_spec specs[2];
    if (((uintptr_t)dst & 63) != 0 ||
        bytes < FR_FN(pack_layout_as)(&h, cell, 0, I, H, pack_int8_format()))
        return FR_ERR_NOMEM;
    int n = FR_FN(recurrent_specs)(specs, cell, 0, H), format = FR_FN(pack_panel_format)(&h);
    for (int i = 0; i <= n; i++) {
        fr_panel p = i < n ? FR_FN(panel_shape_i8)(specs[i].K, specs[i].G, H, format)
                           : FR_FN(panel_shape_i8)(I, fr_cell_gates(cell), H, format);
        p.data = (real *)((char *)dst + (i < n ? h.offset[i] : h.input_offset));
        ptrdiff_t row0 = i < n ? specs[i].w_offset / H : 0; /* first row of W, its scale */
        FR_FN(panel_fill_i8)(&p, i < n ? w_hh + specs[i].w_offset : w_ih,
                             (i < n ? s_hh : s_ih) + row0);
    }
    memcpy(dst, &h, sizeof h);
    return FR_OK;
}
#endif
