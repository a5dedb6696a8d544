/* threads.h - running the time loop over blocks of batch rows (see threads.c). */
#ifndef FASTRNN_THREADS_H
#define FASTRNN_THREADS_H

#include <stddef.h>

/* Fewer rows than this per thread do not repay a thread. */
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

#endif
