"""Preprocessing inside the model: per-channel affine maps, bilinear resizing, channel statistics.

* ``channel_affine``: ``y[n, c] = x[n, c] * scale[c] + offset[c]`` (Rescaling and
  Normalization forward; their backward is the same map with a zero offset).
* ``resize_bilinear`` / ``resize_bilinear_backward``: the source indices and
  weights come precomputed per axis (:func:`nbcnn.ops.preprocess.resize_tables`,
  shared with the CUDA kernels, so both do the same float arithmetic in the
  data's dtype). The backward is a gather: each input pixel sums the output
  gradients whose interpolation used it (a CSR list per axis), so it is
  race-free and parallel == serial.
* ``channel_moments``: count, mean and sum of squared deviations per channel of
  one batch in float64, which Normalization.adapt merges batch by batch.

Every parallel loop owns one (n, c) plane or one channel.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _affine(x, scale, offset, out):
    N, C, H, W = x.shape
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        s = scale[c]
        o = offset[c]
        for h in range(H):
            for w in range(W):
                out[n, c, h, w] = x[n, c, h, w] * s + o


def channel_affine(x, scale, offset):
    out = np.empty_like(x)
    _affine(x, scale.astype(x.dtype), offset.astype(x.dtype), out)
    return out


@njit(parallel=True, cache=True)
def _resize_fwd(x, y0, y1, wy0, wy1, x0, x1, wx0, wx1, out):
    N, C, H, W = x.shape
    Ho, Wo = out.shape[2], out.shape[3]
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        for oh in range(Ho):
            r0 = x[n, c, y0[oh]]
            r1 = x[n, c, y1[oh]]
            a = wy0[oh]
            b = wy1[oh]
            for ow in range(Wo):
                i0 = x0[ow]
                i1 = x1[ow]
                top = r0[i0] * wx0[ow] + r0[i1] * wx1[ow]
                bot = r1[i0] * wx0[ow] + r1[i1] * wx1[ow]
                out[n, c, oh, ow] = top * a + bot * b


@njit(parallel=True, cache=True)
def _resize_bwd(gy, rptr, rout, rw, cptr, cout, cw, gx):
    N, C, Ho, Wo = gy.shape
    H, W = gx.shape[2], gx.shape[3]
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        for ih in range(H):
            for iw in range(W):
                acc = 0.0
                for a in range(rptr[ih], rptr[ih + 1]):
                    row = gy[n, c, rout[a]]
                    part = 0.0
                    for b in range(cptr[iw], cptr[iw + 1]):
                        part += cw[b] * row[cout[b]]
                    acc += rw[a] * part
                gx[n, c, ih, iw] = acc


def resize_bilinear(x, size, tables):
    (y0, y1, wy0, wy1), (x0, x1, wx0, wx1) = tables["fwd"]
    out = np.empty((x.shape[0], x.shape[1], int(size[0]), int(size[1])), dtype=x.dtype)
    _resize_fwd(x, y0, y1, wy0, wy1, x0, x1, wx0, wx1, out)
    return out


def resize_bilinear_backward(gy, input_hw, tables):
    (rptr, rout, rw), (cptr, cout, cw) = tables["bwd"]
    gx = np.empty((gy.shape[0], gy.shape[1], int(input_hw[0]), int(input_hw[1])), dtype=gy.dtype)
    _resize_bwd(gy, rptr, rout, rw, cptr, cout, cw, gx)
    return gx


@njit(parallel=True, cache=True)
def _moments(x, scale, mean, m2):
    N, C, H, W = x.shape
    cnt = N * H * W
    for c in prange(C):
        s = 0.0
        for n in range(N):
            for h in range(H):
                for w in range(W):
                    s += x[n, c, h, w] * scale
        mu = s / cnt
        q = 0.0
        for n in range(N):
            for h in range(H):
                for w in range(W):
                    d = x[n, c, h, w] * scale - mu
                    q += d * d
        mean[c] = mu
        m2[c] = q


def channel_moments(x, scale=1.0):
    """``(count, mean (C,), m2 (C,))`` of ``x * scale`` per channel, in float64."""
    C = x.shape[1]
    mean = np.zeros(C, np.float64)
    m2 = np.zeros(C, np.float64)
    _moments(x, float(scale), mean, m2)
    return x.shape[0] * x.shape[2] * x.shape[3], mean, m2
