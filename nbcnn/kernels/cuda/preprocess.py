"""Per-channel affine maps and bilinear resizing on the GPU (same tables and arithmetic as the CPU).

One thread per written element, planes ``(N*C, H, W)`` along the grid's y; the
resize backward is a gather over precomputed (output index, weight) lists, so
nothing is written twice: race-free and deterministic.
"""
from __future__ import annotations

from numba import cuda, types

from .runtime import I64, arr, kernel, xp_of

_IDX = arr(types.int64, 1)


@kernel(lambda f: (arr(f, 3), I64, arr(f, 1), arr(f, 1), arr(f, 3)))
def _affine_planes(x, C, scale, offset, out):
    NC, H, W = x.shape
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for nc in range(cuda.blockIdx.y, NC, cuda.gridDim.y):
        c = nc % C
        s = scale[c]
        o = offset[c]
        for t in range(t0, H * W, tstep):
            h = t // W
            w = t - h * W
            out[nc, h, w] = x[nc, h, w] * s + o


@kernel(lambda f: (arr(f, 3), _IDX, _IDX, arr(f, 1), arr(f, 1), _IDX, _IDX, arr(f, 1), arr(f, 1), arr(f, 3)))
def _resize_fwd(x, y0, y1, wy0, wy1, x0, x1, wx0, wx1, out):
    NC = x.shape[0]
    Ho, Wo = out.shape[1], out.shape[2]
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for nc in range(cuda.blockIdx.y, NC, cuda.gridDim.y):
        for t in range(t0, Ho * Wo, tstep):
            oh = t // Wo
            ow = t - oh * Wo
            a = y0[oh]
            b = y1[oh]
            i0 = x0[ow]
            i1 = x1[ow]
            top = x[nc, a, i0] * wx0[ow] + x[nc, a, i1] * wx1[ow]
            bot = x[nc, b, i0] * wx0[ow] + x[nc, b, i1] * wx1[ow]
            out[nc, oh, ow] = top * wy0[oh] + bot * wy1[oh]


@kernel(lambda f: (arr(f, 3), _IDX, _IDX, arr(f, 1), _IDX, _IDX, arr(f, 1), arr(f, 1), arr(f, 3)))
def _resize_bwd(gy, rptr, rout, rw, cptr, cout, cw, zero, gx):
    NC, H, W = gx.shape
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for nc in range(cuda.blockIdx.y, NC, cuda.gridDim.y):
        for t in range(t0, H * W, tstep):
            ih = t // W
            iw = t - ih * W
            acc = zero[0]
            for a in range(rptr[ih], rptr[ih + 1]):
                oh = rout[a]
                part = zero[0]
                for b in range(cptr[iw], cptr[iw + 1]):
                    part += cw[b] * gy[nc, oh, cout[b]]
                acc += rw[a] * part
            gx[nc, ih, iw] = acc


def channel_affine(x, scale, offset):
    N, C, H, W = x.shape
    out = xp_of(x).empty_like(x)
    _affine_planes.grid3(H * W, N * C, 1, x.reshape(N * C, H, W), C, scale, offset, out.reshape(N * C, H, W))
    return out


def resize_bilinear(x, size, tables):
    (y0, y1, wy0, wy1), (x0, x1, wx0, wx1) = tables["fwd"]
    N, C, H, W = x.shape
    Ho, Wo = int(size[0]), int(size[1])
    out = xp_of(x).empty((N, C, Ho, Wo), dtype=x.dtype)
    _resize_fwd.grid3(Ho * Wo, N * C, 1, x.reshape(N * C, H, W), y0, y1, wy0, wy1, x0, x1, wx0, wx1,
                      out.reshape(N * C, Ho, Wo))
    return out


def resize_bilinear_backward(gy, input_hw, tables):
    (rptr, rout, rw), (cptr, cout, cw) = tables["bwd"]
    N, C, Ho, Wo = gy.shape
    H, W = int(input_hw[0]), int(input_hw[1])
    xp = xp_of(gy)
    gx = xp.empty((N, C, H, W), dtype=gy.dtype)
    zero = xp.zeros(1, dtype=gy.dtype)  # the accumulators' start, typed like the data (no float64 maths)
    _resize_bwd.grid3(H * W, N * C, 1, gy.reshape(N * C, Ho, Wo), rptr, rout, rw, cptr, cout, cw, zero,
                      gx.reshape(N * C, H, W))
    return gx
