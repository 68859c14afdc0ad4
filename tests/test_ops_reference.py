"""Ops vs the plain NumPy float64 loop reference, on shapes picked to hit every code path."""
from __future__ import annotations

import numpy as np
import pytest

import _reference as ref
from nbcnn import ops
from nbcnn.kernels.geometry import resolve_padding

# (N, C, H, W, K, kh, kw, stride, padding): rectangular kernels, sh != sw, every padding
# form, N = 1, C = 1, odd sizes, 1x1 kernels, kernel == input size, huge strides.
# float32 runs the implicit-GEMM kernels (tile edges: test_conv_implicit.py); the "direct" and
# "im2col" notes below name the float64 paths.
CONV_CASES = [
    (2, 3, 7, 6, 4, 3, 2, 1, 0),
    (1, 1, 5, 5, 1, 5, 5, 1, 0),            # kernel == input size
    (1, 1, 9, 7, 2, 5, 5, 1, 2),            # C = 1, N = 1: direct path with padding
    (3, 2, 8, 9, 3, 3, 3, 1, "same"),
    (2, 2, 9, 8, 3, 3, 2, (2, 3), "same"),  # 'same' with sh != sw > 1 and an even kernel
    (2, 3, 7, 7, 2, 4, 4, 2, "same"),       # even kernel, odd input, stride 2: asymmetric pads
    (1, 2, 5, 4, 3, 3, 2, 1, "full"),
    (2, 3, 6, 5, 2, 2, 3, (1, 2), "valid"),
    (2, 4, 6, 6, 5, 1, 1, 1, 0),            # 1x1
    (2, 4, 6, 7, 3, 1, 1, 2, 1),            # 1x1 strided with padding
    (1, 2, 7, 9, 2, 3, 3, 1, (0, 2, 1, 0)),  # explicit asymmetric (top, bottom, left, right)
    (2, 5, 11, 10, 3, 3, 5, (3, 2), (1, 2)),
    (1, 3, 12, 13, 4, 5, 3, 4, 1),          # AlexNet-like large stride
    (1, 2, 5, 6, 2, 3, 3, 50, 1),           # stride far larger than the input
    (1, 3, 4, 4, 2, 4, 4, 1, "full"),
    (2, 1, 6, 6, 3, 2, 2, 1, 1),            # few channels, small kernel (direct path)
    (1, 8, 6, 6, 7, 3, 3, 1, 1),            # im2col path, K odd
]


def _pads(case):
    N, C, H, W, K, kh, kw, s, p = case
    st = (s, s) if isinstance(s, int) else s
    return st, resolve_padding(p, (kh, kw), st, (H, W))


def _data(case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    N, C, H, W, K, kh, kw, s, p = case
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, kh, kw)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    return x, w, b


def _tol(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_forward_backward_vs_reference(case, dtype):
    x, w, b = _data(case, dtype)
    stride, pads = _pads(case)
    s, p = case[7], case[8]
    ctx = {}
    y = ops.conv2d(x, w, b, stride=s, padding=p, ctx=ctx)
    yr = ref.conv2d(x, w, b, stride, pads)
    assert y.dtype == dtype and y.shape == yr.shape == ops.conv2d_output_shape(x.shape, w.shape, s, p)
    np.testing.assert_allclose(y, yr, **_tol(dtype))
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    gxr, gwr, gbr = ref.conv2d_backward(gy, x, w, stride, pads)
    for kwargs in ({"ctx": ctx}, {}):  # reusing forward work, and from scratch
        gx, gw, gb = ops.conv2d_backward(gy, x, w, stride=s, padding=p, **kwargs)
        assert gx.dtype == gw.dtype == gb.dtype == dtype
        assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (w.shape[0],)
        np.testing.assert_allclose(gx, gxr, **_tol(dtype))
        np.testing.assert_allclose(gw, gwr, **_tol(dtype))
        np.testing.assert_allclose(gb, gbr, **_tol(dtype))
    gx, gw2, gb2 = ops.conv2d_backward(gy, x, w, stride=s, padding=p, need_gx=False, ctx=ctx)
    assert gx is None
    np.testing.assert_array_equal(gw2, gw)
    np.testing.assert_array_equal(gb2, gb)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "fortran"])
def test_conv2d_non_contiguous_inputs(layout):
    rng = np.random.default_rng(3)
    if layout == "transposed":
        x = rng.standard_normal((5, 6, 2, 3)).transpose(2, 3, 0, 1)     # (2, 3, 5, 6)
    elif layout == "sliced":
        x = rng.standard_normal((2, 3, 10, 12))[:, :, ::2, ::2]
    else:
        x = np.asfortranarray(rng.standard_normal((2, 3, 5, 6)))
    w = rng.standard_normal((6, 4, 3, 3))[::2, :3]                          # (3, 3, 3, 3)
    b = rng.standard_normal(6)[::2]
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    y = ops.conv2d(x, w, b, padding=1)
    np.testing.assert_allclose(y, ref.conv2d(x, w, b, (1, 1), (1, 1, 1, 1)), rtol=1e-10, atol=1e-10)
    gy = rng.standard_normal(y.shape)[..., ::-1]
    got = ops.conv2d_backward(gy, x, w, padding=1)
    for g, r in zip(got, ref.conv2d_backward(gy, x, w, (1, 1), (1, 1, 1, 1))):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10)


def test_conv2d_mixed_dtypes_follow_x():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3))                 # float64 weights are cast to x's dtype
    y = ops.conv2d(x, w, np.zeros(3))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref.conv2d(x, w.astype(np.float32), None, (1, 1), (0,) * 4), rtol=1e-5, atol=1e-5)


def test_conv2d_accepts_nested_lists():
    y = ops.conv2d([[[[1.0, 2.0], [3.0, 4.0]]]], [[[[1.0]]]], [0.5])
    np.testing.assert_array_equal(y, [[[[1.5, 2.5], [3.5, 4.5]]]])


POOL_CASES = [
    # (N, C, H, W, size, stride, padding)
    (2, 3, 6, 6, 2, None, 0),
    (2, 3, 7, 9, 2, None, 0),              # odd sizes: floor drops the last row/column
    (1, 2, 7, 7, 3, 2, 1),                 # overlapping windows with padding
    (2, 1, 8, 7, (3, 2), (2, 1), (1, 1)),  # rectangular window, sh != sw
    (1, 2, 5, 5, 3, 1, 0),                 # stride 1: heavy overlap
    (1, 1, 4, 6, (2, 3), None, (1, 0)),
    (1, 2, 5, 5, 5, None, 2),              # window as large as the input, padding = size // 2
    (2, 2, 6, 6, 1, None, 0),              # 1x1 pooling: identity
    (1, 1, 5, 5, 2, 9, 0),                 # stride larger than the input
]


def _pool_args(case):
    N, C, H, W, size, stride, pad = case
    sz = (size, size) if isinstance(size, int) else size
    st = sz if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    pd = (pad, pad) if isinstance(pad, int) else pad
    return sz, st, pd


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pooling_vs_reference(case, dtype):
    rng = np.random.default_rng(5)
    N, C, H, W, size, stride, pad = case
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    sz, st, pd = _pool_args(case)
    ctx = {}
    y = ops.max_pool2d(x, size, stride, pad, ctx=ctx)
    assert y.dtype == dtype and y.shape == ops.pool2d_output_shape(x.shape, size, stride, pad)
    np.testing.assert_array_equal(y, ref.max_pool2d(x, sz, st, pd).astype(dtype))
    gy = rng.standard_normal(y.shape).astype(dtype)
    gxr = ref.max_pool2d_backward(gy, x, sz, st, pd)
    np.testing.assert_allclose(ops.max_pool2d_backward(gy, x, size, stride, pad, ctx=ctx), gxr, **_tol(dtype))
    np.testing.assert_allclose(ops.max_pool2d_backward(gy, x, size, stride, pad), gxr, **_tol(dtype))
    ya = ops.avg_pool2d(x, size, stride, pad)
    assert ya.dtype == dtype
    np.testing.assert_allclose(ya, ref.avg_pool2d(x, sz, st, pd), **_tol(dtype))
    ga = ops.avg_pool2d_backward(gy, x, size, stride, pad)
    assert ga.dtype == dtype
    np.testing.assert_allclose(ga, ref.avg_pool2d_backward(gy, x.shape, sz, st, pd), **_tol(dtype))


@pytest.mark.parametrize("padding,kernel,stride,shape", [
    (1, None, 1, (2, 3, 4, 5)),
    ((2, 1), None, 1, (1, 2, 3, 3)),
    ((0, 1, 2, 3), None, 1, (1, 1, 4, 4)),
    ("same", (3, 4), 1, (2, 1, 5, 5)),
    ("same", 3, 2, (1, 2, 6, 7)),
    ("full", (2, 3), 1, (1, 1, 3, 3)),
    ("valid", None, 1, (1, 1, 3, 3)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pad2d_vs_numpy(padding, kernel, stride, shape, dtype):
    x = np.random.default_rng(6).standard_normal(shape).astype(dtype)
    k = (1, 1) if kernel is None else ((kernel, kernel) if isinstance(kernel, int) else kernel)
    pt, pb, pl, pr = resolve_padding(padding, k, (stride, stride), shape[2:])
    y = ops.pad2d(x, padding, kernel_size=kernel, stride=stride)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))))
    g = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
    gx = ops.pad2d_backward(g, padding, kernel_size=kernel, stride=stride, input_shape=shape)
    np.testing.assert_array_equal(gx, g[:, :, pt:pt + shape[2], pl:pl + shape[3]])


def test_same_padding_with_stride_matches_ceil():
    x = np.ones((1, 1, 7, 10))
    w = np.ones((1, 1, 3, 4))
    for s in (1, 2, 3, 4):
        y = ops.conv2d(x, w, stride=s, padding="same")
        assert y.shape[2:] == (-(-7 // s), -(-10 // s))
        assert ops.conv_output_size(7, 3, "same", s) == y.shape[2]


def test_max_pool_propagates_nan():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan
    x[0, 0, 3, 3] = np.nan
    for dtype in (np.float32, np.float64):
        y = ops.max_pool2d(x.astype(dtype), 2)
        assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y[0, 0, 1, 1])
        assert y[0, 0, 0, 1] == 7 and y[0, 0, 1, 0] == 13


def test_max_pool_nan_first_cell_still_propagates():
    x = np.array([[[[np.nan, 5.0], [1.0, 2.0]]]])
    assert np.isnan(ops.max_pool2d(x, 2)[0, 0, 0, 0])


@pytest.mark.parametrize("stride,padding", [(None, 0), (1, 0), (2, 1)])
def test_max_pool_ties_send_gradient_to_exactly_one_element(stride, padding):
    x = np.zeros((2, 3, 6, 6))  # every window is one big tie
    y = ops.max_pool2d(x, 3 if padding else 2, stride, padding)
    gy = np.ones_like(y)
    gx = ops.max_pool2d_backward(gy, x, 3 if padding else 2, stride, padding)
    assert gx.sum() == gy.sum()
    if stride is None:  # non-overlapping: one cell per window, exactly
        assert np.count_nonzero(gx) == y.size
        np.testing.assert_array_equal(gx[0, 0, ::2, ::2], 1)  # the first cell in scan order


def test_avg_pool_counts_padding_in_divisor():
    x = np.ones((1, 1, 2, 2))
    y = ops.avg_pool2d(x, 2, 2, 1)       # each window holds one real cell and three padded zeros
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), 0.25))


def test_empty_batch():
    x = np.zeros((0, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    y = ops.conv2d(x, w, padding=1)
    assert y.shape == (0, 3, 5, 5)
    gx, gw, gb = ops.conv2d_backward(np.zeros_like(y), x, w, padding=1)
    assert gx.shape == x.shape
    np.testing.assert_array_equal(gw, 0)
    np.testing.assert_array_equal(gb, 0)
    assert ops.max_pool2d(x, 2).shape == (0, 2, 2, 2)
    assert ops.avg_pool2d(x, 2).shape == (0, 2, 2, 2)



@pytest.mark.parametrize("chunk", [1, 2, 3])
@pytest.mark.parametrize("stride", [(2, 1), (1, 1)])
def test_conv2d_chunked_im2col_matches_reference(monkeypatch, chunk, stride):
    """Force several im2col chunks (incl. a shorter last one and single-sample chunks)."""
    from nbcnn.kernels.cpu import conv as cpu_conv

    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 4, 7, 6))
    w = rng.standard_normal((3, 4, 3, 2))
    b = rng.standard_normal(3)
    pads = (1, 1, 0, 1)
    Ho = (7 + 2 - 3) // stride[0] + 1
    cols = Ho * (6 + 1) if stride == (1, 1) else Ho * 6  # stride 1 works at the padded width
    monkeypatch.setattr(cpu_conv, "CHUNK_BYTES", chunk * 4 * 3 * 2 * cols * 8)
    assert cpu_conv.chunk_size(5, 4 * 3 * 2, cols, 8) == chunk
    for ctx in ({}, None):
        y = ops.conv2d(x, w, b, stride, pads, ctx=ctx)
        np.testing.assert_allclose(y, ref.conv2d(x, w, b, stride, pads), rtol=1e-10, atol=1e-10)
        gy = rng.standard_normal(y.shape)
        got = ops.conv2d_backward(gy, x, w, stride, pads, ctx=ctx)
        for g, r in zip(got, ref.conv2d_backward(gy, x, w, stride, pads)):
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10)


def test_ctx_is_not_reused_for_another_input():
    """A ctx filled by a forward on x1 must not leak into the backward of x2 (same shapes)."""
    rng = np.random.default_rng(9)
    x1 = rng.standard_normal((4, 3, 6, 6))
    x2 = rng.standard_normal((4, 3, 6, 6))
    w = rng.standard_normal((5, 3, 3, 3))
    ctx = {}
    ops.conv2d(x1, w, padding=1, ctx=ctx)
    gy = rng.standard_normal((4, 5, 6, 6))
    got = ops.conv2d_backward(gy, x2, w, padding=1, ctx=ctx)
    for g, r in zip(got, ref.conv2d_backward(gy, x2, w, (1, 1), (1, 1, 1, 1))):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10)
    pctx = {}
    ops.max_pool2d(x1, 2, ctx=pctx)
    g = rng.standard_normal((4, 3, 3, 3))
    np.testing.assert_allclose(ops.max_pool2d_backward(g, x2, 2, ctx=pctx),
                               ref.max_pool2d_backward(g, x2, (2, 2), (2, 2), (0, 0)))


@pytest.mark.parametrize("C,K", [(1, 2), (4, 3)])  # direct path, im2col path
def test_conv2d_propagates_nan_to_exactly_the_windows_that_see_it(C, K):
    x = np.ones((2, C, 7, 7), np.float32)
    x[1, 0, 3, 3] = np.nan
    w = np.ones((K, C, 3, 3), np.float32)
    y = ops.conv2d(x, w, padding=1)
    assert not np.isnan(y[0]).any()
    expected = np.zeros((7, 7), bool)
    expected[2:5, 2:5] = True
    for k in range(K):
        np.testing.assert_array_equal(np.isnan(y[1, k]), expected)
