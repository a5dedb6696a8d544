"""Running exported ONNX models in the tests: onnxruntime (float32) and onnx's
ReferenceEvaluator (float64, which onnxruntime's RNN/LSTM/GRU kernels do not implement)."""
from __future__ import annotations

import numpy as np

# Largest max|a - b| / max|b| allowed against a runtime, per dtype (the bar).
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def relative_error(actual, expected) -> float:
    """``max|actual - expected| / max|expected|`` (0 when both are zero)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(np.max(np.abs(expected), initial=0.0))
    error = float(np.max(np.abs(actual - expected), initial=0.0))
    return error / scale if scale else error


def assert_close(actual, expected, dtype, name: str = "") -> None:
    error = relative_error(actual, expected)
    assert error <= RTOL[np.dtype(dtype)], f"{name}: relative error {error:.3g}"


def run_onnxruntime(model, feeds: dict) -> dict:
    """Outputs by name from an onnxruntime CPU session on the serialized ``model``."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def run_reference(model, feeds: dict) -> dict:
    """Outputs by name from ``onnx.reference.ReferenceEvaluator`` (NumPy, any dtype).

    It ignores ``sequence_lens``: feed it one sequence at a time, cut to its length."""
    from onnx.reference import ReferenceEvaluator
    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model).run(names, feeds)))
