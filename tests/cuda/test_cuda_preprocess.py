"""Preprocessing ops through the CUDA kernels (simulator: NumPy arrays), against the CPU kernels
and float64 references; outputs are allocated poisoned (NaN) so an unwritten element shows."""
from __future__ import annotations

import types

import numpy as np
import pytest

import nbcnn
import nbcnn.ops as ops
from nbcnn import layers as L
from nbcnn.kernels.cuda import pad as kpad
from nbcnn.kernels.cuda import preprocess as kprep
from nbcnn.kernels.cuda import runtime


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    real = runtime.xp_of

    def xp_of(a):
        xp = real(a)
        mod = types.ModuleType(xp.__name__)
        mod.__getattr__ = lambda name: getattr(xp, name)
        mod.empty = lambda shape, dtype=float: xp.full(shape, np.nan, dtype=dtype)
        mod.empty_like = lambda a: xp.full(a.shape, np.nan, dtype=a.dtype)
        return mod

    for mod in (kprep, kpad):
        monkeypatch.setattr(mod, "xp_of", xp_of)


def on_cuda(fn, *arrays):
    before = runtime.launches.copy()
    with nbcnn.using_device("cuda"):
        out = fn(*[nbcnn.to_device(a) if isinstance(a, np.ndarray) else a for a in arrays])
    return nbcnn.to_numpy(out), dict(runtime.launches - before)


def on_cpu(fn, *arrays):
    with nbcnn.using_device("cpu"):
        return fn(*arrays)


def close(got, want, dtype):
    assert got.dtype == dtype and np.all(np.isfinite(got))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


CASES = [((1, 1, 5, 7), (3, 4), np.float32), ((2, 3, 4, 4), (9, 6), np.float32),
         ((3, 2, 6, 5), (6, 5), np.float64), ((1, 2, 1, 3), (2, 5), np.float64)]


@pytest.mark.parametrize("shape,size,dtype", CASES)
def test_resize_forward_backward(shape, size, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    gy = rng.standard_normal((*shape[:2], *size)).astype(dtype)
    y, n = on_cuda(lambda a: ops.resize_bilinear(a, size), x)
    assert n == {"_resize_fwd": 1}
    close(y, on_cpu(lambda a: ops.resize_bilinear(a, size), x.astype(np.float64)), dtype)
    gx, n = on_cuda(lambda g: ops.resize_bilinear_backward(g, shape[2:]), gy)
    assert n == {"_resize_bwd": 1}
    close(gx, on_cpu(lambda g: ops.resize_bilinear_backward(g, shape[2:]), gy.astype(np.float64)), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_affine(dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 3, 2, 5)).astype(dtype)
    s, o = rng.standard_normal(3), rng.standard_normal(3)
    y, n = on_cuda(lambda a: ops.channel_affine(a, s, o), x)
    assert n == {"_affine_planes": 1}
    close(y, x.astype(np.float64) * s[None, :, None, None] + o[None, :, None, None], dtype)


def test_preprocessing_layers_on_cuda():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    for layer in (L.Rescaling(0.5, 0.1), L.Normalization([0.1, 0.2, 0.3], [1.0, 4.0, 9.0]), L.Resizing(4, 9),
                  L.CenterCrop(3, 4)):
        cpu_y = layer.forward(x, training=True)
        gy = rng.standard_normal(cpu_y.shape).astype(np.float32)
        cpu_g = layer.backward(gy)
        with nbcnn.using_device("cuda"):
            y = layer.forward(nbcnn.to_device(x), training=True)
            g = layer.backward(nbcnn.to_device(gy))
        close(nbcnn.to_numpy(y), cpu_y, np.float32)
        close(nbcnn.to_numpy(g), cpu_g, np.float32)
