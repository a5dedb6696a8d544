# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Binding to the C kernels in csrc/ (private: use fastrnn.ops).

Every function takes arrays that fastrnn.ops has already validated and allocated:
C-contiguous, flattened to 1-D, one dtype (float32 or float64) for all of them, and
None where the C API accepts NULL. The GIL is released around every kernel.
"""
from cython cimport floating
from libc.stdint cimport int64_t
from scipy.linalg.cython_blas cimport sgemm, dgemm

cdef extern from "blas.h":
    ctypedef void (*fr_sgemm_fn)(char*, char*, int*, int*, int*, float*, float*, int*,
                                 float*, int*, float*, float*, int*) noexcept nogil
    ctypedef void (*fr_dgemm_fn)(char*, char*, int*, int*, int*, double*, double*, int*,
                                 double*, int*, double*, double*, int*) noexcept nogil
    void fr_set_blas(fr_sgemm_fn sgemm, fr_dgemm_fn dgemm)

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
                           const float*, const float*, const float*, const int64_t*, int,
                           Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)
    int fr_rnn_forward_f64(double*, double*, const double*, const double*, const double*,
                           const double*, const double*, const double*, const int64_t*, int,
                           Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)
    int fr_rnn_backward_f32(float*, float*, float*, float*, float*, float*, const float*,
                            const float*, const float*, const float*, const float*,
                            const float*, const float*, const int64_t*, int,
                            Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)
    int fr_rnn_backward_f64(double*, double*, double*, double*, double*, double*,
                            const double*, const double*, const double*, const double*,
                            const double*, const double*, const double*, const int64_t*, int,
                            Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)
    int fr_lstm_forward_f32(float*, float*, float*, float*, const float*, const float*,
                            const float*, const float*, const float*, const float*,
                            const float*, const int64_t*,
                            Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)
    int fr_lstm_forward_f64(double*, double*, double*, double*, const double*, const double*,
                            const double*, const double*, const double*, const double*,
                            const double*, const int64_t*,
                            Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)
    int fr_lstm_backward_f32(float*, float*, float*, float*, float*, float*, float*,
                             const float*, const float*, const float*, const float*,
                             const float*, const float*, const float*, const float*,
                             const float*, const float*, const int64_t*,
                             Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)
    int fr_lstm_backward_f64(double*, double*, double*, double*, double*, double*, double*,
                             const double*, const double*, const double*, const double*,
                             const double*, const double*, const double*, const double*,
                             const double*, const double*, const int64_t*,
                             Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)
    int fr_gru_forward_f32(float*, float*, float*, const float*, const float*, const float*,
                           const float*, const float*, const float*, const int64_t*, int,
                           Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)
    int fr_gru_forward_f64(double*, double*, double*, const double*, const double*,
                           const double*, const double*, const double*, const double*,
                           const int64_t*, int, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)
    int fr_gru_backward_f32(float*, float*, float*, float*, float*, float*, const float*,
                            const float*, const float*, const float*, const float*,
                            const float*, const float*, const float*, const int64_t*, int,
                            Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)
    int fr_gru_backward_f64(double*, double*, double*, double*, double*, double*,
                            const double*, const double*, const double*, const double*,
                            const double*, const double*, const double*, const double*,
                            const int64_t*, int, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, const void*)

fr_set_blas(sgemm, dgemm)

RNN_SAVED_PER_UNIT = FR_RNN_SAVED_PER_UNIT
LSTM_SAVED_PER_UNIT = FR_LSTM_SAVED_PER_UNIT
GRU_SAVED_PER_UNIT = FR_GRU_SAVED_PER_UNIT


cdef inline floating* mut(floating[::1] a) noexcept nogil:
    return &a[0] if a is not None else NULL


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
                const unsigned char[::1] pack=None):
    cdef int status
    with nogil:
        if floating is float:
            status = fr_rnn_forward_f32(mut(y), mut(h_n), ro(x), ro(h0), ro(w_ih), ro(w_hh),
                                        ro(b_ih), ro(b_hh), lens(lengths), relu, T, B, I, H, pk(pack))
        else:
            status = fr_rnn_forward_f64(mut(y), mut(h_n), ro(x), ro(h0), ro(w_ih), ro(w_hh),
                                        ro(b_ih), ro(b_hh), lens(lengths), relu, T, B, I, H, pk(pack))
    check(status)


def rnn_backward(floating[::1] dx, floating[::1] dh0, floating[::1] dw_ih,
                 floating[::1] dw_hh, floating[::1] db_ih, floating[::1] db_hh,
                 const floating[::1] dy, const floating[::1] dh_n, const floating[::1] y,
                 const floating[::1] x, const floating[::1] h0, const floating[::1] w_ih,
                 const floating[::1] w_hh, const int64_t[::1] lengths, bint relu,
                 Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                 const unsigned char[::1] pack=None):
    cdef int status
    with nogil:
        if floating is float:
            status = fr_rnn_backward_f32(mut(dx), mut(dh0), mut(dw_ih), mut(dw_hh), mut(db_ih),
                                         mut(db_hh), ro(dy), ro(dh_n), ro(y), ro(x), ro(h0),
                                         ro(w_ih), ro(w_hh), lens(lengths), relu, T, B, I, H, pk(pack))
        else:
            status = fr_rnn_backward_f64(mut(dx), mut(dh0), mut(dw_ih), mut(dw_hh), mut(db_ih),
                                         mut(db_hh), ro(dy), ro(dh_n), ro(y), ro(x), ro(h0),
                                         ro(w_ih), ro(w_hh), lens(lengths), relu, T, B, I, H, pk(pack))
    check(status)


def lstm_forward(floating[::1] y, floating[::1] h_n, floating[::1] c_n, floating[::1] saved,
                 const floating[::1] x, const floating[::1] h0, const floating[::1] c0,
                 const floating[::1] w_ih, const floating[::1] w_hh,
                 const floating[::1] b_ih, const floating[::1] b_hh,
                 const int64_t[::1] lengths,
                 Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                 const unsigned char[::1] pack=None):
    cdef int status
    with nogil:
        if floating is float:
            status = fr_lstm_forward_f32(mut(y), mut(h_n), mut(c_n), mut(saved), ro(x), ro(h0),
                                         ro(c0), ro(w_ih), ro(w_hh), ro(b_ih), ro(b_hh),
                                         lens(lengths), T, B, I, H, pk(pack))
        else:
            status = fr_lstm_forward_f64(mut(y), mut(h_n), mut(c_n), mut(saved), ro(x), ro(h0),
                                         ro(c0), ro(w_ih), ro(w_hh), ro(b_ih), ro(b_hh),
                                         lens(lengths), T, B, I, H, pk(pack))
    check(status)


def lstm_backward(floating[::1] dx, floating[::1] dh0, floating[::1] dc0,
                  floating[::1] dw_ih, floating[::1] dw_hh, floating[::1] db_ih,
                  floating[::1] db_hh, const floating[::1] dy, const floating[::1] dh_n,
                  const floating[::1] dc_n, const floating[::1] saved, const floating[::1] y,
                  const floating[::1] x, const floating[::1] h0, const floating[::1] c0,
                  const floating[::1] w_ih, const floating[::1] w_hh,
                  const int64_t[::1] lengths,
                  Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                  const unsigned char[::1] pack=None):
    cdef int status
    with nogil:
        if floating is float:
            status = fr_lstm_backward_f32(mut(dx), mut(dh0), mut(dc0), mut(dw_ih), mut(dw_hh),
                                          mut(db_ih), mut(db_hh), ro(dy), ro(dh_n), ro(dc_n),
                                          ro(saved), ro(y), ro(x), ro(h0), ro(c0), ro(w_ih),
                                          ro(w_hh), lens(lengths), T, B, I, H, pk(pack))
        else:
            status = fr_lstm_backward_f64(mut(dx), mut(dh0), mut(dc0), mut(dw_ih), mut(dw_hh),
                                          mut(db_ih), mut(db_hh), ro(dy), ro(dh_n), ro(dc_n),
                                          ro(saved), ro(y), ro(x), ro(h0), ro(c0), ro(w_ih),
                                          ro(w_hh), lens(lengths), T, B, I, H, pk(pack))
    check(status)


def gru_forward(floating[::1] y, floating[::1] h_n, floating[::1] saved,
                const floating[::1] x, const floating[::1] h0, const floating[::1] w_ih,
                const floating[::1] w_hh, const floating[::1] b_ih, const floating[::1] b_hh,
                const int64_t[::1] lengths, bint reset_after,
                Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                const unsigned char[::1] pack=None):
    cdef int status
    with nogil:
        if floating is float:
            status = fr_gru_forward_f32(mut(y), mut(h_n), mut(saved), ro(x), ro(h0), ro(w_ih),
                                        ro(w_hh), ro(b_ih), ro(b_hh), lens(lengths),
                                        reset_after, T, B, I, H, pk(pack))
        else:
            status = fr_gru_forward_f64(mut(y), mut(h_n), mut(saved), ro(x), ro(h0), ro(w_ih),
                                        ro(w_hh), ro(b_ih), ro(b_hh), lens(lengths),
                                        reset_after, T, B, I, H, pk(pack))
    check(status)


def gru_backward(floating[::1] dx, floating[::1] dh0, floating[::1] dw_ih,
                 floating[::1] dw_hh, floating[::1] db_ih, floating[::1] db_hh,
                 const floating[::1] dy, const floating[::1] dh_n, const floating[::1] saved,
                 const floating[::1] y, const floating[::1] x, const floating[::1] h0,
                 const floating[::1] w_ih, const floating[::1] w_hh,
                 const int64_t[::1] lengths, bint reset_after,
                 Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
                 const unsigned char[::1] pack=None):
    cdef int status
    with nogil:
        if floating is float:
            status = fr_gru_backward_f32(mut(dx), mut(dh0), mut(dw_ih), mut(dw_hh), mut(db_ih),
                                         mut(db_hh), ro(dy), ro(dh_n), ro(saved), ro(y), ro(x),
                                         ro(h0), ro(w_ih), ro(w_hh), lens(lengths),
                                         reset_after, T, B, I, H, pk(pack))
        else:
            status = fr_gru_backward_f64(mut(dx), mut(dh0), mut(dw_ih), mut(dw_hh), mut(db_ih),
                                         mut(db_hh), ro(dy), ro(dh_n), ro(saved), ro(y), ro(x),
                                         ro(h0), ro(w_ih), ro(w_hh), lens(lengths),
                                         reset_after, T, B, I, H, pk(pack))
    check(status)


cdef extern from "fastrnn.h":
    int fr_detect_isa()
    int fr_set_isa(int level)
    int fr_isa_level

ISA_NAMES = ("portable", "avx2", "avx512")


def available_isas():
    """The instruction-set variants of the kernels this CPU can run, slowest first."""
    return ISA_NAMES[:fr_detect_isa() + 1]


def get_isa():
    """The instruction-set variant the kernels run now."""
    return ISA_NAMES[fr_isa_level]


def set_isa(name):
    """Run the kernels' ``name`` variant ('portable', 'avx2', 'avx512'); returns the one set.

    A level the CPU lacks is lowered to the best it has. Meant for tests and benchmarks;
    the default is the best available.
    """
    if name not in ISA_NAMES:
        raise ValueError(f"isa must be one of {ISA_NAMES}, got {name!r}")
    return ISA_NAMES[fr_set_isa(ISA_NAMES.index(name))]


fr_set_isa(fr_detect_isa())


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
    import numpy as np
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
                                        ro2(w_hh), ro(b_ih), ro(b_hh), NULL, relu, 1, B, I, H, pk(pack))
        else:
            status = fr_rnn_forward_f64(&y[0, 0], &h_n[0, 0], ro2(x), ro2(h), ro2(w_ih),
                                        ro2(w_hh), ro(b_ih), ro(b_hh), NULL, relu, 1, B, I, H, pk(pack))
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
                                         1, B, I, H, pk(pack))
        else:
            status = fr_lstm_forward_f64(&y[0, 0], &h_n[0, 0], &c_n[0, 0], NULL, ro2(x), ro2(h),
                                         ro2(c), ro2(w_ih), ro2(w_hh), ro(b_ih), ro(b_hh), NULL,
                                         1, B, I, H, pk(pack))
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
                                        ro2(w_hh), ro(b_ih), ro(b_hh), NULL, reset_after,
                                        1, B, I, H, pk(pack))
        else:
            status = fr_gru_forward_f64(&y[0, 0], &h_n[0, 0], NULL, ro2(x), ro2(h), ro2(w_ih),
                                        ro2(w_hh), ro(b_ih), ro(b_hh), NULL, reset_after,
                                        1, B, I, H, pk(pack))
    check(status)


# -- plain GEMM on the kernels' BLAS (fastrnn.ops.gemm) ------------------------------------

def gemm(floating[:, ::1] C, const floating[:, ::1] A, const floating[:, ::1] B,
         bint trans_a, bint trans_b, floating beta):
    """C = op(A) op(B) + beta C, row-major, shapes checked by fastrnn.ops.gemm.

    BLAS is column-major: the row-major C = op(A) op(B) is the column-major
    C^T = op(B)^T op(A)^T, so A and B trade places."""
    cdef int M = C.shape[0], N = C.shape[1]
    cdef int K = A.shape[0] if trans_a else A.shape[1]
    cdef int lda = A.shape[1], ldb = B.shape[1], ldc = N
    cdef char ta = b'T' if trans_b else b'N'
    cdef char tb = b'T' if trans_a else b'N'
    cdef floating one = 1
    with nogil:
        if floating is float:
            sgemm(&ta, &tb, &N, &M, &K, &one, <float*>&B[0, 0], &ldb, <float*>&A[0, 0], &lda,
                  &beta, &C[0, 0], &ldc)
        else:
            dgemm(&ta, &tb, &N, &M, &K, &one, <double*>&B[0, 0], &ldb, <double*>&A[0, 0], &lda,
                  &beta, &C[0, 0], &ldc)


# -- a stepper: one streaming step of a whole stack from Python at the least cost ------------

cdef class Stepper:
    """The layers of a unidirectional recurrent module held for step-by-step inference.

    Built by the layer (fastrnn.nn.recurrent) from its own contiguous weights and packs,
    which it keeps alive and unchanged while the stepper is in use; ``step`` then checks
    only what a caller can get wrong (x_t and the states) and runs every layer's C step
    with the GIL released. ``kind``: 'rnn', 'rnn_relu', 'lstm', 'gru', 'gru_reset_before'.
    """
    cdef object layers      # per layer: (w_ih, w_hh, b_ih, b_hh, pack)
    cdef object dtype
    cdef object convert     # convert(name, value): an ndarray of dtype, or a clear error
    cdef int kind, n_states
    cdef Py_ssize_t n_layers, n_input, n_hidden

    def __init__(self, str kind, layers, dtype, Py_ssize_t input_size, Py_ssize_t hidden_size,
                 convert):
        kinds = ("rnn", "rnn_relu", "lstm", "gru", "gru_reset_before")
        self.kind = kinds.index(kind)
        self.n_states = 2 if kind == "lstm" else 1
        self.layers = tuple(layers)
        self.dtype = dtype
        self.convert = convert
        self.n_layers = len(self.layers)
        self.n_input = input_size
        self.n_hidden = hidden_size

    cdef object _state(self, object s, Py_ssize_t B, str name):
        import numpy as np
        shape = (self.n_layers, B, self.n_hidden)
        if s is None:
            return np.zeros(shape, self.dtype)
        if type(s) is not np.ndarray or s.dtype != self.dtype:
            s = self.convert("state " + name, s)
        if s.shape != shape:
            raise ValueError(f"state {name} must have shape (num_layers, batch, "
                             f"hidden_size) = {shape}, got {s.shape}")
        return s if s.flags.c_contiguous else np.ascontiguousarray(s)

    def step(self, x_t, state):
        """``(out (B, H), new state)`` for ``x_t (B, I)`` and ``state`` ((L, B, H), a pair
        of them for LSTM, or None: zeros)."""
        import numpy as np
        if type(x_t) is not np.ndarray or x_t.dtype != self.dtype:
            x_t = self.convert("x_t", x_t)
        if not x_t.flags.c_contiguous:
            x_t = np.ascontiguousarray(x_t)
        if x_t.ndim != 2 or x_t.shape[1] != self.n_input:
            raise ValueError(f"x_t must have shape (B, input_size={self.n_input}), got "
                             f"{tuple(x_t.shape)}")
        cdef Py_ssize_t B = x_t.shape[0]
        if self.n_states == 2:
            if state is None:
                h = c = None
            elif isinstance(state, (tuple, list)) and len(state) == 2:
                h, c = state
            else:
                raise TypeError(f"state must be None or a pair (h, c) for LSTM, got "
                                f"{type(state).__name__}")
            h = self._state(h, B, "h")
            c = self._state(c, B, "c")
            new_h = np.empty((self.n_layers, B, self.n_hidden), self.dtype)
            new_c = np.empty((self.n_layers, B, self.n_hidden), self.dtype)
        else:
            h = self._state(state, B, "h")
            c = new_c = None
            new_h = np.empty((self.n_layers, B, self.n_hidden), self.dtype)
        if self.dtype == np.float32:
            self._run[float](x_t, h, c, new_h, new_c, B)
        else:
            self._run[double](x_t, h, c, new_h, new_c, B)
        out = new_h[self.n_layers - 1]
        return out, ((new_h, new_c) if self.n_states == 2 else new_h)

    cdef _run(self, floating[:, ::1] x, floating[:, :, ::1] hh, floating[:, :, ::1] cc,
              floating[:, :, ::1] nh, floating[:, :, ::1] nc, Py_ssize_t B):
        """Every layer's step: x (B, I), states hh, cc -> nh, nc (L, B, H); cc, nc None
        unless LSTM. Layer k > 0 reads layer k-1's new h."""
        cdef Py_ssize_t layer, width
        cdef const floating[::1] w_ih, w_hh, b_ih, b_hh
        cdef const unsigned char[::1] pack
        cdef const floating *inp
        cdef floating *c_new
        cdef const floating *c_old
        cdef int status = FR_OK
        for layer in range(self.n_layers):
            w_ih, w_hh, b_ih, b_hh, pack = self.layers[layer]
            inp = &x[0, 0] if layer == 0 else &nh[layer - 1, 0, 0]
            width = self.n_input if layer == 0 else self.n_hidden
            c_old = &cc[layer, 0, 0] if cc is not None else NULL
            c_new = &nc[layer, 0, 0] if nc is not None else NULL
            with nogil:
                if floating is float:
                    if self.kind <= 1:
                        status = fr_rnn_forward_f32(
                            &nh[layer, 0, 0], &nh[layer, 0, 0], inp, &hh[layer, 0, 0],
                            &w_ih[0], &w_hh[0], ro(b_ih), ro(b_hh), NULL, self.kind == 1,
                            1, B, width, self.n_hidden, pk(pack))
                    elif self.kind == 2:
                        status = fr_lstm_forward_f32(
                            &nh[layer, 0, 0], &nh[layer, 0, 0], c_new, NULL, inp,
                            &hh[layer, 0, 0], c_old, &w_ih[0], &w_hh[0], ro(b_ih), ro(b_hh),
                            NULL, 1, B, width, self.n_hidden, pk(pack))
                    else:
                        status = fr_gru_forward_f32(
                            &nh[layer, 0, 0], &nh[layer, 0, 0], NULL, inp, &hh[layer, 0, 0],
                            &w_ih[0], &w_hh[0], ro(b_ih), ro(b_hh), NULL, self.kind == 3,
                            1, B, width, self.n_hidden, pk(pack))
                else:
                    if self.kind <= 1:
                        status = fr_rnn_forward_f64(
                            &nh[layer, 0, 0], &nh[layer, 0, 0], inp, &hh[layer, 0, 0],
                            &w_ih[0], &w_hh[0], ro(b_ih), ro(b_hh), NULL, self.kind == 1,
                            1, B, width, self.n_hidden, pk(pack))
                    elif self.kind == 2:
                        status = fr_lstm_forward_f64(
                            &nh[layer, 0, 0], &nh[layer, 0, 0], c_new, NULL, inp,
                            &hh[layer, 0, 0], c_old, &w_ih[0], &w_hh[0], ro(b_ih), ro(b_hh),
                            NULL, 1, B, width, self.n_hidden, pk(pack))
                    else:
                        status = fr_gru_forward_f64(
                            &nh[layer, 0, 0], &nh[layer, 0, 0], NULL, inp, &hh[layer, 0, 0],
                            &w_ih[0], &w_hh[0], ro(b_ih), ro(b_hh), NULL, self.kind == 3,
                            1, B, width, self.n_hidden, pk(pack))
            check(status)
