/* peak.c - the physical limit: one core's peak multiply-add rate in this dtype and ISA.
 *
 * The idea of ../shared/tools/cpu_peak.c inside the package, so that `fastrnn bench` can
 * state every case's GFLOP/s as a share of what the core it ran on can do at most.
 * FR_ACC_REGS independent chains a <- a * m + c of full vector registers, no memory
 * traffic: with FMA (the AVX2 and AVX-512 builds, -ffp-contract=fast by default in GNU C)
 * each step is one fused multiply-add per register; the portable build's SSE2 has none,
 * so there it is a multiply and an add, which is that build's limit too. Enough chains
 * cover FMA latency times issue width (4 cycles x 2 pipes on Zen 4 and recent Xeons).
 * The caller times the call (thread CPU time); this returns the FLOPs it performed. */
#include "fastrnn.h"
#include "gemm/vec.h"

int64_t FR_FN(fma_peak)(int64_t iterations, real *sink) {
    fr_vec acc[FR_ACC_REGS];
    fr_vec m, c;
    for (ptrdiff_t l = 0; l < FR_VLEN; l++) {
        m[l] = (real)0.999999;
        c[l] = (real)1e-7;
    }
    for (int r = 0; r < FR_ACC_REGS; r++)
        for (ptrdiff_t l = 0; l < FR_VLEN; l++) acc[r][l] = (real)r;
    for (int64_t k = 0; k < iterations; k++) {
#pragma GCC unroll 32   /* constant indices: the chains live in registers, in this order */
        for (int r = 0; r < FR_ACC_REGS; r++) acc[r] = acc[r] * m + c;   /* one FMA each */
    }
    real total = 0;
    for (int r = 0; r < FR_ACC_REGS; r++)
        for (ptrdiff_t l = 0; l < FR_VLEN; l++) total += acc[r][l];
    *sink = total;
    return iterations * FR_ACC_REGS * FR_VLEN * 2;
}
