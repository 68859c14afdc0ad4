"""Convolution (cross-correlation) on the CPU: im2col + BLAS GEMM, or direct loops.

Two algorithms, chosen per shape (measured on 2 cores, see shared notes):

* **im2col**: the whole batch becomes one ``(C*kh*kw, N*Ho*Wo)`` column
  matrix, so the forward is ONE GEMM, the weight gradient one GEMM and the
  column gradient one GEMM; padding and stride are fused into im2col/col2im.
* **direct** ("flat" stride-1 loops) for few input channels (LeNet conv1):
  each (c, i, j) term is one long contiguous axpy over the padded width,
  which LLVM vectorises; no column matrix at all.

col2im is a gather per (n, c) plane: race-free, deterministic.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .pad import pad2d
from .scratch import scratch


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
def _im2col(x, kh, kw, sh, sw, pt, pl, Ho, Wo, col):
    N, C, H, W = x.shape
    P = Ho * Wo
    R = C * kh * kw
    for t in prange(R * N):
        r = t // N
        n = t - r * N
        c = r // (kh * kw)
        ij = r - c * (kh * kw)
        i = ij // kw
        j = ij - i * kw
        lo, hi = _valid_range(j, pl, sw, W, Wo)
        row = col[r]
        for oh in range(Ho):
            ih = oh * sh - pt + i
            o = n * P + oh * Wo
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
def _col2im(col, kh, kw, sh, sw, pt, pl, Ho, Wo, gx):
    N, C, H, W = gx.shape
    P = Ho * Wo
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        g = gx[n, c]
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
                    o = n * P + oh * Wo
                    if sw == 1:
                        d = j - pl
                        for ow in range(lo, hi):
                            dst[ow + d] += row[o + ow]
                    else:
                        for ow in range(lo, hi):
                            dst[ow * sw - pl + j] += row[o + ow]


@njit(parallel=True, cache=True)
def _kn_to_nk_bias(y2, b, y):
    """(K, N*P) GEMM result -> (N, K, P) output, adding the bias on the way."""
    N, K, P = y.shape
    for t in prange(N * K):
        n = t // K
        k = t - n * K
        bk = b[k]
        src = y2[k]
        dst = y[n, k]
        o = n * P
        for p in range(P):
            dst[p] = src[o + p] + bk


@njit(parallel=True, cache=True)
def _nk_to_kn_bias_grad(gy, out, gb):
    """(N, K, P) gradient -> (K, N*P) for the GEMMs, and the bias gradient."""
    N, K, P = gy.shape
    for k in prange(K):
        s = 0.0
        dst = out[k]
        for n in range(N):
            src = gy[n, k]
            o = n * P
            for p in range(P):
                v = src[p]
                dst[o + p] = v
                s += v
        gb[k] = s


@njit(parallel=True, cache=True)
def _direct_fwd_s1(xp, w, b, Ho, Wo, y):
    """Stride-1 direct convolution on a padded input, one task per (n, k)."""
    N, C, Hp, Wp = xp.shape
    K, _, kh, kw = w.shape
    L = (Ho - 1) * Wp + Wo
    for t in prange(N * K):
        n = t // K
        k = t - n * K
        acc = np.zeros(L, dtype=y.dtype)
        for c in range(C):
            xf = xp[n, c].reshape(Hp * Wp)
            for i in range(kh):
                for j in range(kw):
                    wv = w[k, c, i, j]
                    off = i * Wp + j
                    for q in range(L):
                        acc[q] += wv * xf[off + q]
        bk = b[k]
        for oh in range(Ho):
            for ow in range(Wo):
                y[n, k, oh, ow] = acc[oh * Wp + ow] + bk


@njit(parallel=True, cache=True, fastmath=True)
def _direct_dw_s1(xp, gy, gw):
    """Stride-1 weight gradient, one task per (k, c): dot products over the flat padded rows."""
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
                for ow in range(Wo):
                    g[oh * Wp + ow] = gy[n, k, oh, ow]
            xf = xp[n, c].reshape(Hp * Wp)
            for i in range(kh):
                for j in range(kw):
                    off = i * Wp + j
                    s = 0.0
                    for q in range(L):
                        s += g[q] * xf[off + q]
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


def conv2d_forward(x, w, b, stride, pads, ctx=None):
    N, C, H, W, K, kh, kw, sh, sw, pt, pb, pl, pr, Ho, Wo = _geometry(x.shape, w.shape, stride, pads)
    bias = b if b is not None else np.zeros(K, dtype=x.dtype)
    y = np.empty((N, K, Ho, Wo), dtype=x.dtype)
    key = (x.shape, w.shape, stride, pads)
    if use_direct(x.shape, w.shape, stride):
        xp = pad2d(x, pads) if any(pads) else x
        _direct_fwd_s1(xp, w, bias, Ho, Wo, y)
        if ctx is not None:
            ctx.clear()
            ctx.update(key=key, xpad=xp)
        return y
    R, NP = C * kh * kw, N * Ho * Wo
    if ctx is not None:
        col = ctx.get("col")
        if col is None or col.shape != (R, NP) or col.dtype != x.dtype:
            col = np.empty((R, NP), dtype=x.dtype)
        ctx.clear()
        ctx.update(key=key, col=col)
    else:
        col = scratch("col", (R, NP), x.dtype)
    _im2col(x, kh, kw, sh, sw, pt, pl, Ho, Wo, col)
    y2 = scratch("gemm_out", (K, NP), x.dtype)
    np.matmul(w.reshape(K, R), col, out=y2)
    _kn_to_nk_bias(y2, bias, y.reshape(N, K, Ho * Wo))
    return y


def conv2d_backward(gy, x, w, stride, pads, need_gx=True, ctx=None):
    N, C, H, W, K, kh, kw, sh, sw, pt, pb, pl, pr, Ho, Wo = _geometry(x.shape, w.shape, stride, pads)
    R, NP = C * kh * kw, N * Ho * Wo
    key = (x.shape, w.shape, stride, pads)
    cached = ctx if (ctx is not None and ctx.get("key") == key) else {}
    gyT = scratch("gyT", (K, NP), x.dtype)
    gb = np.empty(K, dtype=x.dtype)
    _nk_to_kn_bias_grad(gy.reshape(N, K, Ho * Wo), gyT, gb)
    if use_direct(x.shape, w.shape, stride):
        xp = cached.get("xpad")
        if xp is None:
            xp = pad2d(x, pads) if any(pads) else x
        gw = np.empty(w.shape, dtype=x.dtype)
        _direct_dw_s1(xp, gy, gw)
    else:
        col = cached.get("col")
        if col is None:
            col = scratch("col", (R, NP), x.dtype)
            _im2col(x, kh, kw, sh, sw, pt, pl, Ho, Wo, col)
        gw = np.matmul(gyT, col.T).reshape(w.shape)
    gx = None
    if need_gx:
        gcol = scratch("gcol", (R, NP), x.dtype)
        np.matmul(w.reshape(K, R).T, gyT, out=gcol)
        gx = np.empty(x.shape, dtype=x.dtype)
        _col2im(gcol, kh, kw, sh, sw, pt, pl, Ho, Wo, gx)
    return gx, gw, gb
