"""Zero padding and its backward (a crop), plane by plane.

Serial on purpose: a memory-bound copy gains little from 2 threads, and a
serial kernel compiles several times faster (cold start matters).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True)
def _pad_planes(x, pt, pl, out):
    N, C, H, W = x.shape
    Hp, Wp = out.shape[2], out.shape[3]
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        o = out[n, c]
        for h in range(Hp):
            ih = h - pt
            if ih < 0 or ih >= H:
                for w in range(Wp):
                    o[h, w] = 0
            else:
                for w in range(pl):
                    o[h, w] = 0
                src = x[n, c, ih]
                for w in range(W):
                    o[h, pl + w] = src[w]
                for w in range(pl + W, Wp):
                    o[h, w] = 0


@njit(cache=True)
def _crop_planes(g, pt, pl, out):
    N, C, H, W = out.shape
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        for h in range(H):
            src = g[n, c, pt + h]
            dst = out[n, c, h]
            for w in range(W):
                dst[w] = src[pl + w]


def pad2d(x, pads):
    pt, pb, pl, pr = pads
    N, C, H, W = x.shape
    out = np.empty((N, C, H + pt + pb, W + pl + pr), dtype=x.dtype)
    _pad_planes(x, pt, pl, out)
    return out


def pad2d_backward(gy, pads):
    pt, pb, pl, pr = pads
    N, C, Hp, Wp = gy.shape
    out = np.empty((N, C, Hp - pt - pb, Wp - pl - pr), dtype=gy.dtype)
    _crop_planes(gy, pt, pl, out)
    return out
