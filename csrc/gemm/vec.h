/* vec.h - the vector register type of each build variant (see real.h).
 *
 * Written with GCC/Clang vector extensions, so one source becomes SSE2 or NEON (16 bytes,
 * the portable build), AVX2 (32 bytes) or AVX-512 (64 bytes) code. FR_ACC_REGS is how many
 * vector registers a microkernel may keep as accumulators: 24 of AVX-512's 32, 12 of the
 * 16 that AVX2, SSE2 and (conservatively) NEON have, leaving room for the weight vectors
 * and the broadcast.
 */
#ifndef FASTRNN_GEMM_VEC_H
#define FASTRNN_GEMM_VEC_H

#include <stddef.h>
#include <stdint.h>

#include "../real.h"

#if defined(__AVX512F__)
#define FR_VBYTES 64
#define FR_ACC_REGS 24
#elif defined(__AVX2__)
#define FR_VBYTES 32
#define FR_ACC_REGS 12
#else
#define FR_VBYTES 16
#define FR_ACC_REGS 12
#endif
#define FR_VLEN ((ptrdiff_t)(FR_VBYTES / sizeof(real)))

/* A vector register of reals; the aligned(sizeof(real)) variant loads unaligned. */
typedef real fr_vec __attribute__((vector_size(FR_VBYTES)));
typedef real fr_vec_u __attribute__((vector_size(FR_VBYTES), aligned(sizeof(real))));
/* Integer vectors with fr_vec's lanes: comparisons of fr_vecs, and their bits. */
#ifdef FR_F64
typedef int64_t fr_ivec __attribute__((vector_size(FR_VBYTES)));
typedef uint64_t fr_uvec __attribute__((vector_size(FR_VBYTES)));
#else
typedef int32_t fr_ivec __attribute__((vector_size(FR_VBYTES)));
typedef uint32_t fr_uvec __attribute__((vector_size(FR_VBYTES)));
#endif

#define FR_ALWAYS_INLINE inline __attribute__((always_inline))

#endif
