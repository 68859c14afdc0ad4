"""Pooling with ceil_mode / count_include_pad, and global pooling: against float64 references
(window by window), finite differences, and PyTorch where installed."""
from __future__ import annotations

import numpy as np
import pytest

import _reference as ref
from nbcnn import ops
from nbcnn.kernels.geometry import check_pool_padding, pool_output_size

# (shape, size, stride, pad): odd sizes, batch 1, C = 1, stride > 1 with padding, ceil windows that
# hit the drop rule (7 with k=2 s=2 p=1: a 5th window would start in the padding) and that do not
CASES = [
    ((2, 3, 7, 8), (3, 3), (2, 2), (1, 1)),
    ((1, 1, 7, 7), (2, 2), (2, 2), (1, 1)),     # ceil: the extra window starts in the padding -> dropped
    ((1, 2, 6, 9), (3, 2), (2, 3), (1, 0)),
    ((3, 1, 5, 5), (3, 3), (3, 3), (0, 0)),
    ((2, 2, 9, 6), (4, 3), (3, 2), (2, 1)),
    ((1, 3, 8, 8), (2, 2), (2, 2), (0, 0)),
    ((2, 2, 10, 9), (3, 3), (2, 2), (0, 0)),    # ceil adds a partial window (overhang counts nowhere)
]


def _x(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_output_size_rule():
    assert pool_output_size(7, 2, 1, 2, False) == 4
    assert pool_output_size(7, 2, 1, 2, True) == 4          # 5th window would start in the padding
    assert pool_output_size(10, 3, 0, 2, True) == 5 and pool_output_size(10, 3, 0, 2, False) == 4
    assert pool_output_size(6, 3, 1, 3, True) == 3          # (6+2-3)/3 = 1.67 -> 3 windows, last starts at 5
    with pytest.raises(ValueError, match="size // 2"):
        check_pool_padding((3, 3), (2, 0))


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_max_pool_modes_vs_reference(case, ceil_mode):
    shape, size, stride, pad = case
    x = _x(shape)
    y = ops.max_pool2d(x, size, stride, pad, ceil_mode=ceil_mode)
    np.testing.assert_array_equal(y, ref.pool2d_modes(x, size, stride, pad, "max", ceil_mode))
    assert y.shape == ops.pool2d_output_shape(shape, size, stride, pad, ceil_mode=ceil_mode)
    gy = _x(y.shape, 1)
    ctx = {}
    ops.max_pool2d(x, size, stride, pad, ceil_mode=ceil_mode, ctx=ctx)
    gx = ops.max_pool2d_backward(gy, x, size, stride, pad, ceil_mode=ceil_mode, ctx=ctx)
    np.testing.assert_array_equal(gx, ops.max_pool2d_backward(gy, x, size, stride, pad, ceil_mode=ceil_mode))
    # max pooling is piecewise linear: <gy, y(x + e*d)> changes by e*<gx, d> for small e (distinct values)
    d = _x(shape, 2)
    e = 1e-6
    fd = ((gy * ops.max_pool2d(x + e * d, size, stride, pad, ceil_mode=ceil_mode)).sum()
          - (gy * ops.max_pool2d(x - e * d, size, stride, pad, ceil_mode=ceil_mode)).sum()) / (2 * e)
    assert abs(fd - (gx * d).sum()) < 1e-6 * (1 + abs(fd))


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("cip", [True, False])
def test_avg_pool_modes_vs_reference_and_fd(case, ceil_mode, cip):
    shape, size, stride, pad = case
    x = _x(shape)
    kw = dict(ceil_mode=ceil_mode, count_include_pad=cip)
    y = ops.avg_pool2d(x, size, stride, pad, **kw)
    np.testing.assert_allclose(y, ref.pool2d_modes(x, size, stride, pad, "avg", ceil_mode, cip), rtol=1e-12,
                               atol=1e-12)
    gy = _x(y.shape, 1)
    gx = ops.avg_pool2d_backward(gy, x, size, stride, pad, **kw)
    d = _x(shape, 2)   # linear op: central difference is exact up to rounding
    fd = ((gy * ops.avg_pool2d(x + d, size, stride, pad, **kw)).sum()
          - (gy * ops.avg_pool2d(x - d, size, stride, pad, **kw)).sum()) / 2
    assert abs(fd - (gx * d).sum()) < 1e-10 * (1 + abs(fd))
    y32 = ops.avg_pool2d(x.astype(np.float32), size, stride, pad, **kw)
    np.testing.assert_allclose(y32, y, rtol=1e-5, atol=1e-6)


def test_avg_pool_2x2_ceil_odd_input_leaves_fast_path():
    """2x2/2 on 7x7 in ceil mode: the last window is a half window, divided by its real cells."""
    x = _x((2, 3, 7, 7), dtype=np.float32)
    for cip in (True, False):
        y = ops.avg_pool2d(x, 2, ceil_mode=True, count_include_pad=cip)
        assert y.shape == (2, 3, 4, 4)
        np.testing.assert_allclose(y, ref.pool2d_modes(x, (2, 2), (2, 2), (0, 0), "avg", True, cip), rtol=1e-6)
        np.testing.assert_allclose(y[:, :, 3, 3], x[:, :, 6, 6], rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 1, 1), (3, 1, 4, 1), (1, 4, 9, 9)])
def test_global_pools_vs_numpy_and_fd(shape):
    x = _x(shape)
    np.testing.assert_allclose(ops.global_avg_pool2d(x), x.mean(axis=(2, 3)), rtol=1e-13)
    np.testing.assert_array_equal(ops.global_max_pool2d(x), x.max(axis=(2, 3)))
    gy = _x(shape[:2], 1)
    gx = ops.global_avg_pool2d_backward(gy, x)
    np.testing.assert_allclose(gx, np.broadcast_to(gy[:, :, None, None] / (shape[2] * shape[3]), shape))
    ctx = {}
    ops.global_max_pool2d(x, ctx=ctx)
    gm = ops.global_max_pool2d_backward(gy, x, ctx=ctx)
    want = np.zeros(shape)
    for n in range(shape[0]):
        for c in range(shape[1]):
            h, w = np.unravel_index(np.argmax(x[n, c]), shape[2:])
            want[n, c, h, w] = gy[n, c]
    np.testing.assert_array_equal(gm, want)
    np.testing.assert_array_equal(ops.global_max_pool2d_backward(gy, x), want)
    d = _x(shape, 2)
    e = 1e-6
    fd = ((gy * ops.global_max_pool2d(x + e * d)).sum() - (gy * ops.global_max_pool2d(x - e * d)).sum()) / (2 * e)
    assert abs(fd - (gm * d).sum()) < 1e-6 * (1 + abs(fd))
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(ops.global_avg_pool2d(x32), x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


def test_global_max_ties_and_nan():
    x = np.zeros((1, 2, 3, 3), np.float32)
    x[0, 0, 1, 2] = x[0, 0, 2, 0] = 5
    x[0, 1, 2, 1] = np.nan
    x[0, 1, 0, 0] = 7
    ctx = {}
    y = ops.global_max_pool2d(x, ctx=ctx)
    assert y[0, 0] == 5 and np.isnan(y[0, 1])
    gx = ops.global_max_pool2d_backward(np.ones((1, 2), np.float32), x, ctx=ctx)
    assert gx[0, 0, 1, 2] == 1 and gx[0, 0].sum() == 1 and gx[0, 1, 2, 1] == 1 and gx[0, 1].sum() == 1


def test_global_pool_validation():
    with pytest.raises(ValueError, match="4-D"):
        ops.global_avg_pool2d(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="gy has shape"):
        ops.global_max_pool2d_backward(np.zeros((2, 2), np.float32), np.zeros((2, 3, 4, 4), np.float32))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_modes_against_torch(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    shape, size, stride, pad = case
    x = _x(shape, dtype=np.float32)
    for ceil in (False, True):
        yt = F.max_pool2d(torch.tensor(x), size, stride, pad, ceil_mode=ceil).numpy()
        np.testing.assert_array_equal(ops.max_pool2d(x, size, stride, pad, ceil_mode=ceil), yt)
        for cip in (True, False):
            xt = torch.tensor(x, requires_grad=True)
            yt = F.avg_pool2d(xt, size, stride, pad, ceil_mode=ceil, count_include_pad=cip)
            gy = _x(tuple(yt.shape), 3, np.float32)
            yt.backward(torch.tensor(gy))
            kw = dict(ceil_mode=ceil, count_include_pad=cip)
            np.testing.assert_allclose(ops.avg_pool2d(x, size, stride, pad, **kw), yt.detach().numpy(),
                                       rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(ops.avg_pool2d_backward(gy, x, size, stride, pad, **kw), xt.grad.numpy(),
                                       rtol=1e-5, atol=1e-6)
