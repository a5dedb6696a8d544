/* real.h - the one switch between float32 and float64 (and between instruction sets).
 *
 * Each cell (rnn.c, lstm.c, gru.c) is written once over `real` and compiled once per
 * dtype and instruction set by CMakeLists.txt: without FR_F64 it defines
 * fr_<name>_f32_<isa> over float, with FR_F64 fr_<name>_f64_<isa> over double, where
 * FR_ISA is portable, avx2 or avx512 (the same C, built with different -m flags).
 * fastrnn.h maps the public names fr_<name>_f32 / _f64 to the variant picked at run
 * time. The math cannot drift between dtypes or ISAs: there is one copy of it.
 */
#ifndef FASTRNN_REAL_H
#define FASTRNN_REAL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#ifndef FR_ISA
#define FR_ISA portable
#endif

#define FR_PASTE3(a, b, c) a##_##b##_##c
#define FR_NAME(name, dtype, isa) FR_PASTE3(name, dtype, isa)

#ifdef FR_F64
typedef double real;
#define FR_FN(name) FR_NAME(fr_##name, f64, FR_ISA)
#else
typedef float real;
#define FR_FN(name) FR_NAME(fr_##name, f32, FR_ISA)
#endif

#endif
