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
