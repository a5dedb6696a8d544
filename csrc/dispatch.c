/* dispatch.c - which instruction-set variant of the kernels runs (see fastrnn.h). */
#include "fastrnn.h"

int fr_isa_level = FR_ISA_PORTABLE;

int fr_detect_isa(void) {
#if defined(FR_X86_VARIANTS) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni")
                   ? FR_ISA_AVX512_BF16
                   : FR_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return FR_ISA_AVX2;
#endif
    return FR_ISA_PORTABLE;
}

int fr_set_isa(int level) {
    int best = fr_detect_isa();
    fr_isa_level = level < FR_ISA_PORTABLE ? FR_ISA_PORTABLE : level > best ? best : level;
    return fr_isa_level;
}
