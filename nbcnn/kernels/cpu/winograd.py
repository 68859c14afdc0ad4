"""float32 3x3 stride-1 convolutions by Winograd F(2x2, 3x3) (Lavin & Gray, 2016).

Why: VGG-style layers (3x3, stride 1, many channels) are GEMM-bound, and
F(2x2, 3x3) computes each 2x2 output block with 16 multiplies per (input,
output) channel pair instead of 36: 2.25x fewer flops. The work becomes 16
independent GEMMs (one per transformed position xi) between the transformed
filters U[xi] (K x C) and the transformed input tiles V[xi] (C x tiles), run on
the same ``mk_outer`` micro-kernel as the implicit GEMM path.

Layout: the zero-padded input planes of the implicit GEMM path (the same
buffer, so the weight gradient reuses it); ``wg_in`` splits a tile row's even
and odd columns with shuffles. Work is split into chunks of whole tile rows (over
all images) small enough for the core's L2: per chunk, transform the input
(``wg_in``), 16 GEMMs into M, then transform M back into output rows plus bias
(``wg_out``). Each output is computed by one chunk in a fixed order, so the
result does not depend on the thread count or the chunking.

The same routine computes the input gradient: gx is the "full" correlation of
gy with the spatially flipped filters (channels swapped), padding 2 - p.

Accuracy: the transforms add a few ulps (measured max error vs the float64
reference ~2e-7 relative on N(0, 1) data, as the GEMM path; tests/test_winograd.py).
"""
from __future__ import annotations

import numpy as np
from numba import get_num_threads, get_thread_id, njit, prange

from .bias import bias_grad
from .conv_layout import fill_planes, round_up, thread_rows
from .microkernel import AVX512, MD, MR, ND, NR, VL, compact_code, mk_dot, mk_outer, vadd, vcopy, vzero
from .scratch import scratch
from .winograd_ir import wg_grad_hi, wg_grad_lo, wg_in, wg_in_hi, wg_in_lo, wg_out

# G g G^T of a 3x3 filter g, as one 16 x 9 matrix: kron(G, G) (row 4a + b, column 3i + j)
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
_GG = np.kron(_G, _G).astype(np.float32)

# Measured break-even (fwd+bwd time vs the implicit GEMM, 2 threads; tests/test_winograd.py
# lowers both to reach small shapes). AVX-512: 16-24 channels 1.1-1.6x slower, 32 channels
# 0.9-1.0x, 64 channels 0.6-0.9x, 128 0.7x. The 8-lane (AVX2) build, timed on the same Zen 5
# cores: 8-24 channels already 0.66-0.82x (its 6x16 GEMM tile is the weaker one), 32-64
# channels 0.53-0.61x. Both: a 14x14 batch-1 layer with 512 channels 1.04-1.1x (the
# transformed filters are 16/9 the size of the weights and get little reuse).
MIN_CHANNELS = 32 if AVX512 else 16
MIN_PIXELS = 1024   # N * Ho * Wo


def applies(x_shape, w_shape, stride, pads) -> bool:
    """True where this path is used: 3x3, stride 1, pads <= 2, enough channels and output pixels."""
    N, _, H, W = x_shape
    K, C, kh, kw = w_shape
    if not (kh == 3 and kw == 3 and tuple(stride) == (1, 1) and all(0 <= p <= 2 for p in pads)):
        return False
    pixels = N * (H + pads[0] + pads[1] - 2) * (W + pads[2] + pads[3] - 2)
    return min(C, K) >= MIN_CHANNELS and pixels >= MIN_PIXELS


@njit(parallel=True, cache=True)
def _wino(xb, Ci, plane, ws, th, tw, r, up, Kp, Tcp, ldv, ldm, offs, bias, vbuf, mbuf, y):
    """y = the 3x3 correlation of the zero-padded planes in xb with the transformed filters up, + bias.

    xb: one plane of `plane` floats per (image, channel), rows of ws floats, at
    least 2*th + 2 rows and columns readable (the extra row/column of an odd
    output size only reaches outputs that are cropped); up: U[xi] packed for
    mk_outer (Kp rows per xi); chunks of r tile rows; V and M rows of Tcp
    columns, blocks of ldv / ldm floats per xi.
    """
    N, K, Ho, Wo = y.shape
    TR = N * th
    nch = (TR + r - 1) // r
    nmb = Kp // MR
    yf = y.reshape(N * K * Ho * Wo)
    for ch in prange(nch):
        compact_code()
        tid = get_thread_id()
        V = vbuf[tid]
        M = mbuf[tid]
        tr0 = ch * r
        tr1 = min(TR, tr0 + r)
        for c in range(Ci):
            for tr in range(tr0, tr1):
                n = tr // th
                ti = tr - n * th
                wg_in(V, c * Tcp + (tr - tr0) * tw, ldv, xb, (n * Ci + c) * plane + 2 * ti * ws, ws, tw)
        nj = ((tr1 - tr0) * tw + NR - 1) // NR
        for xi in range(16):
            for jb in range(nj):
                for ib in range(nmb):
                    mk_outer(up, (xi * nmb + ib) * Ci * MR, V, offs, xi * ldv + jb * NR, Ci,
                             M, xi * ldm + ib * MR * Tcp + jb * NR, Tcp)
        for k in range(K):
            for tr in range(tr0, tr1):
                n = tr // th
                ti = tr - n * th
                wg_out(yf, ((n * K + k) * Ho + 2 * ti) * Wo, Wo, M, k * Tcp + (tr - tr0) * tw, ldm, tw, Wo,
                       min(2, Ho - 2 * ti), bias[k])


@njit(cache=True)
def _tiles_of_chunk(grad, x0, D, Tcv, ld, src, nplanes, plane, ws, tr0, tr1, th, tw, L):
    """The weight gradient's transformed tiles of tile rows tr0..tr1 for positions x0..x0+7:
    input tiles (B^T d B, grad=0) or output-gradient tiles (A gy A^T, grad=1) of each of
    nplanes planes per image, zero-padded to whole vectors (the dot products run over them).
    One routine for both: Numba cannot pass the transform intrinsic as a value."""
    Tc = (tr1 - tr0) * tw
    for c in range(nplanes):
        for tr in range(tr0, tr1):
            n = tr // th
            ti = tr - n * th
            d0 = c * Tcv + (tr - tr0) * tw
            s0 = (n * nplanes + c) * plane + 2 * ti * ws
            if grad == 0:
                if x0 == 0:
                    wg_in_lo(D, d0, ld, src, s0, ws, tw)
                else:
                    wg_in_hi(D, d0, ld, src, s0, ws, tw)
            elif x0 == 0:
                wg_grad_lo(D, d0, ld, src, s0, ws, tw)
            else:
                wg_grad_hi(D, d0, ld, src, s0, ws, tw)
        for xi in range(8):
            vzero(D, xi * ld + c * Tcv + Tc, L * VL - Tc)


@njit(parallel=True, cache=True)
def _wino_gw(xb, Ci, plane, ws, gp, K, gplane, gws, th, tw, r, Tcv, ldv, ldg, aoffs, boffs, ncg, vbuf, gbuf, part):
    """part[g, xi, k, c] = sum over the tiles t of chunk group g of G[xi, k, t] * V[xi, c, t].

    V: input tiles as in _wino; G = A gy_t A^T (gy planes in gp: gplane floats per
    (image, channel), rows of gws floats, 2*th rows and 2*tw columns readable, zero
    beyond the output). One task per (chunk group g, half h of the 16 positions):
    a half needs only half of the transforms' stores and of the working set. Each
    task walks its chunks of r tile rows in order, so every partial sum has one
    fixed order whatever the thread count.
    """
    Kp, Cp = part.shape[2], part.shape[3]
    N = gp.shape[0] // (K * gplane)
    TR = N * th
    nch = (TR + r - 1) // r
    pf = part.reshape(ncg * 16 * Kp * Cp)
    for task in prange(2 * ncg):
        compact_code()
        tid = get_thread_id()
        V = vbuf[tid]
        G = gbuf[tid]
        grp = task // 2
        x0 = (task - grp * 2) * 8
        o0 = (grp * 16 + x0) * Kp * Cp
        vzero(pf, o0, 8 * Kp * Cp)
        for ch in range(grp * nch // ncg, (grp + 1) * nch // ncg):
            tr0 = ch * r
            tr1 = min(TR, tr0 + r)
            Tc = (tr1 - tr0) * tw
            L = (Tc + VL - 1) // VL
            _tiles_of_chunk(0, x0, V, Tcv, ldv, xb, Ci, plane, ws, tr0, tr1, th, tw, L)
            _tiles_of_chunk(1, x0, G, Tcv, ldg, gp, K, gplane, gws, tr0, tr1, th, tw, L)
            for xi in range(8):
                for cb in range(Cp // ND):
                    for kb in range(Kp // MD):
                        mk_dot(G, xi * ldg, aoffs[kb * MD:(kb + 1) * MD], 0, V, xi * ldv,
                               boffs[cb * ND:(cb + 1) * ND], 0, 1, L, pf, o0 + (xi * Kp + kb * MD) * Cp + cb * ND, Cp)


@njit(parallel=True, cache=True)
def _sum_groups(part, ncg, out):
    """out[xi, k] = sum of part[g, xi, k] over the chunk groups g, in group order."""
    X, Kp, Cp = out.shape
    n = X * Kp * Cp
    pf = part.reshape(part.shape[0] * n)
    of = out.reshape(n)
    for row in prange(X * Kp):
        compact_code()
        vcopy(of, row * Cp, pf, row * Cp, Cp, np.float32(0))
        for g in range(1, ncg):
            vadd(of, row * Cp, pf, g * n + row * Cp, Cp)


# flipping a 3x3 filter permutes its transform: G reversed along its columns is G with rows
# 0 and 3 swapped, so U(flip(g))[a, b] = U(g)[s(a), s(b)], s = (3, 1, 2, 0)
_S = (3, 1, 2, 0)
_FLIP = np.array([4 * _S[a] + _S[b] for a in range(4) for b in range(4)], dtype=np.int64)


@njit(parallel=True, cache=True)
def _pack(u, rows_are_k, perm, out):
    """Transformed filters u (K, C, 16) -> mk_outer panels per position xi, rows past the last zero.

    rows_are_k: out[xi, p, c, i] = u[p*MR + i, c, perm[xi]] (forward); otherwise
    out[xi, p, k, i] = u[k, p*MR + i, perm[xi]] (input gradient: rows are input channels).
    One Numba pass: the NumPy pad + transpose it replaces took 1.1 ms for 128 x 128
    filters and 15 ms for 512 x 512.
    """
    K, C = u.shape[0], u.shape[1]
    M, R = (K, C) if rows_are_k else (C, K)
    npan = out.shape[1]
    for t in prange(16 * npan):
        xi = t // npan
        p = t - xi * npan
        o = out[xi, p]
        s = perm[xi]
        for r in range(R):
            for i in range(MR):
                m = p * MR + i
                if m >= M:
                    o[r, i] = 0.0
                elif rows_are_k:
                    o[r, i] = u[m, r, s]
                else:
                    o[r, i] = u[r, m, s]


def _packed(w, rows_are_k):
    K, C = w.shape[:2]
    u = (w.reshape(K * C, 9) @ _GG.T).reshape(K, C, 16)     # G g G^T of every filter (BLAS)
    M, R = (K, C) if rows_are_k else (C, K)
    Mp = round_up(M, MR)
    out = np.empty((16, Mp // MR, R, MR), dtype=np.float32)
    _pack(u, rows_are_k, np.arange(16) if rows_are_k else _FLIP, out)
    return out.reshape(-1), Mp


def filters_forward(w):
    """Packed U = G g G^T for the forward pass: rows = output channels."""
    return _packed(w, True)


def filters_input_grad(w):
    """Packed transforms of the flipped filters with channels swapped: rows = input channels."""
    return _packed(w, False)


def _chunk_rows(tw, rmax):
    """Tile rows per chunk of the forward GEMMs: chunks of ~112 tiles (V and M stay in a core's L2)
    whose column tiles of NR are nearly full (<= 5 % padding if any r <= rmax allows it; 112-wide
    rows would otherwise pad 112 -> 144 columns)."""
    best = None
    for r in range(1, max(1, min(rmax, 384 // tw)) + 1):
        n = r * tw
        key = (round_up(n, NR) - n > 0.05 * round_up(n, NR), abs(n - 112))
        if best is None or key < best[0]:
            best = (key, r)
    return best[1]


def _run(xp, Ci, plane, ws, packed, Kout, bias, out_shape):
    """Chunking and buffers around _wino (xp: the padded planes)."""
    up, Kp = packed
    N, _, Ho, Wo = out_shape
    th, tw = -(-Ho // 2), -(-Wo // 2)
    TR = N * th
    r = _chunk_rows(tw, -(-TR // get_num_threads()))
    Tcp = round_up(r * tw, NR)
    # xi blocks 64 bytes apart from a multiple of 4 KB: the 16 rows one tile writes must not
    # share cache sets (measured: the input transform 0.9 -> 0.5 ms on the VGG layer)
    ldv, ldm = Ci * Tcp + 16, Kp * Tcp + 16
    offs = (np.arange(Ci) * Tcp).astype(np.int64)
    vbuf = thread_rows("wg_v", 16 * ldv)
    mbuf = thread_rows("wg_m", 16 * ldm)
    y = np.empty(out_shape, dtype=np.float32)
    b = bias if bias is not None else np.zeros(Kout, dtype=np.float32)
    _wino(xp, Ci, plane, ws, th, tw, r, up, Kp, Tcp, ldv, ldm, offs, b, vbuf, mbuf, y)
    return y


def forward(xb, w, b, g):
    """The convolution of geometry g (see conv_layout.Geometry), from its filled padded input xb."""
    return _run(xb, g.C, g.Hq * g.Wq, g.Wq, filters_forward(w), g.K, b, (g.N, g.K, g.Ho, g.Wo))


def input_grad(gy, w, g):
    """gx: gy zero-padded by 2 - p (rows/columns up to H + 2 / W + 2), correlated with flipped filters."""
    Hq, Wq = g.H + 2, g.W + 2
    n = g.N * g.K * Hq * Wq
    gp = scratch("wg_gy", (n + 2 * Wq + VL,), np.float32)
    fill_planes(gy, 1, 1, 2 - g.pt, 2 - g.pl, Hq, Wq, thread_rows("mk_row", Wq), gp)
    return _run(gp, g.K, Hq * Wq, Wq, filters_input_grad(w), g.C, None, (g.N, g.C, g.H, g.W))


def weight_grad(gy, xb, g):
    """(gw, gb) of geometry g from gy and the padded input xb the forward filled."""
    N, K, Ho, Wo = gy.shape
    C = g.C
    th, tw = -(-Ho // 2), -(-Wo // 2)
    if Ho % 2 or Wo % 2:   # the extra row/column of the tiles must read zeros
        gws, gplane = 2 * tw, 4 * th * tw
        gp = scratch("wg_gyp", (N * K * gplane + VL,), np.float32)
        fill_planes(gy, 1, 1, 0, 0, 2 * th, 2 * tw, thread_rows("mk_row", 2 * tw), gp)
        gp = gp[:N * K * gplane]
    else:
        gws, gplane, gp = Wo, Ho * Wo, gy.reshape(-1)
    TR = N * th
    # chunks of ~384 tiles: long dot products (each mk_dot ends in 24 lane sums); up to 8
    # chunk groups (fixed by the shape, not the thread count) with their own partial sums
    r = max(1, min(TR, -(-384 // tw)))
    # partial sums: at most 8 groups and ~32 MB (512 x 512 filters: 17 MB per group)
    ncg = max(1, min(8, -(-TR // r), (32 << 20) // (16 * round_up(K, MD) * round_up(C, ND) * 4)))
    Tcv = round_up(r * tw, VL)
    ldv, ldg = C * Tcv + 16, K * Tcv + 16
    vbuf = thread_rows("wg_v", 8 * ldv)
    gbuf = thread_rows("wg_g", 8 * ldg)
    Kp, Cp = round_up(K, MD), round_up(C, ND)
    aoffs = (np.minimum(np.arange(Kp), K - 1) * Tcv).astype(np.int64)
    boffs = (np.minimum(np.arange(Cp), C - 1) * Tcv).astype(np.int64)
    part = scratch("wg_gwpart", (ncg, 16, Kp, Cp), np.float32)
    _wino_gw(xb, C, g.Hq * g.Wq, g.Wq, gp, K, gplane, gws, th, tw, r, Tcv, ldv, ldg, aoffs, boffs, ncg,
             vbuf, gbuf, part)
    out = scratch("wg_gwhat", (16, Kp, Cp), np.float32)
    _sum_groups(part, ncg, out)
    gw = (out[:, :K, :C].reshape(16, K * C).T @ _GG).reshape(K, C, 3, 3)
    gb = np.empty(K, dtype=np.float32)
    bias_grad(gy.reshape(N, K, Ho * Wo), gb)
    return gw, gb
