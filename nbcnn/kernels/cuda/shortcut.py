"""The option-A residual shortcut on the GPU (see :mod:`nbcnn.kernels.cpu.shortcut`).

Both directions are gathers, one thread per written element (threads along x
over a plane's pixels, blocks along y over the planes): race-free, no atomics.
"""
from __future__ import annotations

from numba import cuda

from .runtime import I64, arr, kernel, xp_of


@kernel(lambda f: (arr(f, 4), I64, I64, arr(f, 4)))
def _shortcut_fwd(x, s, off, y):
    N, C = x.shape[0], x.shape[1]
    K, Ho, Wo = y.shape[1], y.shape[2], y.shape[3]
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for p in range(cuda.blockIdx.y, N * K, cuda.gridDim.y):
        n = p // K
        k = p - n * K
        c = k - off
        for t in range(t0, Ho * Wo, tstep):
            h = t // Wo
            w = t - h * Wo
            if 0 <= c < C:
                y[n, k, h, w] = x[n, c, h * s, w * s]
            else:
                y[n, k, h, w] = 0


@kernel(lambda f: (arr(f, 4), I64, I64, arr(f, 4)))
def _shortcut_bwd(gy, s, off, gx):
    N, C, H, W = gx.shape
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for p in range(cuda.blockIdx.y, N * C, cuda.gridDim.y):
        n = p // C
        c = p - n * C
        for t in range(t0, H * W, tstep):
            h = t // W
            w = t - h * W
            if h % s == 0 and w % s == 0:
                gx[n, c, h, w] = gy[n, c + off, h // s, w // s]
            else:
                gx[n, c, h, w] = 0


def shortcut_forward(x, stride, off, out_channels):
    N, C, H, W = x.shape
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    y = xp_of(x).empty((N, out_channels, Ho, Wo), dtype=x.dtype)
    _shortcut_fwd.grid3(Ho * Wo, N * out_channels, 1, x, stride, off, y)
    return y


def shortcut_backward(gy, stride, off, in_shape):
    N, C, H, W = in_shape
    gx = xp_of(gy).empty(tuple(in_shape), dtype=gy.dtype)
    _shortcut_bwd.grid3(H * W, N * C, 1, gy, stride, off, gx)
    return gx
