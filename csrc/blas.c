/* blas.c - storage for the BLAS entry points handed over by fastrnn._core. */
#include "blas.h"

fr_sgemm_fn fr_sgemm = 0;
fr_dgemm_fn fr_dgemm = 0;

void fr_set_blas(fr_sgemm_fn sgemm, fr_dgemm_fn dgemm) {
    fr_sgemm = sgemm;
    fr_dgemm = dgemm;
}
