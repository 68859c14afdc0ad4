"""Element-wise activation kernels for float32 NumPy arrays (Numba, CPU).

Why these exist: in Numba ``np.tanh``/``np.exp`` are scalar libm calls (the
PyPI llvmlite has no SVML), 30-60x slower than a vectorisable rational
approximation; and fusing bias + activation (and activation gradient + bias
gradient) saves passes over memory. The layers call these only for float32
NumPy arrays; float64 (gradient checks) and CuPy arrays take NumPy/CuPy
expressions in :mod:`nbcnn.layers`, which are also the reference in tests.

Activation codes: 0 linear, 1 relu, 2 tanh, 3 sigmoid. Every function takes
1-D (flat) or 2-D row arrays as documented, C-contiguous, and may work in place
(``out`` is ``x``). Sigmoid is ``0.5 * tanh(x / 2) + 0.5`` on the same
approximation, so it is as fast as tanh.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

LINEAR, RELU, TANH, SIGMOID = 0, 1, 2, 3
CODES = {"linear": LINEAR, None: LINEAR, "relu": RELU, "tanh": TANH, "sigmoid": SIGMOID}
_BLOCK = 8192

# Rational minimax approximation of tanh on [-7.9053, 7.9053] (the form used by
# Eigen's fast tanh): max abs error ~3e-7 in float32, saturates to +-1 outside.
_CLAMP = np.float32(7.90531110763549805)
_A1 = np.float32(4.89352455891786e-03)
_A3 = np.float32(6.37261928875436e-04)
_A5 = np.float32(1.48572235717979e-05)
_A7 = np.float32(5.12229709037114e-08)
_A9 = np.float32(-8.60467152213735e-11)
_A11 = np.float32(2.00018790482477e-13)
_A13 = np.float32(-2.76076847742355e-16)
_B0 = np.float32(4.89352518554385e-03)
_B2 = np.float32(2.26843463243900e-03)
_B4 = np.float32(1.18534705686654e-04)
_B6 = np.float32(1.19825839466702e-06)


@njit(inline="always", fastmath=True)
def _tanh(v):
    x = min(max(v, -_CLAMP), _CLAMP)
    x2 = x * x
    p = x2 * _A13 + _A11
    p = x2 * p + _A9
    p = x2 * p + _A7
    p = x2 * p + _A5
    p = x2 * p + _A3
    p = x2 * p + _A1
    p = x * p
    q = x2 * _B6 + _B4
    q = x2 * q + _B2
    q = x2 * q + _B0
    return p / q


@njit(inline="always")
def _fwd_block(x, out, lo, hi, code):
    if code == 1:
        for i in range(lo, hi):
            v = x[i]
            out[i] = v if v > 0 else np.float32(0)
    elif code == 2:
        for i in range(lo, hi):
            out[i] = _tanh(x[i])
    elif code == 3:
        half = np.float32(0.5)
        for i in range(lo, hi):
            out[i] = half * _tanh(half * x[i]) + half
    else:
        for i in range(lo, hi):
            out[i] = x[i]


@njit(inline="always")
def _bwd_block(gy, y, out, lo, hi, code):
    one = np.float32(1)
    if code == 1:
        for i in range(lo, hi):
            out[i] = gy[i] if y[i] > 0 else np.float32(0)
    elif code == 2:
        for i in range(lo, hi):
            v = y[i]
            out[i] = gy[i] * (one - v * v)
    elif code == 3:
        for i in range(lo, hi):
            v = y[i]
            out[i] = gy[i] * v * (one - v)
    else:
        for i in range(lo, hi):
            out[i] = gy[i]


@njit(parallel=True, cache=True)
def act_forward(x, out, code):
    """``out = act(x)`` on flat float32 arrays (``out`` may be ``x``)."""
    n = x.size
    nb = (n + _BLOCK - 1) // _BLOCK
    for b in prange(nb):
        lo = b * _BLOCK
        _fwd_block(x, out, lo, min(lo + _BLOCK, n), code)


@njit(parallel=True, cache=True)
def act_backward(gy, y, out, code):
    """``out = gy * act'(x)`` written from the forward output ``y`` (flat float32)."""
    n = y.size
    nb = (n + _BLOCK - 1) // _BLOCK
    for b in prange(nb):
        lo = b * _BLOCK
        _bwd_block(gy, y, out, lo, min(lo + _BLOCK, n), code)


@njit(parallel=True, cache=True)
def bias_act_rows(y, b, code):
    """In place on a 2-D ``(N, M)`` array: ``y[n] = act(y[n] + b)`` (a Dense layer's epilogue)."""
    N, M = y.shape
    for n in prange(N):
        row = y[n]
        for j in range(M):
            row[j] += b[j]
        _fwd_block(row, row, 0, M, code)


@njit(parallel=True, cache=True)
def act_backward_rows_bias(gy, y, out, gb, code):
    """``out = gy * act'(y)`` on ``(N, M)`` rows and ``gb = out.sum(axis=0)`` (Dense backward)."""
    N, M = y.shape
    for n in prange(N):
        _bwd_block(gy[n], y[n], out[n], 0, M, code)
    for j in range(M):
        gb[j] = 0
    for n in range(N):
        row = out[n]
        for j in range(M):
            gb[j] += row[j]
