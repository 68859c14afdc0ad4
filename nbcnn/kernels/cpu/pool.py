"""Max and average pooling on the CPU, one task per (n, c) plane (race-free backward).

Semantics follow PyTorch's defaults: floor output size, max pooling never
picks a padded cell, average pooling counts padded zeros in the divisor.
A tie in max pooling sends the gradient to the first maximum in scan order.
2x2/stride-2 windows without padding (LeNet, VGG) take branch-free kernels
that keep a 1-byte argmax and write each gradient cell exactly once.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange
from .microkernel import compact_code


@njit(parallel=True, cache=True)
def _max_fwd(x, kh, kw, sh, sw, pt, pl, y, idx):
    N, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    for t in prange(N * C):
        compact_code()
        n = t // C
        c = t - n * C
        xs = x[n, c]
        for oh in range(Ho):
            h0 = oh * sh - pt
            for ow in range(Wo):
                w0 = ow * sw - pl
                best = xs[max(h0, 0), max(w0, 0)]
                bi = max(h0, 0) * W + max(w0, 0)
                for i in range(kh):
                    ih = h0 + i
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(kw):
                        iw = w0 + j
                        if iw < 0 or iw >= W:
                            continue
                        v = xs[ih, iw]
                        if v > best or (v != v and best == best):
                            best = v
                            bi = ih * W + iw
                y[n, c, oh, ow] = best
                idx[n, c, oh, ow] = bi


@njit(parallel=True, cache=True)
def _max_bwd(gy, idx, gx):
    N, C, H, W = gx.shape
    Ho, Wo = gy.shape[2], gy.shape[3]
    for t in prange(N * C):
        compact_code()
        n = t // C
        c = t - n * C
        g = gx[n, c].reshape(H * W)
        for q in range(H * W):
            g[q] = 0
        for oh in range(Ho):
            for ow in range(Wo):
                g[idx[n, c, oh, ow]] += gy[n, c, oh, ow]


@njit(parallel=True, cache=True)
def _avg_fwd(x, kh, kw, sh, sw, pt, pl, y):
    N, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    inv = 1.0 / (kh * kw)
    for t in prange(N * C):
        compact_code()
        n = t // C
        c = t - n * C
        xs = x[n, c]
        for oh in range(Ho):
            h0 = oh * sh - pt
            for ow in range(Wo):
                w0 = ow * sw - pl
                s = 0.0
                for i in range(kh):
                    ih = h0 + i
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(kw):
                        iw = w0 + j
                        if 0 <= iw < W:
                            s += xs[ih, iw]
                y[n, c, oh, ow] = s * inv


@njit(parallel=True, cache=True)
def _avg_bwd(gy, kh, kw, sh, sw, pt, pl, gx):
    N, C, H, W = gx.shape
    Ho, Wo = gy.shape[2], gy.shape[3]
    inv = 1.0 / (kh * kw)
    for t in prange(N * C):
        compact_code()
        n = t // C
        c = t - n * C
        g = gx[n, c]
        for h in range(H):
            for w in range(W):
                g[h, w] = 0
        for oh in range(Ho):
            h0 = oh * sh - pt
            for ow in range(Wo):
                w0 = ow * sw - pl
                v = gy[n, c, oh, ow] * inv
                for i in range(kh):
                    ih = h0 + i
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(kw):
                        iw = w0 + j
                        if 0 <= iw < W:
                            g[ih, iw] += v


@njit(parallel=True, cache=True)
def _max_fwd_2x2(x, y, idx):
    """2x2 windows, stride 2, no padding: idx holds 0..3 (position in the window, scan order)."""
    N, C = x.shape[0], x.shape[1]
    Ho, Wo = y.shape[2], y.shape[3]
    for t in prange(N * C):
        compact_code()
        n = t // C
        c = t - n * C
        for oh in range(Ho):
            r0 = x[n, c, 2 * oh]
            r1 = x[n, c, 2 * oh + 1]
            yr = y[n, c, oh]
            ir = idx[n, c, oh]
            for ow in range(Wo):
                best = r0[2 * ow]
                bi = 0
                v = r0[2 * ow + 1]
                if v > best or (v != v and best == best):
                    best = v
                    bi = 1
                v = r1[2 * ow]
                if v > best or (v != v and best == best):
                    best = v
                    bi = 2
                v = r1[2 * ow + 1]
                if v > best or (v != v and best == best):
                    best = v
                    bi = 3
                yr[ow] = best
                ir[ow] = bi


@njit(parallel=True, cache=True)
def _max_bwd_2x2(gy, idx, gx):
    """Writes every cell of gx once (no zero-fill pass): the gradient where idx points, else 0."""
    N, C, H, W = gx.shape
    Ho, Wo = gy.shape[2], gy.shape[3]
    for t in prange(N * C):
        compact_code()
        n = t // C
        c = t - n * C
        for oh in range(Ho):
            g0 = gx[n, c, 2 * oh]
            g1 = gx[n, c, 2 * oh + 1]
            gr = gy[n, c, oh]
            ir = idx[n, c, oh]
            for ow in range(Wo):
                v = gr[ow]
                k = ir[ow]
                g0[2 * ow] = v if k == 0 else 0
                g0[2 * ow + 1] = v if k == 1 else 0
                g1[2 * ow] = v if k == 2 else 0
                g1[2 * ow + 1] = v if k == 3 else 0
            for w in range(2 * Wo, W):
                g0[w] = 0
                g1[w] = 0
        for h in range(2 * Ho, H):
            for w in range(W):
                gx[n, c, h, w] = 0


@njit(parallel=True, cache=True)
def _avg_fwd_2x2(x, y):
    N, C = x.shape[0], x.shape[1]
    Ho, Wo = y.shape[2], y.shape[3]
    for t in prange(N * C):
        compact_code()
        n = t // C
        c = t - n * C
        for oh in range(Ho):
            r0 = x[n, c, 2 * oh]
            r1 = x[n, c, 2 * oh + 1]
            yr = y[n, c, oh]
            for ow in range(Wo):
                yr[ow] = ((r0[2 * ow] + r0[2 * ow + 1]) + (r1[2 * ow] + r1[2 * ow + 1])) * 0.25


@njit(parallel=True, cache=True)
def _avg_bwd_2x2(gy, gx):
    N, C, H, W = gx.shape
    Ho, Wo = gy.shape[2], gy.shape[3]
    for t in prange(N * C):
        compact_code()
        n = t // C
        c = t - n * C
        for oh in range(Ho):
            g0 = gx[n, c, 2 * oh]
            g1 = gx[n, c, 2 * oh + 1]
            gr = gy[n, c, oh]
            for ow in range(Wo):
                v = gr[ow] * 0.25
                g0[2 * ow] = v
                g0[2 * ow + 1] = v
                g1[2 * ow] = v
                g1[2 * ow + 1] = v
            for w in range(2 * Wo, W):
                g0[w] = 0
                g1[w] = 0
        for h in range(2 * Ho, H):
            for w in range(W):
                gx[n, c, h, w] = 0


def _is_2x2(size, stride, pads) -> bool:
    """The common LeNet/VGG case, with its own branch-free kernels."""
    return size == (2, 2) and stride == (2, 2) and not any(pads)


def _out_shape(shape, size, stride, pads):
    N, C, H, W = shape
    kh, kw = size
    sh, sw = stride
    pt, pb, pl, pr = pads
    return N, C, (H + pt + pb - kh) // sh + 1, (W + pl + pr - kw) // sw + 1


def max_pool2d_forward(x, size, stride, pads, ctx=None):
    y = np.empty(_out_shape(x.shape, size, stride, pads), dtype=x.dtype)
    fast = _is_2x2(size, stride, pads)
    if fast:
        idx = np.empty(y.shape, dtype=np.int8)
        _max_fwd_2x2(x, y, idx)
    else:
        idx = np.empty(y.shape, dtype=np.int32)
        _max_fwd(x, size[0], size[1], stride[0], stride[1], pads[0], pads[2], y, idx)
    if ctx is not None:
        ctx.clear()
        ctx.update(key=(x.shape, size, stride, pads), idx=idx, x=x)
    return y


def max_pool2d_backward(gy, x, size, stride, pads, ctx=None):
    key = (x.shape, size, stride, pads)
    idx = ctx.get("idx") if (ctx is not None and ctx.get("key") == key and ctx.get("x") is x) else None
    fast = _is_2x2(size, stride, pads)
    if idx is None:
        y = np.empty(_out_shape(x.shape, size, stride, pads), dtype=x.dtype)
        idx = np.empty(y.shape, dtype=np.int8 if fast else np.int32)
        if fast:
            _max_fwd_2x2(x, y, idx)
        else:
            _max_fwd(x, size[0], size[1], stride[0], stride[1], pads[0], pads[2], y, idx)
    gx = np.empty(x.shape, dtype=gy.dtype)
    if fast:
        _max_bwd_2x2(gy, idx, gx)
    else:
        _max_bwd(gy, idx, gx)
    return gx


def avg_pool2d_forward(x, size, stride, pads):
    y = np.empty(_out_shape(x.shape, size, stride, pads), dtype=x.dtype)
    if _is_2x2(size, stride, pads):
        _avg_fwd_2x2(x, y)
    else:
        _avg_fwd(x, size[0], size[1], stride[0], stride[1], pads[0], pads[2], y)
    return y


def avg_pool2d_backward(gy, x_shape, size, stride, pads):
    gx = np.empty(x_shape, dtype=gy.dtype)
    if _is_2x2(size, stride, pads):
        _avg_bwd_2x2(gy, gx)
    else:
        _avg_bwd(gy, size[0], size[1], stride[0], stride[1], pads[0], pads[2], gx)
    return gx
