"""Batch normalisation and local response normalisation on the GPU (Numba CUDA), no atomics.

Same semantics as :mod:`nbcnn.kernels.cpu.norm`. Batch norm reduces in two
fixed-order stages, so results are identical run to run: ``_bn_partial`` gives
each (channel, image, lane) a strided slice of a plane (32 lanes read adjacent
elements: coalesced), ``_bn_coef`` has one thread per channel add the partials
in order and turn them into the affine coefficients (and update the running
statistics in place); ``_bn_apply`` writes ``y = a*x + b``. The backward is the
same three steps on ``gy`` and ``gy * (x - mean)``. Sums are shifted by each
channel's first value so the float32 variance does not cancel.

LRN is one thread per element (window sums over channels, no sharing needed);
its backward is a gather over the windows containing the element.
"""
from __future__ import annotations

import math

from numba import cuda

from .runtime import I64, MAX_BLOCKS, TPB, arr, kernel, xp_of

LANES = 32  # per (channel, image): one warp's worth of partial sums


def _flat_grid(n):
    return min(max(-(-n // TPB), 1), MAX_BLOCKS)


@kernel(lambda f: (arr(f, 3), arr(f, 3)))
def _bn_partial(x, part):
    """part[c, n*LANES + l] = (sum of x - shift, sum of (x - shift)^2) over elements l, l+LANES, ... of x[n, c]."""
    N, C, M = x.shape
    L = part.shape[1] // N
    total = C * N * L
    for t in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, total, cuda.gridDim.x * cuda.blockDim.x):
        c = t // (N * L)
        r = t - c * (N * L)
        n = r // L
        lane = r - n * L
        shift = x[0, c, 0]
        s1 = x.dtype.type(0)
        s2 = x.dtype.type(0)
        for i in range(lane, M, L):
            d = x[n, c, i] - shift
            s1 += d
            s2 += d * d
        part[c, r, 0] = s1
        part[c, r, 1] = s2


@kernel(lambda f: (arr(f, 3), arr(f, 3), arr(f, 1), arr(f, 1), f, f, I64, I64, arr(f, 1), arr(f, 1), arr(f, 2)))
def _bn_coef(x, part, gamma, beta, eps, momentum, training, update, rm, rv, coef):
    """Per channel: coef[c] = (a, b, mean, invstd) with y = a*x + b, from the batch partials
    (``training``; then ``update`` also moves the running statistics in place) or from rm / rv."""
    N, C, M = x.shape
    R = part.shape[1]
    one = x.dtype.type(1)
    for c in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, C, cuda.gridDim.x * cuda.blockDim.x):
        if training:
            s1 = x.dtype.type(0)
            s2 = x.dtype.type(0)
            for r in range(R):
                s1 += part[c, r, 0]
                s2 += part[c, r, 1]
            cnt = x.dtype.type(N * M)
            m = s1 / cnt
            v = max(s2 / cnt - m * m, x.dtype.type(0))
            mean = x[0, c, 0] + m
            if update:
                vu = v * cnt / (cnt - one) if N * M > 1 else v
                rm[c] = (one - momentum) * rm[c] + momentum * mean
                rv[c] = (one - momentum) * rv[c] + momentum * vu
        else:
            mean = rm[c]
            v = rv[c]
        inv = one / math.sqrt(v + eps)
        a = gamma[c] * inv
        coef[c, 0] = a
        coef[c, 1] = beta[c] - mean * a
        coef[c, 2] = mean
        coef[c, 3] = inv


@kernel(lambda f: (arr(f, 3), arr(f, 2), arr(f, 3)))
def _bn_apply(x, coef, y):
    N, C, M = x.shape
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for nc in range(cuda.blockIdx.y, N * C, cuda.gridDim.y):
        n = nc // C
        c = nc - n * C
        a = coef[c, 0]
        b = coef[c, 1]
        for i in range(t0, M, tstep):
            y[n, c, i] = a * x[n, c, i] + b


@kernel(lambda f: (arr(f, 3), arr(f, 3), arr(f, 2), arr(f, 3)))
def _bn_grad_partial(gy, x, coef, part):
    """part[c, n*LANES + l] = (sum of gy, sum of gy * (x - mean)) over a lane's slice of plane (n, c)."""
    N, C, M = x.shape
    L = part.shape[1] // N
    total = C * N * L
    for t in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, total, cuda.gridDim.x * cuda.blockDim.x):
        c = t // (N * L)
        r = t - c * (N * L)
        n = r // L
        lane = r - n * L
        mu = coef[c, 2]
        s1 = x.dtype.type(0)
        s2 = x.dtype.type(0)
        for i in range(lane, M, L):
            g = gy[n, c, i]
            s1 += g
            s2 += g * (x[n, c, i] - mu)
        part[c, r, 0] = s1
        part[c, r, 1] = s2


@kernel(lambda f: (arr(f, 3), arr(f, 1), arr(f, 2), I64, f, arr(f, 2), arr(f, 1), arr(f, 1)))
def _bn_grad_coef(part, gamma, coef, training, cnt, gcoef, ggamma, gbeta):
    """Per channel: gbeta, ggamma and gx = a*gy + b*x + d's coefficients (b = d = 0 when frozen)."""
    C, R = part.shape[0], part.shape[1]
    for c in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, C, cuda.gridDim.x * cuda.blockDim.x):
        t1 = part.dtype.type(0)
        t2 = part.dtype.type(0)
        for r in range(R):
            t1 += part[c, r, 0]
            t2 += part[c, r, 1]
        inv = coef[c, 3]
        gbeta[c] = t1
        ggamma[c] = t2 * inv
        a = gamma[c] * inv
        gcoef[c, 0] = a
        if training:
            b = -a * inv * inv * t2 / cnt
            gcoef[c, 1] = b
            gcoef[c, 2] = -a * t1 / cnt - b * coef[c, 2]
        else:
            gcoef[c, 1] = 0
            gcoef[c, 2] = 0


@kernel(lambda f: (arr(f, 3), arr(f, 3), arr(f, 2), arr(f, 3)))
def _bn_grad_apply(gy, x, gcoef, gx):
    N, C, M = x.shape
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for nc in range(cuda.blockIdx.y, N * C, cuda.gridDim.y):
        n = nc // C
        c = nc - n * C
        a = gcoef[c, 0]
        b = gcoef[c, 1]
        d = gcoef[c, 2]
        for i in range(t0, M, tstep):
            gx[n, c, i] = a * gy[n, c, i] + b * x[n, c, i] + d


@kernel(lambda f: (arr(f, 3), I64, f, f, f, arr(f, 3), arr(f, 3)))
def _lrn_fwd(x, size, a, beta, k, y, scale):
    """y = x * scale^-beta, scale = k + a * (sum of x^2 over the window); ``a`` = alpha / size."""
    N, C, M = x.shape
    lo = (size - 1) // 2
    hi = size - 1 - lo
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for nc in range(cuda.blockIdx.y, N * C, cuda.gridDim.y):
        n = nc // C
        c = nc - n * C
        for i in range(t0, M, tstep):
            s = x.dtype.type(0)
            for cc in range(max(c - lo, 0), min(c + hi + 1, C)):
                v = x[n, cc, i]
                s += v * v
            s = k + a * s
            scale[n, c, i] = s
            y[n, c, i] = x[n, c, i] * s ** -beta


@kernel(lambda f: (arr(f, 3), arr(f, 3), arr(f, 3), I64, f, f, arr(f, 3)))
def _lrn_bwd(gy, x, scale, size, coef, beta, gx):
    """gx = gy * scale^-beta - coef * x * sum over windows containing c of gy * x * scale^(-beta-1)."""
    N, C, M = x.shape
    lo = (size - 1) // 2
    hi = size - 1 - lo
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    one = x.dtype.type(1)
    for nc in range(cuda.blockIdx.y, N * C, cuda.gridDim.y):
        n = nc // C
        c = nc - n * C
        for i in range(t0, M, tstep):
            acc = x.dtype.type(0)
            for cc in range(max(c - hi, 0), min(c + lo + 1, C)):
                s = scale[n, cc, i]
                acc += gy[n, cc, i] * x[n, cc, i] * s ** -(beta + one)
            gx[n, c, i] = gy[n, c, i] * scale[n, c, i] ** -beta - coef * x[n, c, i] * acc


# -- backend entry points -------------------------------------------------------------------------

def _as3(a):
    return a.reshape(a.shape[0], a.shape[1], -1)


def _coefficients(x3, gamma, beta, running_mean, running_var, training, update, momentum, eps):
    xp = xp_of(x3)
    N, C, M = x3.shape
    f = x3.dtype.type
    coef = xp.empty((C, 4), x3.dtype)
    if training:
        part = xp.empty((C, N * LANES, 2), x3.dtype)
        _bn_partial.launch(_flat_grid(part.shape[0] * part.shape[1]), TPB, x3, part)
    else:
        part = xp.empty((C, 1, 2), x3.dtype)  # unused
    _bn_coef.launch(_flat_grid(C), TPB, x3, part, gamma, beta, f(eps), f(momentum), int(training), int(update),
                    running_mean, running_var, coef)
    return coef


def batch_norm_forward(x, gamma, beta, running_mean, running_var, training, momentum, eps, ctx=None):
    x3 = _as3(x)
    N, C, M = x3.shape
    coef = _coefficients(x3, gamma, beta, running_mean, running_var, training, training, momentum, eps)
    y = xp_of(x).empty(x.shape, x.dtype)
    _bn_apply.grid3(M, N * C, 1, x3, coef, _as3(y))
    if ctx is not None:
        ctx.clear()
        ctx.update(key=(xp_of(x).__name__, x.shape, bool(training), float(eps)), coef=coef, x=x)
    return y


def batch_norm_backward(gy, x, gamma, eps, training, running_mean=None, running_var=None, ctx=None):
    xp = xp_of(gy)
    x3 = _as3(x)
    N, C, M = x3.shape
    key = (xp.__name__, x.shape, bool(training), float(eps))
    coef = ctx.get("coef") if (ctx is not None and ctx.get("key") == key and ctx.get("x") is x) else None
    if coef is None:
        dummy = xp.zeros(C, x.dtype)
        rm = dummy if running_mean is None else running_mean
        rv = dummy if running_var is None else running_var
        coef = _coefficients(x3, gamma, gamma, rm, rv, training, False, 0.0, eps)
    part = xp.empty((C, N * LANES, 2), x.dtype)
    _bn_grad_partial.launch(_flat_grid(part.shape[0] * part.shape[1]), TPB, _as3(gy), x3, coef, part)
    gcoef = xp.empty((C, 3), x.dtype)
    ggamma = xp.empty(C, x.dtype)
    gbeta = xp.empty(C, x.dtype)
    _bn_grad_coef.launch(_flat_grid(C), TPB, part, gamma, coef, int(training), x.dtype.type(N * M), gcoef,
                         ggamma, gbeta)
    gx = xp.empty(x.shape, x.dtype)
    _bn_grad_apply.grid3(M, N * C, 1, _as3(gy), x3, gcoef, _as3(gx))
    return gx, ggamma, gbeta


def lrn_forward(x, size, alpha, beta, k, ctx=None):
    xp = xp_of(x)
    x3 = _as3(x)
    N, C, M = x3.shape
    f = x.dtype.type
    y = xp.empty(x.shape, x.dtype)
    scale = xp.empty(x.shape, x.dtype)
    _lrn_fwd.grid3(M, N * C, 1, x3, int(size), f(alpha / size), f(beta), f(k), _as3(y), _as3(scale))
    if ctx is not None:
        ctx.clear()
        ctx.update(key=(xp.__name__, x.shape, size, alpha, beta, k), scale=scale, x=x)
    return y


def lrn_backward(gy, x, size, alpha, beta, k, ctx=None):
    xp = xp_of(gy)
    key = (xp.__name__, x.shape, size, alpha, beta, k)
    scale = ctx.get("scale") if (ctx is not None and ctx.get("key") == key and ctx.get("x") is x) else None
    x3 = _as3(x)
    N, C, M = x3.shape
    f = x.dtype.type
    if scale is None:
        scale = xp.empty(x.shape, x.dtype)
        _lrn_fwd.grid3(M, N * C, 1, x3, int(size), f(alpha / size), f(beta), f(k), _as3(xp.empty(x.shape, x.dtype)),
                       _as3(scale))
    gx = xp.empty(x.shape, x.dtype)
    _lrn_bwd.grid3(M, N * C, 1, _as3(gy), x3, _as3(scale), int(size), f(2.0 * alpha * beta / size), f(beta),
                   _as3(gx))
    return gx
