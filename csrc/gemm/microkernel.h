/* microkernel.h - register-tiled products over a packed panel, finished by an epilogue.
 *
 * The microkernel computes one tile  acc (m, NB) = A (m, K) . slab (K, NB)  with the m x nv
 * accumulator vectors in registers (BLIS's design: broadcast one A element, FMA it into
 * nv weight vectors, for every k), m <= MR = FR_ACC_REGS / nv rows. The tile is then
 * handed to an epilogue, the cell's math for those rows and hidden units, while it is
 * still hot in L1 (or registers, once inlined): the (B, G*H) pre-activations never make a
 * round trip through memory. Tiles walk column block by column block, and down the rows
 * inside each block, so a (K, NB) slab is reused by every row block from L1/L2 while A (the
 * state rows) stays in L2.
 *
 * An epilogue sees the tile as acc[i * acc_ld + g * gate_stride + j]: row i of the tile,
 * gate g, hidden unit unit0 + j (j < units). The same epilogue also finishes products that
 * did not come from a panel (a direct product into a (B, G*H) buffer: gate_stride = H).
 * A bf16 panel (bf16.h) hands the epilogue the same float32 tile.
 */
#ifndef FASTRNN_GEMM_MICROKERNEL_H
#define FASTRNN_GEMM_MICROKERNEL_H

#include "panel.h"

#define FR_MR_MAX 8 /* rows of the tallest tile: FR_ACC_REGS / 3 on AVX-512 */

typedef void (*fr_epilogue_fn)(void *ctx, const real *acc, ptrdiff_t acc_ld,
                               ptrdiff_t gate_stride, ptrdiff_t row0, ptrdiff_t rows,
                               ptrdiff_t unit0, ptrdiff_t units);

/* acc (m, nv*VLEN) = A (m, K; leading dimension lda) . slab (K, nv*VLEN), and with `pair`
 * (two column blocks of one row, m = 1) acc2 = A . slab2 in the same pass. m, nv and pair
 * are constants where this is inlined, so the accumulators live in registers. A single row
 * has too few accumulators to hide the FMA latency: it walks two blocks at once instead
 * (summing every column in the same order as the taller tiles do, so a row's result never
 * depends on how the rows were tiled, which keeps every thread split bitwise equal). */
static FR_ALWAYS_INLINE void FR_FN(tile_product)(real *acc_out, real *acc2_out, const real *A,
                                                 ptrdiff_t lda, const real *slab,
                                                 const real *slab2, ptrdiff_t K, const int m,
                                                 const int nv, const int pair) {
    const ptrdiff_t NB = nv * FR_VLEN;
    fr_vec acc[FR_MR_MAX][4], acc2[4];
    for (int i = 0; i < m; i++)
        for (int v = 0; v < nv; v++)
            acc[i][v] = (fr_vec){0};
    for (int v = 0; v < nv; v++)
        acc2[v] = (fr_vec){0};
    for (ptrdiff_t k = 0; k < K; k++) {
        const real *p = slab + k * NB;
        fr_vec b[4];
        for (int v = 0; v < nv; v++)
            b[v] = *(const fr_vec *)(p + v * FR_VLEN);
        for (int i = 0; i < m; i++) {
            real a = A[i * lda + k];
            for (int v = 0; v < nv; v++)
                acc[i][v] += a * b[v];
        }
        if (pair)
            for (int v = 0; v < nv; v++)
                acc2[v] += A[k] * *(const fr_vec *)(slab2 + k * NB + v * FR_VLEN);
    }
    for (int i = 0; i < m; i++)
        for (int v = 0; v < nv; v++)
            *(fr_vec *)(acc_out + i * NB + v * FR_VLEN) = acc[i][v];
    if (pair)
        for (int v = 0; v < nv; v++)
            *(fr_vec *)(acc2_out + v * FR_VLEN) = acc2[v];
}

/* tile_product with m and nv turned into constants (m <= MR for this nv). */
#define FR_TILE_CASE(rows, NV)                                                             \
    case rows:                                                                             \
        if (rows <= FR_ACC_REGS / NV)                                                      \
            FR_FN(tile_product)(acc, NULL, A, lda, slab, NULL, K, rows, NV, 0);            \
        break;

static void FR_FN(tile_nv4)(real *acc, const real *A, ptrdiff_t lda, const real *slab,
                            ptrdiff_t K, ptrdiff_t m) {
    switch (m) {
        FR_TILE_CASE(1, 4) FR_TILE_CASE(2, 4) FR_TILE_CASE(3, 4)
        FR_TILE_CASE(4, 4) FR_TILE_CASE(5, 4) FR_TILE_CASE(6, 4)
    }
}

static void FR_FN(tile_nv3)(real *acc, const real *A, ptrdiff_t lda, const real *slab,
                            ptrdiff_t K, ptrdiff_t m) {
    switch (m) {
        FR_TILE_CASE(1, 3) FR_TILE_CASE(2, 3) FR_TILE_CASE(3, 3) FR_TILE_CASE(4, 3)
        FR_TILE_CASE(5, 3) FR_TILE_CASE(6, 3) FR_TILE_CASE(7, 3) FR_TILE_CASE(8, 3)
    }
}
#undef FR_TILE_CASE

/* One row against two column blocks (slab, slab2) in one pass. */
static void FR_FN(tile_pair)(real *acc, real *acc2, const real *A, const real *slab,
                             const real *slab2, ptrdiff_t K, ptrdiff_t nv) {
    if (nv == 3)
        FR_FN(tile_product)(acc, acc2, A, 0, slab, slab2, K, 1, 3, 1);
    else
        FR_FN(tile_product)(acc, acc2, A, 0, slab, slab2, K, 1, 4, 1);
}

/* The same dispatch for a reduced-precision tile product `product` (bf16_tile.h,
 * int8_tile.h) over slabs of slab_t: name##_tile (m rows) and name##_pair (one row, two
 * blocks), m and nv turned into constants. */
#define FR_LOWP_CASE(product, rows, NV)                                                    \
    case rows:                                                                             \
        if (rows <= FR_ACC_REGS / NV)                                                      \
            product(acc, NULL, A, lda, slab, NULL, K, rows, NV, 0);                        \
        break;
#define FR_DEFINE_LOWP_TILES(name, product, slab_t)                                        \
    static void name##_tile(real *acc, const real *A, ptrdiff_t lda, const slab_t *slab,   \
                            ptrdiff_t K, ptrdiff_t m, ptrdiff_t nv) {                      \
        if (nv == 3)                                                                       \
            switch (m) {                                                                   \
                FR_LOWP_CASE(product, 1, 3) FR_LOWP_CASE(product, 2, 3)                    \
                FR_LOWP_CASE(product, 3, 3) FR_LOWP_CASE(product, 4, 3)                    \
                FR_LOWP_CASE(product, 5, 3) FR_LOWP_CASE(product, 6, 3)                    \
                FR_LOWP_CASE(product, 7, 3) FR_LOWP_CASE(product, 8, 3)                    \
            }                                                                              \
        else                                                                               \
            switch (m) {                                                                   \
                FR_LOWP_CASE(product, 1, 4) FR_LOWP_CASE(product, 2, 4)                    \
                FR_LOWP_CASE(product, 3, 4) FR_LOWP_CASE(product, 4, 4)                    \
                FR_LOWP_CASE(product, 5, 4) FR_LOWP_CASE(product, 6, 4)                    \
            }                                                                              \
    }                                                                                      \
    static void name##_pair(real *acc, real *acc2, const real *A, const slab_t *slab,      \
                            const slab_t *slab2, ptrdiff_t K, ptrdiff_t nv) {              \
        if (nv == 3)                                                                       \
            product(acc, acc2, A, 0, slab, slab2, K, 1, 3, 1);                             \
        else                                                                               \
            product(acc, acc2, A, 0, slab, slab2, K, 1, 4, 1);                             \
    }

#include "lowp.h"

/* Rows per tile for a panel of nv vectors per row. */
static inline ptrdiff_t FR_FN(tile_rows)(const fr_panel *p) { return FR_ACC_REGS / p->nv; }

/* Rows of op(W) the float32 tiles stream: K, padded to pairs for a FR_PANEL_BF16 panel. */
static inline ptrdiff_t FR_FN(panel_depth)(const fr_panel *p) {
    return p->format == FR_PANEL_BF16 ? (p->K + 1) / 2 * 2 : p->K;
}

/* acc (m, NB) = A (m rows from A, leading dimension lda) . slab, in the panel's format. */
static inline void FR_FN(panel_tile)(const fr_panel *p, real *acc, const real *A, ptrdiff_t lda,
                                     const real *slab, ptrdiff_t m) {
#if !defined(FR_F64) && FR_HAVE_BF16_DP
    if (p->format == FR_PANEL_BF16_DP) {
        bf16_dp_tile(acc, A, lda, (const uint32_t *)slab, p->K, m, p->nv);
        return;
    }
    if (p->format == FR_PANEL_I8_VNNI) {
        i8_vnni_tile(acc, A, lda, (const uint32_t *)slab, p->K, m, p->nv);
        return;
    }
#endif
    if (p->nv == 3)
        FR_FN(tile_nv3)(acc, A, lda, slab, FR_FN(panel_depth)(p), m);
    else
        FR_FN(tile_nv4)(acc, A, lda, slab, FR_FN(panel_depth)(p), m);
}

/* One row of A against two column blocks (slab, slab2), in the panel's format. */
static inline void FR_FN(panel_pair)(const fr_panel *p, real *acc, real *acc2, const real *A,
                                     const real *slab, const real *slab2) {
#if !defined(FR_F64) && FR_HAVE_BF16_DP
    if (p->format == FR_PANEL_BF16_DP) {
        bf16_dp_pair(acc, acc2, A, (const uint32_t *)slab, (const uint32_t *)slab2, p->K,
                     p->nv);
        return;
    }
    if (p->format == FR_PANEL_I8_VNNI) {
        i8_vnni_pair(acc, acc2, A, (const uint32_t *)slab, (const uint32_t *)slab2, p->K,
                     p->nv);
        return;
    }
#endif
    FR_FN(tile_pair)(acc, acc2, A, slab, slab2, FR_FN(panel_depth)(p), p->nv);
}

/* After a tile of m rows (A: their rows) from `slab`: an int8 tile's exact sums become
 * the float32 product (int8.h); other formats are done. */
static inline void FR_FN(panel_finish)(const fr_panel *p, real *acc, const real *A,
                                       ptrdiff_t lda, ptrdiff_t m, const real *slab) {
#ifndef FR_F64
    if (fr_lowp_is_i8(p->format))
        fr_i8_dequantize(acc, p->nv * FR_VLEN, A, lda, m, fr_i8_column_scales(p, slab));
#endif
}

/* For rows [row0, row0 + rows) of the product (row row0 + i of A at A + i * lda) and the
 * panel's column blocks [blk0, blk1): every tile's product, handed to epilogue(ctx, ...)
 * with its rows numbered from row0. For a bf16 or int8 panel A holds the rows as
 * fr_lowp_rows left them. */
static inline void FR_FN(panel_product)(const fr_panel *p, const real *A, ptrdiff_t lda,
                                        ptrdiff_t row0, ptrdiff_t rows, ptrdiff_t blk0,
                                        ptrdiff_t blk1, fr_epilogue_fn epilogue, void *ctx) {
    const ptrdiff_t NB = p->nv * FR_VLEN, mr = FR_FN(tile_rows)(p);
    real acc[FR_MR_MAX * 4 * FR_VLEN] __attribute__((aligned(64)));
    real acc2[4 * FR_VLEN] __attribute__((aligned(64)));
    for (ptrdiff_t blk = blk0; blk < blk1; blk++) {
        const real *slab = p->data + blk * p->slab;
        ptrdiff_t unit0 = blk * p->units;
        ptrdiff_t units = p->H - unit0 < p->units ? p->H - unit0 : p->units;
        if (rows == 1 && blk + 1 < blk1) { /* a single row takes two blocks at a time */
            ptrdiff_t units2 = p->H - unit0 - p->units < p->units ? p->H - unit0 - p->units
                                                                  : p->units;
            FR_FN(panel_pair)(p, acc, acc2, A, slab, slab + p->slab);
            FR_FN(panel_finish)(p, acc, A, lda, 1, slab);
            FR_FN(panel_finish)(p, acc2, A, lda, 1, slab + p->slab);
            epilogue(ctx, acc, NB, p->units, row0, 1, unit0, units);
            epilogue(ctx, acc2, NB, p->units, row0, 1, unit0 + p->units, units2);
            blk++;
            continue;
        }
        for (ptrdiff_t r = row0; r < row0 + rows; r += mr) {
            ptrdiff_t m = row0 + rows - r < mr ? row0 + rows - r : mr;
            FR_FN(panel_tile)(p, acc, A + (r - row0) * lda, lda, slab, m);
            FR_FN(panel_finish)(p, acc, A + (r - row0) * lda, lda, m, slab);
            epilogue(ctx, acc, NB, p->units, r, m, unit0, units);
        }
    }
}

/* The plainest epilogue: C (rows, G*H; leading dimension ldc) += the tile. */
typedef struct {
    real *C;
    ptrdiff_t ldc, H, G;
} fr_accumulate;

static void FR_FN(accumulate_epilogue)(void *ctx, const real *acc, ptrdiff_t acc_ld,
                                       ptrdiff_t gate_stride, ptrdiff_t row0, ptrdiff_t rows,
                                       ptrdiff_t unit0, ptrdiff_t units) {
    const fr_accumulate *a = ctx;
    for (ptrdiff_t i = 0; i < rows; i++)
        for (ptrdiff_t g = 0; g < a->G; g++) {
            real *restrict c = a->C + (row0 + i) * a->ldc + g * a->H + unit0;
            const real *restrict t = acc + i * acc_ld + g * gate_stride;
            for (ptrdiff_t j = 0; j < units; j++)
                c[j] += t[j];
        }
}

#endif
