"""The Winograd F(2x2, 3x3) path for float32 3x3 stride-1 convolutions.

The tile transforms are checked against the matrices written out in NumPy
(every masked-tail length, the position subsets the weight gradient uses,
nothing written outside its rows); whole convolutions against the float64
loop reference on shapes that exercise odd output sizes, every padding
0..2, chunks that cross images, and channel counts off the tile multiples.
The 8-lane (AVX2) build runs a Winograd case in test_conv_implicit.py's
subprocess test.
"""
from __future__ import annotations


import numpy as np
import pytest
from numba import njit

import _reference as ref
from _checks import check_conv_grads_by_fd, check_conv_vs_reference
from nbcnn import ops
from nbcnn.kernels.cpu import winograd
from nbcnn.kernels.cpu.microkernel import VL
from nbcnn.kernels.cpu.winograd_ir import wg_grad_hi, wg_grad_lo, wg_in, wg_in_hi, wg_in_lo, wg_out

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)


@njit
def _in(sel, D, d0, ld, S, s0, ws, n):
    if sel == 0:
        wg_in(D, d0, ld, S, s0, ws, n)
    elif sel == 1:
        wg_in_lo(D, d0, ld, S, s0, ws, n)
    else:
        wg_in_hi(D, d0, ld, S, s0, ws, n)


@njit
def _grad(sel, D, d0, ld, S, s0, ws, n):
    if sel == 1:
        wg_grad_lo(D, d0, ld, S, s0, ws, n)
    else:
        wg_grad_hi(D, d0, ld, S, s0, ws, n)


@njit
def _out(D, d0, dws, S, s0, ld, n, wcols, rows, b):
    wg_out(D, d0, dws, S, s0, ld, n, wcols, rows, b)


def test_the_three_matrices_compute_a_3x3_correlation():
    """A^T [(G g G^T) * (B^T d B)] A == the valid 3x3 correlation of a 4x4 tile (the algebra the kernels rely on)."""
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
    y = AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T
    want = np.array([[(d[a:a + 3, b:b + 3] * g).sum() for b in range(2)] for a in range(2)])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(winograd._GG.reshape(4, 4, 3, 3), np.einsum("ai,bj->abij", G, G), rtol=0, atol=0)


@pytest.mark.parametrize("n", [1, VL - 1, VL, VL + 1, 2 * VL + 3])
@pytest.mark.parametrize("sel", [0, 1, 2])
def test_input_transform(n, sel):
    x0, x1 = [(0, 16), (0, 8), (8, 16)][sel]
    rng = np.random.default_rng(n)
    ws, pad = 2 * n + 5, 7
    S = rng.standard_normal(pad + 4 * ws + 3).astype(np.float32)
    ld = n + 3
    D = np.full(2 + (x1 - x0) * ld + 4, np.nan, np.float32)
    _in(sel, D, 2, ld, S, pad, ws, n)
    rows = S[pad:pad + 4 * ws].reshape(4, ws).astype(np.float64)
    for m in range(n):
        v = (BT @ rows[:, 2 * m:2 * m + 4] @ BT.T).reshape(16)
        for xi in range(x0, x1):
            assert abs(D[2 + (xi - x0) * ld + m] - v[xi]) <= 1e-5, (m, xi)
    written = np.zeros(D.shape, bool)
    for xi in range(x1 - x0):
        written[2 + xi * ld:2 + xi * ld + n] = True
    assert np.isnan(D[~written]).all()


@pytest.mark.parametrize("n", [1, VL - 1, VL, VL + 1, 2 * VL + 3])
@pytest.mark.parametrize("sel", [1, 2])
def test_gradient_transform(n, sel):
    x0 = 8 * (sel - 1)
    rng = np.random.default_rng(10 + n)
    ws = 2 * n + 1
    S = rng.standard_normal(3 + 2 * ws).astype(np.float32)
    A = AT.T
    ld = n + 1
    D = np.full(1 + 8 * ld, np.nan, np.float32)
    _grad(sel, D, 1, ld, S, 3, ws, n)
    rows = S[3:3 + 2 * ws].reshape(2, ws).astype(np.float64)
    for m in range(n):
        v = (A @ rows[:, 2 * m:2 * m + 2] @ A.T).reshape(16)[x0:x0 + 8]
        np.testing.assert_allclose(D[1 + np.arange(8) * ld + m], v, rtol=1e-6, atol=1e-6)
    assert np.isnan(D[0]) and np.isnan(D[1 + np.arange(8) * ld + n]).all()


@pytest.mark.parametrize("n", [1, VL - 1, VL, VL + 1, 2 * VL + 3])
@pytest.mark.parametrize("odd,rows", [(0, 2), (1, 2), (0, 1), (1, 1)])
def test_output_transform_crops_and_adds_bias(n, odd, rows):
    rng = np.random.default_rng(20 + n)
    ld = n + 2
    S = rng.standard_normal(16 * ld + 5).astype(np.float32)
    wcols = 2 * n - odd
    dws = wcols + 3
    D = np.full(4 + 2 * dws, np.nan, np.float32)
    _out(D, 4, dws, S, 5, ld, n, wcols, rows, np.float32(0.25))
    for m in range(n):
        M = np.array([S[5 + xi * ld + m] for xi in range(16)], np.float64).reshape(4, 4)
        y = AT @ M @ AT.T + 0.25
        for a in range(rows):
            for c in range(2):
                if 2 * m + c < wcols:
                    assert abs(D[4 + a * dws + 2 * m + c] - y[a, c]) <= 1e-5
    written = np.zeros(D.shape, bool)
    for a in range(rows):
        written[4 + a * dws:4 + a * dws + wcols] = True
    assert np.isnan(D[~written]).all()
    assert not np.isnan(D[written]).any()


M = 16   # channels in the cases below: the thresholds are lowered for them (small, fast shapes)


@pytest.fixture(autouse=True)
def _small_shapes_take_the_path(monkeypatch, request):
    if "defaults" not in request.node.name:
        monkeypatch.setattr(winograd, "MIN_CHANNELS", M)
        monkeypatch.setattr(winograd, "MIN_PIXELS", 1)


CASES = [
    # (N, C, H, W, K, pads (top, bottom, left, right))
    (2, M, 8, 8, M, (1, 1, 1, 1)),                  # 16 channels in and out ('same')
    (3, M + 1, 7, 9, M + 3, (1, 1, 1, 1)),          # odd output sizes, K and C off every tile multiple
    (1, M, 5, 5, M + 4, (0, 0, 0, 0)),              # batch 1, "valid"
    (2, M + 4, 6, 11, M, (2, 1, 0, 2)),             # asymmetric pads 0..2
    (2, M, 3, 2 * VL + 9, M, (2, 2, 2, 2)),         # "full": rows of more than one vector of tiles
    (9, M, 6, 6, M, (1, 1, 1, 1)),                  # many small images: chunks cross image borders
]


def _data(case, seed=0):
    N, C, H, W, K, pads = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, 3, 3)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    return x, w, b, pads


@pytest.mark.parametrize("case", CASES, ids=str)
def test_winograd_conv_vs_reference(case):
    x, w, b, pads = _data(case)
    assert winograd.applies(x.shape, w.shape, (1, 1), pads)
    check_conv_vs_reference(x, w, b, 1, pads, atol=2e-6)


def test_winograd_gradients_by_finite_differences():
    x, w, b, pads = _data(CASES[1], seed=3)
    check_conv_grads_by_fd(x, w, b, 1, pads, np.random.default_rng(4))


def test_the_extra_tile_row_of_an_odd_size_never_reaches_a_kept_output():
    """With no padding and an odd output height, the last tile row reads the next channel's first
    row; that read only feeds the cropped output row, exactly: a NaN there leaves the rest alone."""
    x, w, b, pads = _data((1, M, 7, 8, M, (0, 0, 0, 0)))
    x[0, 1, 0, :] = np.nan                      # row 0 of channel 1 = the row past channel 0's tiles
    y = ops.conv2d(x, w, b, 1, pads)            # output rows 0..4: only row 0 sees the NaN row
    assert np.isnan(y[0, :, 0]).all()
    yr = ref.conv2d(x[:, :, 1:], w, b, (1, 1), pads)
    np.testing.assert_allclose(y[0, :, 1:], yr[0], rtol=1e-5, atol=2e-6 * np.abs(yr).max())


D = winograd.MIN_CHANNELS


@pytest.mark.parametrize("shape,stride,pads,expected", [
    (((4, D, 16, 16), (D, D, 3, 3)), (1, 1), (1, 1, 1, 1), True),
    (((4, D - 1, 16, 16), (D, D - 1, 3, 3)), (1, 1), (1, 1, 1, 1), False),   # too few input channels
    (((4, D, 16, 16), (D - 1, D, 3, 3)), (1, 1), (1, 1, 1, 1), False),       # too few filters
    (((3, D, 16, 16), (D, D, 3, 3)), (1, 1), (1, 1, 1, 1), False),           # 768 output pixels: too few
    (((1, 512, 14, 14), (512, 512, 3, 3)), (1, 1), (1, 1, 1, 1), False),     # batch 1, 14x14 (VGG-16's last block)
    (((4, D, 16, 16), (D, D, 3, 3)), (2, 2), (1, 1, 1, 1), False),           # strided
    (((4, D, 16, 16), (D, D, 5, 5)), (1, 1), (2, 2, 2, 2), False),           # 5x5
    (((4, D, 16, 16), (D, D, 3, 3)), (1, 1), (3, 0, 0, 0), False),           # padding > 2
])
def test_which_convolutions_take_the_path_with_the_defaults(shape, stride, pads, expected):
    assert winograd.applies(*shape, stride, pads) is expected
