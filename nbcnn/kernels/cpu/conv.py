"""Convolution (cross-correlation) on the CPU.

float32, the training dtype, always goes to :mod:`.conv_implicit`: implicit
GEMM on nbcnn's own register-blocked micro-kernels, 3-4x faster than the
im2col + OpenBLAS path below on every benchmark shape (RESULTS.md);
stride-1 layers with small planes and batches that fill the vector lanes
(LeNet) put the batch in the lanes (``conv_lanes.applies``), and
Winograd F(2x2, 3x3) takes the 3x3 stride-1 layers with enough channels
(``winograd.applies``).

float64 (gradient checks, references) keeps two algorithms, chosen per shape:

* **im2col**, "flat" and in chunks of ``nb`` samples small enough that the
  column matrix stays bounded (64 MB; whole batch for small CNNs, so few
  parallel regions: see CHUNK_BYTES). The input is first
  zero-padded and split into its ``sh*sw`` stride phases (space-to-depth,
  one cheap pass); in phase planes of width ``Wq`` every (c, i, j) row of
  the column matrix is then ONE contiguous copy of length ``(Ho-1)*Wq+Wo``
  (output rows computed at width ``Wq``; the ``Wq-Wo`` junk columns are
  dropped after the GEMM and zeroed in the gradient). Row-by-row copies of
  ``Wo < 64`` floats did not vectorise and strided ones never did.
  (Known edge: a NaN/inf in x can reach weight-gradient entries whose
  windows never see it, via 0 * NaN in a junk column; finite inputs are exact.)
  1x1 stride-1 convolutions skip im2col (the input *is* the column matrix).
* **direct** ("flat" stride-1 loops) for few input channels (LeNet conv1):
  each (c, i, j) term is one long contiguous axpy over the padded width,
  which LLVM vectorises; no column matrix at all.

Every parallel loop writes disjoint outputs (col2im is a gather per (n, c)
plane, the bias gradient one task per filter), and the chunking depends on
shapes only, so results are identical run to run and for any thread count.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..geometry import output_size, phase_plane_size
from ..saved import saved_for
from . import conv_implicit
from .bias import bias_grad as _bias_grad
from .pad import pad2d
from .scratch import scratch

# The layout copies (_flat_to_nk_bias, _nk_to_flat, _space_to_depth) and the bias gradient
# are serial on purpose: memory-bound passes that 2 threads speed up little,
# while each parallel kernel costs ~0.5 s more to compile from cold and a
# barrier that stalls on a loaded machine.

# Column-matrix bytes per chunk. Every chunk costs a few parallel regions,
# and on a loaded 2-core machine each region's barrier waits ~10 ms for a
# descheduled worker (measured: VGG fwd+bwd 2 threads, load ~4: 12 MB chunks
# 670-700 ms, one chunk 210-270 ms, 1 thread 95 ms). So chunks are large and
# balanced: only layers whose column matrix exceeds this are split.
CHUNK_BYTES = 64 << 20


@njit(cache=True)
def _add_bias(y, n0, nb, b):
    """y[n, k, :] += b[k] for samples n0..n0+nb of the (N, K, P) output."""
    K, P = y.shape[1], y.shape[2]
    for t in prange(nb * K):
        nl = t // K
        k = t - nl * K
        bk = b[k]
        dst = y[n0 + nl, k]
        for p in range(P):
            dst[p] += bk


@njit(cache=True)
def _space_to_depth(x, sh, sw, pt, pl, Hq, Wq, xq):
    """Pad x and split it into stride phases: xq[n, (c*sh + a)*sw + b, u, v] = xpad[n, c, u*sh + a, v*sw + b].

    Zero where that cell is padding or beyond the padded input. Serial: one
    memory-bound pass over the input.
    """
    N, C, H, W = x.shape
    for n in range(N):
        for c in range(C):
            for a in range(sh):
                for b in range(sw):
                    q = xq[n, (c * sh + a) * sw + b]
                    for u in range(Hq):
                        h = u * sh + a - pt
                        dst = q[u]
                        if h < 0 or h >= H:
                            for v in range(Wq):
                                dst[v] = 0
                            continue
                        src = x[n, c, h]
                        for v in range(Wq):
                            wv = v * sw + b - pl
                            dst[v] = src[wv] if 0 <= wv < W else 0


@njit(parallel=True, cache=True)
def _im2col_flat(xq, n0, nb, kh, kw, sh, sw, Ho, Wo, col):
    """Samples n0..n0+nb -> col (C*kh*kw, nb*Ho*Wq): row (c, i, j) is one contiguous copy per sample."""
    Hq, Wq = xq.shape[2], xq.shape[3]
    S = sh * sw
    C = xq.shape[1] // S
    Lp = Ho * Wq
    L = (Ho - 1) * Wq + Wo
    R = C * kh * kw
    for t in prange(R * nb):
        r = t // nb
        nl = t - r * nb
        c = r // (kh * kw)
        ij = r - c * (kh * kw)
        i = ij // kw
        j = ij - i * kw
        plane = xq[n0 + nl, c * S + (i % sh) * sw + j % sw].reshape(Hq * Wq)
        off = (i // sh) * Wq + j // sw
        src = plane[off:off + L]
        dst = col[r, nl * Lp:(nl + 1) * Lp]
        for q in range(L):
            dst[q] = src[q]
        for q in range(L, Lp):
            dst[q] = 0


@njit(cache=True)
def _nk_to_flat(gy, n0, Wq, out):
    """Samples n0.. of gy (N, K, Ho, Wo) -> (K, nb*Ho*Wq), zero in the junk columns."""
    K, Ho, Wo = gy.shape[1], gy.shape[2], gy.shape[3]
    Lp = Ho * Wq
    nb = out.shape[1] // Lp
    for k in range(K):
        for nl in range(nb):
            for oh in range(Ho):
                o = nl * Lp + oh * Wq
                src = gy[n0 + nl, k, oh]
                dst = out[k, o:o + Wq]
                for ow in range(Wo):
                    dst[ow] = src[ow]
                for ow in range(Wo, Wq):
                    dst[ow] = 0


@njit(parallel=True, cache=True)
def _col2im_flat(gcol, n0, nb, kh, kw, sh, sw, Ho, Wo, Hq, Wq, pt, pl, gx):
    """Inverse of _im2col_flat: per (n, c), sum the rows into its phase planes, then un-split and crop into gx.

    The junk columns of gcol are exactly zero (they come from zero gradient columns).
    """
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    Lp = Ho * Wq
    L = (Ho - 1) * Wq + Wo
    HW = Hq * Wq
    for t in prange(nb * C):
        nl = t // C
        c = t - nl * C
        buf = np.zeros(sh * sw * HW, dtype=gx.dtype)
        for i in range(kh):
            for j in range(kw):
                off = ((i % sh) * sw + j % sw) * HW + (i // sh) * Wq + j // sw
                src = gcol[(c * kh + i) * kw + j, nl * Lp:nl * Lp + L]
                dst = buf[off:off + L]
                for q in range(L):
                    dst[q] += src[q]
        g = gx[n0 + nl, c]
        for h in range(H):
            hp = h + pt
            base = (hp % sh) * sw * HW + (hp // sh) * Wq
            dst = g[h]
            if sw == 1:
                row = buf[base + pl:base + pl + W]
                for w in range(W):
                    dst[w] = row[w]
            else:
                for w in range(W):
                    wp = w + pl
                    dst[w] = buf[base + (wp % sw) * HW + wp // sw]


@njit(cache=True)
def _flat_to_nk_bias(y2, b, n0, Wq, y):
    """(K, nb*Ho*Wq) GEMM result at the phase-plane width Wq -> samples n0.. of y (N, K, Ho, Wo), plus bias."""
    K, Ho, Wo = y.shape[1], y.shape[2], y.shape[3]
    Lp = Ho * Wq
    nb = y2.shape[1] // Lp
    for t in prange(nb * K):
        nl = t // K
        k = t - nl * K
        bk = b[k]
        for oh in range(Ho):
            o = nl * Lp + oh * Wq
            src = y2[k, o:o + Wo]
            dst = y[n0 + nl, k, oh]
            for ow in range(Wo):
                dst[ow] = src[ow] + bk


_KB = 8  # filters per direct-forward task: their accumulators stay in L1/L2


@njit(parallel=True, cache=True, fastmath=True)
def _direct_fwd_s1(xp, w, b, Ho, Wo, y):
    """Stride-1 direct convolution on a padded input, one task per (sample, block of filters).

    Output rows are computed at the padded width, so each (c, i, j) term is one
    long axpy; the input is sliced so every inner loop indexes from 0 (offset
    indexing inside the loop kept LLVM from vectorising it: 6x slower).
    """
    N, C, Hp, Wp = xp.shape
    K, _, kh, kw = w.shape
    L = (Ho - 1) * Wp + Wo
    nkb = (K + _KB - 1) // _KB
    for t in prange(N * nkb):
        n = t // nkb
        k0 = (t - n * nkb) * _KB
        k1 = min(K, k0 + _KB)
        acc = np.empty((k1 - k0, L), dtype=y.dtype)
        for k in range(k0, k1):
            a = acc[k - k0]
            bk = b[k]
            for q in range(L):
                a[q] = bk
        for c in range(C):
            xf = xp[n, c].reshape(Hp * Wp)
            for i in range(kh):
                for j in range(kw):
                    off = i * Wp + j
                    xs = xf[off:off + L]
                    for k in range(k0, k1):
                        wv = w[k, c, i, j]
                        a = acc[k - k0]
                        for q in range(L):
                            a[q] += wv * xs[q]
        for k in range(k0, k1):
            a = acc[k - k0]
            for oh in range(Ho):
                src = a[oh * Wp:oh * Wp + Wo]
                dst = y[n, k, oh]
                for ow in range(Wo):
                    dst[ow] = src[ow]


@njit(parallel=True, cache=True, fastmath=True)
def _direct_dw_s1(xp, gy, gw):
    """Stride-1 weight gradient, one task per (k, c): dot products over the flat padded rows.

    float32 dots per sample, summed over samples in float64, in a fixed order.
    """
    N, C, Hp, Wp = xp.shape
    K, _, kh, kw = gw.shape
    Ho, Wo = gy.shape[2], gy.shape[3]
    L = (Ho - 1) * Wp + Wo
    for t in prange(K * C):
        k = t // C
        c = t - k * C
        g = np.zeros(L, dtype=gy.dtype)
        acc = np.zeros((kh, kw), dtype=np.float64)
        for n in range(N):
            for oh in range(Ho):
                src = gy[n, k, oh]
                for ow in range(Wo):
                    g[oh * Wp + ow] = src[ow]
            xf = xp[n, c].reshape(Hp * Wp)
            for i in range(kh):
                for j in range(kw):
                    off = i * Wp + j
                    xs = xf[off:off + L]
                    s = gy.dtype.type(0.0)
                    for q in range(L):
                        s += g[q] * xs[q]
                    acc[i, j] += s
        for i in range(kh):
            for j in range(kw):
                gw[k, c, i, j] = acc[i, j]


def _geometry(x_shape, w_shape, stride, pads):
    N, C, H, W = x_shape
    K, _, kh, kw = w_shape
    sh, sw = stride
    pt, pb, pl, pr = pads
    Ho = output_size(H, kh, pt, pb, sh)
    Wo = output_size(W, kw, pl, pr, sw)
    return N, C, H, W, K, kh, kw, sh, sw, pt, pb, pl, pr, Ho, Wo


def use_direct(x_shape, w_shape, stride) -> bool:
    """Direct loops for stride 1, few input channels and few filters (where im2col is overhead).

    Measured single-threaded, forward + weight gradient, batch 64: direct wins
    1.1-1.8x at (C, K) = (1, 6), (2, 8), (3, 6) with 5x5 kernels, ties at
    (1, 32) 3x3, loses 1.2x at (3, 32) 3x3 where the GEMM gets efficient.
    """
    K, C, kh, kw = w_shape
    return stride == (1, 1) and C <= 3 and K * C <= 48 and kh * kw >= 4


def _is_pointwise(w_shape, stride, pads) -> bool:
    """1x1, stride 1, no padding: the input planes already are the column matrix."""
    return w_shape[2] == 1 and w_shape[3] == 1 and stride == (1, 1) and not any(pads)


def chunk_size(N, R, P, itemsize) -> int:
    """Samples per im2col chunk, balanced (depends on shapes only: results never depend on timing)."""
    per = max(1, R * P * itemsize)
    nchunks = -(-(N * per) // CHUNK_BYTES)
    if nchunks <= 1:
        return max(N, 1)
    most = max(1, CHUNK_BYTES // per)          # samples that fit in one chunk
    return min(most, -(-N // nchunks))


def _phase_geometry(H, W, sh, sw, pads):
    """Height and width of the stride-phase planes of the padded input."""
    pt, pb, pl, pr = pads
    return phase_plane_size(H, pt, pb, sh), phase_plane_size(W, pl, pr, sw)


def _phases(x, stride, pads):
    N, C, H, W = x.shape
    sh, sw = stride
    Hq, Wq = _phase_geometry(H, W, sh, sw, pads)
    if (sh, sw) == (1, 1):
        return pad2d(x, pads) if any(pads) else x
    xq = np.empty((N, C * sh * sw, Hq, Wq), dtype=x.dtype)
    _space_to_depth(x, sh, sw, pads[0], pads[2], Hq, Wq, xq)
    return xq


def conv2d_forward(x, w, b, stride, pads, ctx=None):
    N, C, H, W, K, kh, kw, sh, sw, pt, pb, pl, pr, Ho, Wo = _geometry(x.shape, w.shape, stride, pads)
    key = (x.shape, w.shape, stride, pads)
    old_col = None
    if ctx is not None:
        # buffers reused across steps (a fresh one costs page faults); refilled below
        old_col = ctx.get("col")
        keep = {k: ctx[k] for k in ("mk_xb", "ln_xT") if k in ctx}
        ctx.clear()
        ctx.update(keep)
        ctx["key"] = key
        ctx["x"] = x  # the backward reuses this work only for this very input
    if x.dtype == np.float32:
        return conv_implicit.forward(x, w, b, stride, pads, ctx)
    y = np.empty((N, K, Ho, Wo), dtype=x.dtype)
    if use_direct(x.shape, w.shape, stride):
        bias = b if b is not None else np.zeros(K, dtype=x.dtype)
        xp = pad2d(x, pads) if any(pads) else x
        _direct_fwd_s1(xp, w, bias, Ho, Wo, y)
        if ctx is not None:
            ctx["xpad"] = xp
        return y
    P, R = Ho * Wo, C * kh * kw
    wr = w.reshape(K, R)
    if _is_pointwise(w.shape, stride, pads):
        y3 = y.reshape(N, K, P)
        x3 = x.reshape(N, C, P)
        for n in range(N):
            np.matmul(wr, x3[n], out=y3[n])
        if b is not None:
            _add_bias(y3, 0, N, b)
        return y
    xq = _phases(x, stride, pads)
    Wq = xq.shape[3]
    Pc = Ho * Wq
    nb = chunk_size(N, R, Pc, x.itemsize)
    if nb == N and ctx is not None:  # one chunk: keep the columns for the backward
        col = old_col
        if col is None or col.shape != (R, N * Pc) or col.dtype != x.dtype:
            col = np.empty((R, N * Pc), dtype=x.dtype)
        ctx["col"] = col
    else:
        col = scratch("col", (R, nb * Pc), x.dtype)
    bias = b if b is not None else np.zeros(K, dtype=x.dtype)
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        c = col if m == nb else scratch("col", (R, m * Pc), x.dtype)  # last, shorter chunk
        _im2col_flat(xq, n0, m, kh, kw, sh, sw, Ho, Wo, c)
        y2 = scratch("gemm_out", (K, m * Pc), x.dtype)
        np.matmul(wr, c, out=y2)
        _flat_to_nk_bias(y2, bias, n0, Wq, y)
    return y


def conv2d_backward(gy, x, w, stride, pads, need_gx=True, ctx=None):
    N, C, H, W, K, kh, kw, sh, sw, pt, pb, pl, pr, Ho, Wo = _geometry(x.shape, w.shape, stride, pads)
    P, R = Ho * Wo, C * kh * kw
    key = (x.shape, w.shape, stride, pads)
    cached = saved_for(ctx, key, x)
    gy3 = gy.reshape(N, K, P)
    if x.dtype == np.float32:  # the bias gradient is fused into its gradient re-layout pass
        return conv_implicit.backward(gy, x, w, stride, pads, need_gx, cached)
    gb = np.empty(K, dtype=x.dtype)
    _bias_grad(gy3, gb)
    wr = w.reshape(K, R)
    gx = np.empty(x.shape, dtype=x.dtype) if need_gx else None
    direct = use_direct(x.shape, w.shape, stride)
    if direct:
        xp = cached.get("xpad")
        if xp is None:
            xp = pad2d(x, pads) if any(pads) else x
        gw = np.empty(w.shape, dtype=x.dtype)
        _direct_dw_s1(xp, gy, gw)
        if not need_gx:
            return None, gw, gb
    if _is_pointwise(w.shape, stride, pads):
        x3 = x.reshape(N, C, P)
        gw2 = np.zeros((K, C), dtype=x.dtype)
        tmp = scratch("gw_part", (K, C), x.dtype)
        wt = wr.T
        for n in range(N):
            np.matmul(gy3[n], x3[n].T, out=tmp)
            gw2 += tmp
            if need_gx:
                np.matmul(wt, gy3[n], out=gx[n].reshape(C, P))
        return gx, gw2.reshape(w.shape), gb
    Hq, Wq = _phase_geometry(H, W, sh, sw, pads)
    Pc = Ho * Wq
    nb = chunk_size(N, R, Pc, x.itemsize)
    col_all = cached.get("col")
    xq = None
    if not direct and col_all is None:
        xq = _phases(x, stride, pads)
    if not direct:
        gw2 = np.empty((K, R), dtype=x.dtype)
        tmp = scratch("gw_part", (K, R), x.dtype)
    wt = wr.T
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        g = scratch("gyT", (K, m * Pc), x.dtype)
        _nk_to_flat(gy, n0, Wq, g)
        if not direct:
            if col_all is not None:
                col = col_all
            else:
                col = scratch("col", (R, m * Pc), x.dtype)
                _im2col_flat(xq, n0, m, kh, kw, sh, sw, Ho, Wo, col)
            if n0 == 0:
                np.matmul(g, col.T, out=gw2)
            else:
                np.matmul(g, col.T, out=tmp)
                gw2 += tmp
        if need_gx:
            gcol = scratch("gcol", (R, m * Pc), x.dtype)
            np.matmul(wt, g, out=gcol)
            _col2im_flat(gcol, n0, m, kh, kw, sh, sw, Ho, Wo, Hq, Wq, pt, pl, gx)
    if not direct:
        gw = gw2.reshape(w.shape)
    return gx, gw, gb
