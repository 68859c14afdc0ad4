"""Zero padding and its backward (a crop) on the GPU: one thread per output element, one block row per (n, c) plane."""
from __future__ import annotations

from numba import cuda

from .runtime import I64, arr, kernel, xp_of


@kernel(lambda f: (arr(f, 3), I64, I64, arr(f, 3)))
def _pad_planes(x, pt, pl, out):
    NC, H, W = x.shape
    Hp, Wp = out.shape[1], out.shape[2]
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for nc in range(cuda.blockIdx.y, NC, cuda.gridDim.y):
        for t in range(t0, Hp * Wp, tstep):
            h = t // Wp
            w = t - h * Wp
            ih = h - pt
            iw = w - pl
            if 0 <= ih < H and 0 <= iw < W:
                out[nc, h, w] = x[nc, ih, iw]
            else:
                out[nc, h, w] = 0


@kernel(lambda f: (arr(f, 3), I64, I64, arr(f, 3)))
def _crop_planes(g, pt, pl, out):
    NC, H, W = out.shape
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for nc in range(cuda.blockIdx.y, NC, cuda.gridDim.y):
        for t in range(t0, H * W, tstep):
            h = t // W
            out[nc, h, t - h * W] = g[nc, h + pt, t - h * W + pl]


def pad2d(x, pads):
    pt, pb, pl, pr = pads
    N, C, H, W = x.shape
    Hp, Wp = H + pt + pb, W + pl + pr
    out = xp_of(x).empty((N, C, Hp, Wp), dtype=x.dtype)
    _pad_planes.grid3(Hp * Wp, N * C, 1, x.reshape(N * C, H, W), pt, pl, out.reshape(N * C, Hp, Wp))
    return out


def pad2d_backward(gy, pads):
    pt, pb, pl, pr = pads
    N, C, Hp, Wp = gy.shape
    H, W = Hp - pt - pb, Wp - pl - pr
    out = xp_of(gy).empty((N, C, H, W), dtype=gy.dtype)
    _crop_planes.grid3(H * W, N * C, 1, gy.reshape(N * C, Hp, Wp), pt, pl, out.reshape(N * C, H, W))
    return out
