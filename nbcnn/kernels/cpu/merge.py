"""Element-wise kernels of the merge layers (Add, Subtract, Multiply, Average, Concatenate) on the CPU.

Flat 1-D views for the element-wise ops (one parallel loop, disjoint writes, so
race-free and deterministic); 2-D ``(N, features)`` views for concatenation,
where an input is a block of columns of the output. Operation codes keep the
number of compiled parallel kernels small (each costs seconds of first-run
compile time).
"""
from __future__ import annotations

from numba import njit, prange

ADD, SUB, MUL, ADD_RELU = 0, 1, 2, 3
CODES = {"add": ADD, "sub": SUB, "mul": MUL, "add_relu": ADD_RELU}


@njit(parallel=True, cache=True)
def binary(a, b, out, op):
    """``out = a (op) b`` on flat arrays of one size (``out`` may be ``a`` or ``b``)."""
    n = out.size
    if op == 0:
        for i in prange(n):
            out[i] = a[i] + b[i]
    elif op == 1:
        for i in prange(n):
            out[i] = a[i] - b[i]
    elif op == 2:
        for i in prange(n):
            out[i] = a[i] * b[i]
    else:
        for i in prange(n):
            v = a[i] + b[i]
            out[i] = v if v > 0 else 0.0


@njit(parallel=True, cache=True)
def scale(a, s, out):
    """``out = s * a`` on flat arrays."""
    for i in prange(out.size):
        out[i] = a[i] * s


@njit(parallel=True, cache=True)
def copy_cols(src, out, off, back):
    """``out[:, off:off + F] = src`` (``back`` False) or ``out = src[:, off:off + F]`` (True), 2-D rows."""
    N = src.shape[0] if not back else out.shape[0]
    F = src.shape[1] if not back else out.shape[1]
    for n in prange(N):
        if back:
            for f in range(F):
                out[n, f] = src[n, off + f]
        else:
            for f in range(F):
                out[n, off + f] = src[n, f]
