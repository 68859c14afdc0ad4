"""Convolution (cross-correlation) on the CPU: chunked im2col + BLAS GEMM, or direct loops.

Two algorithms, chosen per shape (measured on 2 cores, see shared notes):

* **im2col**, in chunks of ``nb`` samples small enough that the column
  matrix ``(C*kh*kw, nb*Ho*Wo)`` stays in cache (~12 MB): im2col writes it,
  the GEMM reads it back at once. One whole-batch column matrix (75 MB on a
  VGG layer) made im2col/col2im DRAM-bound and cost as much as the GEMMs.
  With ``nb == 1`` the GEMM writes straight into the NCHW output (and reads
  the NCHW gradient), so no (K, N*P) <-> (N, K, P) transposes are needed.
  Padding and stride are fused into im2col/col2im; 1x1 stride-1 convolutions
  skip im2col (the input *is* the column matrix).
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

from .pad import pad2d
from .scratch import scratch

# The layout copies (_kn_to_nk_bias, _nk_to_flat, ...) and the bias gradient
# are serial on purpose: memory-bound passes that 2 threads speed up little,
# while each parallel kernel costs ~0.5 s more to compile from cold and a
# barrier that stalls on a loaded machine.

# Column-matrix bytes per chunk: small enough to stay in L3 between im2col
# and the GEMM, large enough to keep the number of parallel regions (each a
# barrier, costly on a loaded 2-core machine) and per-call overheads low.
CHUNK_BYTES = 12 << 20


@njit(inline="always")
def _valid_range(j, pl, sw, W, Wo):
    """Output columns ow with 0 <= ow*sw - pl + j < W, as [lo, hi)."""
    lo = 0
    if pl - j > 0:
        lo = (pl - j + sw - 1) // sw
    hi = (W - 1 + pl - j) // sw + 1
    if hi > Wo:
        hi = Wo
    if hi < lo:
        hi = lo
    return lo, hi


@njit(parallel=True, cache=True)
def _im2col(x, n0, nb, kh, kw, sh, sw, pt, pl, Ho, Wo, col):
    """Samples n0..n0+nb of x -> col (C*kh*kw, nb*Ho*Wo), zero where the window hits padding."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    P = Ho * Wo
    R = C * kh * kw
    for t in prange(R * nb):
        r = t // nb
        nl = t - r * nb
        n = n0 + nl
        c = r // (kh * kw)
        ij = r - c * (kh * kw)
        i = ij // kw
        j = ij - i * kw
        lo, hi = _valid_range(j, pl, sw, W, Wo)
        row = col[r]
        for oh in range(Ho):
            ih = oh * sh - pt + i
            o = nl * P + oh * Wo
            if ih < 0 or ih >= H:
                for ow in range(Wo):
                    row[o + ow] = 0
            else:
                src = x[n, c, ih]
                for ow in range(lo):
                    row[o + ow] = 0
                if sw == 1:
                    d = j - pl
                    for ow in range(lo, hi):
                        row[o + ow] = src[ow + d]
                else:
                    for ow in range(lo, hi):
                        row[o + ow] = src[ow * sw - pl + j]
                for ow in range(hi, Wo):
                    row[o + ow] = 0


@njit(parallel=True, cache=True)
def _col2im(col, n0, nb, kh, kw, sh, sw, pt, pl, Ho, Wo, gx):
    """Gather col (C*kh*kw, nb*Ho*Wo) back into planes n0..n0+nb of gx (overwritten)."""
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    P = Ho * Wo
    for t in prange(nb * C):
        nl = t // C
        c = t - nl * C
        g = gx[n0 + nl, c]
        for h in range(H):
            for w in range(W):
                g[h, w] = 0
        for i in range(kh):
            for j in range(kw):
                row = col[(c * kh + i) * kw + j]
                lo, hi = _valid_range(j, pl, sw, W, Wo)
                for oh in range(Ho):
                    ih = oh * sh - pt + i
                    if ih < 0 or ih >= H:
                        continue
                    dst = g[ih]
                    o = nl * P + oh * Wo
                    if sw == 1:
                        d = j - pl
                        for ow in range(lo, hi):
                            dst[ow + d] += row[o + ow]
                    else:
                        for ow in range(lo, hi):
                            dst[ow * sw - pl + j] += row[o + ow]


@njit(cache=True)
def _kn_to_nk_bias(y2, b, n0, y):
    """(K, nb*P) GEMM result -> samples n0.. of the (N, K, P) output, adding the bias."""
    K, P = y.shape[1], y.shape[2]
    nb = y2.shape[1] // P
    for t in prange(nb * K):
        nl = t // K
        k = t - nl * K
        bk = b[k]
        src = y2[k]
        dst = y[n0 + nl, k]
        o = nl * P
        for p in range(P):
            dst[p] = src[o + p] + bk


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
def _nk_to_kn(gy, n0, out):
    """Samples n0.. of the (N, K, P) gradient -> (K, nb*P) for the GEMMs."""
    K, P = gy.shape[1], gy.shape[2]
    nb = out.shape[1] // P
    for t in prange(K * nb):
        k = t // nb
        nl = t - k * nb
        src = gy[n0 + nl, k]
        dst = out[k]
        o = nl * P
        for p in range(P):
            dst[o + p] = src[p]


@njit(cache=True)
def _bias_grad(gy, gb):
    """gb[k] = sum of gy[:, k, :] (float64 accumulation, fixed order).

    Serial on purpose: a memory-bound pass too small to gain from threads,
    and a serial kernel compiles ~5x faster than a parallel one.
    """
    N, K, P = gy.shape
    for k in prange(K):
        s = 0.0
        for n in range(N):
            src = gy[n, k]
            for p in range(P):
                s += src[p]
        gb[k] = s


@njit(parallel=True, cache=True)
def _im2col_flat(xp, n0, nb, kh, kw, Ho, col):
    """Stride 1 on a padded input: columns at the padded width Wp, Ho*Wp per sample.

    Each (c, i, j) row of a sample is ONE contiguous copy of the flat padded
    plane (vectorises; rows of Wo < 64 floats copied one by one stayed scalar).
    Columns ow >= Wo of each output row are junk that the GEMM result drops.
    """
    C, Hp, Wp = xp.shape[1], xp.shape[2], xp.shape[3]
    Lp = Ho * Wp
    L = Lp - kw + 1
    R = C * kh * kw
    for t in prange(R * nb):
        r = t // nb
        nl = t - r * nb
        c = r // (kh * kw)
        ij = r - c * (kh * kw)
        i = ij // kw
        j = ij - i * kw
        xf = xp[n0 + nl, c].reshape(Hp * Wp)
        off = i * Wp + j
        src = xf[off:off + L]
        dst = col[r, nl * Lp:(nl + 1) * Lp]
        for q in range(L):
            dst[q] = src[q]
        for q in range(L, Lp):
            dst[q] = 0


@njit(cache=True)
def _flat_to_nk_bias(y2, b, n0, Wp, y):
    """(K, nb*Ho*Wp) GEMM result at the padded width -> samples n0.. of y (N, K, Ho, Wo), plus bias."""
    K, Ho, Wo = y.shape[1], y.shape[2], y.shape[3]
    Lp = Ho * Wp
    nb = y2.shape[1] // Lp
    for t in prange(nb * K):
        nl = t // K
        k = t - nl * K
        bk = b[k]
        for oh in range(Ho):
            o = nl * Lp + oh * Wp
            src = y2[k, o:o + Wo]
            dst = y[n0 + nl, k, oh]
            for ow in range(Wo):
                dst[ow] = src[ow] + bk


@njit(cache=True)
def _nk_to_flat(gy, n0, Wp, out):
    """Samples n0.. of gy (N, K, Ho, Wo) -> (K, nb*Ho*Wp) at the padded width, zero in the junk columns."""
    K, Ho, Wo = gy.shape[1], gy.shape[2], gy.shape[3]
    Lp = Ho * Wp
    nb = out.shape[1] // Lp
    for t in prange(K * nb):
        k = t // nb
        nl = t - k * nb
        for oh in range(Ho):
            o = nl * Lp + oh * Wp
            src = gy[n0 + nl, k, oh]
            dst = out[k, o:o + Wp]
            for ow in range(Wo):
                dst[ow] = src[ow]
            for ow in range(Wo, Wp):
                dst[ow] = 0


@njit(parallel=True, cache=True)
def _col2im_flat(gcol, n0, nb, kh, kw, Ho, Hp, Wp, pt, pl, gx):
    """Inverse of _im2col_flat: per (n, c) plane, sum the rows into a padded plane, crop into gx.

    Junk columns of gcol are exactly zero (they come from zero gradient columns).
    """
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    Lp = Ho * Wp
    L = Lp - kw + 1
    for t in prange(nb * C):
        nl = t // C
        c = t - nl * C
        buf = np.zeros(Hp * Wp, dtype=gx.dtype)
        for i in range(kh):
            for j in range(kw):
                off = i * Wp + j
                src = gcol[(c * kh + i) * kw + j, nl * Lp:nl * Lp + L]
                dst = buf[off:off + L]
                for q in range(L):
                    dst[q] += src[q]
        g = gx[n0 + nl, c]
        for h in range(H):
            row = buf[(h + pt) * Wp + pl:(h + pt) * Wp + pl + W]
            dst = g[h]
            for w in range(W):
                dst[w] = row[w]


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
    Ho = (H + pt + pb - kh) // sh + 1
    Wo = (W + pl + pr - kw) // sw + 1
    return N, C, H, W, K, kh, kw, sh, sw, pt, pb, pl, pr, Ho, Wo


def use_direct(x_shape, w_shape, stride) -> bool:
    """Direct loops for stride 1 and few input channels (where im2col is pure overhead)."""
    C, kh, kw = w_shape[1], w_shape[2], w_shape[3]
    return stride == (1, 1) and C <= 3 and kh * kw >= 4


def _is_pointwise(w_shape, stride, pads) -> bool:
    """1x1, stride 1, no padding: the input planes already are the column matrix."""
    return w_shape[2] == 1 and w_shape[3] == 1 and stride == (1, 1) and not any(pads)


def chunk_size(N, R, P, itemsize) -> int:
    """Samples per im2col chunk (depends on shapes only: results never depend on timing)."""
    return max(1, min(N, CHUNK_BYTES // max(1, R * P * itemsize)))


def conv2d_forward(x, w, b, stride, pads, ctx=None):
    N, C, H, W, K, kh, kw, sh, sw, pt, pb, pl, pr, Ho, Wo = _geometry(x.shape, w.shape, stride, pads)
    y = np.empty((N, K, Ho, Wo), dtype=x.dtype)
    key = (x.shape, w.shape, stride, pads)
    if ctx is not None:
        ctx.clear()
        ctx["key"] = key
    if use_direct(x.shape, w.shape, stride):
        bias = b if b is not None else np.zeros(K, dtype=x.dtype)
        xp = pad2d(x, pads) if any(pads) else x
        _direct_fwd_s1(xp, w, bias, Ho, Wo, y)
        if ctx is not None:
            ctx["xpad"] = xp
        return y
    P, R = Ho * Wo, C * kh * kw
    wr = w.reshape(K, R)
    y3 = y.reshape(N, K, P)
    if _is_pointwise(w.shape, stride, pads):
        x3 = x.reshape(N, C, P)
        for n in range(N):
            np.matmul(wr, x3[n], out=y3[n])
        if b is not None:
            _add_bias(y3, 0, N, b)
        return y
    flat = (sh, sw) == (1, 1)
    if flat:  # columns at the padded width: one contiguous copy per row
        xs = pad2d(x, pads) if any(pads) else x
        Wp = W + pl + pr
        Pc = Ho * Wp
    else:
        xs, Wp, Pc = x, 0, P
    nb = chunk_size(N, R, Pc, x.itemsize)
    if nb == N and ctx is not None:  # one chunk: keep the columns for the backward
        col = np.empty((R, N * Pc), dtype=x.dtype)
        ctx["col"] = col
    else:
        col = scratch("col", (R, nb * Pc), x.dtype)
    bias = b if b is not None else np.zeros(K, dtype=x.dtype)
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        c = col if m == nb else scratch("col", (R, m * Pc), x.dtype)  # last, shorter chunk
        if flat:
            _im2col_flat(xs, n0, m, kh, kw, Ho, c)
            y2 = scratch("gemm_out", (K, m * Pc), x.dtype)
            np.matmul(wr, c, out=y2)
            _flat_to_nk_bias(y2, bias, n0, Wp, y)
            continue
        _im2col(x, n0, m, kh, kw, sh, sw, pt, pl, Ho, Wo, c)
        if m == 1:
            np.matmul(wr, c, out=y3[n0])
            if b is not None:
                _add_bias(y3, n0, 1, b)
        else:
            y2 = scratch("gemm_out", (K, m * P), x.dtype)
            np.matmul(wr, c, out=y2)
            _kn_to_nk_bias(y2, bias, n0, y3)
    return y


def conv2d_backward(gy, x, w, stride, pads, need_gx=True, ctx=None):
    N, C, H, W, K, kh, kw, sh, sw, pt, pb, pl, pr, Ho, Wo = _geometry(x.shape, w.shape, stride, pads)
    P, R = Ho * Wo, C * kh * kw
    key = (x.shape, w.shape, stride, pads)
    cached = ctx if (ctx is not None and ctx.get("key") == key) else {}
    gy3 = gy.reshape(N, K, P)
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
    flat = (sh, sw) == (1, 1)
    Hp, Wp = H + pt + pb, W + pl + pr
    Pc = Ho * Wp if flat else P
    nb = chunk_size(N, R, Pc, x.itemsize)
    col_all = cached.get("col")
    xs = None
    if flat and not direct and col_all is None:
        xs = pad2d(x, pads) if any(pads) else x
    if not direct:
        gw2 = np.empty((K, R), dtype=x.dtype)
        tmp = scratch("gw_part", (K, R), x.dtype)
    wt = wr.T
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        if flat:
            g = scratch("gyT", (K, m * Pc), x.dtype)
            _nk_to_flat(gy, n0, Wp, g)
        elif m == 1:
            g = gy3[n0]
        else:
            g = scratch("gyT", (K, m * P), x.dtype)
            _nk_to_kn(gy3, n0, g)
        if not direct:
            if col_all is not None:
                col = col_all
            else:
                col = scratch("col", (R, m * Pc), x.dtype)
                if flat:
                    _im2col_flat(xs, n0, m, kh, kw, Ho, col)
                else:
                    _im2col(x, n0, m, kh, kw, sh, sw, pt, pl, Ho, Wo, col)
            if n0 == 0:
                np.matmul(g, col.T, out=gw2)
            else:
                np.matmul(g, col.T, out=tmp)
                gw2 += tmp
        if need_gx:
            gcol = scratch("gcol", (R, m * Pc), x.dtype)
            np.matmul(wt, g, out=gcol)
            if flat:
                _col2im_flat(gcol, n0, m, kh, kw, Ho, Hp, Wp, pt, pl, gx)
            else:
                _col2im(gcol, n0, m, kh, kw, sh, sw, pt, pl, Ho, Wo, gx)
    if not direct:
        gw = gw2.reshape(w.shape)
    return gx, gw, gb
