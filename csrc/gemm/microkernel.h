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

/* One operand of a tile's product: rows of A (row i at A + i * lda) against the (K, NB)
 * slab of a column block, and for `pair` the next block's slab. */
typedef struct {
    const real *A;
    ptrdiff_t lda, K;
    const real *slab, *slab2;
} fr_segment;

/* acc (m, nv*VLEN) = start + sum over the segments of A (m, K) . slab (K, nv*VLEN), and with
 * `pair` (two column blocks of one row, m = 1) acc2 = the same over slab2 (its start NB
 * further on), in the same pass. start (row i at start + i * start_ld) may be NULL (zeros).
 * A second segment continues the first one's sums, so x_t w_ih^T + h w_hh^T is one
 * product over K = I + H; starting from a stored first segment gives the same bits. m, nv
 * and pair are constants where this is inlined, so the accumulators live in registers. A
 * single row has too few accumulators to hide the FMA latency: it walks two blocks at once
 * instead (summing every column in the same order as the taller tiles do, so a row's result
 * never depends on how the rows were tiled, which keeps every thread split bitwise equal). */
static FR_ALWAYS_INLINE void FR_FN(tile_product)(real *acc_out, real *acc2_out,
                                                 const fr_segment *seg, int segments,
                                                 const real *start, ptrdiff_t start_ld,
                                                 const int m, const int nv, const int pair) {
    const ptrdiff_t NB = nv * FR_VLEN;
    fr_vec acc[FR_MR_MAX][4], acc2[4];
    for (int i = 0; i < m; i++)
        for (int v = 0; v < nv; v++)
            acc[i][v] = start ? *(const fr_vec_u *)(start + i * start_ld + v * FR_VLEN)
                              : (fr_vec){0};
    for (int v = 0; v < nv; v++)
        acc2[v] = start && pair ? *(const fr_vec_u *)(start + NB + v * FR_VLEN) : (fr_vec){0};
    for (int s = 0; s < segments; s++) {
        const real *A = seg[s].A, *slab = seg[s].slab, *slab2 = seg[s].slab2;
        const ptrdiff_t lda = seg[s].lda, K = seg[s].K;
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
            FR_FN(tile_product)(acc, NULL, seg, segments, start, start_ld, rows, NV, 0);   \
        break;

static void FR_FN(tile_nv4)(real *acc, const fr_segment *seg, int segments, const real *start,
                            ptrdiff_t start_ld, ptrdiff_t m) {
    switch (m) {
        FR_TILE_CASE(1, 4) FR_TILE_CASE(2, 4) FR_TILE_CASE(3, 4)
        FR_TILE_CASE(4, 4) FR_TILE_CASE(5, 4) FR_TILE_CASE(6, 4)
    }
}

static void FR_FN(tile_nv3)(real *acc, const fr_segment *seg, int segments, const real *start,
                            ptrdiff_t start_ld, ptrdiff_t m) {
    switch (m) {
        FR_TILE_CASE(1, 3) FR_TILE_CASE(2, 3) FR_TILE_CASE(3, 3) FR_TILE_CASE(4, 3)
        FR_TILE_CASE(5, 3) FR_TILE_CASE(6, 3) FR_TILE_CASE(7, 3) FR_TILE_CASE(8, 3)
    }
}
#undef FR_TILE_CASE

/* One row against two column blocks (each segment's slab and slab2) in one pass. */
static void FR_FN(tile_pair)(real *acc, real *acc2, const fr_segment *seg, int segments,
                             const real *start, ptrdiff_t nv) {
    if (nv == 3)
        FR_FN(tile_product)(acc, acc2, seg, segments, start, 0, 1, 3, 1);
    else
        FR_FN(tile_product)(acc, acc2, seg, segments, start, 0, 1, 4, 1);
}

/* The float32 tiles of m rows against one block (tile_nv3 / tile_nv4), or with `pair` of
 * one row against two blocks (tile_pair): every format whose values are float32. */
static inline void FR_FN(float_tile)(real *acc, real *acc2, const fr_segment *seg,
                                     int segments, const real *start, ptrdiff_t start_ld,
                                     ptrdiff_t m, ptrdiff_t nv, int pair) {
    if (pair)
        FR_FN(tile_pair)(acc, acc2, seg, segments, start, nv);
    else if (nv == 3)
        FR_FN(tile_nv3)(acc, seg, segments, start, start_ld, m);
    else
        FR_FN(tile_nv4)(acc, seg, segments, start, start_ld, m);
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
    }                                                                                      \
    /* the tile of panel p from `slab` (m rows), or with `pair` the pair from it and the   \
     * next block's */                                                                     \
    static void name##_run(const fr_panel *p, real *acc, real *acc2, const real *A,       \
                           ptrdiff_t lda, const real *slab, ptrdiff_t m, int pair) {      \
        const slab_t *s1 = (const slab_t *)slab, *s2 = s1 + p->slab;                       \
        if (pair)                                                                          \
            name##_pair(acc, acc2, A, s1, s2, p->K, p->nv);                                \
        else                                                                               \
            name##_tile(acc, A, lda, s1, p->K, m, p->nv);                                  \
    }

#include "lowp.h"

/* Rows per tile for a panel of nv vectors per row. */
static inline ptrdiff_t FR_FN(tile_rows)(const fr_panel *p) { return FR_ACC_REGS / p->nv; }

/* Rows of op(W) the float32 tiles stream: K, padded to pairs for a FR_PANEL_BF16 panel. */
static inline ptrdiff_t FR_FN(panel_depth)(const fr_panel *p) {
    return p->format == FR_PANEL_BF16 ? (p->K + 1) / 2 * 2 : p->K;
}

/* The tiles of a panel on the dot-product instructions (FR_PANEL_BF16_DP, _I8_VNNI,
 * _I8_PAIR), and of a FR_PANEL_I8 panel past FR_I8_EXACT_K (int8.h): acc (m, NB) = A (m
 * rows converted by fr_lowp_rows) . slab, or with `pair` acc, acc2 for one row against
 * slab and the next block's. Returns 0 for every other format (the float32 tiles run
 * those, their values being float32). */
static inline int FR_FN(panel_dot_tile)(const fr_panel *p, real *acc, real *acc2, const real *A,
                                        ptrdiff_t lda, const real *slab, ptrdiff_t m,
                                        int pair) {
#if !defined(FR_F64) && FR_HAVE_BF16_DP
    if (p->format == FR_PANEL_BF16_DP) {
        bf16_dp_run(p, acc, acc2, A, lda, slab, m, pair);
        return 1;
    }
#endif
#ifndef FR_F64
    if (fr_lowp_is_i8(p->format))
        return FR_FN(i8_panel_tile)(p, acc, acc2, A, lda, slab, m, pair);
#endif
    return 0;
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

/* The tile of m rows from `slab` of panel p on its own, finished: acc (m, NB) = A (m rows,
 * converted by fr_lowp_rows unless p is float32) . slab, and with `pair` acc2 for one row
 * against the next block's slab too. */
static inline void FR_FN(panel_tile)(const fr_panel *p, real *acc, real *acc2, const real *A,
                                     ptrdiff_t lda, const real *slab, ptrdiff_t m, int pair) {
    if (!FR_FN(panel_dot_tile)(p, acc, acc2, A, lda, slab, m, pair)) {
        const fr_segment seg = {A, lda, FR_FN(panel_depth)(p), slab,
                                pair ? slab + p->slab : NULL};
        FR_FN(float_tile)(acc, acc2, &seg, 1, NULL, 0, m, p->nv, pair);
    }
    FR_FN(panel_finish)(p, acc, A, lda, m, slab);
    if (pair)
        FR_FN(panel_finish)(p, acc2, A, lda, 1, slab + p->slab);
}

/* acc (m, NB) += add (m rows of NB, row i at add + i * add_ld). */
static inline void FR_FN(tile_add)(real *restrict acc, const real *restrict add,
                                   ptrdiff_t add_ld, ptrdiff_t m, ptrdiff_t NB) {
    for (ptrdiff_t i = 0; i < m; i++)
        for (ptrdiff_t c = 0; c < NB; c++)
            acc[i * NB + c] += add[i * add_ld + c];
}

/* The tile of a bf16 or int8 panel p at rows [r, r + m) of block blk (A: those rows
 * converted), plus the same tile of the input panel q over X's rows (converted likewise,
 * or float32 rows r.. of X for a float32 q), or plus the stored tile s0 (row i at s0 + i *
 * start_ld): the two products are finished apart (an int8 product has the scales of its
 * own operands) and then added, one addition per element, so both ways give the same bits.
 * `pair` as in panel_product_sum. */
static inline void FR_FN(lowp_tile_sum)(const fr_panel *p, real *acc, real *acc2,
                                        const real *A, ptrdiff_t lda, const fr_panel *q,
                                        const real *X, ptrdiff_t ldx, const real *s0,
                                        ptrdiff_t start_ld, ptrdiff_t blk, ptrdiff_t m,
                                        int pair) {
    const ptrdiff_t NB = p->nv * FR_VLEN;
    FR_FN(panel_tile)(p, acc, acc2, A, lda, p->data + blk * p->slab, m, pair);
    if (q) {
        real xacc[FR_MR_MAX * 4 * FR_VLEN] __attribute__((aligned(64)));
        real xacc2[4 * FR_VLEN] __attribute__((aligned(64)));
        FR_FN(panel_tile)(q, xacc, xacc2, X, ldx, q->data + blk * q->slab, m, pair);
        FR_FN(tile_add)(acc, xacc, NB, m, NB);
        if (pair)
            FR_FN(tile_add)(acc2, xacc2, NB, 1, NB);
    } else if (s0) {
        FR_FN(tile_add)(acc, s0, start_ld, m, NB);
        if (pair)
            FR_FN(tile_add)(acc2, s0 + NB, start_ld, 1, NB);
    }
}

/* Rows of the next tile when `left` rows remain, tiles of at most mr rows: as even as the
 * tiles can be (8 rows as 4 + 4, 16 as 6 + 5 + 5), not mr until a short last one: a tile
 * of 2 rows loads as many weight vectors per k as one of 6 for a third of the
 * multiply-adds, which made the 8 rows of each thread's half of B = 16 slow. A row's sums
 * do not depend on its tile. */
static inline ptrdiff_t FR_FN(tile_height)(ptrdiff_t left, ptrdiff_t mr) {
    const ptrdiff_t tiles = (left + mr - 1) / mr;
    return (left + tiles - 1) / tiles;
}

/* For rows [row0, row0 + rows) and the panel's column blocks [blk0, blk1): every tile of
 *   [start +] [X (rows, q->K) . q +] A (rows, p->K) . p
 * handed to epilogue(ctx, ...). Row r of A is at A + r * lda (of X at X + r * ldx); q (NULL:
 * none) is a second panel with the same column blocks (same G and H), summed first. start
 * (NULL: none) holds tiles to start from in the panel's block layout: row r, block j at
 * start + r * start_ld + j * NB (as store_tile_epilogue writes them). A bf16 or int8
 * panel p (or q) takes its rows as fr_lowp_rows left them, row0 + i at A + i * lda (X + i *
 * ldx), and its sums are added to the other operand's after both are finished
 * (lowp_tile_sum). `reverse` walks the blocks (for a single row: the pairs of blocks) from
 * the last to the first: a time loop alternates, so that each step starts on the blocks
 * the step before read last, still in L1 (or L2). Each tile's sums are the same either
 * way. */
static inline void FR_FN(panel_product_sum)(const fr_panel *p, const real *A, ptrdiff_t lda,
                                            const fr_panel *q, const real *X, ptrdiff_t ldx,
                                            const real *start, ptrdiff_t start_ld,
                                            ptrdiff_t row0, ptrdiff_t rows, ptrdiff_t blk0,
                                            ptrdiff_t blk1, int reverse,
                                            fr_epilogue_fn epilogue, void *ctx) {
    const ptrdiff_t NB = p->nv * FR_VLEN, mr = FR_FN(tile_rows)(p);
    real acc[FR_MR_MAX * 4 * FR_VLEN] __attribute__((aligned(64)));
    real acc2[4 * FR_VLEN] __attribute__((aligned(64)));
    const int segments = q ? 2 : 1, lowp = p->format != FR_PANEL_F32;
    const ptrdiff_t width = rows == 1 ? 2 : 1; /* a single row takes two blocks at once */
    const ptrdiff_t groups = (blk1 - blk0 + width - 1) / width;
    for (ptrdiff_t group = 0; group < groups; group++) {
        const ptrdiff_t blk = blk0 + (reverse ? groups - 1 - group : group) * width;
        ptrdiff_t unit0 = blk * p->units;
        ptrdiff_t units = p->H - unit0 < p->units ? p->H - unit0 : p->units;
        const int pair = width == 2 && blk + 1 < blk1;
        fr_segment seg[2]; /* X . q first (when given), then A . p */
        fr_segment *own = seg + (q ? 1 : 0);
        for (ptrdiff_t r = row0, m; r < row0 + rows; r += m) {
            m = FR_FN(tile_height)(row0 + rows - r, mr);
            const real *slab = p->data + blk * p->slab;
            const real *rows_A = lowp ? A + (r - row0) * lda : A + r * lda;
            const real *s0 = start ? start + r * start_ld + blk * NB : NULL;
            if (lowp) {
                const real *rows_X = !q ? NULL
                                     : q->format == FR_PANEL_F32 ? X + r * ldx
                                                                 : X + (r - row0) * ldx;
                FR_FN(lowp_tile_sum)(p, acc, acc2, rows_A, lda, q, rows_X, ldx, s0,
                                     start_ld, blk, m, pair);
            } else {
                *own = (fr_segment){rows_A, lda, p->K, slab, pair ? slab + p->slab : NULL};
                if (q) {
                    const real *xslab = q->data + blk * q->slab;
                    seg[0] = (fr_segment){X + r * ldx, ldx, q->K, xslab,
                                          pair ? xslab + q->slab : NULL};
                }
                FR_FN(float_tile)(acc, acc2, seg, segments, s0, start_ld, m, p->nv, pair);
            }
            epilogue(ctx, acc, NB, p->units, r, m, unit0, units);
        }
        if (pair) {
            ptrdiff_t units2 = p->H - unit0 - p->units < p->units ? p->H - unit0 - p->units
                                                                  : p->units;
            epilogue(ctx, acc2, NB, p->units, row0, 1, unit0 + p->units, units2);
        }
    }
}

/* For rows [row0, row0 + rows) of A (row r at A + r * lda; a bf16/int8 panel: see
 * panel_product_sum) and the panel's column blocks
 * [blk0, blk1) (`reverse`: last to first): every tile's product, handed to
 * epilogue(ctx, ...). */
static inline void FR_FN(panel_product)(const fr_panel *p, const real *A, ptrdiff_t lda,
                                        ptrdiff_t row0, ptrdiff_t rows, ptrdiff_t blk0,
                                        ptrdiff_t blk1, int reverse, fr_epilogue_fn epilogue,
                                        void *ctx) {
    FR_FN(panel_product_sum)(p, A, lda, NULL, NULL, 0, NULL, 0, row0, rows, blk0, blk1, reverse,
                             epilogue, ctx);
}

/* The tile as it is, into T (rows, blocks * NB) in the panel's block layout (the `start`
 * of a later panel_product_sum): row r, block j at T + r * ldt + j * NB. */
typedef struct {
    real *T;
    ptrdiff_t ldt;
} fr_store_tiles;

static void FR_FN(store_tile_epilogue)(void *ctx, const real *acc, ptrdiff_t acc_ld,
                                       ptrdiff_t gate_stride, ptrdiff_t row0, ptrdiff_t rows,
                                       ptrdiff_t unit0, ptrdiff_t units) {
    const fr_store_tiles *s = ctx;
    real *dst = s->T + row0 * s->ldt + unit0 / gate_stride * acc_ld; /* block unit0/units */
    for (ptrdiff_t i = 0; i < rows; i++)
        memcpy(dst + i * s->ldt, acc + i * acc_ld, (size_t)acc_ld * sizeof(real));
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
