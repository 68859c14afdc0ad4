"""Fused optimiser updates and the clip-by-norm factor on the GPU.

Same update rules, argument order and meaning as :mod:`nbcnn.kernels.cpu.optim`,
one thread per element (grid-stride over ``[lo, hi)``), so each element is
written by one thread. The clip factor stays on the device: the gradient
scale is a one-element array ``gsc`` that :func:`_clip_scale` writes and the
update kernels read, so clipping by global norm costs no host sync.

The squared norm is reduced in a fixed order: every thread of a fixed grid
(``NORM_BLOCKS`` x ``TPB``) accumulates its grid-stride share of each range
into its own slot of ``part``; one block then folds ``part`` by residue class
and thread 0 adds the block's sums in order. Same grid, same order, same
bits, every run.
"""
from __future__ import annotations

import math

from numba import cuda

from .runtime import I64, TPB, arr, kernel

NORM_BLOCKS = 64

_V = lambda f: arr(f, 1)  # noqa: E731


@kernel(lambda f: (_V(f), _V(f), _V(f), I64, I64, f, f, f, I64, _V(f)))
def _sgd_update(p, g, v, lo, hi, lr, mom, wd, nesterov, gsc):
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    step = cuda.gridDim.x * cuda.blockDim.x
    s = gsc[0]
    for i in range(lo + t0, hi, step):
        gi = s * g[i] + wd * p[i]
        if mom == 0:
            p[i] -= lr * gi
        else:
            vi = mom * v[i] + gi
            v[i] = vi
            if nesterov:
                p[i] -= lr * (gi + mom * vi)
            else:
                p[i] -= lr * vi


@kernel(lambda f: (_V(f), _V(f), _V(f), _V(f), I64, I64, f, f, f, f, f, f, f, f, _V(f)))
def _adam_update(p, g, m, v, lo, hi, lr_c, b1, c1, b2, c2, eps_c, wd, pd, gsc):
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    step = cuda.gridDim.x * cuda.blockDim.x
    s = gsc[0]
    for i in range(lo + t0, hi, step):
        gi = s * g[i] + wd * p[i]
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = pd * p[i] - lr_c * mi / (math.sqrt(vi) + eps_c)


@kernel(lambda f: (_V(f), _V(f), _V(f), _V(f), _V(f), I64, I64, f, f, f, f, f, f, I64, _V(f)))
def _rmsprop_update(p, g, v, ga, buf, lo, hi, lr, rho, c_rho, eps, mom, wd, centered, gsc):
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    step = cuda.gridDim.x * cuda.blockDim.x
    s = gsc[0]
    for i in range(lo + t0, hi, step):
        gi = s * g[i] + wd * p[i]
        vi = rho * v[i] + c_rho * gi * gi
        v[i] = vi
        if centered:
            ai = rho * ga[i] + c_rho * gi
            ga[i] = ai
            d = math.sqrt(vi - ai * ai) + eps
        else:
            d = math.sqrt(vi) + eps
        if mom > 0:
            bi = mom * buf[i] + gi / d
            buf[i] = bi
            p[i] -= lr * bi
        else:
            p[i] -= lr * gi / d


@kernel(lambda f: (_V(f), I64, I64, _V(f), I64))
def _sumsq_partials(g, lo, hi, part, first):
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    step = cuda.gridDim.x * cuda.blockDim.x
    acc = part[0] - part[0]
    for i in range(lo + t0, hi, step):
        acc += g[i] * g[i]
    if first:
        part[t0] = acc
    else:
        part[t0] += acc


@kernel(lambda f: (_V(f), f, f, f, _V(f)))
def _clip_scale(part, maxnorm, tiny, one, gsc):
    """One block: fold ``part`` by residue class of the thread index, then thread 0 adds in order."""
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    acc = part[0] - part[0]
    for i in range(t, part.shape[0], nt):
        acc += part[i]
    cuda.syncthreads()
    part[t] = acc
    cuda.syncthreads()
    if t == 0:
        tot = acc - acc
        for i in range(nt):
            tot += part[i]
        c = maxnorm / (math.sqrt(tot) + tiny)
        gsc[0] = c if c < one else one


def _blocks(n: int) -> int:
    from .runtime import MAX_BLOCKS

    return min(max(-(-n // TPB), 1), MAX_BLOCKS)


def sgd_update(p, g, v, lo, hi, lr, mom, wd, nesterov, gsc):
    _sgd_update.launch(_blocks(hi - lo), TPB, p, g, v, lo, hi, lr, mom, wd, int(nesterov), gsc)


def adam_update(p, g, m, v, lo, hi, lr_c, b1, c1, b2, c2, eps_c, wd, pd, gsc):
    _adam_update.launch(_blocks(hi - lo), TPB, p, g, m, v, lo, hi, lr_c, b1, c1, b2, c2, eps_c, wd, pd, gsc)


def rmsprop_update(p, g, v, ga, buf, lo, hi, lr, rho, c_rho, eps, mom, wd, centered, gsc):
    _rmsprop_update.launch(_blocks(hi - lo), TPB, p, g, v, ga, buf, lo, hi, lr, rho, c_rho, eps, mom, wd,
                           int(centered), gsc)


def clip_scale(g, ranges, maxnorm, part, gsc):
    """Write ``min(1, maxnorm / (||g over ranges|| + 1e-6))`` into ``gsc[0]``; ``part`` holds
    ``NORM_BLOCKS * TPB`` zeros on first use (scratch, reused)."""
    first = 1
    for lo, hi in ranges:
        _sumsq_partials.launch(NORM_BLOCKS, TPB, g, lo, hi, part, first)
        first = 0
    ty = maxnorm.dtype.type
    _clip_scale.launch(1, TPB, part, maxnorm, ty(1e-6), ty(1), gsc)
