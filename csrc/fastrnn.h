/* fastrnn.h - the C API: one forward/backward pair per cell, per dtype.
 *
 * Conventions (see DESIGN.md):
 *  - Buffers are time-major and C-contiguous: x (T, B, I), y (T, B, H).
 *  - Weights in PyTorch layout: w_ih (G*H, I), w_hh (G*H, H), b_ih, b_hh (G*H),
 *    G = 1 (RNN), 4 (LSTM: i, f, g, o), 3 (GRU: r, z, n).
 *  - Forward arguments: outputs, then what it saves for backward, then inputs,
 *    weights, sizes. Backward: the gradients it writes, then upstream gradients, then
 *    the saved forward values, weights, sizes.
 *  - Optional pointers may be NULL: initial states (zeros), biases (none), lengths
 *    (every sequence has length T), upstream gradients (zero), `saved` (inference:
 *    nothing is kept for backward), bias gradients (not computed).
 *  - h_mask (B, H), recurrent (variational) dropout: where the recurrent product reads
 *    h_{t-1} it reads h_{t-1} * h_mask, at every step (the state itself is unmasked).
 *    NULL: no dropout. Backward takes the same mask.
 *  - lengths (B), 1 <= lengths[b] <= T: at steps t >= lengths[b] row b keeps its
 *    state and writes a zero output (PyTorch packed-sequence semantics).
 *  - Backward overwrites dx and the initial-state gradients, and ACCUMULATES (+=)
 *    into the weight and bias gradients.
 *  - Every function returns 0, or FR_ERR_NOMEM when a workspace allocation failed
 *    (outputs are then unspecified). Functions keep no global mutable state and may
 *    run concurrently from several threads.
 *  - The float64 twin of each fr_*_f32 function has the same arguments over double.
 */
#ifndef FASTRNN_H
#define FASTRNN_H

#include <stddef.h>
#include <stdint.h>

#define FR_OK 0
#define FR_ERR_NOMEM 1

/* Reals saved for backward per (t, b, hidden unit) by a training forward. */
#define FR_RNN_SAVED_PER_UNIT 0  /* backward needs only y */
#define FR_LSTM_SAVED_PER_UNIT 6 /* gates i, f, g, o after activation; c_t; tanh(c_t) */
#define FR_GRU_SAVED_PER_UNIT 4  /* gates r, z, n after activation; W_hn h + b_hn, or r*h */
/* layer-normalised LSTM: gates (4), c, tanh(n), x_hat (4), h_hat (4), c_hat; per row the
 * rstd of x (4), h (4), c (1): T*B*(15H + 9) reals */
#define FR_LSTM_LN_SAVED_PER_UNIT 15
#define FR_LSTM_LN_SAVED_PER_ROW 9
/* layer-normalised GRU: gates (3), hn, x_hat (3), h_hat (3); per row the rstd of x (3),
 * h (3): T*B*(10H + 6) reals */
#define FR_GRU_LN_SAVED_PER_UNIT 10
#define FR_GRU_LN_SAVED_PER_ROW 6

/* Packs. Every per-step recurrent product runs on w_hh packed into the microkernel's panel
 * layout (gemm/panel.h). A kernel packs it itself on each call unless `pack` (the last
 * argument of every forward and backward) holds a pack made by fr_pack_* for the same cell,
 * direction of the time loop (backward = 0 for forward, 1 for backward), H, dtype and
 * vector width, at a 64-byte aligned address; anything else is ignored (never misread), so
 * NULL is always safe. A pack is only valid while w_hh is unchanged: its owner (the layer)
 * makes a new one when the weight changes. */
#define FR_CELL_RNN 0
#define FR_CELL_LSTM 1
#define FR_CELL_GRU 2              /* reset_after = 1 (PyTorch) */
#define FR_CELL_GRU_RESET_BEFORE 3 /* reset_after = 0 */
#define FR_PACK_MAGIC 0x4b505246u  /* "FRPK" */

typedef struct {
    uint32_t magic;
    int32_t vector_bytes; /* register width the panels were laid out for */
    int32_t real_bytes;   /* 4 or 8 */
    int32_t cell, backward, count;
    int64_t H;
    int64_t offset[2];    /* bytes from the pack's start to each panel */
    int32_t format;       /* FR_PACK_F32, or FR_PACK_BF16 / _BF16_DP (inference) */
    int64_t I;            /* bf16: input size of the w_ih panel */
    int64_t input_offset; /* bf16: bytes to the panel of w_ih^T (forward, gates interleaved) */
} fr_pack_header;

/* bfloat16 inference: a bf16 pack (fr_pack_bf16_*) holds w_hh and w_ih rounded to bf16
 * (nearest even) in bf16 panels (gemm/bf16.h): FR_PACK_BF16_DP for vdpbf16ps when made at
 * ISA level FR_ISA_AVX512_BF16, FR_PACK_BF16 otherwise (same results, made and used at any
 * level of the same vector width; a _DP pack below that level is ignored). A float32
 * forward handed one
 * runs both products on bf16 operands (x_t and h_{t-1} rounded as they stream) with float32
 * accumulation; biases, the cell state, activations and outputs stay float32. Such a pack
 * serves the forward time loop (backward = 0) of the cell and sizes it was made for; the
 * kernel ignores it otherwise, as any pack. */
#define FR_PACK_F32 0
#define FR_PACK_BF16 1
#define FR_PACK_BF16_DP 2

/* int8 inference: an int8 pack (fr_pack_int8_*) holds w_ih and w_hh quantized per row
 * (int8 values and float32 row scales, made by the caller: see gemm/int8.h) in int8 panels;
 * a float32 forward handed one quantizes x_t and h_{t-1} per row as they enter the
 * products, sums exactly in int32 and dequantizes before the cell math (float32).
 * FR_PACK_I8_VNNI (vpdpbusd) when made at level FR_ISA_AVX512_BF16, FR_PACK_I8_PAIR
 * (vpmaddwd) at level FR_ISA_AVX2, FR_PACK_I8 otherwise; same results. */
#define FR_PACK_I8 3
#define FR_PACK_I8_VNNI 4
#define FR_PACK_I8_PAIR 5

#define FR_DECLARE_KERNELS(real, sfx)                                                      \
    /* RNN: h_t = act(x_t w_ih^T + b_ih + h_{t-1} w_hh^T + b_hh), act = tanh or relu */    \
    int fr_rnn_forward_##sfx(real *y,             /* (T, B, H) */                          \
                             real *h_n,           /* (B, H) */                             \
                             const real *x,       /* (T, B, I) */                          \
                             const real *h0,      /* (B, H) or NULL */                     \
                             const real *w_ih,    /* (H, I) */                             \
                             const real *w_hh,    /* (H, H) */                             \
                             const real *b_ih,    /* (H) or NULL */                        \
                             const real *b_hh,    /* (H) or NULL */                        \
                             const int64_t *lengths, /* (B) or NULL */                     \
                             const real *h_mask, /* (B, H) or NULL */                      \
                             int relu, ptrdiff_t T, ptrdiff_t B, ptrdiff_t I, ptrdiff_t H, const void *pack); \
    int fr_rnn_backward_##sfx(real *dx,           /* (T, B, I) overwritten */              \
                              real *dh0,          /* (B, H) overwritten */                 \
                              real *dw_ih,        /* (H, I) accumulated */                 \
                              real *dw_hh,        /* (H, H) accumulated */                 \
                              real *db_ih,        /* (H) accumulated, or NULL */           \
                              real *db_hh,        /* (H) accumulated, or NULL */           \
                              const real *dy,     /* (T, B, H) or NULL */                  \
                              const real *dh_n,   /* (B, H) or NULL */                     \
                              const real *y,      /* (T, B, H) from forward */             \
                              const real *x,      /* (T, B, I) */                          \
                              const real *h0,     /* (B, H) or NULL */                     \
                              const real *w_ih,   /* (H, I) */                             \
                              const real *w_hh,   /* (H, H) */                             \
                              const int64_t *lengths,                                      \
                              const real *h_mask, /* (B, H) or NULL */                     \
                              int relu, ptrdiff_t T, ptrdiff_t B,                          \
                              ptrdiff_t I, ptrdiff_t H, const void *pack);                                   \
    /* LSTM: i, f, g, o = sigma, sigma, tanh, sigma of x w_ih^T + b_ih + h w_hh^T + b_hh;  \
     * c_t = f c_{t-1} + i g; h_t = o tanh(c_t). Peepholes w_p (ONNX's P): a_i, a_f +=     \
     * p_i c_{t-1}, p_f c_{t-1}; a_o += p_o c_t. Projection w_hr (PyTorch's proj_size):    \
     * h_t = (o tanh(c_t)) w_hr^T of P units; y, h0, h_n, dh0, dy are then (., P) and      \
     * w_hh, dw_hh (4H, P). */                                                             \
    int fr_lstm_forward_##sfx(real *y,            /* (T, B, H) */                          \
                              real *h_n,          /* (B, H) */                             \
                              real *c_n,          /* (B, H) */                             \
                              real *saved,        /* (6, T, B, H)... see below, or NULL */ \
                              const real *x,      /* (T, B, I) */                          \
                              const real *h0,     /* (B, H) or NULL */                     \
                              const real *c0,     /* (B, H) or NULL */                     \
                              const real *w_ih,   /* (4H, I) */                            \
                              const real *w_hh,   /* (4H, H) */                            \
                              const real *b_ih,   /* (4H) or NULL */                       \
                              const real *b_hh,   /* (4H) or NULL */                       \
                              const real *w_p,    /* (3H) peepholes p_i p_o p_f, or NULL */\
                              const real *w_hr,   /* (P, H) projection, or NULL (P = H) */ \
                              const int64_t *lengths,                                      \
                              const real *h_mask, /* (B, P) or NULL */                     \
                              ptrdiff_t T, ptrdiff_t B, ptrdiff_t I, ptrdiff_t H,          \
                              ptrdiff_t P, const void *pack);                              \
    int fr_lstm_backward_##sfx(real *dx,          /* (T, B, I) overwritten */              \
                               real *dh0,         /* (B, H) overwritten */                 \
                               real *dc0,         /* (B, H) overwritten */                 \
                               real *dw_ih,       /* (4H, I) accumulated */                \
                               real *dw_hh,       /* (4H, H) accumulated */                \
                               real *db_ih,       /* (4H) accumulated, or NULL */          \
                               real *db_hh,       /* (4H) accumulated, or NULL */          \
                               real *dw_p,        /* (3H) accumulated, or NULL */          \
                               real *dw_hr,       /* (P, H) accumulated, or NULL */        \
                               const real *dy,    /* (T, B, H) or NULL */                  \
                               const real *dh_n,  /* (B, H) or NULL */                     \
                               const real *dc_n,  /* (B, H) or NULL */                     \
                               const real *saved, /* from forward */                       \
                               const real *y,     /* (T, B, H) from forward */             \
                               const real *x,     /* (T, B, I) */                          \
                               const real *h0,    /* (B, H) or NULL */                     \
                               const real *c0,    /* (B, H) or NULL */                     \
                               const real *w_ih,  /* (4H, I) */                            \
                               const real *w_hh,  /* (4H, H) */                            \
                               const real *w_p,   /* (3H) or NULL (as forward) */          \
                               const real *w_hr,  /* (P, H) or NULL (as forward) */        \
                               const int64_t *lengths,                                     \
                               const real *h_mask, /* (B, P) or NULL */                    \
                               ptrdiff_t T, ptrdiff_t B, ptrdiff_t I, ptrdiff_t H,         \
                               ptrdiff_t P, const void *pack);                             \
    /* Layer-normalised LSTM (lstm_ln.c): a = g_ih LN(x w_ih^T) + g_hh LN(h w_hh^T) + b_ih +\
     * b_hh per gate block; h_t = o tanh(g_c LN(c_t) + b_c); ln (10H) = [g_ih g_hh g_c b_c].\
     * Arguments as fr_lstm_*, the packs aside; dln (10H) accumulated. */                  \
    int fr_lstm_ln_forward_##sfx(real *y, real *h_n, real *c_n, real *saved, const real *x,\
                                 const real *h0, const real *c0, const real *w_ih,         \
                                 const real *w_hh, const real *b_ih, const real *b_hh,     \
                                 const real *ln, const int64_t *lengths,                   \
                                 const real *h_mask, ptrdiff_t T, ptrdiff_t B,             \
                                 ptrdiff_t I, ptrdiff_t H);                                \
    int fr_lstm_ln_backward_##sfx(real *dx, real *dh0, real *dc0, real *dw_ih, real *dw_hh,\
                                  real *db_ih, real *db_hh, real *dln, const real *dy,     \
                                  const real *dh_n, const real *dc_n, const real *saved,   \
                                  const real *y, const real *x, const real *h0,            \
                                  const real *c0, const real *w_ih, const real *w_hh,      \
                                  const real *ln, const int64_t *lengths,                  \
                                  const real *h_mask, ptrdiff_t T, ptrdiff_t B,            \
                                  ptrdiff_t I, ptrdiff_t H);                               \
    /* GRU: r, z = sigma(x W^T + b_i + h U^T + b_h); reset_after (PyTorch, cuDNN):         \
     * n = tanh(x W_n^T + b_in + r (h U_n^T + b_hn)); otherwise (Keras reset_after=False, \
     * ONNX linear_before_reset=0): n = tanh(x W_n^T + b_in + (r h) U_n^T + b_hn);        \
     * h_t = (1 - z) n + z h_{t-1} */                                                      \
    int fr_gru_forward_##sfx(real *y,             /* (T, B, H) */                          \
                             real *h_n,           /* (B, H) */                             \
                             real *saved,         /* (T*B*4H) or NULL */                   \
                             const real *x,       /* (T, B, I) */                          \
                             const real *h0,      /* (B, H) or NULL */                     \
                             const real *w_ih,    /* (3H, I) */                            \
                             const real *w_hh,    /* (3H, H) */                            \
                             const real *b_ih,    /* (3H) or NULL */                       \
                             const real *b_hh,    /* (3H) or NULL */                       \
                             const int64_t *lengths,                                       \
                             const real *h_mask, /* (B, H) or NULL */                      \
                             int reset_after, ptrdiff_t T,                                 \
                             ptrdiff_t B, ptrdiff_t I, ptrdiff_t H, const void *pack);                       \
    int fr_gru_backward_##sfx(real *dx,           /* (T, B, I) overwritten */              \
                              real *dh0,          /* (B, H) overwritten */                 \
                              real *dw_ih,        /* (3H, I) accumulated */                \
                              real *dw_hh,        /* (3H, H) accumulated */                \
                              real *db_ih,        /* (3H) accumulated, or NULL */          \
                              real *db_hh,        /* (3H) accumulated, or NULL */          \
                              const real *dy,     /* (T, B, H) or NULL */                  \
                              const real *dh_n,   /* (B, H) or NULL */                     \
                              const real *saved,  /* from forward */                       \
                              const real *y,      /* (T, B, H) from forward */             \
                              const real *x,      /* (T, B, I) */                          \
                              const real *h0,     /* (B, H) or NULL */                     \
                              const real *w_ih,   /* (3H, I) */                            \
                              const real *w_hh,   /* (3H, H) */                            \
                              const int64_t *lengths,                                      \
                              const real *h_mask, /* (B, H) or NULL */                     \
                              int reset_after, ptrdiff_t T,                                \
                              ptrdiff_t B, ptrdiff_t I, ptrdiff_t H, const void *pack);                                  \
    /* Layer-normalised GRU (gru_ln.c; reset after): [xr xz xn] = g_ih LN(x w_ih^T) + b_ih,\
     * [hr hz hn] = g_hh LN(h w_hh^T) + b_hh, then the GRU; ln (6H) = [g_ih g_hh]. */      \
    int fr_gru_ln_forward_##sfx(real *y, real *h_n, real *saved, const real *x,            \
                                const real *h0, const real *w_ih, const real *w_hh,        \
                                const real *b_ih, const real *b_hh, const real *ln,        \
                                const int64_t *lengths, const real *h_mask, ptrdiff_t T,   \
                                ptrdiff_t B, ptrdiff_t I, ptrdiff_t H);                    \
    int fr_gru_ln_backward_##sfx(real *dx, real *dh0, real *dw_ih, real *dw_hh,            \
                                 real *db_ih, real *db_hh, real *dln, const real *dy,      \
                                 const real *dh_n, const real *saved, const real *y,       \
                                 const real *x, const real *h0, const real *w_ih,          \
                                 const real *w_hh, const real *ln,                         \
                                 const int64_t *lengths, const real *h_mask, ptrdiff_t T,  \
                                 ptrdiff_t B, ptrdiff_t I, ptrdiff_t H);                   \
    /* Packed recurrent weights (see "Packs" above): bytes of the pack of w_hh for         \
     * (cell, backward, H), and the pack itself written to dst (64-byte aligned, that many  \
     * bytes). Returns 0, or FR_ERR_NOMEM when dst is too small or misaligned. */            \
    size_t fr_pack_bytes_##sfx(int cell, int backward, ptrdiff_t H);                       \
    int fr_pack_##sfx(void *dst, size_t bytes, const real *w_hh, /* (G*H, H) */            \
                      int cell, int backward, ptrdiff_t H);                                 \
    /* The core's peak: `iterations` rounds of register-only multiply-adds (peak.c);      \
     * returns the FLOPs done, writes a checksum to *sink. Time it from the caller. */      \
    int64_t fr_fma_peak_##sfx(int64_t iterations, real *sink);

/* Saved layouts (each block contiguous, time-major):
 *   LSTM: gates (T, B, 4H) [i f g o after activation], c (T, B, H), tanh(c) (T, B, H)
 *   GRU:  gates (T, B, 3H) [r z n after activation], extra (T, B, H) holding
 *         W_hn h_{t-1} + b_hn (reset_after) or r * h_{t-1} (reset_after = 0) */

/* Every kernel is built per instruction set from the same source (see real.h):
 * _portable (baseline x86-64 or any other CPU), and on x86-64 also _avx2 (AVX2 + FMA)
 * and _avx512 (AVX-512 F/BW/DQ/VL). The public names below pick one at each call from
 * fr_isa_level, which fr_detect_isa() sets to the best the CPU supports and
 * fr_set_isa() may lower (tests run every level). */
#define FR_ISA_PORTABLE 0
#define FR_ISA_AVX2 1
#define FR_ISA_AVX512 2
#define FR_ISA_AVX512_BF16 3 /* the _avx512 build with AVX512-BF16 and AVX512-VNNI dot
                              * products: bf16 on vdpbf16ps, int8 on vpdpbusd */

extern int fr_isa_level;
int fr_detect_isa(void);     /* best level this CPU (and this build) supports */
int fr_set_isa(int level);   /* clamps to fr_detect_isa(); returns the level set */

FR_DECLARE_KERNELS(float, f32_portable)
FR_DECLARE_KERNELS(double, f64_portable)
#ifdef FR_X86_VARIANTS
FR_DECLARE_KERNELS(float, f32_avx2)
FR_DECLARE_KERNELS(double, f64_avx2)
FR_DECLARE_KERNELS(float, f32_avx512)
FR_DECLARE_KERNELS(double, f64_avx512)
#define FR_DISPATCH(kernel)                                                                \
    (fr_isa_level >= FR_ISA_AVX512 ? kernel##_avx512                                       \
     : fr_isa_level >= FR_ISA_AVX2 ? kernel##_avx2                                         \
                                   : kernel##_portable)
#else
#define FR_DISPATCH(kernel) kernel##_portable
#endif

#define fr_rnn_forward_f32 FR_DISPATCH(fr_rnn_forward_f32)
#define fr_rnn_backward_f32 FR_DISPATCH(fr_rnn_backward_f32)
#define fr_lstm_forward_f32 FR_DISPATCH(fr_lstm_forward_f32)
#define fr_lstm_backward_f32 FR_DISPATCH(fr_lstm_backward_f32)
#define fr_lstm_ln_forward_f32 FR_DISPATCH(fr_lstm_ln_forward_f32)
#define fr_lstm_ln_backward_f32 FR_DISPATCH(fr_lstm_ln_backward_f32)
#define fr_lstm_ln_forward_f64 FR_DISPATCH(fr_lstm_ln_forward_f64)
#define fr_lstm_ln_backward_f64 FR_DISPATCH(fr_lstm_ln_backward_f64)
#define fr_gru_ln_forward_f32 FR_DISPATCH(fr_gru_ln_forward_f32)
#define fr_gru_ln_backward_f32 FR_DISPATCH(fr_gru_ln_backward_f32)
#define fr_gru_ln_forward_f64 FR_DISPATCH(fr_gru_ln_forward_f64)
#define fr_gru_ln_backward_f64 FR_DISPATCH(fr_gru_ln_backward_f64)
#define fr_gru_forward_f32 FR_DISPATCH(fr_gru_forward_f32)
#define fr_gru_backward_f32 FR_DISPATCH(fr_gru_backward_f32)
#define fr_rnn_forward_f64 FR_DISPATCH(fr_rnn_forward_f64)
#define fr_rnn_backward_f64 FR_DISPATCH(fr_rnn_backward_f64)
#define fr_lstm_forward_f64 FR_DISPATCH(fr_lstm_forward_f64)
#define fr_lstm_backward_f64 FR_DISPATCH(fr_lstm_backward_f64)
#define fr_gru_forward_f64 FR_DISPATCH(fr_gru_forward_f64)
#define fr_gru_backward_f64 FR_DISPATCH(fr_gru_backward_f64)
#define fr_pack_bytes_f32 FR_DISPATCH(fr_pack_bytes_f32)
#define fr_pack_bytes_f64 FR_DISPATCH(fr_pack_bytes_f64)
#define fr_pack_f32 FR_DISPATCH(fr_pack_f32)
#define fr_pack_f64 FR_DISPATCH(fr_pack_f64)
#define fr_fma_peak_f32 FR_DISPATCH(fr_fma_peak_f32)
#define fr_fma_peak_f64 FR_DISPATCH(fr_fma_peak_f64)

/* The reduced-precision peaks (peak_lowp.c, built once): `iterations` rounds of
 * register-only dot products of one instruction; returns the operations done (2 per pair),
 * -1 when this CPU (or build) lacks the instruction, -2 for an unknown kind. */
#define FR_LOWP_PEAK_BF16_AVX512 0      /* vdpbf16ps zmm */
#define FR_LOWP_PEAK_INT8_AVX512_VNNI 1 /* vpdpbusd zmm */
#define FR_LOWP_PEAK_INT8_AVX_VNNI 2    /* vpdpbusd ymm (VEX, AVX-VNNI) */
#define FR_LOWP_PEAK_INT8_AVX2 3        /* vpmaddubsw + vpmaddwd + vpaddd */
#define FR_LOWP_PEAK_KINDS 4
int64_t fr_lowp_peak(int kind, int64_t iterations, int32_t *sink);

/* The bf16 pack (float32 kernels only): bytes for (cell, I, H), and the pack of w_ih
 * (G*H, I) and w_hh (G*H, H) written to dst (64-byte aligned). Returns 0 or FR_ERR_NOMEM. */
#define FR_DECLARE_BF16_PACK(sfx)                                                          \
    size_t fr_pack_bf16_bytes_##sfx(int cell, ptrdiff_t I, ptrdiff_t H);                   \
    int fr_pack_bf16_##sfx(void *dst, size_t bytes, const float *w_ih, const float *w_hh,  \
                           int cell, ptrdiff_t I, ptrdiff_t H);                            \
    /* the int8 pack: w_ih (G*H, I) and w_hh (G*H, H) as int8 with row scales (G*H) */      \
    size_t fr_pack_int8_bytes_##sfx(int cell, ptrdiff_t I, ptrdiff_t H);                   \
    int fr_pack_int8_##sfx(void *dst, size_t bytes, const int8_t *w_ih, const float *s_ih, \
                           const int8_t *w_hh, const float *s_hh, int cell, ptrdiff_t I,   \
                           ptrdiff_t H);                                                   \
    /* a test hook: C (rows, N) = A (rows, K) . panel `index` of a bf16 or int8 pack */    \
    int fr_pack_lowp_product_##sfx(float *C, const void *pack, int index, const float *A,  \
                                   ptrdiff_t rows, ptrdiff_t K, ptrdiff_t N);
FR_DECLARE_BF16_PACK(f32_portable)
#ifdef FR_X86_VARIANTS
FR_DECLARE_BF16_PACK(f32_avx2)
FR_DECLARE_BF16_PACK(f32_avx512)
#endif
#define fr_pack_bf16_bytes_f32 FR_DISPATCH(fr_pack_bf16_bytes_f32)
#define fr_pack_bf16_f32 FR_DISPATCH(fr_pack_bf16_f32)
#define fr_pack_int8_bytes_f32 FR_DISPATCH(fr_pack_int8_bytes_f32)
#define fr_pack_int8_f32 FR_DISPATCH(fr_pack_int8_f32)
#define fr_pack_lowp_product_f32 FR_DISPATCH(fr_pack_lowp_product_f32)

#endif
