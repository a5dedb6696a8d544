"""Benchmark report: fastrnn against its NumPy reference, PyTorch, ONNX Runtime and JAX.

``python -m fastrnn.bench`` (or ``fastrnn bench``) times a grid of cases -- cell x shape x
mode (``forward`` = inference, ``train`` = forward + backward) x thread count -- in ONE
process, prints a markdown table and writes a PNG chart (and, with ``--json``, the raw
samples) under ``--output``.

How it measures
---------------
* **Entries.** ``fastrnn`` (:mod:`fastrnn.ops`), ``reference`` (:mod:`fastrnn.reference`),
  the peers ``torch``, ``onnxruntime`` (forward only) and ``jax`` when importable, and
  ``sgemm``: one numpy float32 matmul ``(T*B, I+H) @ (I+H, G*H)`` with exactly the FLOPs of
  the case (three of them for ``train``), the ceiling fastrnn's GFLOP/s is compared with.
  Every peer is written the way a competent user of it would write it (PyTorch's fused
  ``nn.LSTM``, ONNX Runtime's LSTM/GRU/RNN operators, JAX ``lax.scan`` under ``jit`` with
  the input projection hoisted out of the loop).
* **Interleaving.** For each case, every entry is warmed up once (this call also collects
  its outputs, which are checked against fastrnn's), calibrated so that one sample lasts
  about ``--sample-ms``, and then sampled round-robin -- entry A, B, C, A, B, C, ... with the
  starting entry rotating -- so drift of the machine (turbo, other load) hits all entries
  alike. The table shows medians. An entry whose single call exceeds ``max_call_s`` gets
  one sample only (that is the NumPy reference on big shapes).
* **Ratio** = fastest peer's median / fastrnn's median (> 1: fastrnn is faster). Only torch,
  onnxruntime and jax count as peers (not the reference, not sgemm).
* **The limit.** Before the grid, one core's float32 multiply-add peak is measured
  (:mod:`fastrnn.bench.peak`: register-only FMA chains in C, under the ISA level the
  kernels use, on the thread CPU clock); **% peak** is each case's GFLOP/s over
  ``threads`` x that figure, beside **% sgemm**.
* **FLOPs** of one forward pass: ``2*B*T*(I+H)*G*H`` (G = 1 RNN, 4 LSTM, 3 GRU); train is
  counted as 3x that.
* **Threads.** Per thread count ``n``: ``fastrnn.set_num_threads(n)`` (when it exists),
  threadpoolctl limits every loaded BLAS/OpenMP pool (numpy's and SciPy's OpenBLAS, torch's
  OpenMP) to ``n``, ``torch.set_num_threads(n)``, and ONNX Runtime sessions get
  ``intra_op_num_threads=n, inter_op_num_threads=1``. JAX/XLA reads its thread setup once,
  at import, so JAX runs in a worker process per thread count: for n < CPUs pinned to n
  CPUs (``sched_setaffinity``, from which XLA sizes its pool; n = 1 also with
  ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``, which jax 0.10 alone no longer
  honours), for n = CPUs as is. The worker
  times its own calls; the main process waits meanwhile, so the interleaving is kept and
  the IPC is not timed. Every sample also records process CPU time / wall time; an entry
  that kept more CPUs busy than asked for is reported (``cpu_per_wall`` in the JSON).
* **Reduced precision** (``--precision``, default ``float32,bf16,int8``): beside the
  float32 tables, inference tables per thread count of fastrnn bf16 (``precision=
  "bfloat16"`` on a bf16 pack made once) against PyTorch's bf16 autocast of the same
  ``nn.LSTM`` (autocast casts its float32 weights as a user's call does),
  and of fastrnn int8 (an int8 pack: per-row weight scales, activations quantized on the
  fly) against ONNX Runtime's ``quantize_dynamic`` of the same graph
  (``DynamicQuantizeLSTM``; ORT has no int8 GRU or RNN, so there its float32 operator
  runs, marked †). Same problems, same interleaved sampling; each table shows fastrnn's
  float32 time of the same run, every entry's error against fastrnn's float32 output
  (max |y - y32| / max |y32|), and **% peak** against the instruction fastrnn's products
  run on: ``vdpbf16ps`` / ``vpdpbusd`` (``csrc/peak_lowp.c``, measured where the CPU has
  them, beside AVX-VNNI's and AVX2's int8 sequences; int8 at level avx2 runs ``vpmaddwd``
  and is held to AVX2's), or the float32 FMA peak where the ISA level runs reduced
  precision on the float32 microkernel.
* **Memory** (``train`` cases, fastrnn and torch, 1 thread): each measurement runs in a
  fresh process. It builds the inputs and weights, warms the library up on a tiny problem,
  resets the kernel's peak-RSS counter (``/proc/self/clear_refs`` <- 5, so ``VmHWM`` =
  current RSS), runs one forward+backward and reports ``VmHWM - VmRSS_before``: the peak
  extra resident memory of outputs, saved activations, gradients and workspace, C mallocs
  included (tracemalloc would not see them). Without ``clear_refs`` it falls back to the
  ``ru_maxrss`` delta, a lower bound. Pages that the allocator reuses from before the
  baseline are not counted, in either library.
"""
from .cli import add_arguments, main, run
from .grid import (CELLS, ENTRIES, LOWP_PEERS, MODES, PEERS, PRECISIONS, SHAPES, Case, Problem,
                   case_entries, make_cases, make_problem)
from .measure import Settings, measure_case, run_grid, sgemm_peak
from .memory import measure_memory, run_memory
from .peak import LOWP_INSTRUCTIONS, fma_peak_gflops, lowp_peak_gops, lowp_peaks, matching_peak
from .peers import PEER_FACTORIES, FastrnnPeer, Peer, Runner, available_entries
from .report import format_report, summarize, write_chart

__all__ = ["Case", "Settings", "SHAPES", "CELLS", "PEERS", "make_cases", "run_grid",
           "format_report", "add_arguments", "run", "main", "fma_peak_gflops", "PRECISIONS",
           "lowp_peak_gops", "matching_peak"]
