"""Depthwise convolution on the CPU: one input channel per group (``groups == C``, ``K = M * C``).

im2col + GEMM is the wrong algorithm here: with one channel per group the
GEMM has an inner dimension of kh*kw (9) and runs at a fraction of its
speed, and the column matrix costs more memory traffic than the arithmetic.
These kernels work on one input plane at a time instead:

* the plane is zero-padded and split into its stride phases in a per-task
  buffer (as :mod:`.conv_layout` does for the dense paths), so every tap
  ``(i, j)`` - also with dilation - reads that buffer at one constant offset
  (phase ``((i*dh) % sh, (j*dw) % sw)``, shift ``((i*dh) // sh, (j*dw) // sw)``);
* output rows are computed at the phase-plane width ``Wq`` ("flat": the
  ``Wq - Wo`` junk columns are dropped), so each tap is one long contiguous
  multiply-add that LLVM vectorises; the positions are walked in chunks that
  stay in L1, three taps per pass over a chunk;
* the backward walks the same flat layout: weight gradients are dot products
  of the flat output gradient with the shifted buffer, the input gradient is
  the transposed multiply-add into a phase-plane buffer, cropped into gx.

The forward runs one task per (image, input channel); the backward one task
per input channel (it owns gx[:, c] and the M filters of channel c, looping
over the images in order), so results are race-free and identical for any
thread count. Weight and bias gradients are summed per image in the array's
dtype and across images in float64.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..geometry import conv2d_output_hw, phase_plane_size

CHUNK = 1024  # flat positions per pass: the accumulator chunk (4 KB in float32) stays in L1


@njit(cache=True, fastmath=True)
def _fill(xc, sh, sw, pt, pl, Hq, Wq, buf):
    """buf[(a*sw + b)*Hq*Wq + u*Wq + v] = xpad[u*sh + a, v*sw + b] of one plane xc (H, W); 0 outside."""
    H, W = xc.shape
    plane = Hq * Wq
    for a in range(sh):
        for u in range(Hq):
            h = u * sh + a - pt
            for b in range(sw):
                dst = buf[(a * sw + b) * plane + u * Wq:(a * sw + b) * plane + (u + 1) * Wq]
                if h < 0 or h >= H:
                    for v in range(Wq):
                        dst[v] = 0
                    continue
                src = xc[h]
                if sw == 1:
                    p0 = min(pl, Wq)
                    for v in range(p0):
                        dst[v] = 0
                    n_in = min(W, Wq - p0)
                    d = dst[p0:p0 + n_in]
                    for v in range(n_in):
                        d[v] = src[v]
                    for v in range(p0 + n_in, Wq):
                        dst[v] = 0
                else:
                    for v in range(Wq):
                        j = v * sw + b - pl
                        dst[v] = src[j] if 0 <= j < W else 0


@njit(parallel=True, cache=True, fastmath=True)
def _forward(x, w, b, M, sh, sw, pt, pl, Hq, Wq, toff, ti, tj, CB, y):
    """y[n, c*M + m] = depthwise correlation of x[n, c] with w[c*M + m, 0] + b; one task per
    (image, block of CB channels), so small planes do not pay a task and its buffers each.

    toff/ti/tj: the taps padded to a multiple of 3 (padding taps have ti = -1: weight 0).
    """
    N, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    T = toff.shape[0]
    L = (Ho - 1) * Wq + Wo
    S = sh * sw
    nb = (C + CB - 1) // CB
    for t in prange(N * nb):
        n = t // nb
        cb = t - n * nb
        buf = np.empty(S * Hq * Wq, dtype=x.dtype)
        acc = np.empty(L, dtype=x.dtype)
        wv = np.zeros(T, dtype=x.dtype)
        for c in range(cb * CB, min(C, (cb + 1) * CB)):
            _fill(x[n, c], sh, sw, pt, pl, Hq, Wq, buf)
            _forward_plane(buf, w, b, c, M, L, Hq, Wq, toff, ti, tj, acc, wv, y[n])


@njit(cache=True, fastmath=True)
def _forward_plane(buf, w, b, c, M, L, Hq, Wq, toff, ti, tj, acc, wv, yn):
    """The M output planes of input channel c from its filled phase buffer."""
    T = toff.shape[0]
    Ho, Wo = yn.shape[1], yn.shape[2]
    for m in range(M):
        k = c * M + m
        for r in range(T):
            wv[r] = w[k, 0, ti[r], tj[r]] if ti[r] >= 0 else 0
        bk = b[k]
        for q0 in range(0, L, CHUNK):
            q1 = min(L, q0 + CHUNK)
            a = acc[q0:q1]
            for q in range(q1 - q0):
                a[q] = bk
            for r in range(0, T, 3):
                s0 = buf[toff[r] + q0:toff[r] + q1]
                s1 = buf[toff[r + 1] + q0:toff[r + 1] + q1]
                s2 = buf[toff[r + 2] + q0:toff[r + 2] + q1]
                w0, w1, w2 = wv[r], wv[r + 1], wv[r + 2]
                for q in range(q1 - q0):
                    a[q] += w0 * s0[q] + w1 * s1[q] + w2 * s2[q]
        yk = yn[k]
        for oh in range(Ho):
            src = acc[oh * Wq:oh * Wq + Wo]
            dst = yk[oh]
            for ow in range(Wo):
                dst[ow] = src[ow]


@njit(parallel=True, cache=True, fastmath=True)
def _backward(gy, x, w, M, sh, sw, pt, pl, Hq, Wq, toff, ti, tj, need_gx, gx, gw, gb):
    """gx[:, c], gw[c*M:(c+1)*M] and gb[c*M:(c+1)*M], one task per input channel c.

    toff/ti/tj: the real taps (not padded). gx is written only when need_gx.
    """
    N, C, H, W = x.shape
    Ho, Wo = gy.shape[2], gy.shape[3]
    T = toff.shape[0]
    L = (Ho - 1) * Wq + Wo
    S = sh * sw
    plane = Hq * Wq
    for c in prange(C):
        buf = np.empty(S * plane, dtype=x.dtype)
        gxb = np.empty(S * plane if need_gx else 0, dtype=x.dtype)
        gf = np.zeros(L, dtype=x.dtype)          # the junk columns stay zero
        acc = np.zeros((M, T), dtype=np.float64)
        accb = np.zeros(M, dtype=np.float64)
        part = np.empty(T, dtype=x.dtype)
        wv = np.empty((M, T), dtype=x.dtype)
        for m in range(M):
            for r in range(T):
                wv[m, r] = w[c * M + m, 0, ti[r], tj[r]]
        for n in range(N):
            _fill(x[n, c], sh, sw, pt, pl, Hq, Wq, buf)
            if need_gx:
                for q in range(S * plane):
                    gxb[q] = 0
            for m in range(M):
                k = c * M + m
                gk = gy[n, k]
                sb = gy.dtype.type(0)
                for oh in range(Ho):
                    src = gk[oh]
                    dst = gf[oh * Wq:oh * Wq + Wo]
                    for ow in range(Wo):
                        dst[ow] = src[ow]
                        sb += src[ow]
                accb[m] += sb
                for r in range(T):
                    part[r] = 0
                for q0 in range(0, L, CHUNK):
                    q1 = min(L, q0 + CHUNK)
                    g = gf[q0:q1]
                    for r in range(T):
                        xs = buf[toff[r] + q0:toff[r] + q1]
                        s = gy.dtype.type(0)
                        for q in range(q1 - q0):
                            s += g[q] * xs[q]
                        part[r] += s
                    if need_gx:
                        for r in range(T):
                            d = gxb[toff[r] + q0:toff[r] + q1]
                            wr = wv[m, r]
                            for q in range(q1 - q0):
                                d[q] += wr * g[q]
                for r in range(T):
                    acc[m, r] += part[r]
            if need_gx:
                gc = gx[n, c]
                for h in range(H):
                    hp = h + pt
                    u = hp // sh
                    a = hp - u * sh
                    dst = gc[h]
                    if sw == 1:
                        src = gxb[a * plane + u * Wq + pl:a * plane + u * Wq + pl + W]
                        for v in range(W):
                            dst[v] = src[v]
                    else:
                        for v in range(W):
                            wp = v + pl
                            q = wp // sw
                            dst[v] = gxb[(a * sw + wp - q * sw) * plane + u * Wq + q]
        for m in range(M):
            k = c * M + m
            gb[k] = accb[m]
            for r in range(T):
                gw[k, 0, ti[r], tj[r]] = acc[m, r]


class _Plan:
    """Sizes and tap tables of one depthwise case (cached: a layer sees the same shapes every step)."""

    def __init__(self, x_shape, w_shape, stride, pads, dilation):
        N, C, H, W = x_shape
        K, _, kh, kw = w_shape
        sh, sw = stride
        dh, dw = dilation
        pt, pb, pl, pr = pads
        self.M = K // C
        self.Ho, self.Wo = conv2d_output_hw(H, W, (kh, kw), stride, pads, dilation)
        self.Hq, self.Wq = phase_plane_size(H, pt, pb, sh), phase_plane_size(W, pl, pr, sw)
        plane = self.Hq * self.Wq
        offs, ii, jj = [], [], []
        for i in range(kh):
            for j in range(kw):
                ph = ((i * dh) % sh) * sw + (j * dw) % sw
                offs.append(ph * plane + ((i * dh) // sh) * self.Wq + (j * dw) // sw)
                ii.append(i)
                jj.append(j)
        self.toff, self.ti, self.tj = (np.array(v, np.int64) for v in (offs, ii, jj))
        pad = -len(offs) % 3
        self.toff3 = np.array(offs + [0] * pad, np.int64)
        self.ti3 = np.array(ii + [-1] * pad, np.int64)
        self.tj3 = np.array(jj + [0] * pad, np.int64)


_PLANS: dict = {}


def _plan(x_shape, w_shape, stride, pads, dilation) -> _Plan:
    key = (tuple(x_shape), tuple(w_shape), tuple(stride), tuple(pads), tuple(dilation))
    p = _PLANS.get(key)
    if p is None:
        if len(_PLANS) > 256:
            _PLANS.clear()
        p = _PLANS[key] = _Plan(*key)
    return p


def forward(x, w, b, stride, pads, dilation=(1, 1)):
    """Depthwise forward: w (M*C, 1, kh, kw); y (N, M*C, Ho, Wo)."""
    p = _plan(x.shape, w.shape, stride, pads, dilation)
    N, K = x.shape[0], w.shape[0]
    y = np.empty((N, K, p.Ho, p.Wo), dtype=x.dtype)
    bias = b if b is not None else np.zeros(K, dtype=x.dtype)
    CB = max(1, min(x.shape[1], 4096 // (p.Hq * p.Wq * stride[0] * stride[1])))
    _forward(x, w, bias, p.M, stride[0], stride[1], pads[0], pads[2], p.Hq, p.Wq, p.toff3, p.ti3, p.tj3, CB, y)
    return y


def backward(gy, x, w, stride, pads, dilation=(1, 1), need_gx=True):
    """(gx or None, gw, gb) of :func:`forward`."""
    p = _plan(x.shape, w.shape, stride, pads, dilation)
    gx = np.empty(x.shape, dtype=x.dtype) if need_gx else np.empty((1, 1, 1, 1), dtype=x.dtype)
    gw = np.empty(w.shape, dtype=x.dtype)
    gb = np.empty(w.shape[0], dtype=x.dtype)
    _backward(np.ascontiguousarray(gy), x, w, p.M, stride[0], stride[1], pads[0], pads[2], p.Hq, p.Wq,
              p.toff, p.ti, p.tj, need_gx, gx, gw, gb)
    return (gx if need_gx else None), gw, gb
