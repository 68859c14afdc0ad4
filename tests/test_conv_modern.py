"""Grouped, depthwise and dilated convolution (CPU): float64 loop references, finite differences,
float32 fast paths against the reference, padding modes with dilation, determinism and bad input."""
from __future__ import annotations

import math

import numba
import numpy as np
import pytest

import _reference as ref
from nbcnn import ops

# (N, C, H, W, K, k, stride, padding, dilation, groups)
CASES = [
    (2, 4, 9, 11, 4, 3, 1, 1, 1, 4),                 # depthwise, odd sizes
    (1, 4, 9, 11, 8, 3, 2, 1, 1, 4),                 # depthwise, depth multiplier 2, stride 2, batch 1
    (2, 1, 7, 8, 3, 3, 1, (0, 1, 2, 0), 2, 1),       # C = 1, dilated, asymmetric padding
    (2, 6, 13, 12, 4, 3, 1, "same", 2, 2),           # groups 2, dilated 'same'
    (2, 6, 13, 12, 4, 3, (2, 1), 2, (2, 3), 2),      # dilation with stride > 1
    (3, 3, 10, 9, 6, 3, 2, "same", 2, 3),            # depthwise m=2, dilated, strided 'same'
    (2, 4, 12, 12, 8, 5, 1, 2, 1, 2),                # groups 2, depth multiplier 4 (Kg = 4, Cg = 2)
    (2, 8, 10, 10, 8, 3, (3, 2), 1, (1, 2), 8),      # depthwise, stride 3x2, anisotropic dilation
    (1, 3, 7, 9, 3, 3, 1, "full", 2, 3),             # depthwise 'full' with dilation
    (2, 4, 8, 7, 6, 2, 1, "full", 3, 2),             # groups 2, even kernel, 'full' dilated
    (2, 6, 11, 11, 6, 3, 2, "valid", 1, 3),          # groups 3 (Cg = Kg = 2), strided
    (2, 2, 9, 9, 3, 3, 1, 1, 2, 1),                  # dense dilated, K odd
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _expected_pads(padding, n_hw, k, s, d):
    """The padding of each mode, written out from its definition (not via the code under test)."""
    if not isinstance(padding, str):
        if isinstance(padding, int):
            return (padding,) * 4
        return tuple(padding) if len(padding) == 4 else (padding[0], padding[0], padding[1], padding[1])
    out = []
    for n, si, di in zip(n_hw, s, d):
        ke = (k - 1) * di + 1
        if padding == "valid":
            out += [0, 0]
        elif padding == "full":
            out += [ke - 1, ke - 1]
        else:
            total = max((math.ceil(n / si) - 1) * si + ke - n, 0)
            out += [total // 2, total - total // 2]
    return tuple(out)


def _data(case, dtype, seed=0):
    N, C, H, W, K, k, s, p, d, g = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C // g, k, k)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    return x, w, b, s, p, d, g


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_against_float64_loop_reference(case, dtype):
    x, w, b, s, p, d, g = _data(case, dtype)
    pads = _expected_pads(p, x.shape[2:], w.shape[2], _pair(s), _pair(d))
    ctx = {}
    y = ops.conv2d(x, w, b, s, p, d, g, ctx=ctx)
    assert y.dtype == dtype
    yr = ref.conv2d_general(x, w, b, _pair(s), pads, _pair(d), g)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(y, yr, rtol=tol, atol=tol * np.abs(yr).max())
    if p == "same":
        assert y.shape[2:] == tuple(math.ceil(n / si) for n, si in zip(x.shape[2:], _pair(s)))
    assert ops.conv2d_output_shape(x.shape, w.shape, s, p, d, g) == y.shape
    gy = np.random.default_rng(5).standard_normal(y.shape).astype(dtype)
    grads = ops.conv2d_backward(gy, x, w, s, p, d, g, ctx=ctx)
    want = ref.conv2d_general_backward(gy, x, w, _pair(s), pads, _pair(d), g)
    for got, wnt in zip(grads, want):
        assert got.dtype == dtype and got.shape == wnt.shape
        np.testing.assert_allclose(got, wnt, rtol=tol, atol=tol * np.abs(wnt).max())
    for got, same in zip(ops.conv2d_backward(gy, x, w, s, p, d, g), grads):   # without the forward's ctx
        np.testing.assert_array_equal(got, same)
    gx_none, gw2, gb2 = ops.conv2d_backward(gy, x, w, s, p, d, g, need_gx=False, ctx=ctx)
    assert gx_none is None
    np.testing.assert_array_equal(gw2, grads[1])
    np.testing.assert_array_equal(gb2, grads[2])


@pytest.mark.parametrize("case", CASES[:9], ids=str)
def test_gradients_by_finite_differences(case):
    """Directional central differences of L = <gy, conv2d(x, w, b)> in float64 (exact: L is linear)."""
    x, w, b, s, p, d, g = _data(case, np.float64, seed=3)
    rng = np.random.default_rng(4)
    gy = rng.standard_normal(ops.conv2d(x, w, b, s, p, d, g).shape)
    grads = ops.conv2d_backward(gy, x, w, s, p, d, g)

    def loss(args):
        return float((ops.conv2d(*args, s, p, d, g) * gy).sum())

    eps = 1e-3
    for which, grad in enumerate(grads):
        v = rng.standard_normal(grad.shape)
        plus, minus = [x, w, b], [x, w, b]
        plus[which] = plus[which] + eps * v
        minus[which] = minus[which] - eps * v
        fd = (loss(plus) - loss(minus)) / (2 * eps)
        an = float((grad * v).sum())
        assert abs(fd - an) <= 1e-8 * (abs(an) + np.abs(gy).sum()), (which, fd, an)


def test_depthwise_is_per_channel_dense_conv():
    """groups == C equals C separate single-channel convolutions (the dense op as the oracle)."""
    x, w, b, s, p, d, g = _data((2, 5, 10, 9, 10, 3, 2, 1, 1, 5), np.float64, seed=7)
    y = ops.conv2d(x, w, b, s, p, groups=g)
    for c in range(5):
        yc = ops.conv2d(x[:, c:c + 1], w[2 * c:2 * c + 2], b[2 * c:2 * c + 2], s, p)
        np.testing.assert_allclose(y[:, 2 * c:2 * c + 2], yc, rtol=1e-13, atol=1e-13)


def test_dilation_equals_zero_inserted_filter():
    x, w, b, *_ = _data((2, 3, 15, 14, 4, 3, 1, 0, 1, 1), np.float64, seed=8)
    we = np.zeros((4, 3, 7, 7))
    we[:, :, ::3, ::3] = w
    for s in (1, 2):
        np.testing.assert_allclose(ops.conv2d(x, w, b, s, 2, dilation=3), ops.conv2d(x, we, b, s, 2),
                                   rtol=1e-13, atol=1e-12)


def test_pytorch_as_an_extra_oracle():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for case in CASES:
        N, C, H, W, K, k, s, p, d, g = case
        if isinstance(p, str) or (not isinstance(p, int) and len(p) == 4):
            continue
        x, w, b, s, p, d, g = _data(case, np.float64, seed=9)
        xt = torch.tensor(x, requires_grad=True)
        wt = torch.tensor(w, requires_grad=True)
        bt = torch.tensor(b, requires_grad=True)
        yt = F.conv2d(xt, wt, bt, _pair(s), _pair(p), _pair(d), g)
        gy = np.random.default_rng(1).standard_normal(tuple(yt.shape))
        yt.backward(torch.tensor(gy))
        y = ops.conv2d(x, w, b, s, p, d, g)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
        for got, t in zip(ops.conv2d_backward(gy, x, w, s, p, d, g), (xt, wt, bt)):
            np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-11, atol=1e-11)


DET_CASES = [
    (4, 8, 13, 12, 8, 3, 1, 1, 1, 8),        # depthwise
    (3, 6, 15, 15, 12, 3, 2, 1, 1, 6),       # depthwise m=2, strided
    (4, 8, 12, 12, 8, 3, 1, 2, 2, 1),        # dilated (phases)
    (4, 8, 12, 12, 8, 3, 1, 1, 1, 2),        # grouped
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", DET_CASES, ids=str)
def test_parallel_equals_serial(case, dtype):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs NUMBA_NUM_THREADS >= 2")

    def run():
        x, w, b, s, p, d, g = _data(case, dtype, seed=11)
        ctx = {}
        y = ops.conv2d(x, w, b, s, p, d, g, ctx=ctx)
        gy = np.random.default_rng(2).standard_normal(y.shape).astype(dtype)
        return [y, *ops.conv2d_backward(gy, x, w, s, p, d, g, ctx=ctx)]

    before = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        par1, par2 = run(), run()
        numba.set_num_threads(1)
        ser = run()
    finally:
        numba.set_num_threads(before)
    for a, b2, c in zip(par1, par2, ser):
        np.testing.assert_array_equal(a, b2)
        np.testing.assert_array_equal(a, c)


X = np.zeros((2, 6, 8, 8), np.float32)


@pytest.mark.parametrize("groups, w_shape, match", [
    (4, (4, 1, 3, 3), r"input channels C=6 are not divisible by groups=4"),
    (3, (4, 2, 3, 3), r"filters K=4 are not divisible by groups=3"),
    (2, (4, 6, 3, 3), r"groups=2 w must have C // groups = 3 input channels"),
    (0, (4, 6, 3, 3), r"groups must be >= 1"),
])
def test_bad_groups(groups, w_shape, match):
    with pytest.raises(ValueError, match=match):
        ops.conv2d(X, np.zeros(w_shape, np.float32), groups=groups)
    with pytest.raises(ValueError, match=match):
        ops.conv2d_output_shape(X.shape, w_shape, groups=groups)


def test_bad_groups_type_and_dilation():
    W = np.zeros((4, 6, 3, 3), np.float32)
    with pytest.raises(TypeError, match="groups must be an int"):
        ops.conv2d(X, W, groups=1.5)
    for d in (0, (1, 0), -1):
        with pytest.raises(ValueError, match="dilation must be >= 1"):
            ops.conv2d(X, W, dilation=d)
    with pytest.raises(TypeError, match="dilation must be an int or a pair"):
        ops.conv2d(X, W, dilation=(1, 2, 3))
    with pytest.raises(ValueError, match=r"extent 9x9 with dilation \(4, 4\).*larger than the padded input 8x8"):
        ops.conv2d(X, W, dilation=4)
    with pytest.raises(ValueError, match="gy has shape"):
        ops.conv2d_backward(np.zeros((2, 4, 6, 6), np.float32), X, W, dilation=2)
