/* threads.h - running the time loop over blocks of batch rows (see threads.c). */
#ifndef FASTRNN_THREADS_H
#define FASTRNN_THREADS_H

#include <stddef.h>

/* Fewer rows than this per thread do not repay a thread of their own. */
#define FR_MIN_ROWS_PER_THREAD 4

/* Rows [b0, b0 + rows) of the batch. */
typedef struct {
    ptrdiff_t b0, rows;
} fr_rows;

typedef void (*fr_rows_fn)(const void *ctx, fr_rows rows);

/* Threads for our kernels, and the BLAS's own thread setter (may be NULL). */
void fr_set_num_threads(int n, void (*blas_set_threads)(int));
int fr_get_num_threads(void);

/* fn(ctx, block) for blocks of rows covering [0, B): in parallel when `split` (the
 * per-step products run on our own kernel) and the batch is large enough, else one block. */
void fr_for_row_blocks(ptrdiff_t B, int split, fr_rows_fn fn, const void *ctx);

/* fn(ctx, i) for every i in [0, n), the items spread over our threads (any order, one
 * thread per item), with the BLAS held to one thread meanwhile: what an item computes
 * must not depend on which thread runs it or on how many there are. */
typedef void (*fr_item_fn)(const void *ctx, ptrdiff_t i);
void fr_for_items(ptrdiff_t n, fr_item_fn fn, const void *ctx);

/* The split of one time loop across threads (see threads.c): a thread owns rows
 * [row0, row0 + rows) of the batch. With the batch split every thread owns all hidden
 * units of its rows and runs its own time loop; with the hidden split every thread owns all
 * rows and slice `slice` of `slices` of each per-step product's column blocks
 * (fr_part_blocks), and calls fr_part_sync after each product that the next one reads (a
 * barrier). */
typedef struct fr_barrier fr_barrier;
typedef struct {
    ptrdiff_t row0, rows;
    int slice, slices;
    fr_barrier *barrier; /* NULL unless the hidden units are split */
    int reverse;         /* walk the column blocks last to first (fr_part_step) */
} fr_part;

/* A forward time loop's part at step t: every other step walks its column blocks in
 * reverse, so each step starts on the weights the last one read at its end (still in L1
 * for a panel a little past it, or in L2 for one past L2). */
static inline void fr_part_step(fr_part *part, ptrdiff_t t) { part->reverse = (int)(t & 1); }

/* This part's column blocks [*first, *last) of a product with `blocks` of them. */
static inline void fr_part_blocks(const fr_part *part, ptrdiff_t blocks, ptrdiff_t *first,
                                  ptrdiff_t *last) {
    *first = blocks * part->slice / part->slices;
    *last = blocks * (part->slice + 1) / part->slices;
}

typedef void (*fr_part_fn)(const void *ctx, fr_part part);

/* A step of the hidden split must carry at least this many FLOPs per thread to repay the
 * barrier after it. */
#define FR_MIN_SPLIT_FLOPS 150000.0

/* fn(ctx, part) over the parts of a time loop of B rows whose per-step product has `blocks`
 * column blocks and `step_flops` FLOPs: batch split when there are enough rows per thread,
 * else the hidden split when a step is big enough, else one part on the calling thread. */
void fr_run_time_loop(ptrdiff_t B, ptrdiff_t blocks, double step_flops, fr_part_fn fn,
                      const void *ctx);

/* After a step of the hidden split: wait until every thread has finished it. */
void fr_part_sync(const fr_part *part);

#endif
