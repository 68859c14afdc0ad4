"""The parameter-free residual shortcut of CIFAR ResNets ("option A", He et al. 2016) and its backward.

Forward: ``y[n, off + c] = x[n, c, ::s, ::s]``, the other output channels zero.
Backward: the transpose, ``gx[n, c, h*s, w*s] = gy[n, off + c, h, w]``, zero elsewhere.
One task per output plane (forward) or input plane (backward): each writes only
its own plane, so the kernels are race-free and thread-count independent.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _fwd(x, s, off, y):
    N, C, H, W = x.shape
    K, Ho, Wo = y.shape[1], y.shape[2], y.shape[3]
    for t in prange(N * K):
        n = t // K
        k = t - n * K
        o = y[n, k]
        c = k - off
        if c < 0 or c >= C:
            for h in range(Ho):
                for w in range(Wo):
                    o[h, w] = 0
        else:
            for h in range(Ho):
                src = x[n, c, h * s]
                for w in range(Wo):
                    o[h, w] = src[w * s]


@njit(parallel=True, cache=True)
def _bwd(gy, s, off, gx):
    N, C, H, W = gx.shape
    Ho, Wo = gy.shape[2], gy.shape[3]
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        o = gx[n, c]
        for h in range(H):
            for w in range(W):
                o[h, w] = 0
        g = gy[n, c + off]
        for h in range(Ho):
            for w in range(Wo):
                o[h * s, w * s] = g[h, w]


def shortcut_forward(x, stride, off, out_channels):
    N, C, H, W = x.shape
    y = np.empty((N, out_channels, (H - 1) // stride + 1, (W - 1) // stride + 1), dtype=x.dtype)
    _fwd(x, stride, off, y)
    return y


def shortcut_backward(gy, stride, off, in_shape):
    gx = np.empty(in_shape, dtype=gy.dtype)
    _bwd(gy, stride, off, gx)
    return gx
