/* threads.c - splitting a time loop across threads.
 *
 * Batch split: rows of a batch never interact inside a recurrent layer, so a thread can own
 * a block of rows from the first step to the last with no barrier per step. Hidden split
 * (the DeepCPU scheme, for batches too small to share out): every thread owns a slice of
 * the hidden units, i.e. of the packed w_hh's column blocks, which stays hot in its own
 * cache, and the threads meet at a barrier after every step. The barrier spins a little and
 * then yields, so it does not collapse when more threads than cores are busy (other
 * libraries' pools in the same process). The products outside the time loop belong to BLAS
 * and its threads; while our threads run, the BLAS is held to one thread (through the
 * setter handed over by fastrnn._core), so the two never nest. Without OpenMP everything
 * runs on the calling thread.
 */
#include <sched.h>
#include <stdatomic.h>

#include "fastrnn.h"
#include "threads.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int fr_num_threads = 1;
static void (*fr_blas_set_threads)(int) = 0;

void fr_set_num_threads(int n, void (*blas_set_threads)(int)) {
    fr_num_threads = n < 1 ? 1 : n;
    fr_blas_set_threads = blas_set_threads;
}

int fr_get_num_threads(void) { return fr_num_threads; }

/* While our threads run, the BLAS is held to one thread (the two pools never nest), and
 * given back fr_num_threads after. */
static void hold_blas(void) {
    if (fr_blas_set_threads)
        fr_blas_set_threads(1);
}

static void release_blas(void) {
    if (fr_blas_set_threads)
        fr_blas_set_threads(fr_num_threads);
}

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
    hold_blas();
#ifdef _OPENMP
#pragma omp parallel for num_threads(n) schedule(static, 1)
#endif
    for (int i = 0; i < n; i++) {
        fr_rows block = {B * i / n, B * (i + 1) / n - B * i / n};
        fn(ctx, block);
    }
    release_blas();
}

void fr_for_items(ptrdiff_t n, fr_item_fn fn, const void *ctx) {
    int threads = n < fr_num_threads ? (int)n : fr_num_threads;
    hold_blas();
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads > 1 ? threads : 1) schedule(static, 1) if (threads > 1)
#else
    (void)threads;
#endif
    for (ptrdiff_t i = 0; i < n; i++)
        fn(ctx, i);
    release_blas();
}

/* A reusable barrier: the last thread to arrive opens the next phase. */
struct fr_barrier {
    atomic_int arrived, phase, n;
};

#define FR_BARRIER_SPINS 4000

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void barrier_wait(fr_barrier *b) {
    int phase = atomic_load_explicit(&b->phase, memory_order_acquire);
    int n = atomic_load_explicit(&b->n, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) == n - 1) {
        atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&b->phase, phase + 1, memory_order_release);
        return;
    }
    for (int spins = 0; atomic_load_explicit(&b->phase, memory_order_acquire) == phase;)
        if (spins < FR_BARRIER_SPINS) {
            spins++;
            cpu_relax();
        } else
            sched_yield();
}

void fr_part_sync(const fr_part *part) {
    if (part->barrier)
        barrier_wait(part->barrier);
}

/* Threads for the hidden split: each needs at least 2 blocks and FR_MIN_SPLIT_FLOPS. */
static int threads_for_units(ptrdiff_t blocks, double step_flops) {
#ifdef _OPENMP
    int n = fr_num_threads;
    while (n > 1 && (blocks < 2 * n || step_flops / n < FR_MIN_SPLIT_FLOPS))
        n--;
    return n;
#else
    (void)blocks;
    (void)step_flops;
    return 1;
#endif
}

void fr_run_time_loop(ptrdiff_t B, ptrdiff_t blocks, double step_flops, fr_part_fn fn,
                      const void *ctx) {
    int by_rows = threads_for_rows(B);
    int by_units = by_rows > 1 ? 1 : threads_for_units(blocks, step_flops);
    int n = by_rows > 1 ? by_rows : by_units;
    if (n <= 1) {
        fr_part all = {0, B, 0, 1, NULL, 0};
        fn(ctx, all);
        return;
    }
    fr_barrier barrier;
    atomic_init(&barrier.arrived, 0);
    atomic_init(&barrier.phase, 0);
    atomic_init(&barrier.n, n);
    hold_blas();
#ifdef _OPENMP
#pragma omp parallel num_threads(n)
    {
        int i = omp_get_thread_num(), team = omp_get_num_threads();
        /* OpenMP may grant fewer threads: each stores the same team size before it waits */
        atomic_store_explicit(&barrier.n, team, memory_order_relaxed);
        fr_part part = {0, B, 0, 1, NULL, 0};
        if (by_rows > 1) {
            part.row0 = B * i / team;
            part.rows = B * (i + 1) / team - part.row0;
        } else {
            part.slice = i;
            part.slices = team;
            part.barrier = &barrier;
        }
        fn(ctx, part);
    }
#endif
    release_blas();
}
