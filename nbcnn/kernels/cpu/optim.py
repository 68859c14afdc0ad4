"""Fused optimiser updates and the squared gradient norm on the CPU.

Each kernel updates ``p[lo:hi]`` in place in one pass over the parameter,
gradient and state buffers. Work is split into fixed blocks of ``_BLOCK``
elements, one task per block, so every element is written by exactly one
task (race-free) and the result does not depend on the thread count. Blocks
are sliced so the inner loops index from 0: offset indexing
(``p[i] for i in range(s, e)``) kept LLVM from vectorising them (6x slower).

``gsc`` multiplies the gradient before anything else (the clip-by-norm
factor, 1 without clipping); ``pd`` multiplies the parameter before the step
(decoupled weight decay, ``1 - lr * wd``; 1 otherwise).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .microkernel import compact_code

_BLOCK = 16384


@njit(parallel=True, cache=True)
def sgd_update(p, g, v, lo, hi, lr, mom, wd, nesterov, gsc):
    """``v = mom * v + g'``, ``p -= lr * v`` (or ``lr * (g' + mom * v)``), ``g' = gsc * g + wd * p``."""
    n = hi - lo
    nb = (n + _BLOCK - 1) // _BLOCK
    for b in prange(nb):
        compact_code()
        s = lo + b * _BLOCK
        e = min(s + _BLOCK, hi)
        ps, gs, vs = p[s:e], g[s:e], v[s:e]
        if mom == 0:
            for i in range(e - s):
                ps[i] -= lr * (gsc * gs[i] + wd * ps[i])
        elif nesterov:
            for i in range(e - s):
                gi = gsc * gs[i] + wd * ps[i]
                vi = mom * vs[i] + gi
                vs[i] = vi
                ps[i] -= lr * (gi + mom * vi)
        else:
            for i in range(e - s):
                gi = gsc * gs[i] + wd * ps[i]
                vi = mom * vs[i] + gi
                vs[i] = vi
                ps[i] -= lr * vi


@njit(parallel=True, cache=True)
def adam_update(p, g, m, v, lo, hi, lr_c, b1, c1, b2, c2, eps_c, wd, pd, gsc):
    """Adam / AdamW: bias corrections folded into ``lr_c``, ``eps_c`` by the caller; ``wd`` is L2 on
    the gradient (Adam), ``pd`` the decoupled decay factor (AdamW)."""
    n = hi - lo
    nb = (n + _BLOCK - 1) // _BLOCK
    for b in prange(nb):
        compact_code()
        s = lo + b * _BLOCK
        e = min(s + _BLOCK, hi)
        ps, gs, ms, vs = p[s:e], g[s:e], m[s:e], v[s:e]
        for i in range(e - s):
            gi = gsc * gs[i] + wd * ps[i]
            mi = b1 * ms[i] + c1 * gi
            vi = b2 * vs[i] + c2 * gi * gi
            ms[i] = mi
            vs[i] = vi
            ps[i] = pd * ps[i] - lr_c * mi / (np.sqrt(vi) + eps_c)


@njit(parallel=True, cache=True)
def rmsprop_update(p, g, v, ga, buf, lo, hi, lr, rho, c_rho, eps, mom, wd, centered, gsc):
    """RMSprop as PyTorch defines it: ``v = rho v + (1-rho) g'^2``, ``d = sqrt(v - ga^2) + eps``
    (``ga`` the running mean gradient when ``centered``, else 0), then plain or momentum step."""
    n = hi - lo
    nb = (n + _BLOCK - 1) // _BLOCK
    for b in prange(nb):
        compact_code()
        s = lo + b * _BLOCK
        e = min(s + _BLOCK, hi)
        ps, gs, vs, gas, bs = p[s:e], g[s:e], v[s:e], ga[s:e], buf[s:e]
        for i in range(e - s):
            gi = gsc * gs[i] + wd * ps[i]
            vi = rho * vs[i] + c_rho * gi * gi
            vs[i] = vi
            if centered:
                ai = rho * gas[i] + c_rho * gi
                gas[i] = ai
                d = np.sqrt(vi - ai * ai) + eps
            else:
                d = np.sqrt(vi) + eps
            if mom > 0:
                bi = mom * bs[i] + gi / d
                bs[i] = bi
                ps[i] -= lr * bi
            else:
                ps[i] -= lr * gi / d


@njit(parallel=True, cache=True)
def sum_squares(g, lo, hi):
    """``sum(g[lo:hi] ** 2)`` in float64: per-block partial sums, added in block order (deterministic)."""
    n = hi - lo
    nb = (n + _BLOCK - 1) // _BLOCK
    part = np.zeros(max(nb, 1), dtype=np.float64)
    for b in prange(nb):
        s = lo + b * _BLOCK
        e = min(s + _BLOCK, hi)
        gs = g[s:e]
        acc = 0.0
        for i in range(e - s):
            x = np.float64(gs[i])
            acc += x * x
        part[b] = acc
    tot = 0.0
    for b in range(nb):
        tot += part[b]
    return tot
