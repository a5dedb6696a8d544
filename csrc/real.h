/* real.h - the one switch between float32 and float64.
 *
 * Each cell (rnn.c, lstm.c, gru.c) is written once over `real` and compiled
 * twice by CMakeLists.txt: without FR_F64 it defines fr_<name>_f32 over float,
 * with FR_F64 it defines fr_<name>_f64 over double. The math cannot drift
 * between the two dtypes because there is only one copy of it.
 */
#ifndef FASTRNN_REAL_H
#define FASTRNN_REAL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#ifdef FR_F64
typedef double real;
#define FR_FN(name) fr_##name##_f64
#define FR_EXP exp
#define FR_TANH tanh
#else
typedef float real;
#define FR_FN(name) fr_##name##_f32
#define FR_EXP expf
#define FR_TANH tanhf
#endif

#endif
