"""The batch-in-lanes float32 convolution (nbcnn/kernels/cpu/conv_lanes.py) and its two intrinsics.

Shapes are built from the host's lane count VL (16 with AVX-512, 8 otherwise),
so groups of VL images, a last group with empty lanes, filters and channels
off the tile multiples all occur; the reference is the float64 loop reference.
The 8-lane build runs a case in test_conv_implicit.py's AVX2 subprocess test.
"""
from __future__ import annotations

import numpy as np
import pytest
from numba import njit

import _reference as ref
from _checks import check_conv_grads_by_fd, check_conv_vs_reference
from nbcnn import ops
from nbcnn.kernels.cpu import conv_lanes
from nbcnn.kernels.cpu.microkernel import MD, MR, ND, NV, VL, mk_outer_cols, vtrans


@njit
def _trans(D, d0, ds, nd, dl, S, s0, ss, ns, sl, b):
    vtrans(D, d0, ds, nd, dl, S, s0, ss, ns, sl, b)


@pytest.mark.parametrize("nd,dl,ns,sl", [(VL, VL, VL, VL), (VL - 3, VL, VL, VL - 3), (VL, VL - 3, VL - 3, VL),
                                         (3, 5, 7, 2), (0, 4, 4, 4), (VL, VL, 0, VL), (1, 1, 1, 1)])
def test_vtrans_moves_one_block_and_nothing_else(nd, dl, ns, sl):
    rng = np.random.default_rng(nd * 100 + dl)
    S = rng.standard_normal(40 * VL).astype(np.float32)
    D = np.full(40 * VL, np.nan, np.float32)
    s0, ss, d0, ds = 5, VL + 7, 11, VL + 3
    _trans(D, d0, ds, nd, dl, S, s0, ss, ns, sl, np.float32(0.5))
    want = np.full_like(D, np.nan)
    for q in range(nd):
        for lane in range(dl):
            want[d0 + q * ds + lane] = (S[s0 + lane * ss + q] if lane < ns and q < sl else 0) + np.float32(0.5)
    np.testing.assert_array_equal(D, want)   # NaN where nothing may be written


@njit
def _cols(A, B, offs, cols, K, C, ldc):
    mk_outer_cols(A, 0, B, offs, cols, K, C, 0, ldc)


def test_mk_outer_cols_reads_each_vector_from_its_own_base():
    rng = np.random.default_rng(2)
    K = 29
    B = rng.standard_normal(4000).astype(np.float32)
    offs = rng.integers(0, 2000, size=K).astype(np.int64)
    cols = rng.integers(0, 2000 - VL, size=NV).astype(np.int64)
    A = rng.standard_normal((K, MR)).astype(np.float32)
    ldc = NV * VL + 3
    C = np.full(MR * ldc, np.nan, np.float32)
    _cols(A.reshape(-1), B, offs, cols, K, C, ldc)
    got = C.reshape(MR, ldc)
    for v in range(NV):
        rows = np.stack([B[cols[v] + o:cols[v] + o + VL] for o in offs]).astype(np.float64)   # (K, VL)
        np.testing.assert_allclose(got[:, v * VL:(v + 1) * VL], A.astype(np.float64).T @ rows, rtol=1e-5, atol=1e-5)
    assert np.isnan(got[:, NV * VL:]).all()


CASES = [
    # (N, C, H, W, K, kh, kw, pads)
    (2 * VL, 6, 14, 14, 16, 5, 5, (0, 0, 0, 0)),          # LeNet conv2
    (2 * VL, 1, 12, 12, 6, 5, 5, (2, 2, 2, 2)),           # LeNet conv1 style, C = 1
    (2 * VL - 3, 3, 9, 11, MR + 1, 3, 4, (1, 0, 2, 1)),   # empty lanes, asymmetric pads, kh != kw
    (4 * VL, MR + 1, 6, 5, MD + 1, 3, 3, (1, 1, 1, 1)),   # C past a tile, 4 groups
    (2 * VL, 2, 7, 9, 5, 1, 1, (0, 0, 0, 0)),             # 1x1
    (2 * VL, 4, 5, 13, 3, 2, 7, (0, 1, 3, 0)),            # output rows of odd widths; R off ND
    (VL - VL // 8, 2, 8, 8, 4, 3, 3, (1, 1, 1, 1)),       # one group, with empty lanes
]


def _data(case, seed=0):
    N, C, H, W, K, kh, kw, pads = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, kh, kw)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    return x, w, b, pads


@pytest.mark.parametrize("case", CASES, ids=str)
def test_lanes_conv_vs_reference(case):
    x, w, b, pads = _data(case)
    assert conv_lanes.applies(x.shape, w.shape, (1, 1), pads)   # ops really takes this path
    ctx = check_conv_vs_reference(x, w, b, 1, pads)
    assert "ln_xT" in ctx


def test_lanes_gradients_by_finite_differences():
    x, w, b, pads = _data(CASES[2], seed=3)
    check_conv_grads_by_fd(x, w, b, 1, pads, np.random.default_rng(4))


def test_a_nan_stays_in_its_own_image():
    """Images share vectors here: a NaN in one image's input must not reach another image's
    output or input gradient (the weight gradient sums over images, so it does get it)."""
    x, w, b, pads = _data(CASES[0], seed=5)
    ctx = {}
    clean = ops.conv2d(x, w, b, 1, pads, ctx=ctx)
    gy = np.random.default_rng(6).standard_normal(clean.shape).astype(np.float32)
    gx_clean = ops.conv2d_backward(gy, x, w, 1, pads, ctx=ctx)[0]
    bad = 3
    x[bad, 1, 4, 5] = np.nan
    gy[bad + 1, 2, 3, 3] = np.nan
    y = ops.conv2d(x, w, b, 1, pads, ctx=ctx)
    gx, gw, _ = ops.conv2d_backward(gy, x, w, 1, pads, ctx=ctx)
    others = [n for n in range(x.shape[0]) if n not in (bad, bad + 1)]
    np.testing.assert_array_equal(y[others], clean[others])
    np.testing.assert_array_equal(gx[others], gx_clean[others])
    assert np.isnan(y[bad]).any() and np.isnan(gx[bad + 1]).any() and np.isnan(gw).any()


@pytest.mark.parametrize("shape,wshape,stride,pads,expected", [
    ((4 * VL, 6, 14, 14), (16, 6, 5, 5), (1, 1), (0, 0, 0, 0), True),      # LeNet conv2, batch 64 (AVX-512)
    ((2 * VL, 1, 28, 28), (6, 1, 5, 5), (1, 1), (2, 2, 2, 2), True),       # LeNet conv1
    ((VL, 6, 14, 14), (16, 6, 5, 5), (1, 1), (0, 0, 0, 0), True),          # one group (an epoch's last batch)
    ((3 * VL, 6, 14, 14), (16, 6, 5, 5), (1, 1), (0, 0, 0, 0), True),      # three groups
    ((VL // 2, 6, 14, 14), (16, 6, 5, 5), (1, 1), (0, 0, 0, 0), False),    # half the lanes empty
    ((2 * VL - VL // 2, 6, 14, 14), (16, 6, 5, 5), (1, 1), (0, 0, 0, 0), False),   # > 1/4 empty lanes
    ((4 * VL, 6, 14, 14), (16, 6, 5, 5), (2, 2), (0, 0, 0, 0), False),     # strided
    ((4 * VL, 64, 32, 32), (64, 64, 3, 3), (1, 1), (1, 1, 1, 1), False),   # VGG-sized planes
    ((4 * VL, 3, 32, 32), (16, 3, 3, 3), (1, 1), (1, 1, 1, 1), False),     # 32x32: no gain measured
    ((4 * VL, 16, 28, 28), (16, 16, 3, 3), (1, 1), (1, 1, 1, 1), False),   # 28x28 3x3: 7 % junk, even
    ((4 * VL, 16, 14, 14), (32, 16, 5, 5), (1, 1), (2, 2, 2, 2), True),    # 14x14: small plane
    ((4 * VL, 32, 16, 16), (32, 32, 3, 3), (1, 1), (1, 1, 1, 1), False),   # Winograd's (16x16 plane)
    ((4 * VL, 32, 7, 7), (32, 32, 3, 3), (1, 1), (1, 1, 1, 1), True),      # 7x7: lanes beat Winograd
    ((4 * VL, 512, 7, 7), (512, 512, 3, 3), (1, 1), (1, 1, 1, 1), False),  # buffers over budget
])
def test_which_convolutions_take_the_lanes_path(shape, wshape, stride, pads, expected):
    assert conv_lanes.applies(shape, wshape, stride, pads) is expected
    if expected:   # and the geometry's tables stay inside the buffers they index
        g = conv_lanes._geometry(shape, wshape, pads)
        assert g.img >= shape[1] * g.Hp * g.Wp * VL
        assert int(g.cols.max()) + int(g.offs.max()) + VL <= g.img
        assert g.aoffs.shape[0] % MD == 0 and g.boffs.shape[0] % ND == 0


def test_chunked_forward_and_gcol_match_whole(monkeypatch):
    """Y^T and gcol are computed a few output positions / rows at a time (L2-sized chunks);
    tiny chunk budgets (several chunks, a partial last one) give the same results."""
    case = (2 * VL, 3, 11, 13, MR + 3, 3, 5, (1, 1, 2, 0))
    x, w, b, pads = _data(case, seed=8)
    gy = np.random.default_rng(9).standard_normal(ref.conv2d(x, w, b, (1, 1), pads).shape).astype(np.float32)

    def run(budget):
        monkeypatch.setattr(conv_lanes, "YBUF_BYTES", budget)
        monkeypatch.setattr(conv_lanes, "GCOL_BYTES", budget)
        monkeypatch.setattr(conv_lanes, "_GEOS", {})
        assert conv_lanes.applies(x.shape, w.shape, (1, 1), pads)
        return conv_lanes._geometry(x.shape, w.shape, pads), [ops.conv2d(x, w, b, 1, pads),
                                                             *ops.conv2d_backward(gy, x, w, 1, pads)]

    g, whole = run(1 << 30)
    assert g.cp >= g.P and g.rc >= g.Ho
    g, chunked = run(1)
    assert g.cp < g.P and g.P % g.cp != 0 and g.rc == 1
    np.testing.assert_array_equal(chunked[0], whole[0])       # same tiles, same sums
    np.testing.assert_array_equal(chunked[2], whole[2])
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-6, atol=1e-6 * np.abs(whole[1]).max())  # add order
    gxr = ref.conv2d_backward(gy, x, w, (1, 1), pads)[0]
    np.testing.assert_allclose(chunked[1], gxr, rtol=1e-5, atol=1e-5 * np.abs(gxr).max())


def test_a_layer_ctx_keeps_its_lanes_buffer_across_steps():
    """The lanes input buffer survives the forward's ctx reset: refilled in place each step."""
    x, w, b, pads = _data(CASES[0], seed=10)
    ctx = {}
    ops.conv2d(x, w, b, 1, pads, ctx=ctx)
    buf = ctx["ln_xT"]
    x2 = (x[::-1] * 2).copy()
    y2 = ops.conv2d(x2, w, b, 1, pads, ctx=ctx)
    assert ctx["ln_xT"] is buf
    gy = np.random.default_rng(11).standard_normal(y2.shape).astype(np.float32)
    want_all = ref.conv2d_backward(gy, x2, w, (1, 1), pads)
    for got, want in zip(ops.conv2d_backward(gy, x2, w, 1, pads, ctx=ctx), want_all):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[6]], ids=str)
def test_groups_split_in_two_tasks_give_identical_results(case, monkeypatch):
    """Group counts that do not share out evenly over the threads split each group's work in
    two tasks (S = 2); the arithmetic is the same, so the results are bitwise the same."""
    x, w, b, pads = _data(case, seed=12)
    gy = np.random.default_rng(13).standard_normal(ref.conv2d(x, w, b, (1, 1), pads).shape).astype(np.float32)
    runs = []
    for S in (1, 2):
        monkeypatch.setattr(conv_lanes, "_splits", lambda G, S=S: S)
        ctx = {}
        runs.append([ops.conv2d(x, w, b, 1, pads, ctx=ctx), *ops.conv2d_backward(gy, x, w, 1, pads, ctx=ctx),
                     *ops.conv2d_backward(gy, x, w, 1, pads, ctx=ctx, need_gx=False)[1:]])
    for a, c in zip(*runs):
        np.testing.assert_array_equal(a, c)
