"""Every op through the CUDA kernels (under the simulator: on NumPy arrays), against the CPU
kernels and a float64 NumPy reference.

Runs in its own pytest process with NUMBA_ENABLE_CUDASIM=1 (tests/cuda/conftest.py). The same
tests run on a real GPU with NUMBA_ENABLE_CUDASIM=0: inputs go through nbcnn.to_device and
results through nbcnn.to_numpy. Launch counters prove the CUDA kernels ran; outputs are
allocated poisoned (NaN) so an element a kernel forgot to write shows up.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

import nbcnn
import nbcnn.ops as ops
from nbcnn import optim
from nbcnn.ops import shortcut
from nbcnn.device import cuda_simulator_enabled
from nbcnn.kernels.cuda import conv as kconv
from nbcnn.kernels.cuda import activations as kact  # noqa: F401  (kernels in the tour below)
from nbcnn.kernels.cuda import norm as knorm  # noqa: F401  (batch norm / LRN kernels, in the tour below)
from nbcnn.kernels.cuda import pad as kpad
from nbcnn.kernels.cuda import pool as kpool
from nbcnn.kernels.cuda import runtime

import cuda_reference as ref

TOL = {np.float32: 1e-5, np.float64: 1e-12}


def _poisoned(xp):
    """``xp`` whose ``empty`` returns NaN (floats) / -7 (ints) instead of garbage."""
    mod = types.ModuleType(xp.__name__)
    mod.__getattr__ = lambda name: getattr(xp, name)

    def empty(shape, dtype=float):
        dt = np.dtype(dtype)
        return xp.full(shape, np.nan if dt.kind == "f" else -7, dtype=dt)

    mod.empty = empty
    return mod


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    cache = {}
    real = runtime.xp_of

    def xp_of(a):
        xp = real(a)
        if xp.__name__ not in cache:
            cache[xp.__name__] = _poisoned(xp)
        return cache[xp.__name__]

    for mod in (kconv, kpool, kpad):
        monkeypatch.setattr(mod, "xp_of", xp_of)


class Launches:
    """Counts CUDA kernel launches inside the block."""

    def __enter__(self):
        self.before = runtime.launches.copy()
        return self

    def __exit__(self, *exc):
        self.delta = dict(runtime.launches - self.before)


def on_cuda(fn, *arrays, **kw):
    """Run ``fn`` on the CUDA device: NumPy array arguments move there, results come back as NumPy."""
    with nbcnn.using_device("cuda"):
        dev = [nbcnn.to_device(a) if isinstance(a, np.ndarray) else a for a in arrays]
        out = fn(*dev, **kw)
    if isinstance(out, tuple):
        return tuple(None if o is None else nbcnn.to_numpy(o) for o in out)
    return nbcnn.to_numpy(out)


def on_cpu(fn, *arrays, **kw):
    with nbcnn.using_device("cpu"):
        return fn(*arrays, **kw)


def assert_close(got, want, dtype, what):
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype}, expected {np.dtype(dtype)}"
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values (unwritten output?)"
    scale = max(float(np.abs(want).max()), 1e-30)
    err = float(np.abs(got.astype(np.float64) - want).max()) / scale
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]}"


# N, C, H, W, K, kh, kw, stride, padding, dtype
CONV_CASES = [
    pytest.param(1, 1, 5, 5, 1, 3, 3, 1, 0, np.float32, id="N1-C1-3x3"),
    pytest.param(2, 3, 7, 6, 4, 3, 2, (2, 1), "same", np.float32, id="rect-same-stride21"),
    pytest.param(3, 2, 6, 7, 3, 3, 3, 2, "full", np.float32, id="N3-full-stride2"),  # N > 2 sim blocks along z
    pytest.param(1, 2, 5, 5, 2, 2, 3, (1, 2), (1, 0), np.float32, id="pair-pad-stride12"),
    pytest.param(2, 1, 6, 6, 2, 1, 1, 1, "valid", np.float32, id="1x1-valid"),
    pytest.param(1, 2, 4, 5, 3, 4, 5, 1, 0, np.float32, id="kernel-equals-input"),
    pytest.param(1, 2, 5, 6, 2, 3, 3, 3, (0, 1, 2, 0), np.float32, id="4tuple-pad-stride3"),
    pytest.param(2, 3, 7, 6, 4, 3, 2, (2, 1), "same", np.float64, id="f64-rect-same"),
    pytest.param(1, 2, 6, 5, 2, 3, 3, 2, 1, np.float64, id="f64-pad1-stride2"),
]


def _conv_data(N, C, H, W, K, kh, kw, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, kh, kw)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    return rng, x, w, b


@pytest.mark.parametrize("N,C,H,W,K,kh,kw,stride,padding,dtype", CONV_CASES)
def test_conv2d_forward_backward(N, C, H, W, K, kh, kw, stride, padding, dtype):
    rng, x, w, b = _conv_data(N, C, H, W, K, kh, kw, dtype)
    pads = _pads(padding, kh, kw, stride, H, W)
    sh_sw = stride if isinstance(stride, tuple) else (stride, stride)
    gy = rng.standard_normal(ops.conv2d_output_shape(x.shape, w.shape, stride, padding)).astype(dtype)

    def fwd_bwd(x, w, b, gy):
        ctx = {}
        y = ops.conv2d(x, w, b, stride, padding, ctx=ctx)
        return (y, *ops.conv2d_backward(gy, x, w, stride, padding, ctx=ctx))

    with Launches() as n:
        y, gx, gw, gb = on_cuda(fwd_bwd, x, w, b, gy)
    # one im2col for both passes: the backward reused the forward's columns through ctx
    assert n.delta == {"_im2col": 1, "_kn_to_nk_bias": 1, "_nk_to_kn_bias_grad": 1, "_col2im": 1}

    cy, (cgx, cgw, cgb) = on_cpu(ops.conv2d, x, w, b, stride, padding), \
        on_cpu(ops.conv2d_backward, gy, x, w, stride, padding)
    ry = ref.conv2d(x, w, b, sh_sw, pads)
    rgx, rgw, rgb = ref.conv2d_backward(gy, x, w, sh_sw, pads)
    for name, got, cpu, want in (("y", y, cy, ry), ("gx", gx, cgx, rgx), ("gw", gw, cgw, rgw),
                                 ("gb", gb, cgb, rgb)):
        assert_close(got, want, dtype, f"{name} vs float64 reference")
        assert_close(got, cpu, dtype, f"{name} vs CPU kernels")


def _pads(padding, kh, kw, stride, H, W):
    from nbcnn.kernels.geometry import as_stride, resolve_padding

    return resolve_padding(padding, (kh, kw), as_stride(stride), (H, W))


def test_conv2d_no_bias_no_ctx_and_no_gx():
    rng, x, w, _ = _conv_data(2, 2, 5, 6, 3, 3, 2, np.float32, seed=1)
    gy = rng.standard_normal(ops.conv2d_output_shape(x.shape, w.shape, (1, 2), 1)).astype(np.float32)
    pads = _pads(1, 3, 2, (1, 2), 5, 6)
    y = on_cuda(ops.conv2d, x, w, None, (1, 2), 1)
    assert_close(y, ref.conv2d(x, w, None, (1, 2), pads), np.float32, "y without bias")
    with Launches() as n:
        gx, gw, gb = on_cuda(lambda gy, x, w: ops.conv2d_backward(gy, x, w, (1, 2), 1, need_gx=False), gy, x, w)
    assert gx is None
    assert n.delta == {"_im2col": 1, "_nk_to_kn_bias_grad": 1}  # no ctx: recompute columns; no col2im
    _, rgw, rgb = ref.conv2d_backward(gy, x, w, (1, 2), pads)
    assert_close(gw, rgw, np.float32, "gw")
    assert_close(gb, rgb, np.float32, "gb")


def test_conv2d_large_columns_are_recomputed_not_kept(monkeypatch):
    rng, x, w, b = _conv_data(2, 2, 5, 5, 3, 3, 3, np.float32, seed=8)
    gy = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    monkeypatch.setattr(kconv, "CTX_COL_BYTES", 0)
    ctx = {}
    with Launches() as n:
        on_cuda(lambda x, w: ops.conv2d(x, w, None, 1, 1, ctx=ctx), x, w)
        gx, gw, gb = on_cuda(lambda gy, x, w: ops.conv2d_backward(gy, x, w, 1, 1, ctx=ctx), gy, x, w)
    assert "col" not in ctx
    assert n.delta["_im2col"] == 2
    rgx, rgw, _ = ref.conv2d_backward(gy, x, w, (1, 1), (1, 1, 1, 1))
    assert_close(gx, rgx, np.float32, "gx")
    assert_close(gw, rgw, np.float32, "gw")


def test_conv2d_backward_is_deterministic():
    rng, x, w, b = _conv_data(2, 3, 6, 6, 4, 3, 3, np.float32, seed=2)
    gy = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    first = on_cuda(ops.conv2d_backward, gy, x, w, 2, "same")
    second = on_cuda(ops.conv2d_backward, gy, x, w, 2, "same")
    for a, b_ in zip(first, second):
        np.testing.assert_array_equal(a, b_)


def test_conv2d_ctx_from_another_shape_is_not_reused():
    rng, x, w, b = _conv_data(1, 2, 6, 6, 2, 3, 3, np.float32, seed=3)
    ctx = {}
    on_cuda(lambda x, w: ops.conv2d(x, w, None, 1, 0, ctx=ctx), x, w)
    x2 = x[:, :, :5, :5].copy()
    gy = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    gx, gw, gb = on_cuda(lambda gy, x, w: ops.conv2d_backward(gy, x, w, 1, 0, ctx=ctx), gy, x2, w)
    rgx, rgw, _ = ref.conv2d_backward(gy, x2, w, (1, 1), (0, 0, 0, 0))
    assert_close(gw, rgw, np.float32, "gw with a stale ctx")
    assert_close(gx, rgx, np.float32, "gx with a stale ctx")


def test_ctx_of_another_input_with_the_same_shape_is_not_reused():
    """Forward on x1, backward on x2 (same shapes): the backward must not use x1's columns/argmax."""
    rng, x1, w, _ = _conv_data(2, 3, 7, 7, 4, 3, 3, np.float32, seed=5)
    x2 = rng.standard_normal(x1.shape).astype(np.float32)
    gy = rng.standard_normal((2, 4, 7, 7)).astype(np.float32)
    gp = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    with nbcnn.using_device("cuda"):
        d1, d2, dw, dgy, dgp = (nbcnn.to_device(a) for a in (x1, x2, w, gy, gp))
        cctx, pctx = {}, {}
        ops.conv2d(d1, dw, None, 1, 1, ctx=cctx)
        gx, gw, _ = (nbcnn.to_numpy(a) for a in ops.conv2d_backward(dgy, d2, dw, 1, 1, ctx=cctx))
        ops.max_pool2d(d1, 2, ctx=pctx)
        gxp = nbcnn.to_numpy(ops.max_pool2d_backward(dgp, d2, 2, ctx=pctx))
        same = nbcnn.to_numpy(ops.max_pool2d_backward(dgp, d1, 2, ctx=pctx))  # its own input: reused
    rgx, rgw, _ = ref.conv2d_backward(gy, x2, w, (1, 1), (1, 1, 1, 1))
    assert_close(gw, rgw, np.float32, "gw after another input's forward")
    assert_close(gx, rgx, np.float32, "gx after another input's forward")
    assert np.array_equal(gxp, on_cpu(ops.max_pool2d_backward, gp, x2, 2))
    assert np.array_equal(same, on_cpu(ops.max_pool2d_backward, gp, x1, 2))


# size, stride, padding, shape, dtype
POOL_CASES = [
    pytest.param(2, None, 0, (2, 2, 4, 6), np.float32, id="2x2-s2"),
    pytest.param(3, 2, 1, (1, 2, 7, 6), np.float32, id="3x3-s2-pad1"),
    pytest.param((2, 3), (1, 2), (1, 1), (1, 1, 5, 6), np.float32, id="rect-s12-pad11"),
    pytest.param(3, 1, 0, (2, 1, 5, 5), np.float32, id="3x3-s1-overlap"),
    pytest.param(2, 1, 1, (1, 2, 4, 5), np.float64, id="f64-2x2-s1-pad1"),
]


@pytest.mark.parametrize("size,stride,padding,shape,dtype", POOL_CASES)
def test_max_pool2d(size, stride, padding, shape, dtype):
    rng = np.random.default_rng(4)
    x = rng.integers(0, 3, size=shape).astype(dtype)  # many ties: the first maximum must win
    kh, kw = _pair(size)
    st = (kh, kw) if stride is None else _pair(stride)
    pads = (*(_pair(padding)[0],) * 2, *(_pair(padding)[1],) * 2)
    yshape = ops.pool2d_output_shape(shape, size, stride, padding)
    gy = rng.standard_normal(yshape).astype(dtype)

    def fwd_bwd(x, gy):
        ctx = {}
        y = ops.max_pool2d(x, size, stride, padding, ctx=ctx)
        return y, ops.max_pool2d_backward(gy, x, size, stride, padding, ctx=ctx)

    with Launches() as n:
        y, gx = on_cuda(fwd_bwd, x, gy)
    assert n.delta == {"_max_fwd": 1, "_max_bwd": 1}  # argmax reused through ctx
    ry, _ = ref.max_pool2d(x, (kh, kw), st, pads)
    rgx = ref.max_pool2d_backward(gy, x, (kh, kw), st, pads)
    assert_close(y, ry, dtype, "max pool y")
    assert_close(gx, rgx, dtype, "max pool gx")
    np.testing.assert_array_equal(y, on_cpu(ops.max_pool2d, x, size, stride, padding))
    np.testing.assert_array_equal(gx, on_cpu(ops.max_pool2d_backward, gy, x, size, stride, padding))
    # without ctx the backward recomputes the argmax, same answer
    with Launches() as n:
        gx2 = on_cuda(lambda gy, x: ops.max_pool2d_backward(gy, x, size, stride, padding), gy, x)
    assert n.delta == {"_max_fwd": 1, "_max_bwd": 1}
    np.testing.assert_array_equal(gx2, gx)


@pytest.mark.parametrize("size,stride,padding,shape,dtype", POOL_CASES)
def test_avg_pool2d(size, stride, padding, shape, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(dtype)
    kh, kw = _pair(size)
    st = (kh, kw) if stride is None else _pair(stride)
    pads = (*(_pair(padding)[0],) * 2, *(_pair(padding)[1],) * 2)
    gy = rng.standard_normal(ops.pool2d_output_shape(shape, size, stride, padding)).astype(dtype)
    with Launches() as n:
        y = on_cuda(ops.avg_pool2d, x, size, stride, padding)
        gx = on_cuda(ops.avg_pool2d_backward, gy, x, size, stride, padding)
    assert n.delta == {"_avg_fwd": 1, "_avg_bwd": 1}
    assert_close(y, ref.avg_pool2d(x, (kh, kw), st, pads), dtype, "avg pool y")
    assert_close(gx, ref.avg_pool2d_backward(gy, shape, (kh, kw), st, pads), dtype, "avg pool gx")
    assert_close(y, on_cpu(ops.avg_pool2d, x, size, stride, padding), dtype, "avg pool y vs CPU")
    assert_close(gx, on_cpu(ops.avg_pool2d_backward, gy, x, size, stride, padding), dtype, "avg gx vs CPU")


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def test_max_pool2d_nan_matches_cpu():
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 2, 3] = np.nan
    gy = np.ones((1, 2, 2, 2), np.float32)
    y = on_cuda(ops.max_pool2d, x, 2)
    gx = on_cuda(ops.max_pool2d_backward, gy, x, 2)
    np.testing.assert_array_equal(y, on_cpu(ops.max_pool2d, x, 2))
    np.testing.assert_array_equal(gx, on_cpu(ops.max_pool2d_backward, gy, x, 2))
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y[0, 1, 1, 1])


@pytest.mark.parametrize("padding,kernel_size,stride", [
    (1, None, 1), ((2, 0), None, 1), ((0, 1, 2, 3), None, 1),
    ("same", 3, 1), ("same", (3, 2), 2), ("full", (2, 3), 1), ("valid", 3, 1),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pad2d_and_backward(padding, kernel_size, stride, dtype):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 2, 5, 4)).astype(dtype)
    with Launches() as n:
        y = on_cuda(ops.pad2d, x, padding, kernel_size=kernel_size, stride=stride)
        g = on_cuda(lambda y: ops.pad2d_backward(y, padding, kernel_size=kernel_size, stride=stride,
                                                 input_shape=x.shape), y)
    assert n.delta == {"_pad_planes": 1, "_crop_planes": 1}
    want = on_cpu(ops.pad2d, x, padding, kernel_size=kernel_size, stride=stride)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(g, x)  # crop is the exact adjoint of zero padding


def test_every_kernel_runs_under_cuda_device():
    """One tour of the ops launches every registered CUDA kernel (none is left to the GPU alone)."""
    rng, x, w, b = _conv_data(1, 2, 5, 5, 2, 3, 3, np.float32, seed=7)
    gy = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    gp = rng.standard_normal((1, 2, 2, 2)).astype(np.float32)

    def tour(x, w, b, gy, gp):
        ops.conv2d_backward(gy, x, w, 1, "same")
        ops.conv2d(x, w, b, 1, "same")
        ops.conv2d_backward(gy, x, w[:, :1], 1, "same", groups=2)      # depthwise
        ops.conv2d(x, w[:, :1], b, 1, "same", groups=2)
        ops.conv2d_backward(gy, x, w, 1, "same", dilation=2)           # dilated im2col / col2im
        ops.pad2d_backward(ops.pad2d(x, 1), 1)
        ops.max_pool2d_backward(gp, x, 2)
        ops.max_pool2d(x, 2)
        ops.avg_pool2d_backward(gp, x, 2)
        ops.global_avg_pool2d_backward(ops.global_avg_pool2d(x), x)
        ops.global_max_pool2d_backward(ops.global_max_pool2d(x), x)
        shortcut.shortcut_backward(shortcut.shortcut(x, 2, 4), x.shape, 2)
        p, g = x.reshape(-1).copy(), gy.reshape(-1)
        for opt in (optim.SGD(0.1, clipnorm=1.0), optim.Adam(0.1), optim.RMSprop(0.1)):  # update kernels
            opt.setup(p.size, p.dtype)
            opt.step(p, g, [(0, p.size)])
        g1, rm, rv = (nbcnn.to_device(np.full(2, v, np.float32)) for v in (1, 0, 1))
        ops.batch_norm(x, g1, g1, rm, rv, training=True)
        ops.batch_norm(x, g1, g1, rm, rv, training=False)
        ops.batch_norm_backward(gy, x, g1)
        ops.lrn_backward(gy, x, 3)
        ops.lrn(x, 3)
        ops.channel_affine(x, 2.0, 1.0)                                # preprocessing layers
        ops.resize_bilinear_backward(ops.resize_bilinear(x, (3, 4)), (5, 5))
        ops.ew(x, x, "add")
        ops.ew_scale(x, 2.0)
        ops.concat_backward(ops.concat([x, x], 1), [2, 2], 1)
        rows = gy.reshape(gy.shape[0], -1)
        ops.activation(x, "gelu")
        ops.activation_backward(rows, rows, "silu", bias_grad=nbcnn.to_device(np.zeros(rows.shape[1], np.float32)))
        return ops.avg_pool2d(x, 2)

    with Launches() as n:
        on_cuda(tour, x, w, b, gy, gp)
    assert set(n.delta) == {k.name for k in runtime.KERNELS}


def test_cpu_device_runs_no_cuda_kernel():
    _, x, w, b = _conv_data(1, 1, 4, 4, 1, 3, 3, np.float32)
    with Launches() as n:
        on_cpu(ops.conv2d, x, w, b)
        on_cpu(ops.max_pool2d, x, 2)
    assert n.delta == {}


def test_dispatch_picks_cuda_backend_under_simulator():
    from nbcnn.ops._dispatch import backend_for

    if not cuda_simulator_enabled():
        pytest.skip("simulator-only dispatch rule")
    x = np.zeros((1, 1, 2, 2), np.float32)
    with nbcnn.using_device("cuda"):
        assert backend_for(x).__name__ == "nbcnn.kernels.cuda"
    with nbcnn.using_device("cpu"):
        assert backend_for(x).__name__ == "nbcnn.kernels.cpu"
