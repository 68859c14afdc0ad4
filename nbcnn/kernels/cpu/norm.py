"""Batch normalisation and local response normalisation on the CPU (Numba).

Batch norm sees its input as ``(N, C, M)`` (``M = H*W``, or 1 for ``(N, C)``) and
runs one task per channel: a channel's ``N*M`` values are reduced in one sweep
(sums of the values and their squares, shifted by the channel's first value so
the variance does not cancel) and normalised in a second sweep while they are
still in cache. The backward is the same: one sweep for both reductions
(``sum gy`` and ``sum gy * (x - mean)``), one to write ``gx = a*gy + b*x + d``.
Row sums run in the data's dtype on vector lanes (``fastmath``) and add into
float64 channel totals; each channel is one task, so parallel == serial.

LRN runs one task per (image, block of pixels): the squares of a block's
channels go to a small buffer, and each channel sums its window from there.
``scale ** -beta`` is ``rsqrt(s) * sqrt(rsqrt(s))`` for the usual beta = 0.75
(vectorisable), ``exp(-beta * log(s))`` otherwise.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

_LRN_BLOCK = 256  # pixels per LRN task: (C, 256) buffers stay in L1/L2


# ---------------------------------------------------------------------------------------------
# batch normalisation
# ---------------------------------------------------------------------------------------------

@njit(inline="always", fastmath=True)
def _row_sums(r, shift, z):
    s1 = z
    s2 = z
    for i in range(r.shape[0]):
        d = r[i] - shift
        s1 += d
        s2 += d * d
    return s1, s2


@njit(inline="always", fastmath=True)
def _row_affine(r, out, a, b):
    for i in range(r.shape[0]):
        out[i] = r[i] * a + b


@njit(parallel=True, cache=True)
def _bn_fwd_train(x, gamma, beta, eps, z, y, mean, invstd, var_unbiased, wk):
    """Per channel: batch mean, biased variance -> ``y``; also ``mean``, ``1/sqrt(var + eps)`` and the
    unbiased variance (float64 ``(C,)`` outputs) for the running statistics and the backward.
    ``wk``: ``(C, 3)`` scratch of x's dtype (casts the per-channel coefficients to it, so the
    sweeps run on full-width lanes)."""
    N, C, M = x.shape
    cnt = N * M
    for c in prange(C):
        shift = x[0, c, 0]
        t1 = 0.0
        t2 = 0.0
        for n in range(N):
            s1, s2 = _row_sums(x[n, c], shift, z)
            t1 += s1
            t2 += s2
        m = t1 / cnt
        v = max(t2 / cnt - m * m, 0.0)
        mu = shift + m
        inv = 1.0 / np.sqrt(v + eps)
        mean[c] = mu
        invstd[c] = inv
        var_unbiased[c] = v * cnt / (cnt - 1) if cnt > 1 else v
        a = gamma[c] * inv
        wk[c, 0] = a
        wk[c, 1] = beta[c] - mu * a
        for n in range(N):
            _row_affine(x[n, c], y[n, c], wk[c, 0], wk[c, 1])


@njit(parallel=True, cache=True)
def _bn_affine(x, a, b, y):
    """``y = a[c] * x + b[c]`` (inference mode; ``a``, ``b`` of x's dtype), one task per (n, c) row."""
    N, C, M = x.shape
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        _row_affine(x[n, c], y[n, c], a[c], b[c])


@njit(inline="always", fastmath=True)
def _row_grad_sums(g, r, mu, z):
    s1 = z
    s2 = z
    for i in range(r.shape[0]):
        v = g[i]
        s1 += v
        s2 += v * (r[i] - mu)
    return s1, s2


@njit(inline="always", fastmath=True)
def _row_gx(g, r, out, a, b, d):
    for i in range(r.shape[0]):
        out[i] = a * g[i] + b * r[i] + d


@njit(parallel=True, cache=True)
def _bn_bwd(gy, x, gamma, mean, invstd, training, z, gx, ggamma, gbeta, wk):
    """Gradients of batch norm given the statistics it normalised with (float64 ``(C,)``).

    ``training``: the statistics were the batch's, so ``gx`` carries their gradient too
    (``gx = gamma*inv*(gy - mean(gy) - xhat*mean(gy*xhat))``); otherwise they were
    constants (running statistics) and ``gx = gamma * inv * gy``. ``wk``: ``(C, 3)`` scratch of
    x's dtype.
    """
    N, C, M = x.shape
    cnt = N * M
    for c in prange(C):
        mu = mean[c]
        wk[c, 2] = mu
        t1 = 0.0
        t2 = 0.0
        for n in range(N):
            s1, s2 = _row_grad_sums(gy[n, c], x[n, c], wk[c, 2], z)
            t1 += s1
            t2 += s2
        inv = invstd[c]
        gbeta[c] = t1
        ggamma[c] = t2 * inv
        a = gamma[c] * inv
        if training:
            b = -a * inv * inv * t2 / cnt
            d = -a * t1 / cnt - b * mu
        else:
            b = 0.0
            d = 0.0
        wk[c, 0] = a
        wk[c, 1] = b
        wk[c, 2] = d
        for n in range(N):
            _row_gx(gy[n, c], x[n, c], gx[n, c], wk[c, 0], wk[c, 1], wk[c, 2])


# ---------------------------------------------------------------------------------------------
# local response normalisation (across channels)
# ---------------------------------------------------------------------------------------------

@njit(inline="always", fastmath=True)
def _neg_pow(s, beta):
    """``s ** -beta`` for s > 0; beta = 0.75 (AlexNet, the default) and 0.5, 1 take sqrt forms."""
    if beta == 0.75:
        r = 1.0 / np.sqrt(s)
        return r * np.sqrt(r)
    if beta == 0.5:
        return 1.0 / np.sqrt(s)
    if beta == 1.0:
        return 1.0 / s
    return np.exp(-beta * np.log(s))


@njit(parallel=True, cache=True, fastmath=True)
def _lrn_fwd(x, size, alpha, beta, k, y, scale):
    """``y = x * scale ** -beta``, ``scale = k + alpha/size * sum of x^2 over the channel window``
    (``(size-1)//2`` channels before, the rest after). ``x``, ``y``, ``scale``: ``(N, C, M)``."""
    N, C, M = x.shape
    nb = (M + _LRN_BLOCK - 1) // _LRN_BLOCK
    lo = (size - 1) // 2
    hi = size - 1 - lo
    for t in prange(N * nb):
        n = t // nb
        p0 = (t - n * nb) * _LRN_BLOCK
        B = min(_LRN_BLOCK, M - p0)
        sq = np.empty((C, B), x.dtype)
        for c in range(C):
            xr = x[n, c, p0:p0 + B]
            for i in range(B):
                sq[c, i] = xr[i] * xr[i]
        acc = np.empty(B, x.dtype)
        a = alpha / size
        for c in range(C):
            for i in range(B):
                acc[i] = 0
            for cc in range(max(c - lo, 0), min(c + hi + 1, C)):
                for i in range(B):
                    acc[i] += sq[cc, i]
            xr = x[n, c, p0:p0 + B]
            yr = y[n, c, p0:p0 + B]
            sr = scale[n, c, p0:p0 + B]
            for i in range(B):
                s = k + a * acc[i]
                sr[i] = s
                yr[i] = xr[i] * _neg_pow(s, beta)


@njit(parallel=True, cache=True, fastmath=True)
def _lrn_bwd(gy, x, scale, size, alpha, beta, gx):
    """``gx[c] = gy[c] * scale[c]^-beta - 2*alpha*beta/size * x[c] * sum over the windows containing c
    of gy * x * scale^(-beta-1)`` (channels ``c - hi .. c + lo``)."""
    N, C, M = x.shape
    nb = (M + _LRN_BLOCK - 1) // _LRN_BLOCK
    lo = (size - 1) // 2
    hi = size - 1 - lo
    coef = 2.0 * alpha * beta / size
    for t in prange(N * nb):
        n = t // nb
        p0 = (t - n * nb) * _LRN_BLOCK
        B = min(_LRN_BLOCK, M - p0)
        q = np.empty((C, B), x.dtype)     # gy * x * scale^(-beta-1)
        pw = np.empty((C, B), x.dtype)    # scale^-beta
        for c in range(C):
            gr = gy[n, c, p0:p0 + B]
            xr = x[n, c, p0:p0 + B]
            sr = scale[n, c, p0:p0 + B]
            for i in range(B):
                s = sr[i]
                p = _neg_pow(s, beta)
                pw[c, i] = p
                q[c, i] = gr[i] * xr[i] * p / s
        acc = np.empty(B, x.dtype)
        for c in range(C):
            for i in range(B):
                acc[i] = 0
            for cc in range(max(c - hi, 0), min(c + lo + 1, C)):
                for i in range(B):
                    acc[i] += q[cc, i]
            gr = gy[n, c, p0:p0 + B]
            xr = x[n, c, p0:p0 + B]
            out = gx[n, c, p0:p0 + B]
            for i in range(B):
                out[i] = gr[i] * pw[c, i] - coef * xr[i] * acc[i]


# ---------------------------------------------------------------------------------------------
# backend entry points (the kernel contract of nbcnn.kernels)
# ---------------------------------------------------------------------------------------------

def _as3(a):
    return a.reshape(a.shape[0], a.shape[1], -1)


def batch_norm_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, ctx=None):
    z = x.dtype.type(0)
    y = np.empty_like(x)
    C = x.shape[1]
    if training:
        mean = np.empty(C)
        invstd = np.empty(C)
        var_u = np.empty(C)
        _bn_fwd_train(_as3(x), gamma, beta, float(eps), z, _as3(y), mean, invstd, var_u,
                         np.empty((C, 3), x.dtype))
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += momentum * var_u
    else:
        mean = running_mean.astype(np.float64)
        invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
        a = gamma * invstd
        _bn_affine(_as3(x), a.astype(x.dtype), (beta - mean * a).astype(x.dtype), _as3(y))
    if ctx is not None:
        ctx.clear()
        ctx.update(x=x, training=bool(training), eps=float(eps), mean=mean, invstd=invstd)
    return y


def batch_norm_backward(gy, x, gamma, eps, training, running_mean=None, running_var=None, ctx=None):
    z = x.dtype.type(0)
    C = x.shape[1]
    if ctx is not None and ctx.get("x") is x and ctx.get("training") == training and ctx.get("eps") == eps:
        mean, invstd = ctx["mean"], ctx["invstd"]
    elif training:
        mean, invstd, var_u = np.empty(C), np.empty(C), np.empty(C)
        _bn_fwd_train(_as3(x), gamma, gamma, float(eps), z, np.empty(_as3(x).shape, x.dtype),
                         mean, invstd, var_u, np.empty((C, 3), x.dtype))
    else:
        mean = running_mean.astype(np.float64)
        invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    gx = np.empty_like(x)
    ggamma = np.empty(C, x.dtype)
    gbeta = np.empty(C, x.dtype)
    _bn_bwd(_as3(gy), _as3(x), gamma, mean, invstd, bool(training), z, _as3(gx), ggamma, gbeta,
                np.empty((C, 3), x.dtype))
    return gx, ggamma, gbeta


def lrn_forward(x, size, alpha, beta, k, ctx=None):
    y = np.empty_like(x)
    scale = np.empty_like(x)
    _lrn_fwd(_as3(x), size, float(alpha), float(beta), float(k), _as3(y), _as3(scale))
    if ctx is not None:
        ctx.clear()
        ctx.update(x=x, key=(size, alpha, beta, k), scale=scale)
    return y


def lrn_backward(gy, x, size, alpha, beta, k, ctx=None):
    if ctx is not None and ctx.get("x") is x and ctx.get("key") == (size, alpha, beta, k):
        scale = ctx["scale"]
    else:
        scale = np.empty_like(x)
        _lrn_fwd(_as3(x), size, float(alpha), float(beta), float(k), _as3(np.empty_like(x)), _as3(scale))
    gx = np.empty_like(x)
    _lrn_bwd(_as3(gy), _as3(x), _as3(scale), size, float(alpha), float(beta), _as3(gx))
    return gx
