"""Max and average pooling on the CPU, one task per (n, c) plane (race-free backward).

Semantics follow PyTorch's: floor output size (or ceil mode, with the window
that would start in the right/bottom padding dropped), max pooling never picks
a padded cell, average pooling divides by the window clipped to the padded
input (``count_include_pad``, the default) or by its real cells.
A tie in max pooling sends the gradient to the first maximum in scan order.
2x2/stride-2 windows without padding (LeNet, VGG) take branch-free kernels
that keep a 1-byte argmax and write each gradient cell exactly once.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..geometry import pool_output_size
from ..saved import saved_for
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


@njit(inline="always")
def _divisor(h0, w0, kh, kw, H, W, pt, pl, cip):
    """Cells a window divides by: clipped to the padded input when padding counts
    (``cip``), else to the real input; overhang past the padding (ceil mode) never counts."""
    if cip:
        return (min(h0 + kh, H + pt) - h0) * (min(w0 + kw, W + pl) - w0)
    return (min(h0 + kh, H) - max(h0, 0)) * (min(w0 + kw, W) - max(w0, 0))


@njit(parallel=True, cache=True)
def _avg_fwd(x, kh, kw, sh, sw, pt, pl, cip, y):
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
                s = 0.0
                for i in range(kh):
                    ih = h0 + i
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(kw):
                        iw = w0 + j
                        if 0 <= iw < W:
                            s += xs[ih, iw]
                y[n, c, oh, ow] = s / _divisor(h0, w0, kh, kw, H, W, pt, pl, cip)


@njit(parallel=True, cache=True)
def _avg_bwd(gy, kh, kw, sh, sw, pt, pl, cip, gx):
    N, C, H, W = gx.shape
    Ho, Wo = gy.shape[2], gy.shape[3]
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
                v = gy[n, c, oh, ow] / _divisor(h0, w0, kh, kw, H, W, pt, pl, cip)
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


def _is_2x2(x_shape, y_shape, size, stride, pads) -> bool:
    """The common LeNet/VGG case (whole 2x2 windows), with its own branch-free kernels."""
    return (size == (2, 2) and stride == (2, 2) and not any(pads)
            and y_shape[2] == x_shape[2] // 2 and y_shape[3] == x_shape[3] // 2)


def _out_shape(shape, size, stride, pads, ceil_mode=False):
    N, C, H, W = shape
    return (N, C, pool_output_size(H, size[0], pads[0], stride[0], ceil_mode),
            pool_output_size(W, size[1], pads[2], stride[1], ceil_mode))


def _max_indices(x, size, stride, pads, ceil_mode):
    y = np.empty(_out_shape(x.shape, size, stride, pads, ceil_mode), dtype=x.dtype)
    if _is_2x2(x.shape, y.shape, size, stride, pads):
        idx = np.empty(y.shape, dtype=np.int8)
        _max_fwd_2x2(x, y, idx)
    else:
        idx = np.empty(y.shape, dtype=np.int32)
        _max_fwd(x, size[0], size[1], stride[0], stride[1], pads[0], pads[2], y, idx)
    return y, idx


def max_pool2d_forward(x, size, stride, pads, ctx=None, ceil_mode=False):
    y, idx = _max_indices(x, size, stride, pads, ceil_mode)
    if ctx is not None:
        ctx.clear()
        ctx.update(key=(x.shape, size, stride, pads, ceil_mode), idx=idx, x=x)
    return y


def max_pool2d_backward(gy, x, size, stride, pads, ctx=None, ceil_mode=False):
    key = (x.shape, size, stride, pads, ceil_mode)
    idx = saved_for(ctx, key, x).get("idx")
    if idx is None:
        _, idx = _max_indices(x, size, stride, pads, ceil_mode)
    gx = np.empty(x.shape, dtype=gy.dtype)
    if idx.dtype == np.int8:
        _max_bwd_2x2(gy, idx, gx)
    else:
        _max_bwd(gy, idx, gx)
    return gx


def avg_pool2d_forward(x, size, stride, pads, ceil_mode=False, count_include_pad=True):
    y = np.empty(_out_shape(x.shape, size, stride, pads, ceil_mode), dtype=x.dtype)
    if _is_2x2(x.shape, y.shape, size, stride, pads):
        _avg_fwd_2x2(x, y)
    else:
        _avg_fwd(x, size[0], size[1], stride[0], stride[1], pads[0], pads[2], bool(count_include_pad), y)
    return y


def avg_pool2d_backward(gy, x_shape, size, stride, pads, ceil_mode=False, count_include_pad=True):
    gx = np.empty(x_shape, dtype=gy.dtype)
    if _is_2x2(x_shape, gy.shape, size, stride, pads):
        _avg_bwd_2x2(gy, gx)
    else:
        _avg_bwd(gy, size[0], size[1], stride[0], stride[1], pads[0], pads[2], bool(count_include_pad), gx)
    return gx


# -- global pooling: (N, C, H, W) -> (N, C), one task per plane ---------------------------------

@njit(parallel=True, cache=True, fastmath=True)
def _gavg_fwd(x, y):
    NC, M = x.shape
    inv = 1.0 / M
    for t in prange(NC):
        r = x[t]
        s = r[0]          # x's dtype: float32 lanes vectorise (fastmath), each plane summed in one order
        for i in range(1, M):
            s += r[i]
        y[t] = s * inv


@njit(parallel=True, cache=True)
def _gavg_bwd(gy, gx):
    NC, M = gx.shape
    inv = 1.0 / M
    for t in prange(NC):
        v = gy[t] * inv
        r = gx[t]
        for i in range(M):
            r[i] = v


@njit(parallel=True, cache=True)
def _gmax_fwd(x, y, idx):
    """Max of each plane and its first position (a NaN wins, as in the windowed max)."""
    NC, M = x.shape
    for t in prange(NC):
        r = x[t]
        best = r[0]
        bi = 0
        if best == best:
            for i in range(1, M):
                v = r[i]
                if v > best:
                    best = v
                    bi = i
                elif v != v:
                    best = v
                    bi = i
                    break
        y[t] = best
        idx[t] = bi


@njit(parallel=True, cache=True)
def _gmax_bwd(gy, idx, gx):
    NC, M = gx.shape
    for t in prange(NC):
        r = gx[t]
        for i in range(M):
            r[i] = 0
        r[idx[t]] = gy[t]


def _flat(a):
    return a.reshape(a.shape[0] * a.shape[1], -1)


def global_avg_pool2d_forward(x):
    y = np.empty(x.shape[:2], dtype=x.dtype)
    _gavg_fwd(_flat(x), y.reshape(-1))
    return y


def global_avg_pool2d_backward(gy, x_shape):
    gx = np.empty(x_shape, dtype=gy.dtype)
    _gavg_bwd(gy.reshape(-1), _flat(gx))
    return gx


def global_max_pool2d_forward(x, ctx=None):
    y = np.empty(x.shape[:2], dtype=x.dtype)
    idx = np.empty(x.shape[0] * x.shape[1], dtype=np.int64)
    _gmax_fwd(_flat(x), y.reshape(-1), idx)
    if ctx is not None:
        ctx.clear()
        ctx.update(key=x.shape, idx=idx, x=x)
    return y


def global_max_pool2d_backward(gy, x, ctx=None):
    idx = saved_for(ctx, x.shape, x).get("idx")
    if idx is None:
        idx = np.empty(x.shape[0] * x.shape[1], dtype=np.int64)
        _gmax_fwd(_flat(x), np.empty(idx.shape, x.dtype), idx)
    gx = np.empty(x.shape, dtype=gy.dtype)
    _gmax_bwd(gy.reshape(-1), idx, _flat(gx))
    return gx
