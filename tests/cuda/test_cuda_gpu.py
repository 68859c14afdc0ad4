"""Checks that need a real GPU (CuPy arrays, streams); skipped under the simulator and in CI.

Run on a GPU machine with ``NUMBA_ENABLE_CUDASIM=0 python -m pytest -q tests/cuda`` (the rest of
tests/cuda then also runs on CuPy arrays).
"""
from __future__ import annotations

import numpy as np
import pytest

import nbcnn
import nbcnn.ops as ops

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not nbcnn.gpu_status()[0], reason=f"needs a real CUDA GPU: {nbcnn.gpu_status()[1]}"),
]


@pytest.fixture
def cp():
    import cupy

    return cupy


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 4, 9, 8)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    gy = rng.standard_normal((3, 5, 5, 4)).astype(np.float32)
    return x, w, b, gy


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def test_ops_on_a_non_default_stream_match_cpu(cp):
    """Kernels must run on CuPy's current stream, ordered with CuPy's own GEMMs."""
    x, w, b, gy = _data()
    with nbcnn.using_device("cpu"):
        want = (ops.conv2d(x, w, b, 2, 1), *ops.conv2d_backward(gy, x, w, 2, 1))
    stream = cp.cuda.Stream(non_blocking=True)
    with nbcnn.using_device("cuda"), stream:
        xd, wd, bd, gyd = (cp.asarray(a) for a in (x, w, b, gy))
        ctx = {}
        got = (ops.conv2d(xd, wd, bd, 2, 1, ctx=ctx), *ops.conv2d_backward(gyd, xd, wd, 2, 1, ctx=ctx))
        got = [g.get(stream=stream) for g in got]
    stream.synchronize()
    for g, c in zip(got, want):
        assert _rel(g, c) < 2e-5


def test_results_are_cupy_arrays_of_the_input_dtype(cp):
    x, w, b, gy = _data(1)
    with nbcnn.using_device("cuda"):
        xd = cp.asarray(x, dtype=cp.float64)
        y = ops.max_pool2d(xd, 2)
        p = ops.pad2d(xd, 1)
    assert isinstance(y, cp.ndarray) and y.dtype == cp.float64
    assert isinstance(p, cp.ndarray) and p.shape == (3, 4, 11, 10)


def test_mixing_numpy_and_cupy_raises(cp):
    x, w, b, gy = _data(2)
    with pytest.raises(ValueError, match="mixed devices"):
        ops.conv2d(cp.asarray(x), w, b)


def test_non_contiguous_cupy_input(cp):
    x, w, b, gy = _data(3)
    xt = cp.asarray(x.transpose(0, 1, 3, 2).copy()).transpose(0, 1, 3, 2)  # same values, F-ordered planes
    assert not xt.flags.c_contiguous
    with nbcnn.using_device("cuda"):
        y = ops.conv2d(xt, cp.asarray(w), cp.asarray(b), 1, "same")
    with nbcnn.using_device("cpu"):
        want = ops.conv2d(x, w, b, 1, "same")
    assert _rel(y.get(), want) < 2e-5
