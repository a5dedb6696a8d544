/* threads.c - the batch split: each thread runs the whole time loop over its own rows.
 *
 * Rows of a batch never interact inside a recurrent layer, so a thread can own a block
 * of rows from the first step to the last with no barrier per step. That pays when the
 * per-step products run on our own kernel (small batches). Larger batches run each
 * per-step product on BLAS, whose own threads split it better than blocks of rows do
 * (measured), so their time loop stays on the calling thread. The products outside the
 * time loop always belong to BLAS and its threads; while our threads run, the BLAS is
 * held to one thread (through the setter handed over by fastrnn._core), so the two never
 * nest. Without OpenMP everything runs on the calling thread.
 */
#include "fastrnn.h"
#include "threads.h"

static int fr_num_threads = 1;
static void (*fr_blas_set_threads)(int) = 0;

void fr_set_num_threads(int n, void (*blas_set_threads)(int)) {
    fr_num_threads = n < 1 ? 1 : n;
    fr_blas_set_threads = blas_set_threads;
}

int fr_get_num_threads(void) { return fr_num_threads; }

/* Threads for a batch of B rows: at most one per FR_MIN_ROWS_PER_THREAD rows. */
static int threads_for_rows(ptrdiff_t B) {
#ifdef _OPENMP
    ptrdiff_t by_rows = B / FR_MIN_ROWS_PER_THREAD;
    return (int)(by_rows < fr_num_threads ? (by_rows < 1 ? 1 : by_rows) : fr_num_threads);
#else
    (void)B;
    return 1;
#endif
}

void fr_for_row_blocks(ptrdiff_t B, int split, fr_rows_fn fn, const void *ctx) {
    int n = split ? threads_for_rows(B) : 1;
    if (n <= 1) {
        fr_rows all = {0, B};
        fn(ctx, all);
        return;
    }
    if (fr_blas_set_threads)
        fr_blas_set_threads(1);
#ifdef _OPENMP
#pragma omp parallel for num_threads(n) schedule(static, 1)
#endif
    for (int i = 0; i < n; i++) {
        fr_rows block = {B * i / n, B * (i + 1) / n - B * i / n};
        fn(ctx, block);
    }
    if (fr_blas_set_threads)
        fr_blas_set_threads(fr_num_threads);
}
