"""The float32 implicit-GEMM convolution and its micro-kernels, at every tile edge.

The tile sizes (MR x NR outer-product tiles, MD x ND dot tiles, VL lanes)
depend on the host CPU, so the shapes here are built from them: filters and
channels one below, at and one above a tile multiple, output rows that end
just before / after a tile boundary. The reference is the float64 loop
reference; a subprocess repeats a few cases with the AVX2 tile shape.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba import njit

import _reference as ref
from _checks import check_conv_grads_by_fd
from nbcnn import ops
from nbcnn.kernels.cpu import conv_layout
from nbcnn.kernels.cpu.microkernel import MD, MR, ND, NR, VL, mk_dot, mk_outer, vadd, vcopy, vjoin2, vsplit2, vsum, vzero
from nbcnn.kernels.geometry import resolve_padding


@njit
def _outer_tiles(A, B, offs, K, C, ldc, nj):
    for jb in range(nj):
        mk_outer(A, 0, B, offs, jb * NR, K, C, jb * NR, ldc)


@njit
def _dot_tile(A, aoffs, astride, B, boffs, bstride, nimg, L, O, o0, ldo):
    mk_dot(A, 0, aoffs, astride, B, 0, boffs, bstride, nimg, L, O, o0, ldo)


def test_mk_outer_matches_numpy_with_scattered_rows():
    rng = np.random.default_rng(0)
    K, nj = 37, 3
    B = rng.standard_normal(5000).astype(np.float32)
    offs = rng.integers(0, 5000 - nj * NR, size=K).astype(np.int64)
    A = rng.standard_normal((K, MR)).astype(np.float32)
    C = np.full(MR * nj * NR + 5, np.nan, np.float32)          # the tile overwrites, never reads C
    _outer_tiles(A.reshape(-1), B, offs, K, C, nj * NR, nj)
    rows = np.stack([B[o:o + nj * NR] for o in offs]).astype(np.float64)   # (K, nj*NR)
    expected = A.astype(np.float64).T @ rows
    np.testing.assert_allclose(C[:MR * nj * NR].reshape(MR, nj * NR), expected, rtol=1e-5, atol=1e-5)
    assert np.isnan(C[-5:]).all()                              # nothing written past the tile


def test_mk_outer_with_zero_depth_writes_zeros():
    C = np.full(MR * NR, 7.0, np.float32)
    _outer_tiles(np.zeros(MR, np.float32), np.zeros(NR, np.float32), np.zeros(1, np.int64), 0, C, NR, 1)
    np.testing.assert_array_equal(C, 0)


def test_mk_dot_accumulates_segments_of_several_images():
    rng = np.random.default_rng(1)
    nimg, L = 3, 4
    A = rng.standard_normal(2000).astype(np.float32)
    B = rng.standard_normal(3000).astype(np.float32)
    aoffs = rng.integers(0, 300, size=MD).astype(np.int64)
    boffs = rng.integers(0, 500, size=ND).astype(np.int64)
    astride, bstride = 411, 707
    ldo, o0 = ND + 3, 5                                        # a tile inside a wider matrix
    O = rng.standard_normal(o0 + MD * ldo + 4).astype(np.float32)   # accumulated into, not overwritten
    expected = O.astype(np.float64)
    for i in range(MD):
        for j in range(ND):
            for n in range(nimg):
                a = A[n * astride + aoffs[i]:][:L * VL].astype(np.float64)
                b = B[n * bstride + boffs[j]:][:L * VL].astype(np.float64)
                expected[o0 + i * ldo + j] += (a * b).sum()
    _dot_tile(A, aoffs, astride, B, boffs, bstride, nimg, L, O, o0, ldo)
    np.testing.assert_allclose(O, expected, rtol=1e-5, atol=1e-4)   # entries outside the tile untouched


def test_mk_dot_with_nothing_to_sum_leaves_the_tile():
    O = np.arange(MD * ND, dtype=np.float32)
    z = np.zeros(4 * VL, np.float32)
    _dot_tile(z, np.zeros(MD, np.int64), 0, z, np.zeros(ND, np.int64), 0, 0, 2, O, 0, ND)
    np.testing.assert_array_equal(O, np.arange(MD * ND, dtype=np.float32))


@njit
def _rows(op, D, d0, S, s0, n, b):
    if op == 0:
        vadd(D, d0, S, s0, n)
    elif op == 1:
        vcopy(D, d0, S, s0, n, b)
    else:
        vzero(D, d0, n)


@pytest.mark.parametrize("n", [0, 1, VL - 1, VL, VL + 1, 3 * VL + 5, 136])
@pytest.mark.parametrize("op", ["add", "copy", "zero"])
def test_row_helpers_touch_exactly_n_floats(op, n):
    rng = np.random.default_rng(n)
    D = rng.standard_normal(400).astype(np.float32)
    S = rng.standard_normal(400).astype(np.float32)
    d0, s0, b = 3, 7, np.float32(0.25)                   # unaligned starts
    want = D.copy()
    if op == "add":
        want[d0:d0 + n] += S[s0:s0 + n]
    elif op == "copy":
        want[d0:d0 + n] = S[s0:s0 + n] + b
    else:
        want[d0:d0 + n] = 0
    _rows(["add", "copy", "zero"].index(op), D, d0, S, s0, n, b)
    np.testing.assert_array_equal(D, want)                # and nothing outside [d0, d0 + n)


@njit
def _sum(D, d0, S, s0, offs, o0, m, n):
    vsum(D, d0, S, s0, offs, o0, m, n)


@pytest.mark.parametrize("n", [0, 1, VL - 1, VL, VL + 1, 3 * VL + 5, 196])
@pytest.mark.parametrize("m", [0, 1, 25])
def test_vsum_adds_shifted_rows_in_order(m, n):
    rng = np.random.default_rng(100 * m + n)
    S = rng.standard_normal(2000).astype(np.float32)
    offs = np.concatenate([[999], rng.integers(-40, 1500, size=m)]).astype(np.int64)   # offs[0] unused (o0 = 1)
    D = np.full(n + 9, np.nan, np.float32)
    _sum(D, 4, S, 60, offs, 1, m, n)
    want = np.zeros(n, np.float32)
    for t in range(m):                                    # the same float32 order: bitwise equal
        want = want + S[60 + offs[1 + t]:60 + offs[1 + t] + n]
    np.testing.assert_array_equal(D[4:4 + n], want)
    assert np.isnan(D[:4]).all() and np.isnan(D[4 + n:]).all()


@njit
def _split(D, d0, e0, S, s0, n):
    vsplit2(D, d0, e0, S, s0, n)


@njit
def _join(D, d0, S, s0, e0, n):
    vjoin2(D, d0, S, s0, e0, n)


@pytest.mark.parametrize("n", [0, 1, VL // 2 + 1, VL, VL + 3, 2 * VL + 7])
def test_even_odd_split_and_join(n):
    rng = np.random.default_rng(n)
    S = rng.standard_normal(300).astype(np.float32)
    D = rng.standard_normal(300).astype(np.float32)
    want = D.copy()
    want[3:3 + n] = S[5:5 + 2 * n:2]
    want[150:150 + n] = S[6:6 + 2 * n:2]
    _split(D, 3, 150, S, 5, n)
    np.testing.assert_array_equal(D, want)
    D = rng.standard_normal(300).astype(np.float32)
    want = D.copy()
    want[7:7 + 2 * n:2] = S[11:11 + n]
    want[8:8 + 2 * n:2] = S[200:200 + n]
    _join(D, 7, S, 11, 200, n)
    np.testing.assert_array_equal(D, want)


# (N, C, H, W, K, kh, kw, stride, padding) built around the host's tile sizes.
EDGE_CASES = [
    (1, 1, 5, 5, 1, 3, 3, 1, 0),                    # one of everything
    (2, 3, 9, 9, MR - 1, 3, 3, 1, 1),               # filters one short of a tile
    (2, 2, 7, 8, MR + 1, 3, 3, 1, "same"),          # one filter into a second tile
    (1, 4, 6, 6, 2 * MR, 1, 1, 1, 0),               # pointwise, exact tiles
    (3, ND + 1, 5, 7, 3, 1, 1, 1, 0),               # weight-gradient columns one past a dot tile
    (2, 1, NR // 4 + 1, 4, 2, 2, 2, 1, "full"),     # output rows straddling an NR tile
    (2, 3, 11, NR + 3, 5, 3, 3, 1, 0),              # one output row longer than a tile
    (2, 3, 10, 10, MR + 3, 10, 10, 1, 0),           # kernel == input: a single output pixel
    (2, 2, 12, 11, 7, 3, 3, 2, 1),                  # stride 2: gcol path
    (1, 3, 17, 15, 4, 5, 3, (3, 2), "same"),        # sh != sw with asymmetric 'same' pads
    (2, 3, 23, 23, MR + 2, 11, 11, 4, 0),           # AlexNet-like
    (1, 2, 6, 6, 3, 3, 3, 1, 4),                    # padding larger than the kernel
    # C >= MR: the input gradient goes by stride phases (C < MR goes through gcol)
    (2, MR, 11, 12, 5, 3, 3, 2, 1),                 # strided 3x3, sub-filters 2x2/2x1/1x2/1x1
    (1, MR + 3, 13, 11, 4, 5, 3, (2, 3), "same"),   # sh != sw, asymmetric pads
    (2, MR, 9, 9, 3, 1, 1, 2, 1),                   # 1x1 stride 2: phases without any tap
    (2, MR, 10, 11, 4, 3, 3, 2, 0),                 # stride 2, even left pad (0), odd width
    (1, MR, 9, 10, 3, 5, 5, 2, 2),                  # stride 2, even left pad (2)
    (1, MR + 2, 9, 13, 3, 3, 3, 2, 1),              # stride 2, odd left pad, odd width
    (1, MR, 12, 13, 2, 3, 3, 3, 0),                 # stride 3 (generic phase split)
    (2, MR + 1, 9, 10, 6, 3, 3, 1, "same"),         # stride 1 with padding, shared row borders
]


def _case(case, seed=0):
    N, C, H, W, K, kh, kw, s, p = case
    st = (s, s) if isinstance(s, int) else s
    pads = resolve_padding(p, (kh, kw), st, (H, W))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((K, C, kh, kw)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    return x, w, b, st, pads


@pytest.mark.parametrize("case", EDGE_CASES, ids=str)
def test_float32_conv_at_tile_edges_vs_reference(case):
    x, w, b, st, pads = _case(case)
    ctx = {}
    y = ops.conv2d(x, w, b, st, pads, ctx=ctx)
    yr = ref.conv2d(x, w, b, st, pads)
    scale = np.abs(yr).max()
    np.testing.assert_allclose(y, yr, rtol=1e-5, atol=1e-5 * scale)
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    gxr, gwr, gbr = ref.conv2d_backward(gy, x, w, st, pads)
    for use_ctx in (True, False):
        gx, gw, gb = ops.conv2d_backward(gy, x, w, st, pads, ctx=ctx if use_ctx else None)
        np.testing.assert_allclose(gx, gxr, rtol=1e-5, atol=1e-5 * np.abs(gxr).max())
        np.testing.assert_allclose(gw, gwr, rtol=1e-5, atol=1e-5 * np.abs(gwr).max())
        np.testing.assert_allclose(gb, gbr, rtol=1e-5, atol=1e-5 * np.abs(gbr).max())
    gx_none, gw2, _ = ops.conv2d_backward(gy, x, w, st, pads, need_gx=False)
    assert gx_none is None
    np.testing.assert_array_equal(gw2, gw)


@pytest.mark.parametrize("case", [EDGE_CASES[2], EDGE_CASES[8], EDGE_CASES[9]], ids=str)
def test_float32_gradients_by_finite_differences(case):
    x, w, b, st, pads = _case(case, seed=3)
    check_conv_grads_by_fd(x, w, b, st, pads, np.random.default_rng(4))


@pytest.mark.parametrize("H,W,k,s,pads", [
    (7, 9, 3, 1, (0, 0, 0, 0)),     # one copy per plane
    (7, 9, 3, 1, (2, 1, 0, 0)),     # rows-only padding: still one copy per plane
    (7, 9, 3, 1, (1, 1, 1, 1)),
    (8, 11, 3, 2, (1, 1, 1, 1)),    # stride 2, odd left pad
    (8, 10, 5, 2, (2, 2, 2, 2)),    # stride 2, even left pad
    (9, 9, 3, 3, (1, 0, 2, 1)),     # stride 3 (scalar split)
])
def test_fill_phases_matches_numpy(H, W, k, s, pads):
    """Every phase plane equals np.pad(x)[..., a::s, b::s] (cut or zero-extended to Hq x Wq); slack zero."""
    rng = np.random.default_rng(H * W + s)
    x = rng.standard_normal((2, 3, H, W)).astype(np.float32)
    g = conv_layout.Geometry(x.shape, (4, 3, k, k), (s, s), pads)
    xb = np.full(g.xb_len, np.nan, np.float32)
    conv_layout.fill_phases(x, g, xb)
    pt, pb, pl, pr = pads
    xp = np.zeros((2, 3, s * g.Hq + H + pt, s * g.Wq + W + pl), np.float32)
    xp[:, :, pt:pt + H, pl:pl + W] = x
    planes = xb[:2 * 3 * s * s * g.Hq * g.Wq].reshape(2, 3, s, s, g.Hq, g.Wq)
    for a in range(s):
        for b in range(s):
            np.testing.assert_array_equal(planes[:, :, a, b], xp[:, :, a::s, b::s][:, :, :g.Hq, :g.Wq])
    assert (xb[2 * 3 * s * s * g.Hq * g.Wq:] == 0).all()


def test_geometry_slack_covers_every_read():
    """The padded-input buffer is long enough for the last image's last tile (no out-of-bounds reads)."""
    for case in EDGE_CASES:
        x, w, b, st, pads = _case(case)
        g = conv_layout.Geometry(x.shape, w.shape, st, pads)
        last_read = (g.N - 1) * g.img + g.Ppad - 1 + int(g.offs.max())
        assert g.xb_len > last_read
        assert g.xb_len > (g.N - 1) * g.img + int(g.boffs.max()) + g.Pv - 1


def test_avx2_tile_shape_in_a_subprocess(tmp_path):
    """The tile shape used on CPUs without AVX-512 (NUMBA_CPU_NAME set -> 8-lane vectors), on three
    implicit-GEMM cases, one Winograd case (its thresholds lowered to reach a small shape) and one
    batch-in-lanes case (LeNet conv2 at 2 groups of 8 images)."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import numpy as np
        import _reference as ref
        from nbcnn import ops
        from nbcnn.kernels.cpu import conv_lanes, microkernel as m, winograd
        assert (m.VL, m.AVX512) == (8, False), (m.VL, m.AVX512)
        assert conv_lanes.applies((16, 6, 14, 14), (16, 6, 5, 5), (1, 1), (0, 0, 0, 0))
        winograd.MIN_CHANNELS, winograd.MIN_PIXELS = 16, 1
        rng = np.random.default_rng(0)
        for (N, C, H, W, K, k, s, p) in [(2, 3, 9, 8, 7, 3, 1, 1), (2, 5, 11, 10, 9, 3, 2, 1), (1, 1, 6, 6, 2, 5, 1, 2),
                                         (2, 17, 9, 21, 19, 3, 1, 1), (16, 6, 14, 14, 16, 5, 1, 0)]:
            x = rng.standard_normal((N, C, H, W)).astype(np.float32)
            w = rng.standard_normal((K, C, k, k)).astype(np.float32)
            y = ops.conv2d(x, w, None, s, p)
            pads = (p,) * 4
            np.testing.assert_allclose(y, ref.conv2d(x, w, None, (s, s), pads), rtol=1e-4, atol=1e-4)
            gy = rng.standard_normal(y.shape).astype(np.float32)
            for got, want in zip(ops.conv2d_backward(gy, x, w, s, p), ref.conv2d_backward(gy, x, w, (s, s), pads)):
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        print("ok")
    """)
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_small_batches_split_tiles_across_threads_with_identical_results():
    """N < threads runs one task per (image, tile): bitwise the same as the per-image path."""
    import numba

    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, MR + 1, 13, 11)).astype(np.float32)
    w = rng.standard_normal((MR + 3, MR + 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(MR + 3).astype(np.float32)
    full = ops.conv2d(x, w, b, 1, 1)                       # 3 images: the per-image path (2 threads)
    np.testing.assert_allclose(full, ref.conv2d(x, w, b, (1, 1), (1, 1, 1, 1)), rtol=1e-5, atol=1e-4)
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs NUMBA_NUM_THREADS >= 2")
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        one = ops.conv2d(x[1:2], w, b, 1, 1)               # N = 1 < 2 threads: split tiles
        numba.set_num_threads(1)
        serial = ops.conv2d(x[1:2], w, b, 1, 1)            # 1 thread: the per-image path
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one[0], full[1])
    np.testing.assert_array_equal(one, serial)


def test_a_layer_ctx_keeps_its_padded_input_buffer_across_steps():
    """The padded-input buffer is refilled in place each step, not reallocated."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    ctx = {}
    x1 = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    ops.conv2d(x1, w, padding=1, ctx=ctx)
    buf = ctx["mk_xb"]
    x2 = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    y2 = ops.conv2d(x2, w, padding=1, ctx=ctx)
    assert ctx["mk_xb"] is buf
    gy = rng.standard_normal(y2.shape).astype(np.float32)
    for got, want in zip(ops.conv2d_backward(gy, x2, w, padding=1, ctx=ctx),
                         ref.conv2d_backward(gy, x2, w, (1, 1), (1, 1, 1, 1))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
