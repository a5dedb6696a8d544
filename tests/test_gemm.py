"""fastrnn.ops.gemm: the layers' matrix product on the kernels' BLAS."""
from __future__ import annotations

import numpy as np
import pytest

from fastrnn.ops import gemm


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (5, 7, 3), (33, 65, 17)])
def test_matches_numpy(dtype, tol, trans_a, trans_b, M, K, N):
    rng = np.random.default_rng(M + K + N)
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    got = gemm(a.T.copy() if trans_a else a, b.T.copy() if trans_b else b,
               trans_a=trans_a, trans_b=trans_b)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, a @ b, rtol=tol, atol=tol * K)


# C is computed in blocks of max(128, M / 4 rounded up to 64) rows (csrc/blas.h): around the
# smallest block, where blocks grow past it (M = 512 + 1), and a tall C of taller blocks.
@pytest.mark.parametrize("M", [127, 128, 129, 513, 1100])
def test_blocks_of_rows_any_thread_count_same_bits(M, restore_threads):
    rng = np.random.default_rng(M)
    a = rng.standard_normal((M, 40)).astype(np.float32)
    b = rng.standard_normal((40, 9)).astype(np.float32)
    restore_threads(1)
    want = gemm(a, b)
    np.testing.assert_allclose(want, a @ b, rtol=1e-5, atol=1e-4)
    for threads in (2, 3):
        restore_threads(threads)
        np.testing.assert_array_equal(gemm(a, b), want, err_msg=f"{threads} threads")


def test_out_and_accumulate():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 6)), rng.standard_normal((6, 5))
    out = np.ones((4, 5))
    assert gemm(a, b, out=out, accumulate=True) is out
    np.testing.assert_allclose(out, a @ b + 1)
    gemm(a, b, out=out)
    np.testing.assert_allclose(out, a @ b)


def test_strided_inputs_are_copied():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 4))[:, ::2]           # not contiguous
    b = np.asfortranarray(rng.standard_normal((2, 3)))
    np.testing.assert_allclose(gemm(a, b), a @ b)


@pytest.mark.parametrize("a,b,kwargs,error,fragment", [
    (np.zeros((2, 3)), np.zeros((4, 5)), {}, ValueError, "inner sizes differ"),
    (np.zeros(3), np.zeros((3, 2)), {}, ValueError, "2-D"),
    (np.zeros((2, 3)), np.zeros((3, 2), np.float32), {}, TypeError, "float64 and float32"),
    (np.zeros((2, 3), int), np.zeros((3, 2), int), {}, TypeError, "int"),
    (np.zeros((2, 3)), np.zeros((3, 2)), {"out": np.zeros((3, 3))}, ValueError, "shape (2, 2)"),
])
def test_bad_arguments(a, b, kwargs, error, fragment):
    with pytest.raises(error, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        gemm(a, b, **kwargs)
