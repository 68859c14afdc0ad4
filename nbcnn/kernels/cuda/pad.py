"""Zero padding and its backward (a crop) on the GPU, one thread per output element."""
from __future__ import annotations

from numba import cuda

from .runtime import I64, arr, kernel, xp_of


@kernel(lambda f: (arr(f, 3), I64, I64, arr(f, 3)))
def _pad_planes(x, pt, pl, out):
    NC, H, W = x.shape
    Hp, Wp = out.shape[1], out.shape[2]
    total = NC * Hp * Wp
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        w = t % Wp
        r = t // Wp
        h = r % Hp
        nc = r // Hp
        ih = h - pt
        iw = w - pl
        if 0 <= ih < H and 0 <= iw < W:
            out[nc, h, w] = x[nc, ih, iw]
        else:
            out[nc, h, w] = 0


@kernel(lambda f: (arr(f, 3), I64, I64, arr(f, 3)))
def _crop_planes(g, pt, pl, out):
    NC, H, W = out.shape
    total = NC * H * W
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        w = t % W
        r = t // W
        h = r % H
        nc = r // H
        out[nc, h, w] = g[nc, h + pt, w + pl]


def pad2d(x, pads):
    pt, pb, pl, pr = pads
    N, C, H, W = x.shape
    out = xp_of(x).empty((N, C, H + pt + pb, W + pl + pr), dtype=x.dtype)
    _pad_planes(out.size, x.reshape(N * C, H, W), pt, pl, out.reshape(N * C, *out.shape[2:]))
    return out


def pad2d_backward(gy, pads):
    pt, pb, pl, pr = pads
    N, C, Hp, Wp = gy.shape
    out = xp_of(gy).empty((N, C, Hp - pt - pb, Wp - pl - pr), dtype=gy.dtype)
    _crop_planes(out.size, gy.reshape(N * C, Hp, Wp), pt, pl, out.reshape(N * C, *out.shape[2:]))
    return out
