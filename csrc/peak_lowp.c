/* peak_lowp.c - the physical limit of the reduced-precision paths: one core's peak rate of
 * bf16 and int8 dot-product instructions, beside peak.c's float32 / float64 multiply-adds.
 *
 * Built once (not per dtype and ISA variant): each measured instruction sits in its own
 * function with a target attribute, and runs only when the CPU reports the feature
 * (__builtin_cpu_supports), so a portable build still holds them all. Each function runs
 * FR_LOWP_CHAINS (or FR_LOWP_CHAINS_256) independent accumulator chains in vector registers,
 * no memory traffic:
 *
 *   bf16_avx512        acc(16 x f32) += a(32 x bf16) . b(32 x bf16)  vdpbf16ps zmm   64 FLOP
 *   int8_avx512_vnni   acc(16 x i32) += a(64 x u8)  . b(64 x s8)     vpdpbusd zmm   128 OP
 *   int8_avx_vnni      acc( 8 x i32) += a(32 x u8)  . b(32 x s8)     vpdpbusd ymm    64 OP
 *                      (VEX-encoded AVX-VNNI, Intel client CPUs from Alder Lake)
 *   int8_avx2          acc( 8 x i32) += madd16(maddubs(a(32 x u8), b(32 x s8)), 1)
 *                      vpmaddubsw + vpmaddwd + vpaddd                          64 OP
 *
 * An operation is one multiply or one add of a pair: a dot product of n pairs into an
 * accumulator counts 2n, as an FMA counts 2. In the AVX2 sequence the products must
 * depend on the chain (the accumulator's bytes are the u8 operand), else the compiler
 * hoists the two loop-invariant multiplies and only vpaddd would be timed.
 * Enough chains cover latency times issue width (vpdpbusd: 4-5 cycles x 1-2 per cycle).
 * The caller times the call on the thread CPU clock; this returns the operations done. */
#include <stdint.h>
#include <string.h>

#include "fastrnn.h"

#define FR_LOWP_CHAINS 16     /* zmm: 32 registers, 16 chains + 2 operands */
#define FR_LOWP_CHAINS_256 10 /* ymm: 16 registers, 10 chains + 2 operands + temporaries */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* The loop every kernel shares: acc[r] = STEP(acc[r]) for `chains` registers, iterations
 * times; constant indices (full unroll) keep the chains in registers. */
#define FR_LOWP_LOOP(acc, chains, iterations, STEP)                                      \
    for (int64_t k = 0; k < (iterations); k++) {                                        \
        _Pragma("GCC unroll 16") for (int r = 0; r < (chains); r++) acc[r] = STEP(acc[r]); \
    }

/* The chains summed into one register (GNU vector `+`), then its 32-bit lanes xor-ed into
 * a checksum: no chain is dead code, and no chain's address is taken inside the loop. */
#define FR_LOWP_SINK(acc, chains, sink)                                                  \
    do {                                                                                 \
        __typeof__(acc[0]) total_ = acc[0];                                              \
        for (int r = 1; r < (chains); r++) total_ = total_ + acc[r];                    \
        *(sink) = fr_lowp_fold(&total_, sizeof total_);                                  \
    } while (0)

static int32_t fr_lowp_fold(const void *v, size_t bytes) {
    int32_t total = 0, lane;
    for (size_t i = 0; i + sizeof lane <= bytes; i += sizeof lane) {
        memcpy(&lane, (const char *)v + i, sizeof lane);
        total ^= lane;
    }
    return total;
}

/* One peak kernel `name`, compiled for `isa`: `chains` accumulators of vec_t, acc[r] =
 * SET1(r), then STEP(acc[r]) `iterations` times each; returns the operations done,
 * iterations x chains x pairs (multiplied per STEP) x 2. */
#define FR_LOWP_KERNEL(name, isa, vec_t, chains, SET1, STEP, pairs)                     \
    __attribute__((target(isa))) static int64_t name(int64_t iterations, int32_t *sink) { \
        vec_t acc[chains];                                                              \
        for (int r = 0; r < (chains); r++) acc[r] = SET1(r);                            \
        FR_LOWP_LOOP(acc, chains, iterations, STEP)                                     \
        FR_LOWP_SINK(acc, chains, sink);                                                \
        return iterations * (chains) * (pairs) * 2;                                     \
    }

/* bf16 operands 0.5 (0x3f00) and 2^-20 (0x3580) in every lane: the float32 sums grow
 * slowly, never to inf. int8 operands 3 (u8) and -5 (s8); int32 sums wrap harmlessly. */
#define FR_BF16_A ((__m512bh)_mm512_set1_epi16(0x3f00))
#define FR_BF16_B ((__m512bh)_mm512_set1_epi16(0x3580))
#define FR_STEP_BF16(v) _mm512_dpbf16_ps(v, FR_BF16_A, FR_BF16_B)
#define FR_STEP_VNNI512(v) _mm512_dpbusd_epi32(v, _mm512_set1_epi8(3), _mm512_set1_epi8(-5))
#define FR_STEP_VNNI256(v) _mm256_dpbusd_avx_epi32(v, _mm256_set1_epi8(3), _mm256_set1_epi8(-5))
/* AVX2: acc's own bytes are the u8 operand (so the multiplies cannot be hoisted): 32
 * u8 x s8 products, pairwise into 16 int16, pairwise into 8 int32 (vpmaddwd by ones). */
#define FR_STEP_AVX2(v)                                                                 \
    _mm256_add_epi32(v, _mm256_madd_epi16(_mm256_maddubs_epi16(v, _mm256_set1_epi8(-5)),  \
                                          _mm256_set1_epi16(1)))
#define FR_SET1_PS512(r) _mm512_set1_ps((float)(r))

FR_LOWP_KERNEL(fr_lowp_bf16_avx512, "avx512f,avx512bf16", __m512, FR_LOWP_CHAINS,
               FR_SET1_PS512, FR_STEP_BF16, 32)
FR_LOWP_KERNEL(fr_lowp_int8_avx512_vnni, "avx512f,avx512vnni", __m512i, FR_LOWP_CHAINS,
               _mm512_set1_epi32, FR_STEP_VNNI512, 64)
#if defined(__clang__) || __GNUC__ >= 11 /* -mavxvnni */
#define FR_HAVE_AVX_VNNI 1
FR_LOWP_KERNEL(fr_lowp_int8_avx_vnni, "avx2,avxvnni", __m256i, FR_LOWP_CHAINS_256,
               _mm256_set1_epi32, FR_STEP_VNNI256, 32)
#else
#define FR_HAVE_AVX_VNNI 0
#endif
FR_LOWP_KERNEL(fr_lowp_int8_avx2, "avx2", __m256i, FR_LOWP_CHAINS_256, _mm256_set1_epi32,
               FR_STEP_AVX2, 32)

static int fr_lowp_supported(int kind) {
    __builtin_cpu_init();
    switch (kind) {
    case FR_LOWP_PEAK_BF16_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
    case FR_LOWP_PEAK_INT8_AVX512_VNNI:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni");
    case FR_LOWP_PEAK_INT8_AVX_VNNI:
        return FR_HAVE_AVX_VNNI && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("avxvnni");
    case FR_LOWP_PEAK_INT8_AVX2:
        return __builtin_cpu_supports("avx2");
    default:
        return 0;
    }
}

int64_t fr_lowp_peak(int kind, int64_t iterations, int32_t *sink) {
    *sink = 0;
    if (kind < 0 || kind >= FR_LOWP_PEAK_KINDS) return -2;
    if (iterations < 0 || !fr_lowp_supported(kind)) return -1;
    switch (kind) {
    case FR_LOWP_PEAK_BF16_AVX512: return fr_lowp_bf16_avx512(iterations, sink);
    case FR_LOWP_PEAK_INT8_AVX512_VNNI: return fr_lowp_int8_avx512_vnni(iterations, sink);
#if FR_HAVE_AVX_VNNI
    case FR_LOWP_PEAK_INT8_AVX_VNNI: return fr_lowp_int8_avx_vnni(iterations, sink);
#endif
    default: return fr_lowp_int8_avx2(iterations, sink);
    }
}

#else /* not x86-64: none of these instructions */

int64_t fr_lowp_peak(int kind, int64_t iterations, int32_t *sink) {
    *sink = 0;
    return kind < 0 || kind >= FR_LOWP_PEAK_KINDS ? -2 : -1;
}

#endif
