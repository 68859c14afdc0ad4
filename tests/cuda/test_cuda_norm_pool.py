"""Batch norm, LRN, ceil-mode / count_include_pad pooling and global pooling through the CUDA
kernels (the simulator here, a GPU with NUMBA_ENABLE_CUDASIM=0) against the CPU kernels, which
tests/test_norm_ops.py and tests/test_pool_modes.py check against float64 references."""
from __future__ import annotations

import numpy as np
import pytest

import nbcnn.ops as ops
from nbcnn.kernels.cuda import norm as knorm
from nbcnn.kernels.cuda import pool as kpool
from nbcnn.kernels.cuda import runtime

from test_cuda_ops import Launches, _poisoned, assert_close, on_cpu, on_cuda


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    cache = {}
    real = runtime.xp_of

    def xp_of(a):
        xp = real(a)
        if xp.__name__ not in cache:
            cache[xp.__name__] = _poisoned(xp)
        return cache[xp.__name__]

    for mod in (knorm, kpool):
        monkeypatch.setattr(mod, "xp_of", xp_of)


def _rand(shape, seed, dtype, scale=1.0, shift=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + shift).astype(dtype)


@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (1, 1, 4, 5), (6, 3), (2, 2, 1, 1)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_train_eval_and_backward(shape, dtype):
    C = shape[1]
    x = _rand(shape, 0, dtype, 2.0, 3.0)
    g, b = _rand(C, 1, dtype), _rand(C, 2, dtype)
    rm0 = _rand(C, 3, dtype)
    rv0 = (np.random.default_rng(4).random(C) + 0.5).astype(dtype)
    gy = _rand(shape, 5, dtype)

    def run(x, g, b, rm, rv, gy):
        ctx = {}
        y = ops.batch_norm(x, g, b, rm, rv, training=True, momentum=0.2, eps=1e-3, ctx=ctx)
        grads = ops.batch_norm_backward(gy, x, g, eps=1e-3, ctx=ctx)
        grads2 = ops.batch_norm_backward(gy, x, g, eps=1e-3)     # statistics recomputed
        ye = ops.batch_norm(x, g, b, rm, rv, training=False, eps=1e-3)
        frozen = ops.batch_norm_backward(gy, x, g, eps=1e-3, training=False, running_mean=rm, running_var=rv)
        return (y, *grads, *grads2, ye, *frozen, rm, rv)

    with Launches() as la:
        got = on_cuda(run, x, g, b, rm0.copy(), rv0.copy(), gy)
    assert la.delta.get("_bn_partial", 0) >= 2 and la.delta.get("_bn_grad_apply", 0) == 3
    want = on_cpu(run, x, g, b, rm0.copy(), rv0.copy(), gy)
    tol = {np.float32: 1e-4, np.float64: 1e-11}[dtype]
    for i, (a, w) in enumerate(zip(got, want)):
        a = np.asarray(a, np.float64)
        scale = max(np.abs(w).max(), 1e-30)
        assert a.dtype == np.float64 and np.abs(a - w).max() / scale <= tol, (i, np.abs(a - w).max() / scale)


@pytest.mark.parametrize("shape,size", [((2, 7, 5, 4), 5), ((1, 1, 3, 3), 3), ((1, 4, 3, 5), 2)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lrn_forward_backward(shape, size, dtype):
    x = _rand(shape, 0, dtype, 3.0)
    gy = _rand(shape, 1, dtype)
    kw = dict(alpha=0.3, beta=0.75, k=2.0)

    def run(x, gy):
        ctx = {}
        y = ops.lrn(x, size, **kw, ctx=ctx)
        return y, ops.lrn_backward(gy, x, size, **kw, ctx=ctx), ops.lrn_backward(gy, x, size, **kw)

    with Launches() as la:
        got = on_cuda(run, x, gy)
    assert la.delta.get("_lrn_fwd") == 2 and la.delta.get("_lrn_bwd") == 2
    for a, w, what in zip(got, on_cpu(run, x, gy), ("y", "gx", "gx no ctx")):
        assert_close(a, w, dtype, f"lrn {what}")


@pytest.mark.parametrize("shape,size,stride,pad", [((2, 3, 7, 8), 3, 2, 1), ((1, 1, 7, 7), 2, 2, 1),
                                                   ((1, 2, 10, 9), 3, 2, 0)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pool_modes(shape, size, stride, pad, dtype):
    x = _rand(shape, 0, dtype)
    for ceil in (False, True):
        yshape = ops.pool2d_output_shape(shape, size, stride, pad, ceil_mode=ceil)
        gy = _rand(yshape, 1, dtype)
        for cip in (True, False):
            kw = dict(ceil_mode=ceil, count_include_pad=cip)
            for fn, args in ((ops.avg_pool2d, (x,)), (ops.avg_pool2d_backward, (gy, x))):
                assert_close(on_cuda(fn, *args, size, stride, pad, **kw), on_cpu(fn, *args, size, stride, pad, **kw),
                             dtype, f"{fn.__name__} {kw}")
        np.testing.assert_array_equal(on_cuda(ops.max_pool2d, x, size, stride, pad, ceil_mode=ceil),
                                      on_cpu(ops.max_pool2d, x, size, stride, pad, ceil_mode=ceil))
        np.testing.assert_array_equal(on_cuda(ops.max_pool2d_backward, gy, x, size, stride, pad, ceil_mode=ceil),
                                      on_cpu(ops.max_pool2d_backward, gy, x, size, stride, pad, ceil_mode=ceil))


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 1, 1), (3, 2, 4, 1)], ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_pools(shape, dtype):
    x = _rand(shape, 0, dtype)
    x.reshape(-1)[::7] = 2.5          # ties: the first maximum wins
    gy = _rand(shape[:2], 1, dtype)

    def run(x, gy):
        ctx = {}
        m = ops.global_max_pool2d(x, ctx=ctx)
        return (ops.global_avg_pool2d(x), ops.global_avg_pool2d_backward(gy, x), m,
                ops.global_max_pool2d_backward(gy, x, ctx=ctx), ops.global_max_pool2d_backward(gy, x))

    with Launches() as la:
        got = on_cuda(run, x, gy)
    assert la.delta.get("_gmax_fwd") == 2 and la.delta.get("_gavg_fwd") == 1
    want = on_cpu(run, x, gy)
    assert_close(got[0], want[0], dtype, "global avg")
    assert_close(got[1], want[1], dtype, "global avg gx")
    for a, w in zip(got[2:], want[2:]):
        np.testing.assert_array_equal(a, w)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_match_cpu(dtype):
    from nbcnn.kernels.act_codes import CODES
    x = np.concatenate([_rand(40, 0, dtype, 3.0), np.array([-3, 3, 0, 6, -6], dtype)]).reshape(5, 9)
    gy = _rand(x.shape, 1, dtype)
    b = _rand(9, 2, dtype)
    for name in CODES:
        def run(x, gy, b):
            gb = np.empty(9, dtype) if isinstance(x, np.ndarray) else __import__("cupy").empty(9, dtype)
            y = ops.activation(x, name)
            yb = ops.activation(x, name, bias=b)
            g = ops.activation_backward(gy, x, name, y=y, bias_grad=gb)
            return y, yb, g, gb

        with Launches() as la:
            got = on_cuda(run, x, gy, b)
        assert la.delta.get("_act_bwd") == 1 and la.delta.get("_col_sum") == 1
        # float32: the CPU kernels' rational tanh differs from the GPU's tanhf by ~1e-7
        tol = 1e-5 if dtype == np.float32 else 1e-12
        for a, w in zip(got, on_cpu(run, x, gy, b)):
            assert np.abs(np.asarray(a, np.float64) - w).max() <= tol * max(1.0, np.abs(w).max()), name


def test_bn_lrn_gap_model_on_simulated_cuda_matches_cpu():
    import nbcnn
    from nbcnn import layers as L

    def mk(device):
        return nbcnn.Sequential([
            L.Conv2D(3, 3, padding=1, input_shape=(2, 6, 6)), L.BatchNormalization(), L.Activation("gelu"),
            L.MaxPool2D(3, 2, 1, ceil_mode=True), L.LocalResponseNormalization(3, alpha=0.1),
            L.BatchNormalization(trainable=False), L.GlobalAveragePooling2D(), L.Dense(3, activation="hard_swish")],
            device=device, seed=1)

    r = np.random.default_rng(0)
    x = r.random((4, 2, 6, 6), dtype=np.float32)
    y = r.integers(0, 3, 4)
    gpu, cpu = mk("cuda"), mk("cpu")
    assert gpu.device.simulated
    for m in (gpu, cpu):
        m.compile(optimizer="sgd")
    lg = [gpu.train_on_batch(x, y) for _ in range(2)]
    lc = [cpu.train_on_batch(x, y) for _ in range(2)]
    np.testing.assert_allclose(lg, lc, rtol=1e-5)
    for a, b in zip(gpu.get_weights(), cpu.get_weights()):    # incl. the moving statistics
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(gpu.predict(x), cpu.predict(x), atol=1e-5)
