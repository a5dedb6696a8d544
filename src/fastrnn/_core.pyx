# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Binding to the C kernels in csrc/ (private: use fastrnn.ops).

Every function takes arrays that fastrnn.ops has already validated and allocated:
C-contiguous, flattened to 1-D, one dtype (float32 or float64) for all of them, and
None where the C API accepts NULL. The GIL is released around every kernel.
"""
from cython cimport floating
from libc.stdint cimport int32_t, int64_t
from scipy.linalg.cython_blas cimport sgemm, dgemm
from cpython.mem cimport PyMem_Malloc, PyMem_Free

cdef extern from "blas.h" nogil:
    ctypedef void (*fr_sgemm_fn)(char*, char*, int*, int*, int*, float*, float*, int*,
                                 float*, int*, float*, float*, int*) noexcept nogil
    ctypedef void (*fr_dgemm_fn)(char*, char*, int*, int*, int*, double*, double*, int*,
                                 double*, int*, double*, double*, int*) noexcept nogil
    void fr_set_blas(fr_sgemm_fn sgemm, fr_dgemm_fn dgemm)
    void fr_gemm_blocks(int f64, int trans_a, int trans_b, Py_ssize_t M, Py_ssize_t N,
                        Py_ssize_t K, const void *alpha, const void *A, Py_ssize_t lda,
                        const void *B, Py_ssize_t ldb, const void *beta, void *C,
                        Py_ssize_t ldc)

cdef extern from "fastrnn.h" nogil:
    int FR_OK
    int FR_RNN_SAVED_PER_UNIT
    int FR_LSTM_SAVED_PER_UNIT
    int FR_GRU_SAVED_PER_UNIT
    int FR_CELL_RNN
    int FR_CELL_LSTM
    int FR_CELL_GRU
    int FR_CELL_GRU_RESET_BEFORE
    size_t fr_pack_bytes_f32(int cell, int backward, Py_ssize_t H)
    size_t fr_pack_bytes_f64(int cell, int backward, Py_ssize_t H)
    int fr_pack_f32(void *dst, size_t nbytes, const float *w_hh, int cell, int backward,
                    Py_ssize_t H)
    int fr_pack_f64(void *dst, size_t nbytes, const double *w_hh, int cell, int backward,
                    Py_ssize_t H)
    int fr_rnn_forward_f32(float*, float*, const float*, const float*, const float*,
                           const float*, const float*, const float*, const int64_t*,
                           const float*, int,
                           Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)
    int fr_rnn_forward_f64(double*, double*, const double*, const double*, const double*,
                           const double*, const double*, const double*, const int64_t*,
                           const double*, int,
                           Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)
    int fr_rnn_backward_f32(float*, float*, float*, float*, float*, float*, const float*,
                            const float*, const float*, const float*, const float*,
                            const float*, const float*, const int64_t*, const float*, int,
                            Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)
    int fr_rnn_backward_f64(double*, double*, double*, double*, double*, double*,
                            const double*, const double*, const double*, const double*,
                            const double*, const double*, const double*, const int64_t*,
                            const double*, int,
                            Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)
    int fr_lstm_forward_f32(float*, float*, float*, float*, const float*, const float*,
                            const float*, const float*, const float*, const float*,
                            const float*, const float*, const float*, const int64_t*,
                            const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                            Py_ssize_t, const void*)
    int fr_lstm_forward_f64(double*, double*, double*, double*, const double*, const double*,
                            const double*, const double*, const double*, const double*,
                            const double*, const double*, const double*, const int64_t*,
                            const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                            Py_ssize_t, const void*)
    int fr_lstm_backward_f32(float*, float*, float*, float*, float*, float*, float*, float*,
                             float*, const float*, const float*, const float*, const float*,
                             const float*, const float*, const float*, const float*,
                             const float*, const float*, const float*, const float*,
                             const int64_t*, const float*,
                             Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                             const void*)
    int fr_lstm_backward_f64(double*, double*, double*, double*, double*, double*, double*,
                             double*, double*, const double*, const double*, const double*,
                             const double*, const double*, const double*, const double*,
                             const double*, const double*, const double*, const double*,
                             const double*, const int64_t*, const double*,
                             Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                             const void*)
    int fr_gru_forward_f32(float*, float*, float*, const float*, const float*, const float*,
                           const float*, const float*, const float*, const int64_t*,
                           const float*, int,
                           Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)
    int fr_gru_forward_f64(double*, double*, double*, const double*, const double*,
                           const double*, const double*, const double*, const double*,
                           const int64_t*, const double*, int, Py_ssize_t, Py_ssize_t,
                           Py_ssize_t, Py_ssize_t, const void*)
    int fr_gru_backward_f32(float*, float*, float*, float*, float*, float*, const float*,
                            const float*, const float*, const float*, const float*,
                            const float*, const float*, const float*, const int64_t*,
                            const float*, int,
                            Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)
    int fr_gru_backward_f64(double*, double*, double*, double*, double*, double*,
                            const double*, const double*, const double*, const double*,
                            const double*, const double*, const double*, const double*,
                            const int64_t*, const double*, int, Py_ssize_t, Py_ssize_t,
                            Py_ssize_t, Py_ssize_t, const void*)

cdef extern from "fastrnn.h" nogil:
    int FR_LSTM_LN_SAVED_PER_UNIT
    int FR_LSTM_LN_SAVED_PER_ROW
    int FR_GRU_LN_SAVED_PER_UNIT
    int FR_GRU_LN_SAVED_PER_ROW
    int fr_gru_ln_forward_f32(float*, float*, float*, const float*, const float*, const float*,
                              const float*, const float*, const float*, const float*,
                              const int64_t*, const float*, Py_ssize_t, Py_ssize_t,
                              Py_ssize_t, Py_ssize_t)
    int fr_gru_ln_forward_f64(double*, double*, double*, const double*, const double*,
                              const double*, const double*, const double*, const double*,
                              const double*, const int64_t*, const double*, Py_ssize_t,
                              Py_ssize_t, Py_ssize_t, Py_ssize_t)
    int fr_gru_ln_backward_f32(float*, float*, float*, float*, float*, float*, float*,
                               const float*, const float*, const float*, const float*,
                               const float*, const float*, const float*, const float*,
                               const float*, const int64_t*, const float*, Py_ssize_t,
                               Py_ssize_t, Py_ssize_t, Py_ssize_t)
    int fr_gru_ln_backward_f64(double*, double*, double*, double*, double*, double*, double*,
                               const double*, const double*, const double*, const double*,
                               const double*, const double*, const double*, const double*,
                               const double*, const int64_t*, const double*, Py_ssize_t,
                               Py_ssize_t, Py_ssize_t, Py_ssize_t)
    int fr_lstm_ln_forward_f32(float*, float*, float*, float*, const float*, const float*,
                               const float*, const float*, const float*, const float*,
                               const float*, const float*, const int64_t*, const float*,
                               Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t)
    int fr_lstm_ln_forward_f64(double*, double*, double*, double*, const double*,
                               const double*, const double*, const double*, const double*,
                               const double*, const double*, const double*, const int64_t*,
                               const double*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t)
    int fr_lstm_ln_backward_f32(float*, float*, float*, float*, float*, float*, float*, float*,
                                const float*, const float*, const float*, const float*,
                                const float*, const float*, const float*, const float*,
                                const float*, const float*, const float*, const int64_t*,
                                const float*, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t)
    int fr_lstm_ln_backward_f64(double*, double*, double*, double*, double*, double*,
                                double*, double*, const double*, const double*,
                                const double*, const double*, const double*, const double*,
                                const double*, const double*, const double*, const double*,
                                const double*, const int64_t*, const double*, Py_ssize_t,
                                Py_ssize_t, Py_ssize_t, Py_ssize_t)

fr_set_blas(sgemm, dgemm)

RNN_SAVED_PER_UNIT = FR_RNN_SAVED_PER_UNIT
LSTM_SAVED_PER_UNIT = FR_LSTM_SAVED_PER_UNIT
GRU_SAVED_PER_UNIT = FR_GRU_SAVED_PER_UNIT
LSTM_LN_SAVED_PER_UNIT = FR_LSTM_LN_SAVED_PER_UNIT
LSTM_LN_SAVED_PER_ROW = FR_LSTM_LN_SAVED_PER_ROW
GRU_LN_SAVED_PER_UNIT = FR_GRU_LN_SAVED_PER_UNIT
GRU_LN_SAVED_PER_ROW = FR_GRU_LN_SAVED_PER_ROW


cdef inline floating* mut(floating[::1] a) noexcept nogil:
    return &a[0] if a is not None else NULL


# After the csrc headers: NumPy's headers bring complex.h, whose macro I would clash with
# the kernels' parameter names.
cimport numpy as cnp
import numpy as np

cnp.import_array()


cdef inline const floating* ro(const floating[::1] a) noexcept nogil:
    return &a[0] if a is not None else NULL


cdef inline const int64_t* lens(const int64_t[::1] a) noexcept nogil:
    return &a[0] if a is not None else NULL


cdef inline const void* pk(const unsigned char[::1] a) noexcept nogil:
    return <const void*>&a[0] if a is not None else NULL


cdef inline check(int status):
    if status != FR_OK:
        raise MemoryError("fastrnn kernel could not allocate its workspace")


def rnn_forward(floating[::1] y, floating[::1] h_n, const floating[::1] x,
                const floating[::1] h0, const floating[::1] w_ih, const floating[::1] w_hh,
                const floating[::1] b_ih, const floating[::1] b_hh,
                const int64_t[::1] lengths, bint relu,
                Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                const unsigned char[::1] pack=None,
                const floating[::1] h_mask=None):
    cdef int status
    with nogil:
        if floating is float:
            status = fr_rnn_forward_f32(mut(y), mut(h_n), ro(x), ro(h0), ro(w_ih), ro(w_hh),
                                        ro(b_ih), ro(b_hh), lens(lengths), ro(h_mask), relu, T,
                                        B, I, H, pk(pack))
        else:
            status = fr_rnn_forward_f64(mut(y), mut(h_n), ro(x), ro(h0), ro(w_ih), ro(w_hh),
                                        ro(b_ih), ro(b_hh), lens(lengths), ro(h_mask), relu, T,
                                        B, I, H, pk(pack))
    check(status)


def rnn_backward(floating[::1] dx, floating[::1] dh0, floating[::1] dw_ih,
                 floating[::1] dw_hh, floating[::1] db_ih, floating[::1] db_hh,
                 const floating[::1] dy, const floating[::1] dh_n, const floating[::1] y,
                 const floating[::1] x, const floating[::1] h0, const floating[::1] w_ih,
                 const floating[::1] w_hh, const int64_t[::1] lengths, bint relu,
                 Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                 const unsigned char[::1] pack=None,
                 const floating[::1] h_mask=None):
    cdef int status
    with nogil:
        if floating is float:
            status = fr_rnn_backward_f32(mut(dx), mut(dh0), mut(dw_ih), mut(dw_hh), mut(db_ih),
                                         mut(db_hh), ro(dy), ro(dh_n), ro(y), ro(x), ro(h0),
                                         ro(w_ih), ro(w_hh), lens(lengths), ro(h_mask), relu,
                                         T, B, I, H, pk(pack))
        else:
            status = fr_rnn_backward_f64(mut(dx), mut(dh0), mut(dw_ih), mut(dw_hh), mut(db_ih),
                                         mut(db_hh), ro(dy), ro(dh_n), ro(y), ro(x), ro(h0),
                                         ro(w_ih), ro(w_hh), lens(lengths), ro(h_mask), relu,
                                         T, B, I, H, pk(pack))
    check(status)


def lstm_forward(floating[::1] y, floating[::1] h_n, floating[::1] c_n, floating[::1] saved,
                 const floating[::1] x, const floating[::1] h0, const floating[::1] c0,
                 const floating[::1] w_ih, const floating[::1] w_hh,
                 const floating[::1] b_ih, const floating[::1] b_hh,
                 const int64_t[::1] lengths,
                 Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                 const unsigned char[::1] pack=None, const floating[::1] w_p=None,
                 const floating[::1] h_mask=None, const floating[::1] w_hr=None,
                 Py_ssize_t P=0):
    if P == 0:
        P = H
    cdef int status
    with nogil:
        if floating is float:
            status = fr_lstm_forward_f32(mut(y), mut(h_n), mut(c_n), mut(saved), ro(x), ro(h0),
                                         ro(c0), ro(w_ih), ro(w_hh), ro(b_ih), ro(b_hh),
                                         ro(w_p), ro(w_hr), lens(lengths), ro(h_mask), T, B,
                                         I, H, P, pk(pack))
        else:
            status = fr_lstm_forward_f64(mut(y), mut(h_n), mut(c_n), mut(saved), ro(x), ro(h0),
                                         ro(c0), ro(w_ih), ro(w_hh), ro(b_ih), ro(b_hh),
                                         ro(w_p), ro(w_hr), lens(lengths), ro(h_mask), T, B,
                                         I, H, P, pk(pack))
    check(status)


def lstm_backward(floating[::1] dx, floating[::1] dh0, floating[::1] dc0,
                  floating[::1] dw_ih, floating[::1] dw_hh, floating[::1] db_ih,
                  floating[::1] db_hh, const floating[::1] dy, const floating[::1] dh_n,
                  const floating[::1] dc_n, const floating[::1] saved, const floating[::1] y,
                  const floating[::1] x, const floating[::1] h0, const floating[::1] c0,
                  const floating[::1] w_ih, const floating[::1] w_hh,
                  const int64_t[::1] lengths,
                  Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                  const unsigned char[::1] pack=None, floating[::1] dw_p=None,
                  const floating[::1] w_p=None,
                  const floating[::1] h_mask=None, floating[::1] dw_hr=None,
                  const floating[::1] w_hr=None, Py_ssize_t P=0):
    if P == 0:
        P = H
    cdef int status
    with nogil:
        if floating is float:
            status = fr_lstm_backward_f32(mut(dx), mut(dh0), mut(dc0), mut(dw_ih), mut(dw_hh),
                                          mut(db_ih), mut(db_hh), mut(dw_p), mut(dw_hr),
                                          ro(dy), ro(dh_n), ro(dc_n), ro(saved), ro(y), ro(x),
                                          ro(h0), ro(c0), ro(w_ih), ro(w_hh), ro(w_p),
                                          ro(w_hr), lens(lengths), ro(h_mask), T, B, I, H, P,
                                          pk(pack))
        else:
            status = fr_lstm_backward_f64(mut(dx), mut(dh0), mut(dc0), mut(dw_ih), mut(dw_hh),
                                          mut(db_ih), mut(db_hh), mut(dw_p), mut(dw_hr),
                                          ro(dy), ro(dh_n), ro(dc_n), ro(saved), ro(y), ro(x),
                                          ro(h0), ro(c0), ro(w_ih), ro(w_hh), ro(w_p),
                                          ro(w_hr), lens(lengths), ro(h_mask), T, B, I, H, P,
                                          pk(pack))
    check(status)


def lstm_ln_forward(floating[::1] y, floating[::1] h_n, floating[::1] c_n,
                    floating[::1] saved, const floating[::1] x, const floating[::1] h0,
                    const floating[::1] c0, const floating[::1] w_ih, const floating[::1] w_hh,
                    const floating[::1] b_ih, const floating[::1] b_hh,
                    const floating[::1] ln, const int64_t[::1] lengths,
                    const floating[::1] h_mask, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                    Py_ssize_t H):
    cdef int status
    with nogil:
        if floating is float:
            status = fr_lstm_ln_forward_f32(mut(y), mut(h_n), mut(c_n), mut(saved), ro(x),
                                            ro(h0), ro(c0), ro(w_ih), ro(w_hh), ro(b_ih),
                                            ro(b_hh), ro(ln), lens(lengths), ro(h_mask), T, B,
                                            I, H)
        else:
            status = fr_lstm_ln_forward_f64(mut(y), mut(h_n), mut(c_n), mut(saved), ro(x),
                                            ro(h0), ro(c0), ro(w_ih), ro(w_hh), ro(b_ih),
                                            ro(b_hh), ro(ln), lens(lengths), ro(h_mask), T, B,
                                            I, H)
    check(status)


def lstm_ln_backward(floating[::1] dx, floating[::1] dh0, floating[::1] dc0,
                     floating[::1] dw_ih, floating[::1] dw_hh, floating[::1] db_ih,
                     floating[::1] db_hh, floating[::1] dln, const floating[::1] dy,
                     const floating[::1] dh_n, const floating[::1] dc_n,
                     const floating[::1] saved, const floating[::1] y, const floating[::1] x,
                     const floating[::1] h0, const floating[::1] c0,
                     const floating[::1] w_ih, const floating[::1] w_hh,
                     const floating[::1] ln, const int64_t[::1] lengths,
                     const floating[::1] h_mask, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I,
                     Py_ssize_t H):
    cdef int status
    with nogil:
        if floating is float:
            status = fr_lstm_ln_backward_f32(mut(dx), mut(dh0), mut(dc0), mut(dw_ih),
                                             mut(dw_hh), mut(db_ih), mut(db_hh), mut(dln),
                                             ro(dy), ro(dh_n), ro(dc_n), ro(saved), ro(y),
                                             ro(x), ro(h0), ro(c0), ro(w_ih), ro(w_hh), ro(ln),
                                             lens(lengths), ro(h_mask), T, B, I, H)
        else:
            status = fr_lstm_ln_backward_f64(mut(dx), mut(dh0), mut(dc0), mut(dw_ih),
                                             mut(dw_hh), mut(db_ih), mut(db_hh), mut(dln),
                                             ro(dy), ro(dh_n), ro(dc_n), ro(saved), ro(y),
                                             ro(x), ro(h0), ro(c0), ro(w_ih), ro(w_hh), ro(ln),
                                             lens(lengths), ro(h_mask), T, B, I, H)
    check(status)


def gru_ln_forward(floating[::1] y, floating[::1] h_n, floating[::1] saved,
                   const floating[::1] x, const floating[::1] h0, const floating[::1] w_ih,
                   const floating[::1] w_hh, const floating[::1] b_ih,
                   const floating[::1] b_hh, const floating[::1] ln,
                   const int64_t[::1] lengths, const floating[::1] h_mask, Py_ssize_t T,
                   Py_ssize_t B, Py_ssize_t I, Py_ssize_t H):
    cdef int status
    with nogil:
        if floating is float:
            status = fr_gru_ln_forward_f32(mut(y), mut(h_n), mut(saved), ro(x), ro(h0),
                                           ro(w_ih), ro(w_hh), ro(b_ih), ro(b_hh), ro(ln),
                                           lens(lengths), ro(h_mask), T, B, I, H)
        else:
            status = fr_gru_ln_forward_f64(mut(y), mut(h_n), mut(saved), ro(x), ro(h0),
                                           ro(w_ih), ro(w_hh), ro(b_ih), ro(b_hh), ro(ln),
                                           lens(lengths), ro(h_mask), T, B, I, H)
    check(status)


def gru_ln_backward(floating[::1] dx, floating[::1] dh0, floating[::1] dw_ih,
                    floating[::1] dw_hh, floating[::1] db_ih, floating[::1] db_hh,
                    floating[::1] dln, const floating[::1] dy, const floating[::1] dh_n,
                    const floating[::1] saved, const floating[::1] y, const floating[::1] x,
                    const floating[::1] h0, const floating[::1] w_ih,
                    const floating[::1] w_hh, const floating[::1] ln,
                    const int64_t[::1] lengths, const floating[::1] h_mask, Py_ssize_t T,
                    Py_ssize_t B, Py_ssize_t I, Py_ssize_t H):
    cdef int status
    with nogil:
        if floating is float:
            status = fr_gru_ln_backward_f32(mut(dx), mut(dh0), mut(dw_ih), mut(dw_hh),
                                            mut(db_ih), mut(db_hh), mut(dln), ro(dy),
                                            ro(dh_n), ro(saved), ro(y), ro(x), ro(h0),
                                            ro(w_ih), ro(w_hh), ro(ln), lens(lengths),
                                            ro(h_mask), T, B, I, H)
        else:
            status = fr_gru_ln_backward_f64(mut(dx), mut(dh0), mut(dw_ih), mut(dw_hh),
                                            mut(db_ih), mut(db_hh), mut(dln), ro(dy),
                                            ro(dh_n), ro(saved), ro(y), ro(x), ro(h0),
                                            ro(w_ih), ro(w_hh), ro(ln), lens(lengths),
                                            ro(h_mask), T, B, I, H)
    check(status)


def gru_forward(floating[::1] y, floating[::1] h_n, floating[::1] saved,
                const floating[::1] x, const floating[::1] h0, const floating[::1] w_ih,
                const floating[::1] w_hh, const floating[::1] b_ih, const floating[::1] b_hh,
                const int64_t[::1] lengths, bint reset_after,
                Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                const unsigned char[::1] pack=None,
                const floating[::1] h_mask=None):
    cdef int status
    with nogil:
        if floating is float:
            status = fr_gru_forward_f32(mut(y), mut(h_n), mut(saved), ro(x), ro(h0), ro(w_ih),
                                        ro(w_hh), ro(b_ih), ro(b_hh), lens(lengths), ro(h_mask),
                                        reset_after, T, B, I, H, pk(pack))
        else:
            status = fr_gru_forward_f64(mut(y), mut(h_n), mut(saved), ro(x), ro(h0), ro(w_ih),
                                        ro(w_hh), ro(b_ih), ro(b_hh), lens(lengths), ro(h_mask),
                                        reset_after, T, B, I, H, pk(pack))
    check(status)


def gru_backward(floating[::1] dx, floating[::1] dh0, floating[::1] dw_ih,
                 floating[::1] dw_hh, floating[::1] db_ih, floating[::1] db_hh,
                 const floating[::1] dy, const floating[::1] dh_n, const floating[::1] saved,
                 const floating[::1] y, const floating[::1] x, const floating[::1] h0,
                 const floating[::1] w_ih, const floating[::1] w_hh,
                 const int64_t[::1] lengths, bint reset_after,
                 Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                 const unsigned char[::1] pack=None,
                 const floating[::1] h_mask=None):
    cdef int status
    with nogil:
        if floating is float:
            status = fr_gru_backward_f32(mut(dx), mut(dh0), mut(dw_ih), mut(dw_hh), mut(db_ih),
                                         mut(db_hh), ro(dy), ro(dh_n), ro(saved), ro(y), ro(x),
                                         ro(h0), ro(w_ih), ro(w_hh), lens(lengths), ro(h_mask),
                                         reset_after, T, B, I, H, pk(pack))
        else:
            status = fr_gru_backward_f64(mut(dx), mut(dh0), mut(dw_ih), mut(dw_hh), mut(db_ih),
                                         mut(db_hh), ro(dy), ro(dh_n), ro(saved), ro(y), ro(x),
                                         ro(h0), ro(w_ih), ro(w_hh), lens(lengths), ro(h_mask),
                                         reset_after, T, B, I, H, pk(pack))
    check(status)


cdef extern from "fastrnn.h":
    int fr_detect_isa()
    int fr_set_isa(int level)
    int fr_isa_level
    int64_t fr_fma_peak_f32(int64_t iterations, float *sink) nogil
    int64_t fr_fma_peak_f64(int64_t iterations, double *sink) nogil

ISA_NAMES = ("portable", "avx2", "avx512", "avx512_bf16")


def available_isas():
    """The instruction-set variants of the kernels this CPU can run, slowest first."""
    return ISA_NAMES[:fr_detect_isa() + 1]


def get_isa():
    """The instruction-set variant the kernels run now."""
    return ISA_NAMES[fr_isa_level]


def set_isa(name):
    """Run the kernels' ``name`` variant ('portable', 'avx2', 'avx512', 'avx512_bf16': the
    avx512 kernels with bf16 products on vdpbf16ps); returns the one set.

    A level the CPU lacks is lowered to the best it has. Meant for tests and benchmarks;
    the default is the best available.
    """
    if name not in ISA_NAMES:
        raise ValueError(f"isa must be one of {ISA_NAMES}, got {name!r}")
    return ISA_NAMES[fr_set_isa(ISA_NAMES.index(name))]


fr_set_isa(fr_detect_isa())


def fma_peak_flops(int64_t iterations, bint double=False):
    """Run ``iterations`` rounds of register-only multiply-adds under the current ISA level
    (csrc/peak.c), GIL released; returns the FLOPs done. Divide by the thread CPU time the
    call took (fastrnn.bench.peak does) for the core's peak GFLOP/s."""
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    cdef float sink32
    cdef double sink64
    cdef int64_t flops
    with nogil:
        if double:
            flops = fr_fma_peak_f64(iterations, &sink64)
        else:
            flops = fr_fma_peak_f32(iterations, &sink32)
    return flops


cdef extern from "fastrnn.h":
    int64_t fr_lowp_peak(int kind, int64_t iterations, int32_t *sink) nogil

LOWP_PEAK_KINDS = ("bf16_avx512", "int8_avx512_vnni", "int8_avx_vnni", "int8_avx2")


def lowp_peak_ops(str kind, int64_t iterations):
    """Run ``iterations`` rounds of register-only dot products of one reduced-precision
    instruction (csrc/peak_lowp.c; ``kind`` one of LOWP_PEAK_KINDS), GIL released; returns
    the operations done (2 per multiplied pair), or None when this CPU lacks it."""
    if kind not in LOWP_PEAK_KINDS:
        raise ValueError(f"kind must be one of {LOWP_PEAK_KINDS}, got {kind!r}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    cdef int code = LOWP_PEAK_KINDS.index(kind)
    cdef int32_t sink
    cdef int64_t ops
    with nogil:
        ops = fr_lowp_peak(code, iterations, &sink)
    return None if ops < 0 else ops


cdef extern from "threads.h":
    void fr_set_num_threads(int n, void (*blas_set_threads)(int) noexcept nogil)
    int fr_get_num_threads()


def set_num_threads(int n, size_t blas_set_threads=0):
    """Threads for the kernels' batch split, and the address of the BLAS's C function that
    sets its thread count (0 if unknown); see fastrnn._threads."""
    fr_set_num_threads(n, <void (*)(int) noexcept nogil>blas_set_threads)


def get_num_threads():
    return fr_get_num_threads()


# -- packed recurrent weights (see "Packs" in csrc/fastrnn.h) ---------------------------------

CELL_IDS = {"rnn": FR_CELL_RNN, "lstm": FR_CELL_LSTM, "gru": FR_CELL_GRU,
            "gru_reset_before": FR_CELL_GRU_RESET_BEFORE}


def pack(const floating[::1] w_hh, str cell, bint backward, Py_ssize_t H):
    """w_hh (G*H*H,) packed for the forward (backward=False) or backward time loop of
    ``cell`` under the current ISA level: a 64-byte aligned uint8 array to hand to the
    kernels as ``pack=``. Valid only while w_hh is unchanged (the caller's duty)."""
    cdef int cell_id = CELL_IDS[cell]
    cdef size_t nbytes
    if floating is float:
        nbytes = fr_pack_bytes_f32(cell_id, backward, H)
    else:
        nbytes = fr_pack_bytes_f64(cell_id, backward, H)
    raw = np.empty(nbytes + 64, np.uint8)
    cdef size_t start = (-raw.ctypes.data) % 64
    out = raw[start:start + nbytes]
    cdef unsigned char[::1] dst = out
    cdef int status
    with nogil:
        if floating is float:
            status = fr_pack_f32(&dst[0], nbytes, &w_hh[0], cell_id, backward, H)
        else:
            status = fr_pack_f64(&dst[0], nbytes, &w_hh[0], cell_id, backward, H)
    check(status)
    return out


cdef extern from "fastrnn.h" nogil:
    size_t fr_pack_bf16_bytes_f32(int cell, Py_ssize_t I, Py_ssize_t H)
    int fr_pack_bf16_f32(void *dst, size_t nbytes, const float *w_ih, const float *w_hh,
                         int cell, Py_ssize_t I, Py_ssize_t H)
    size_t fr_pack_int8_bytes_f32(int cell, Py_ssize_t I, Py_ssize_t H)
    int fr_pack_int8_f32(void *dst, size_t nbytes, const signed char *w_ih, const float *s_ih,
                         const signed char *w_hh, const float *s_hh, int cell, Py_ssize_t I,
                         Py_ssize_t H)
    int fr_pack_lowp_product_f32(float *C, const void *pack, int index, const float *A,
                                 Py_ssize_t rows, Py_ssize_t K, Py_ssize_t N)


def _aligned_bytes(size_t nbytes):
    """A 64-byte aligned uint8 array of nbytes."""
    raw = np.empty(nbytes + 64, np.uint8)
    cdef size_t start = (-raw.ctypes.data) % 64
    return raw[start:start + nbytes]


def pack_bf16(const float[::1] w_ih, const float[::1] w_hh, str cell, Py_ssize_t I,
              Py_ssize_t H):
    """w_ih (G*H*I,) and w_hh (G*H*H,) rounded to bfloat16 and packed for the forward time
    loop of ``cell`` under the current ISA level (see "bfloat16 inference" in
    csrc/fastrnn.h): a float32 forward handed it as ``pack=`` runs in bf16."""
    cdef int cell_id = CELL_IDS[cell]
    cdef size_t nbytes = fr_pack_bf16_bytes_f32(cell_id, I, H)
    out = _aligned_bytes(nbytes)
    cdef unsigned char[::1] dst = out
    cdef int status
    with nogil:
        status = fr_pack_bf16_f32(&dst[0], nbytes, &w_ih[0], &w_hh[0], cell_id, I, H)
    check(status)
    return out


def pack_int8(const signed char[::1] w_ih, const float[::1] s_ih, const signed char[::1] w_hh,
              const float[::1] s_hh, str cell, Py_ssize_t I, Py_ssize_t H):
    """int8 w_ih (G*H*I,), w_hh (G*H*H,) and their row scales (G*H,) packed for the forward
    time loop of ``cell`` under the current ISA level (see "int8 inference" in
    csrc/fastrnn.h): a float32 forward handed it as ``pack=`` runs in int8."""
    cdef int cell_id = CELL_IDS[cell]
    cdef size_t nbytes = fr_pack_int8_bytes_f32(cell_id, I, H)
    out = _aligned_bytes(nbytes)
    cdef unsigned char[::1] dst = out
    cdef int status
    with nogil:
        status = fr_pack_int8_f32(&dst[0], nbytes, &w_ih[0], &s_ih[0], &w_hh[0], &s_hh[0],
                                  cell_id, I, H)
    check(status)
    return out


def lowp_product(const unsigned char[::1] pack, int index, const float[:, ::1] A,
                 Py_ssize_t N):
    """A test hook: ``A (rows, K) . op(W)`` (rows, N) for panel ``index`` of a bf16 or int8
    pack from :func:`pack_bf16` / :func:`pack_int8` (its w_hh products in order, then
    w_ih^T), on the tiles a forward runs at the current ISA level."""
    cdef Py_ssize_t rows = A.shape[0], K = A.shape[1]
    out = np.empty((rows, N), np.float32)
    cdef float[:, ::1] C = out
    cdef int status
    if rows == 0 or N == 0 or K == 0:
        raise ValueError(f"A (rows, K) and N must be non-empty, got A ({rows}, {K}), N {N}")
    with nogil:
        status = fr_pack_lowp_product_f32(&C[0, 0], &pack[0], index, &A[0, 0], rows, K, N)
    if status < 0:
        raise ValueError(f"the pack has no panel {index} of shape (K, N) = ({K}, {N}) "
                         f"that runs at ISA level {get_isa()!r}")
    check(status)
    return out


# -- one streaming step: 2-D arrays as they come, no reshapes (fastrnn.ops.*_step) ------------

cdef inline const floating* ro2(const floating[:, ::1] a) noexcept nogil:
    return &a[0, 0]


def rnn_step(floating[:, ::1] y, floating[:, ::1] h_n, const floating[:, ::1] x,
             const floating[:, ::1] h, const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
             const floating[::1] b_ih, const floating[::1] b_hh, bint relu,
             const unsigned char[::1] pack=None):
    cdef Py_ssize_t B = x.shape[0], I = x.shape[1], H = h.shape[1]
    cdef int status
    with nogil:
        if floating is float:
            status = fr_rnn_forward_f32(&y[0, 0], &h_n[0, 0], ro2(x), ro2(h), ro2(w_ih),
                                        ro2(w_hh), ro(b_ih), ro(b_hh), NULL, NULL, relu, 1, B, I, H,
                                        pk(pack))
        else:
            status = fr_rnn_forward_f64(&y[0, 0], &h_n[0, 0], ro2(x), ro2(h), ro2(w_ih),
                                        ro2(w_hh), ro(b_ih), ro(b_hh), NULL, NULL, relu, 1, B, I, H,
                                        pk(pack))
    check(status)


def lstm_step(floating[:, ::1] y, floating[:, ::1] h_n, floating[:, ::1] c_n,
              const floating[:, ::1] x, const floating[:, ::1] h, const floating[:, ::1] c,
              const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
              const floating[::1] b_ih, const floating[::1] b_hh,
              const unsigned char[::1] pack=None):
    cdef Py_ssize_t B = x.shape[0], I = x.shape[1], H = h.shape[1]
    cdef int status
    with nogil:
        if floating is float:
            status = fr_lstm_forward_f32(&y[0, 0], &h_n[0, 0], &c_n[0, 0], NULL, ro2(x), ro2(h),
                                         ro2(c), ro2(w_ih), ro2(w_hh), ro(b_ih), ro(b_hh), NULL,
                                         NULL, NULL, NULL, 1, B, I, H, H, pk(pack))
        else:
            status = fr_lstm_forward_f64(&y[0, 0], &h_n[0, 0], &c_n[0, 0], NULL, ro2(x), ro2(h),
                                         ro2(c), ro2(w_ih), ro2(w_hh), ro(b_ih), ro(b_hh), NULL,
                                         NULL, NULL, NULL, 1, B, I, H, H, pk(pack))
    check(status)


def gru_step(floating[:, ::1] y, floating[:, ::1] h_n, const floating[:, ::1] x,
             const floating[:, ::1] h, const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
             const floating[::1] b_ih, const floating[::1] b_hh, bint reset_after,
             const unsigned char[::1] pack=None):
    cdef Py_ssize_t B = x.shape[0], I = x.shape[1], H = h.shape[1]
    cdef int status
    with nogil:
        if floating is float:
            status = fr_gru_forward_f32(&y[0, 0], &h_n[0, 0], NULL, ro2(x), ro2(h), ro2(w_ih),
                                        ro2(w_hh), ro(b_ih), ro(b_hh), NULL, NULL, reset_after,
                                        1, B, I, H, pk(pack))
        else:
            status = fr_gru_forward_f64(&y[0, 0], &h_n[0, 0], NULL, ro2(x), ro2(h), ro2(w_ih),
                                        ro2(w_hh), ro(b_ih), ro(b_hh), NULL, NULL, reset_after,
                                        1, B, I, H, pk(pack))
    check(status)


# -- plain GEMM on the kernels' BLAS (fastrnn.ops.gemm) ------------------------------------

def gemm(floating[:, ::1] C, const floating[:, ::1] A, const floating[:, ::1] B,
         bint trans_a, bint trans_b, floating beta):
    """C = op(A) op(B) + beta C, row-major, shapes checked by fastrnn.ops.gemm: in blocks
    of rows on our threads, each a single-threaded BLAS call (csrc/blas.h)."""
    cdef Py_ssize_t M = C.shape[0], N = C.shape[1]
    cdef Py_ssize_t K = A.shape[0] if trans_a else A.shape[1]
    cdef floating one = 1
    with nogil:
        fr_gemm_blocks(floating is double, trans_a, trans_b, M, N, K, &one, &A[0, 0],
                       A.shape[1], &B[0, 0], B.shape[1], &beta, &C[0, 0], N)


# -- a stepper: one streaming step of a whole stack from Python at the least cost ------------

ctypedef struct StepWeights:
    # one layer's operands, kept alive by Stepper.layers: w_ih (G*H, I or H), w_hh (G*H, H),
    # b_ih, b_hh (G*H) or NULL, pack (the forward panel of w_hh) or NULL
    const void *w_ih
    const void *w_hh
    const void *b_ih
    const void *b_hh
    const void *pack
    const void *w_p     # LSTM peepholes (3H) or NULL


cdef inline const void* data_or_null(a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef class Stepper:
    """The layers of a unidirectional recurrent module held for step-by-step inference.

    Built by the layer (fastrnn.nn.recurrent) from its own contiguous weights and packs,
    which it keeps alive and unchanged while the stepper is in use; the stepper keeps raw
    pointers to them, so ``step`` only checks what a caller can get wrong (x_t and the
    states), allocates the new states and runs every layer's C step with the GIL released.
    ``kind``: 'rnn', 'rnn_relu', 'lstm', 'gru', 'gru_reset_before'.
    """
    cdef object layers      # per layer: (w_ih, w_hh, b_ih, b_hh, pack[, w_p]), owned (pointers)
    cdef StepWeights *weights
    cdef object dtype
    cdef object convert     # convert(name, value): an ndarray of dtype, or a clear error
    cdef int kind, n_states, typenum
    cdef Py_ssize_t n_layers, n_input, n_hidden

    def __init__(self, str kind, layers, dtype, Py_ssize_t input_size, Py_ssize_t hidden_size,
                 convert):
        kinds = ("rnn", "rnn_relu", "lstm", "gru", "gru_reset_before")
        self.kind = kinds.index(kind)
        self.n_states = 2 if kind == "lstm" else 1
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"Stepper dtype must be float32 or float64, got {self.dtype}")
        self.typenum = self.dtype.num
        self.convert = convert
        self.n_input = input_size
        self.n_hidden = hidden_size
        self.layers = tuple(tuple(self._owned(a) for a in layer) for layer in layers)
        self.n_layers = len(self.layers)
        self.weights = <StepWeights*>PyMem_Malloc(max(self.n_layers, 1) * sizeof(StepWeights))
        if self.weights == NULL:
            raise MemoryError("Stepper: no memory for the layer table")
        for k, layer in enumerate(self.layers):
            w_ih, w_hh, b_ih, b_hh, pack = layer[:5]
            self.weights[k] = StepWeights(data_or_null(w_ih), data_or_null(w_hh),
                                          data_or_null(b_ih), data_or_null(b_hh),
                                          data_or_null(pack),
                                          data_or_null(layer[5] if len(layer) > 5 else None))

    def __dealloc__(self):
        PyMem_Free(self.weights)

    def _owned(self, a):
        """a itself when it is a C-contiguous ndarray (the stepper points into it)."""
        if a is None:
            return None
        if type(a) is not np.ndarray or not (a.flags.c_contiguous and a.flags.aligned):
            raise TypeError("Stepper operands must be C-contiguous, aligned ndarrays")
        if a.dtype != np.uint8 and a.dtype != self.dtype:
            raise TypeError(f"Stepper operands must be {self.dtype}, got {a.dtype}")
        return a

    cdef inline bint _ready(self, a):
        """An ndarray of the dtype, C-contiguous and aligned (a misaligned pointer is UB)."""
        return (type(a) is np.ndarray and cnp.PyArray_TYPE(<cnp.ndarray>a) == self.typenum
                and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
                and cnp.PyArray_ISALIGNED(<cnp.ndarray>a))

    cdef cnp.ndarray _state(self, object s, Py_ssize_t B, str name):
        cdef cnp.npy_intp dims[3]
        dims[0] = self.n_layers
        dims[1] = B
        dims[2] = self.n_hidden
        if s is None:
            return cnp.PyArray_ZEROS(3, dims, self.typenum, 0)
        if not self._ready(s):
            s = np.require(self.convert("state " + name, s), None, ("C", "A"))
        cdef cnp.ndarray a = <cnp.ndarray>s
        if (a.ndim != 3 or a.shape[0] != dims[0] or a.shape[1] != B
                or a.shape[2] != self.n_hidden):
            raise ValueError(f"state {name} must have shape (num_layers, batch, "
                             f"hidden_size) = {(self.n_layers, B, self.n_hidden)}, "
                             f"got {tuple(s.shape)}")
        return a

    def step(self, x_t, state):
        """``(out (B, H), new state)`` for ``x_t (B, I)`` and ``state`` ((L, B, H), a pair
        of them for LSTM, or None: zeros)."""
        if not self._ready(x_t):
            x_t = np.require(self.convert("x_t", x_t), None, ("C", "A"))
        cdef cnp.ndarray x = <cnp.ndarray>x_t
        if x.ndim != 2 or x.shape[1] != self.n_input:
            raise ValueError(f"x_t must have shape (B, input_size={self.n_input}), got "
                             f"{tuple(x_t.shape)}")
        cdef Py_ssize_t B = x.shape[0]
        cdef cnp.npy_intp dims[3]
        dims[0] = self.n_layers
        dims[1] = B
        dims[2] = self.n_hidden
        cdef cnp.ndarray h, c = None, new_h, new_c = None
        if self.n_states == 2:
            if state is None:
                h_in = c_in = None
            elif isinstance(state, (tuple, list)) and len(state) == 2:
                h_in, c_in = state
            else:
                raise TypeError(f"state must be None or a pair (h, c) for LSTM, got "
                                f"{type(state).__name__}")
            h = self._state(h_in, B, "h")
            c = self._state(c_in, B, "c")
            new_c = cnp.PyArray_EMPTY(3, dims, self.typenum, 0)
        else:
            h = self._state(state, B, "h")
        new_h = cnp.PyArray_EMPTY(3, dims, self.typenum, 0)
        cdef int status
        if self.typenum == cnp.NPY_FLOAT32:
            status = self._run[float](<float*>cnp.PyArray_DATA(x), <float*>cnp.PyArray_DATA(h),
                                      <float*>data_or_null(c), <float*>cnp.PyArray_DATA(new_h),
                                      <float*>data_or_null(new_c), B)
        else:
            status = self._run[double](<double*>cnp.PyArray_DATA(x),
                                       <double*>cnp.PyArray_DATA(h), <double*>data_or_null(c),
                                       <double*>cnp.PyArray_DATA(new_h),
                                       <double*>data_or_null(new_c), B)
        check(status)
        out = new_h[self.n_layers - 1]
        return out, ((new_h, new_c) if self.n_states == 2 else new_h)

    cdef int _run(self, const floating *x, const floating *hh, const floating *cc,
                  floating *nh, floating *nc, Py_ssize_t B) noexcept:
        """Every layer's step: x (B, I), states hh, cc -> nh, nc (L, B, H); cc, nc NULL
        unless LSTM. Layer k > 0 reads layer k-1's new h."""
        cdef Py_ssize_t layer, width, state_size = B * self.n_hidden
        cdef const floating *inp
        cdef floating *h_new
        cdef StepWeights w
        cdef int status = FR_OK
        with nogil:
            for layer in range(self.n_layers):
                w = self.weights[layer]
                inp = x if layer == 0 else nh + (layer - 1) * state_size
                width = self.n_input if layer == 0 else self.n_hidden
                h_new = nh + layer * state_size
                status = step_layer(self.kind, h_new, inp, hh + layer * state_size,
                                    NULL if cc == NULL else cc + layer * state_size,
                                    NULL if nc == NULL else nc + layer * state_size, w,
                                    B, width, self.n_hidden)
                if status != FR_OK:
                    break
        return status


cdef inline int step_layer(int kind, floating *h_new, const floating *x, const floating *h,
                           const floating *c, floating *c_new, StepWeights w, Py_ssize_t B,
                           Py_ssize_t I, Py_ssize_t H) noexcept nogil:
    """One layer's C step (T = 1): kind 0/1 RNN tanh/relu, 2 LSTM, 3/4 GRU (reset after/
    before). h_new doubles as the output y."""
    cdef const floating *w_ih = <const floating*>w.w_ih
    cdef const floating *w_hh = <const floating*>w.w_hh
    cdef const floating *b_ih = <const floating*>w.b_ih
    cdef const floating *b_hh = <const floating*>w.b_hh
    if floating is float:
        if kind <= 1:
            return fr_rnn_forward_f32(h_new, h_new, x, h, w_ih, w_hh, b_ih, b_hh, NULL, NULL,
                                      kind == 1, 1, B, I, H, w.pack)
        if kind == 2:
            return fr_lstm_forward_f32(h_new, h_new, c_new, NULL, x, h, c, w_ih, w_hh, b_ih,
                                       b_hh, <const floating*>w.w_p, NULL, NULL, NULL, 1,
                                       B, I, H, H, w.pack)
        return fr_gru_forward_f32(h_new, h_new, NULL, x, h, w_ih, w_hh, b_ih, b_hh, NULL, NULL,
                                  kind == 3, 1, B, I, H, w.pack)
    else:
        if kind <= 1:
            return fr_rnn_forward_f64(h_new, h_new, x, h, w_ih, w_hh, b_ih, b_hh, NULL, NULL,
                                      kind == 1, 1, B, I, H, w.pack)
        if kind == 2:
            return fr_lstm_forward_f64(h_new, h_new, c_new, NULL, x, h, c, w_ih, w_hh, b_ih,
                                       b_hh, <const floating*>w.w_p, NULL, NULL, NULL, 1,
                                       B, I, H, H, w.pack)
        return fr_gru_forward_f64(h_new, h_new, NULL, x, h, w_ih, w_hh, b_ih, b_hh, NULL, NULL,
                                  kind == 3, 1, B, I, H, w.pack)
