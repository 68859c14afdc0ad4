"""Max and average pooling on the GPU: one thread per written element, no atomics.

Semantics match :mod:`nbcnn.kernels.cpu.pool` (PyTorch's): floor or ceil
output size, padded cells never win a max, the average divides by the window
clipped to the padded input (or by its real cells without ``count_include_pad``),
a tie (or NaN) sends the gradient to the first maximum in scan order. Global
pooling gives each plane one thread (planes are small: 7x7 at the end of a ResNet).

The backward passes are gathers: each input element sums the gradients of the
windows that contain it (for max pooling, only those whose stored argmax is
this element), in the same window order as the CPU — race-free and
deterministic. Arrays travel as ``(N*C, H, W)`` planes: threads along x cover a plane's
pixels, blocks along y the planes (one division per element for the pixel's row).
"""
from __future__ import annotations

import numpy as np
from numba import cuda, types

from ..geometry import pool_output_size
from ..saved import saved_for
from .runtime import I64, MAX_BLOCKS, TPB, arr, kernel, xp_of

_WIN = (I64,) * 6  # kh, kw, sh, sw, pt, pl


@kernel(lambda f: (arr(f, 3), *_WIN, arr(f, 3), arr(types.int32, 3)))
def _max_fwd(x, kh, kw, sh, sw, pt, pl, y, idx):
    NC, H, W = x.shape
    Ho, Wo = y.shape[1], y.shape[2]
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for nc in range(cuda.blockIdx.y, NC, cuda.gridDim.y):
        for t in range(t0, Ho * Wo, tstep):
            oh = t // Wo
            ow = t - oh * Wo
            h0 = oh * sh - pt
            w0 = ow * sw - pl
            hs = max(h0, 0)
            ws = max(w0, 0)
            best = x[nc, hs, ws]
            bi = hs * W + ws
            for ih in range(hs, min(h0 + kh, H)):
                for iw in range(ws, min(w0 + kw, W)):
                    v = x[nc, ih, iw]
                    if v > best or (v != v and best == best):
                        best = v
                        bi = ih * W + iw
            y[nc, oh, ow] = best
            idx[nc, oh, ow] = bi


@kernel(lambda f: (arr(f, 3), arr(types.int32, 3), *_WIN, arr(f, 3)))
def _max_bwd(gy, idx, kh, kw, sh, sw, pt, pl, gx):
    NC, H, W = gx.shape
    Ho, Wo = gy.shape[1], gy.shape[2]
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for nc in range(cuda.blockIdx.y, NC, cuda.gridDim.y):
        for t in range(t0, H * W, tstep):
            h = t // W
            w = t - h * W
            hp = h + pt
            wp = w + pl
            s = gx.dtype.type(0)
            # windows containing (h, w): oh*sh <= hp < oh*sh + kh
            for oh in range(max((hp - kh + sh) // sh, 0), min(hp // sh + 1, Ho)):
                for ow in range(max((wp - kw + sw) // sw, 0), min(wp // sw + 1, Wo)):
                    if idx[nc, oh, ow] == t:  # t = h*W + w, the flat index the forward stored
                        s += gy[nc, oh, ow]
            gx[nc, h, w] = s


@kernel(lambda f: (arr(f, 3), *_WIN, I64, arr(f, 3)))
def _avg_fwd(x, kh, kw, sh, sw, pt, pl, cip, y):
    NC, H, W = x.shape
    Ho, Wo = y.shape[1], y.shape[2]
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for nc in range(cuda.blockIdx.y, NC, cuda.gridDim.y):
        for t in range(t0, Ho * Wo, tstep):
            oh = t // Wo
            ow = t - oh * Wo
            h0 = oh * sh - pt
            w0 = ow * sw - pl
            s = y.dtype.type(0)
            for ih in range(max(h0, 0), min(h0 + kh, H)):
                for iw in range(max(w0, 0), min(w0 + kw, W)):
                    s += x[nc, ih, iw]
            if cip:  # the window clipped to the padded input; ceil-mode overhang never counts
                cnt = (min(h0 + kh, H + pt) - h0) * (min(w0 + kw, W + pl) - w0)
            else:    # its real cells
                cnt = (min(h0 + kh, H) - max(h0, 0)) * (min(w0 + kw, W) - max(w0, 0))
            y[nc, oh, ow] = s / y.dtype.type(cnt)


@kernel(lambda f: (arr(f, 3), *_WIN, I64, arr(f, 3)))
def _avg_bwd(gy, kh, kw, sh, sw, pt, pl, cip, gx):
    NC, H, W = gx.shape
    Ho, Wo = gy.shape[1], gy.shape[2]
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for nc in range(cuda.blockIdx.y, NC, cuda.gridDim.y):
        for t in range(t0, H * W, tstep):
            h = t // W
            w = t - h * W
            hp = h + pt
            wp = w + pl
            s = gx.dtype.type(0)
            for oh in range(max((hp - kh + sh) // sh, 0), min(hp // sh + 1, Ho)):
                for ow in range(max((wp - kw + sw) // sw, 0), min(wp // sw + 1, Wo)):
                    h0 = oh * sh - pt
                    w0 = ow * sw - pl
                    if cip:
                        cnt = (min(h0 + kh, H + pt) - h0) * (min(w0 + kw, W + pl) - w0)
                    else:
                        cnt = (min(h0 + kh, H) - max(h0, 0)) * (min(w0 + kw, W) - max(w0, 0))
                    s += gy[nc, oh, ow] / gx.dtype.type(cnt)
            gx[nc, h, w] = s


# -- global pooling: one thread per plane (a plane is summed in one fixed order: deterministic) -----

@kernel(lambda f: (arr(f, 2), arr(f, 1)))
def _gavg_fwd(x, y):
    NC, M = x.shape
    for p in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, NC, cuda.gridDim.x * cuda.blockDim.x):
        s = y.dtype.type(0)
        for i in range(M):
            s += x[p, i]
        y[p] = s / y.dtype.type(M)


@kernel(lambda f: (arr(f, 1), arr(f, 2)))
def _gavg_bwd(gy, gx):
    NC, M = gx.shape
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for p in range(cuda.blockIdx.y, NC, cuda.gridDim.y):
        v = gy[p] / gx.dtype.type(M)
        for i in range(t0, M, tstep):
            gx[p, i] = v


@kernel(lambda f: (arr(f, 2), arr(f, 1), arr(types.int64, 1)))
def _gmax_fwd(x, y, idx):
    """Per plane: the max and its first position (the first NaN wins)."""
    NC, M = x.shape
    for p in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, NC, cuda.gridDim.x * cuda.blockDim.x):
        best = x[p, 0]
        bj = 0
        if best == best:
            for i in range(1, M):
                v = x[p, i]
                if v > best:
                    best = v
                    bj = i
                elif v != v:
                    best = v
                    bj = i
                    break
        y[p] = best
        idx[p] = bj


@kernel(lambda f: (arr(f, 1), arr(types.int64, 1), arr(f, 2)))
def _gmax_bwd(gy, idx, gx):
    NC, M = gx.shape
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for p in range(cuda.blockIdx.y, NC, cuda.gridDim.y):
        k = idx[p]
        for i in range(t0, M, tstep):
            gx[p, i] = gy[p] if i == k else gx.dtype.type(0)


def _out_shape(shape, size, stride, pads, ceil_mode=False):
    N, C, H, W = shape
    return (N, C, pool_output_size(H, size[0], pads[0], stride[0], ceil_mode),
            pool_output_size(W, size[1], pads[2], stride[1], ceil_mode))


def _planes(a):
    N, C, H, W = a.shape
    return a.reshape(N * C, H, W)


def _plane_grid(out):
    """grid3 extents for a kernel writing ``out``: its pixels per plane (x), its planes (y)."""
    return out.shape[2] * out.shape[3], out.shape[0] * out.shape[1], 1


def _win(size, stride, pads):
    return size[0], size[1], stride[0], stride[1], pads[0], pads[2]


def _max_forward(x, size, stride, pads, ceil_mode):
    xp = xp_of(x)
    y = xp.empty(_out_shape(x.shape, size, stride, pads, ceil_mode), dtype=x.dtype)
    idx = xp.empty(y.shape, dtype=np.int32)
    _max_fwd.grid3(*_plane_grid(y), _planes(x), *_win(size, stride, pads), _planes(y), _planes(idx))
    return y, idx


def max_pool2d_forward(x, size, stride, pads, ctx=None, ceil_mode=False):
    y, idx = _max_forward(x, size, stride, pads, ceil_mode)
    if ctx is not None:
        ctx.clear()
        ctx.update(key=(xp_of(x).__name__, x.shape, size, stride, pads, ceil_mode), idx=idx, x=x)
    return y


def max_pool2d_backward(gy, x, size, stride, pads, ctx=None, ceil_mode=False):
    xp = xp_of(gy)
    key = (xp.__name__, x.shape, size, stride, pads, ceil_mode)
    idx = saved_for(ctx, key, x).get("idx")
    if idx is None:
        _, idx = _max_forward(x, size, stride, pads, ceil_mode)
    gx = xp.empty(x.shape, dtype=gy.dtype)
    _max_bwd.grid3(*_plane_grid(gx), _planes(gy), _planes(idx), *_win(size, stride, pads), _planes(gx))
    return gx


def avg_pool2d_forward(x, size, stride, pads, ceil_mode=False, count_include_pad=True):
    xp = xp_of(x)
    y = xp.empty(_out_shape(x.shape, size, stride, pads, ceil_mode), dtype=x.dtype)
    _avg_fwd.grid3(*_plane_grid(y), _planes(x), *_win(size, stride, pads), int(bool(count_include_pad)),
                   _planes(y))
    return y


def avg_pool2d_backward(gy, x_shape, size, stride, pads, ceil_mode=False, count_include_pad=True):
    xp = xp_of(gy)
    gx = xp.empty(x_shape, dtype=gy.dtype)
    _avg_bwd.grid3(*_plane_grid(gx), _planes(gy), *_win(size, stride, pads), int(bool(count_include_pad)),
                   _planes(gx))
    return gx


def _flat(a):
    return a.reshape(a.shape[0] * a.shape[1], -1)


def global_avg_pool2d_forward(x):
    y = xp_of(x).empty(x.shape[:2], dtype=x.dtype)
    NC = x.shape[0] * x.shape[1]
    _gavg_fwd.launch(min(-(-NC // TPB), MAX_BLOCKS), TPB, _flat(x), y.reshape(-1))
    return y


def global_avg_pool2d_backward(gy, x_shape):
    gx = xp_of(gy).empty(x_shape, dtype=gy.dtype)
    f = _flat(gx)
    _gavg_bwd.grid3(f.shape[1], f.shape[0], 1, gy.reshape(-1), f)
    return gx


def _gmax_indices(x):
    xp = xp_of(x)
    NC = x.shape[0] * x.shape[1]
    y = xp.empty(x.shape[:2], dtype=x.dtype)
    idx = xp.empty(NC, dtype=np.int64)
    _gmax_fwd.launch(min(-(-NC // TPB), MAX_BLOCKS), TPB, _flat(x), y.reshape(-1), idx)
    return y, idx


def global_max_pool2d_forward(x, ctx=None):
    y, idx = _gmax_indices(x)
    if ctx is not None:
        ctx.clear()
        ctx.update(key=(xp_of(x).__name__, x.shape), idx=idx, x=x)
    return y


def global_max_pool2d_backward(gy, x, ctx=None):
    xp = xp_of(gy)
    idx = saved_for(ctx, (xp.__name__, x.shape), x).get("idx")
    if idx is None:
        _, idx = _gmax_indices(x)
    gx = xp.empty(x.shape, dtype=gy.dtype)
    f = _flat(gx)
    _gmax_bwd.grid3(f.shape[1], f.shape[0], 1, gy.reshape(-1), idx, f)
    return gx
