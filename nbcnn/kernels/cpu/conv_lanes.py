"""float32 stride-1 convolution of small planes with the batch in the vector lanes (LeNet).

Why: the implicit GEMM (:mod:`.conv_implicit`) puts output positions in the
lanes, computing whole padded rows: LeNet conv2 (14x14 -> 10x10) keeps 100 of
every 144 computed columns, in the forward, the weight gradient and the input
gradient alike. Here each vector holds ONE output position of VL images, so
every tile is useful work, and the input gradient needs no zero rows either:
LeNet conv2 fwd+bwd 0.39 -> 0.27-0.31 ms (benchmarks/RESULTS.md). Chunks of the
output (forward) and of gcol (input gradient) are sized to stay in L2.

Layout, per group of VL images (the last group padded with zero lanes):
``xT[g][c][hp][wp][lane]`` (the zero-padded input, Hp x Wp positions) and
``gyT[g][k][p][lane]`` (p = oh*Wo + ow). ``vtrans`` moves VL x VL blocks of
NCHW rows in and out.

* forward: per group, ``Y^T = W @ col^T`` by ``mk_outer_cols`` tiles of NV
  consecutive output positions (their input bases from a table, as a tile may
  wrap to the next output row), transposed back with the bias;
* weight gradient: per group, ``gY @ col^T`` by ``mk_dot`` (one segment per
  output row); the per-group partial sums are added in group order;
* input gradient: per group, ``gcol = W^T @ gY`` (``mk_outer``), added into a
  gx^T buffer row by row at each tap's shift (only the rows and columns that
  land inside x), transposed out.

One parallel task per group (two per group when the groups do not share out
evenly over the threads), forward and backward one parallel region each; results
do not depend on the thread count or the split. The input buffer is kept in the
layer's ``ctx`` between forward and backward.
"""
from __future__ import annotations

import numpy as np
from numba import get_num_threads, get_thread_id, njit, prange

from . import winograd
from .conv_layout import memo, round_up, thread_rows
from .microkernel import MD, MR, ND, NR, NV, VL, compact_code, mk_dot, mk_outer, mk_outer_cols, vadd, vtrans, vzero
from .scratch import scratch

MAX_POSITIONS = 800          # output positions per image: LeNet conv1 (784) gains 0.84x, 32x32 planes break even
SMALL_PLANE = 256            # above this, only where the flat layout's junk columns are >= 10 % (28x28 3x3: even)
WINOGRAD_FROM = 64           # where Winograd applies it wins from 16x16 planes (lanes 1.08-1.15x); 8x8 ~even, 7x7 0.5x
MAX_GROUP_BYTES = 2 << 20    # one group's input plus one thread's Y^T and gcol chunks: one core's L2 and a margin
GCOL_BYTES = 256 << 10       # gcol chunk per thread (LeNet conv1's whole gcol, 1.6 MB, ran its gx ~10 % slower)
YBUF_BYTES = 128 << 10       # Y^T chunk per thread (a whole 32x32 plane's, ~1 MB, ran the forward ~20 % slower)


def applies(x_shape, w_shape, stride, pads) -> bool:
    """Stride 1, small planes (or >= 10 % junk columns in the flat layout), at most 1/4 of the
    lanes empty (so >= 13 images with 16 lanes), buffers within ~2 MB.

    Measured vs the other float32 paths (fwd+bwd, 2 threads, same process): LeNet conv2
    0.68-0.72x (batch 32-256), LeNet conv1 0.82-0.95x, 5x5 layers on 14x14 with 8-16
    channels 0.67-0.73x, 3x3 layers on 4x4..14x14 with up to 64 channels 0.46-0.87x (7x7
    with 32 channels against Winograd: 0.5x); even (1.0x) on 28x28 and 32x32 3x3 layers.
    1 or 3 groups on 2 threads (batch 16 or 48; mostly an epoch's or an evaluation's last
    batch) split each group's work in two tasks (``_splits``): LeNet 0.65-1.11x (up to
    1.45x before the split). Sending them to the other path instead would compile its
    kernels in the middle of the first epoch: a cold `nbcnn train --epochs 1` took 13.2 s
    that way, 8.9 s this way. The rule leaves the thread count out on purpose (the split
    changes no arithmetic), so results stay identical for any thread count.
    """
    N, C, H, W = x_shape
    K, _, kh, kw = w_shape
    if tuple(stride) != (1, 1):
        return False
    Wp = W + pads[2] + pads[3]
    P = (H + pads[0] + pads[1] - kh + 1) * (Wp - kw + 1)
    if P > MAX_POSITIONS or (P > WINOGRAD_FROM and winograd.applies(x_shape, w_shape, stride, pads)):
        return False
    if P > SMALL_PLANE and 10 * (Wp - kw + 1) > 9 * Wp:   # the flat layout wastes < 10 %: no gain
        return False
    G = -(-N // VL)
    if N < 1 or 4 * G * VL > 5 * N:
        return False
    g = _geometry(x_shape, w_shape, pads)
    return 4 * (g.img + round_up(K, MR) * g.cp * VL + g.Rp * g.ldc) <= MAX_GROUP_BYTES


class _Geo:
    """Sizes and tables of one shape case (cached: a layer sees the same shapes every step)."""

    def __init__(self, x_shape, w_shape, pads):
        N, C, H, W = x_shape
        K, _, kh, kw = w_shape
        pt, pb, pl, pr = pads
        self.N, self.C, self.H, self.W, self.K, self.kh, self.kw, self.pt, self.pl = N, C, H, W, K, kh, kw, pt, pl
        self.Hp, self.Wp = H + pt + pb, W + pl + pr
        self.padded = any(pads)
        self.Ho, self.Wo = self.Hp - kh + 1, self.Wp - kw + 1
        self.P = self.Ho * self.Wo
        self.G = -(-N // VL)
        self.R = C * kh * kw
        self.img = round_up(C * self.Hp * self.Wp * VL, 64)
        c, i, j = np.meshgrid(np.arange(C), np.arange(kh), np.arange(kw), indexing="ij")
        self.offs = (((c * self.Hp + i) * self.Wp + j) * VL).reshape(-1).astype(np.int64)
        T = -(-self.P // NV)                           # forward tiles per group
        p = np.minimum(np.arange(T * NV), self.P - 1)   # the last tile repeats the last position
        self.cols = ((p // self.Wo * self.Wp + p % self.Wo) * VL).astype(np.int64)
        unit = NV * VL // int(np.gcd(NV, VL))            # forward chunks: whole tiles and whole transpose blocks
        self.cp = min(round_up(self.P, unit), max(unit, (YBUF_BYTES // 4) // (round_up(K, MR) * VL) // unit * unit))
        Kd, Rd = round_up(K, MD), round_up(self.R, ND)
        self.aoffs = (np.minimum(np.arange(Kd), K - 1) * self.P * VL).astype(np.int64)
        self.boffs = self.offs[np.minimum(np.arange(Rd), self.R - 1)]
        self.Kd, self.Rd = Kd, Rd
        self.goffs = (np.arange(K) * self.P * VL).astype(np.int64)
        self.Rp = round_up(self.R, MR)
        self.rc = max(1, min(self.Ho, (GCOL_BYTES // 4) // (self.Rp * self.Wo * VL)))   # output rows per gcol chunk
        self.ldc = round_up(self.rc * self.Wo * VL, NR)   # gcol row length
        self.gy_len = self.G * K * self.P * VL + NR     # + NR: the last gcol tile reads past the end


_GEOS: dict = {}


def _geometry(x_shape, w_shape, pads) -> _Geo:
    return memo(_GEOS, (tuple(x_shape), tuple(w_shape), tuple(pads)), _Geo)


@njit(cache=True)
def _fill_group(x, g, Hp, Wp, pt, pl, padded, xT, base):
    """xT[base + ((c*Hp + h + pt)*Wp + w + pl)*VL + lane] = x[g*VL + lane, c, h, w] (zero elsewhere)."""
    N, C, H, W = x.shape
    xf = x.reshape(N * C * H * W)
    n0 = g * VL
    nimg = min(VL, N - n0)
    zero = np.float32(0)
    if padded:
        vzero(xT, base, C * Hp * Wp * VL)
        for c in range(C):
            for h in range(H):
                for cb in range(0, W, VL):
                    m = min(VL, W - cb)
                    vtrans(xT, base + ((c * Hp + h + pt) * Wp + pl + cb) * VL, VL, m, VL,
                           xf, ((n0 * C + c) * H + h) * W + cb, C * H * W, nimg, m, zero)
        return
    HW = H * W
    for c in range(C):   # rows contiguous in both layouts: whole planes in VL-position blocks
        for pb in range(0, HW, VL):
            m = min(VL, HW - pb)
            vtrans(xT, base + (c * HW + pb) * VL, VL, m, VL, xf, (n0 * C + c) * HW + pb, C * HW, nimg, m, zero)


@njit(parallel=True, cache=True)
def _fill(x, Hp, Wp, pt, pl, padded, xT, img):
    for g in prange(-(-x.shape[0] // VL)):
        compact_code()
        _fill_group(x, g, Hp, Wp, pt, pl, padded, xT, g * img)


@njit(cache=True)
def _pack(m2, out):
    """out = m2 (M x R) in panels of MR rows, k-major inside a panel (the mk_outer A operand;
    rows past M zero). In Numba: the NumPy version cost ~2.6 us a call."""
    M, R = m2.shape
    for p in range(out.shape[0] // (R * MR)):
        for r in range(R):
            for i in range(MR):
                out[(p * R + r) * MR + i] = m2[p * MR + i, r] if p * MR + i < M else np.float32(0)


@njit(parallel=True, cache=True)
def _forward(x, Hp, Wp, pt, pl, padded, xT, img, offs, cols, w, wp, cp, S, bias, xpriv, ybuf, y):
    """Per group: fill xT, then per chunk of cp output positions Y^T tiles (mk_outer_cols) and
    y = transpose + bias (the chunk's Y^T stays in L2).

    S = 2 splits each group's chunks between two tasks, for group counts that do not share
    out evenly over the threads: the second task fills its own copy of the group's input
    (xpriv) rather than wait for the first: a separate parallel fill loop cost ~1 s more
    compile time for LeNet's first step. Every output is computed by the same operations
    either way.
    """
    N, K, Ho, Wo = y.shape
    R = offs.shape[0]
    P = Ho * Wo
    ld = cp * VL
    Kp = wp.shape[0] // R
    T = cols.shape[0] // NV
    nch = -(-P // cp)
    _pack(w.reshape(K, R), wp)
    yf = y.reshape(N * K * P)
    for task in prange(-(-N // VL) * S):
        compact_code()
        g = task // S
        s = task - g * S
        tid = get_thread_id()
        xg = xT[g * img:] if s == 0 else xpriv[tid]
        _fill_group(x, g, Hp, Wp, pt, pl, padded, xg, 0)
        yb = ybuf[tid]
        n0 = g * VL
        nimg = min(VL, N - n0)
        for ch in range(s * nch // S, (s + 1) * nch // S):
            p0 = ch * cp                 # cp: a multiple of NV and of VL
            for t in range(p0 // NV, min(T, (p0 + cp) // NV)):
                for kb in range(Kp // MR):
                    mk_outer_cols(wp, kb * R * MR, xg, offs, cols[t * NV:], R,
                                  yb, kb * MR * ld + (t * NV - p0) * VL, ld)
            for k in range(K):
                for pb in range(p0, min(P, p0 + cp), VL):
                    m = min(VL, P - pb)
                    vtrans(yf, (n0 * K + k) * P + pb, K * P, nimg, m, yb, k * ld + (pb - p0) * VL, VL, m, VL, bias[k])


@njit(cache=True, fastmath={"reassoc"})
def _gy_group(gf, g, N, K, P, gyT, gbpart, sums):
    """gyT = group g of gy in lanes, and (sums) its bias-gradient part (fastmath: only these
    sums vectorise)."""
    n0 = g * VL
    nimg = min(VL, N - n0)
    zero = np.float32(0)
    for k in range(K):
        for pb in range(0, P, VL):
            m = min(VL, P - pb)
            vtrans(gyT, (k * P + pb) * VL, VL, m, VL, gf, (n0 * K + k) * P + pb, K * P, nimg, m, zero)
        if not sums:
            continue
        seg = gyT[k * P * VL:(k + 1) * P * VL]
        s = np.float32(0)
        for i in range(P * VL):
            s += seg[i]
        gbpart[g, k] = s


@njit(parallel=True, cache=True)
def _backward(gy, xT, img, Wp, aoffs, boffs, Kd, Rd, need_gx, S, w, wtp, goffs, rc, ldc, kh, kw, pt, pl,
              gyT, gypriv, gwpart, gbpart, cbuf, gxbuf, gw, gb, gx):
    """Per group: gyT (+ bias-gradient part), the weight-gradient part (mk_dot), and gx through
    gcol; then the parts summed in group order.

    S = 2 runs each group's weight gradient and input gradient as two tasks (without gx:
    the two halves of the filter blocks), for group counts that do not share out evenly
    over the threads; the second task lays out its own copy of the group's gy (gypriv).
    The arithmetic is the same either way.
    """
    N, K, Ho, Wo = gy.shape
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    P = Ho * Wo
    HW = H * W
    G = -(-N // VL)
    R = gw.shape[1]
    gf = gy.reshape(N * K * P)
    gxf = gx.reshape(gx.size)
    zero = np.float32(0)
    Rp = wtp.shape[0] // K
    if need_gx:
        _pack(w.reshape(K, R).T, wtp)
    for task in prange(G * S):
        compact_code()
        g = task // S
        s = task - g * S
        tid = get_thread_id()
        n0 = g * VL
        nimg = min(VL, N - n0)
        src = gyT[g * K * P * VL:] if s == 0 else gypriv[tid]
        _gy_group(gf, g, N, K, P, src, gbpart, s == 0)
        if s == 0 or not need_gx:   # the weight-gradient part (without gx: split by filter blocks)
            part = gwpart[g]
            nkb = Kd // MD
            kb0, kb1 = (0, nkb) if need_gx else (s * nkb // S, (s + 1) * nkb // S)
            vzero(part, kb0 * MD * Rd, (kb1 - kb0) * MD * Rd)
            for kb in range(kb0, kb1):
                for jb in range(Rd // ND):
                    mk_dot(src, 0, aoffs[kb * MD:], Wo * VL, xT, g * img, boffs[jb * ND:], Wp * VL, Ho, Wo,
                           part, kb * MD * Rd + jb * ND, Rd)
        if not need_gx or s != S - 1:
            continue
        gc = cbuf[tid]
        gt = gxbuf[tid]
        vzero(gt, 0, C * HW * VL)
        for oh0 in range(0, Ho, rc):          # gcol a few output rows at a time: it stays in L2
            oh1 = min(Ho, oh0 + rc)
            for jb in range(0, (oh1 - oh0) * Wo * VL, NR):
                for ib in range(Rp // MR):
                    mk_outer(wtp, ib * K * MR, src, goffs, oh0 * Wo * VL + jb, K, gc, ib * MR * ldc + jb, ldc)
            for c in range(C):
                for i in range(kh):
                    for j in range(kw):
                        r = (c * kh + i) * kw + j
                        ow0 = max(0, pl - j)
                        ow1 = min(Wo, W + pl - j)
                        if ow1 <= ow0:
                            continue
                        for oh in range(max(oh0, pt - i), min(oh1, H + pt - i)):
                            vadd(gt, ((c * H + oh + i - pt) * W + ow0 + j - pl) * VL, gc,
                                 r * ldc + ((oh - oh0) * Wo + ow0) * VL, (ow1 - ow0) * VL)
        for c in range(C):
            for pb in range(0, HW, VL):
                m = min(VL, HW - pb)
                vtrans(gxf, (n0 * C + c) * HW + pb, C * HW, nimg, m, gt, (c * HW + pb) * VL, VL, m, VL, zero)
    for k in range(K):
        s = np.float32(0)
        for g in range(G):
            s += gbpart[g, k]
        gb[k] = s
        for r in range(R):
            s = np.float32(0)
            for g in range(G):
                s += gwpart[g, k * Rd + r]
            gw[k, r] = s


_NONE = np.zeros((1, 1), np.float32)   # an unused per-thread buffer argument


def _splits(G):
    """2 where G groups would leave a thread idle part of the time (G not a multiple of the
    thread count), else 1."""
    return 1 if G % get_num_threads() == 0 else 2


def _input_buffer(g, ctx):
    xT = ctx.get("ln_xT") if ctx is not None else None
    if xT is None or xT.shape[0] != g.G * g.img:
        xT = np.empty(g.G * g.img, dtype=np.float32)
        if ctx is not None:
            ctx["ln_xT"] = xT
    return xT


def forward(x, w, b, pads, ctx=None):
    g = _geometry(x.shape, w.shape, pads)
    xT = _input_buffer(g, ctx)
    Kp = round_up(g.K, MR)
    wp = scratch("ln_wp", (Kp * g.R,), np.float32)
    bias = b if b is not None else np.zeros(g.K, dtype=np.float32)
    y = np.empty((g.N, g.K, g.Ho, g.Wo), dtype=np.float32)
    ybuf = thread_rows("ln_y", Kp * g.cp * VL)
    S = _splits(g.G)
    xpriv = thread_rows("ln_xpriv", g.img) if S > 1 else _NONE
    _forward(x, g.Hp, g.Wp, g.pt, g.pl, g.padded, xT, g.img, g.offs, g.cols, w, wp, g.cp, S, bias, xpriv, ybuf, y)
    return y


def backward(gy, x, w, pads, need_gx=True, ctx=None):
    """(gx or None, gw, gb); reads the input buffer the forward left in ctx (refills it without one)."""
    g = _geometry(x.shape, w.shape, pads)
    had = ctx is not None and ctx.get("ln_xT") is not None and ctx["ln_xT"].shape[0] == g.G * g.img
    xT = _input_buffer(g, ctx)
    if not had:
        _fill(x, g.Hp, g.Wp, g.pt, g.pl, g.padded, xT, g.img)
    gy = np.ascontiguousarray(gy)
    K, R = g.K, g.R
    gyT = scratch("ln_gyT", (g.gy_len,), np.float32)
    gyT[g.gy_len - NR:] = 0
    gwpart = scratch("ln_gw", (g.G, g.Kd * g.Rd), np.float32)
    gbpart = scratch("ln_gb", (g.G, K), np.float32)
    gw = np.empty((K, R), dtype=np.float32)
    gb = np.empty(K, dtype=np.float32)
    if need_gx:
        wtp = scratch("ln_wtp", (g.Rp * K,), np.float32)
        gx = np.empty(x.shape, dtype=np.float32)
        cbuf = thread_rows("ln_gcol", g.Rp * g.ldc)
        gxbuf = thread_rows("ln_gx", g.C * g.H * g.W * VL)
    else:   # placeholders of the right types
        wtp = np.zeros(K * MR, np.float32)
        gx = np.empty((0, g.C, g.H, g.W), dtype=np.float32)
        cbuf = gxbuf = _NONE
    S = _splits(g.G)
    gypriv = thread_rows("ln_gypriv", K * g.P * VL + NR) if S > 1 else _NONE   # + NR: gcol reads past the end
    _backward(gy, xT, g.img, g.Wp, g.aoffs, g.boffs, g.Kd, g.Rd, need_gx, S, w, wtp, g.goffs, g.rc, g.ldc, g.kh, g.kw,
              g.pt, g.pl, gyT, gypriv, gwpart, gbpart, cbuf, gxbuf, gw, gb, gx)
    return (gx if need_gx else None), gw.reshape(w.shape), gb
