"""The merge ops (element-wise add/sub/mul/add+relu, scale, concatenation) through the CUDA
kernels, against NumPy; outputs allocated poisoned (NaN) so an unwritten element shows up;
and a graph model with fan-out and merges on the simulated GPU matches the CPU."""
from __future__ import annotations

import numpy as np
import pytest

import nbcnn
import nbcnn.ops as ops
import nbcnn.ops.merge as merge_ops
from nbcnn import layers as L
from nbcnn.kernels.cuda import runtime

from test_cuda_ops import Launches, _poisoned, on_cuda


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    real = merge_ops.array_module
    monkeypatch.setattr(merge_ops, "array_module", lambda a: _poisoned(real(a)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 17)])
def test_elementwise_ops(shape, dtype):
    r = np.random.default_rng(0)
    a = r.standard_normal(shape).astype(dtype)
    b = r.standard_normal(shape).astype(dtype)
    want = {"add": a + b, "sub": a - b, "mul": a * b, "add_relu": np.maximum(a + b, 0)}
    with Launches() as n:
        for op, w in want.items():
            np.testing.assert_array_equal(on_cuda(ops.ew, a, b, op), w.astype(dtype))
        np.testing.assert_allclose(on_cuda(ops.ew_scale, a, -0.5), -0.5 * a, rtol=1e-6)
    assert n.delta == {"_binary": 4, "_scale": 1}


@pytest.mark.parametrize("axis,shapes", [
    (1, [(2, 3, 4, 5), (2, 1, 4, 5), (2, 2, 4, 5)]),
    (-1, [(1, 2, 3, 1), (1, 2, 3, 4)]),
    (2, [(3, 2, 1, 2), (3, 2, 5, 2)]),
    (1, [(4, 3), (4, 6)]),
])
def test_concat_and_backward(axis, shapes):
    r = np.random.default_rng(1)
    xs = [r.standard_normal(s).astype(np.float32) for s in shapes]
    got = on_cuda(lambda *a: ops.concat(list(a), axis), *xs)
    want = np.concatenate(xs, axis=axis)
    np.testing.assert_array_equal(got, want)
    sizes = [s[axis] for s in shapes]
    parts = on_cuda(lambda g: tuple(ops.concat_backward(g, sizes, axis)), want)
    for p, x in zip(parts, xs):
        np.testing.assert_array_equal(p, x)


def test_graph_model_on_simulated_cuda_matches_cpu():
    def make(device):
        x = nbcnn.Input((2, 6, 6))
        h = L.Conv2D(3, 3, padding=1, activation="relu")(x)
        s = L.Add()([h, L.Conv2D(3, 3, padding=1)(h)])
        c = L.Concatenate(axis=1)([s, L.MaxPool2D(1)(h)])
        f = L.Flatten()(L.MaxPool2D(2)(c))
        d = L.Dense(4, activation="tanh")(f)
        out = L.Dense(3)(L.Subtract()([L.Multiply()([d, d]), L.Average()([d, d])]))
        m = nbcnn.Model(x, out, device=device, seed=3)
        m.compile(optimizer="sgd")
        return m

    r = np.random.default_rng(0)
    x = r.random((3, 2, 6, 6), dtype=np.float32)
    y = r.integers(0, 3, 3)
    gpu, cpu = make("cuda"), make("cpu")
    assert gpu.device.simulated
    # gradients, not optimiser steps: this file runs no optimiser kernel (the kernel tour of
    # test_cuda_ops counts the kernel modules imported so far)
    with Launches() as n:
        lg, gg = gpu.gradients(x, y)
    assert n.delta.get("_binary", 0) > 0 and n.delta.get("_put_cols", 0) > 0 and n.delta.get("_take_cols", 0) > 0
    lc, gc = cpu.gradients(x, y)
    np.testing.assert_allclose(lg, lc, rtol=1e-5)
    for a, b in zip(gg, gc):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gpu.predict(x), cpu.predict(x), atol=1e-6)
