"""Max and average pooling on the GPU: one thread per written element, no atomics.

Semantics match :mod:`nbcnn.kernels.cpu.pool` (PyTorch's defaults): floor
output size, padded cells never win a max, padded zeros count in the average's
divisor, a tie (or NaN) sends the gradient to the first maximum in scan order.

The backward passes are gathers: each input element sums the gradients of the
windows that contain it (for max pooling, only those whose stored argmax is
this element), in the same window order as the CPU — race-free and
deterministic. Arrays travel as ``(N*C, H, W)`` planes: threads along x cover a plane's
pixels, blocks along y the planes (one division per element for the pixel's row).
"""
from __future__ import annotations

import numpy as np
from numba import cuda, types

from ..geometry import output_size
from .runtime import I64, arr, kernel, xp_of

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


@kernel(lambda f: (arr(f, 3), *_WIN, f, arr(f, 3)))
def _avg_fwd(x, kh, kw, sh, sw, pt, pl, inv, y):
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
            y[nc, oh, ow] = s * inv


@kernel(lambda f: (arr(f, 3), *_WIN, f, arr(f, 3)))
def _avg_bwd(gy, kh, kw, sh, sw, pt, pl, inv, gx):
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
                    s += gy[nc, oh, ow]
            gx[nc, h, w] = s * inv


def _out_shape(shape, size, stride, pads):
    N, C, H, W = shape
    kh, kw = size
    sh, sw = stride
    pt, pb, pl, pr = pads
    return N, C, output_size(H, kh, pt, pb, sh), output_size(W, kw, pl, pr, sw)


def _planes(a):
    N, C, H, W = a.shape
    return a.reshape(N * C, H, W)


def _plane_grid(out):
    """grid3 extents for a kernel writing ``out``: its pixels per plane (x), its planes (y)."""
    return out.shape[2] * out.shape[3], out.shape[0] * out.shape[1], 1


def _win(size, stride, pads):
    return size[0], size[1], stride[0], stride[1], pads[0], pads[2]


def _max_forward(x, size, stride, pads):
    xp = xp_of(x)
    y = xp.empty(_out_shape(x.shape, size, stride, pads), dtype=x.dtype)
    idx = xp.empty(y.shape, dtype=np.int32)
    _max_fwd.grid3(*_plane_grid(y), _planes(x), *_win(size, stride, pads), _planes(y), _planes(idx))
    return y, idx


def max_pool2d_forward(x, size, stride, pads, ctx=None):
    y, idx = _max_forward(x, size, stride, pads)
    if ctx is not None:
        ctx.clear()
        ctx.update(key=(xp_of(x).__name__, x.shape, size, stride, pads), idx=idx)
    return y


def max_pool2d_backward(gy, x, size, stride, pads, ctx=None):
    xp = xp_of(gy)
    key = (xp.__name__, x.shape, size, stride, pads)
    idx = ctx.get("idx") if (ctx is not None and ctx.get("key") == key) else None
    if idx is None:
        _, idx = _max_forward(x, size, stride, pads)
    gx = xp.empty(x.shape, dtype=gy.dtype)
    _max_bwd.grid3(*_plane_grid(gx), _planes(gy), _planes(idx), *_win(size, stride, pads), _planes(gx))
    return gx


def avg_pool2d_forward(x, size, stride, pads):
    xp = xp_of(x)
    y = xp.empty(_out_shape(x.shape, size, stride, pads), dtype=x.dtype)
    inv = x.dtype.type(1.0 / (size[0] * size[1]))
    _avg_fwd.grid3(*_plane_grid(y), _planes(x), *_win(size, stride, pads), inv, _planes(y))
    return y


def avg_pool2d_backward(gy, x_shape, size, stride, pads):
    xp = xp_of(gy)
    gx = xp.empty(x_shape, dtype=gy.dtype)
    inv = gy.dtype.type(1.0 / (size[0] * size[1]))
    _avg_bwd.grid3(*_plane_grid(gx), _planes(gy), *_win(size, stride, pads), inv, _planes(gx))
    return gx
