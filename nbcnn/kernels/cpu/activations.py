"""Element-wise activation kernels for float32 NumPy arrays (Numba, CPU).

Why these exist: in Numba ``np.tanh``/``np.exp`` are scalar libm calls (the
PyPI llvmlite has no SVML), 30-60x slower than a vectorisable rational
approximation; and fusing bias + activation (and activation gradient + bias
gradient) saves passes over memory. The layers call these only for float32
NumPy arrays; float64 (gradient checks) and CuPy arrays take NumPy/CuPy
expressions in :mod:`nbcnn.layers`, which are also the reference in tests.

Activation codes: 0 linear, 1 relu, 2 tanh, 3 sigmoid. Both kernels take
C-contiguous 2-D row arrays and may work in place (``out`` is ``x``). There are
only two kernels (bias optional) because each parallel kernel costs seconds of
first-run compile time. Sigmoid is ``0.5 * tanh(x / 2) + 0.5`` on the same
approximation, so it is as fast as tanh. Unlike the conv and pooling kernels these
are not marked ``compact_code`` (optsize): their three-array loops vectorise only
with run-time alias checks, which optsize forbids (relu backward ran 7x slower).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

LINEAR, RELU, TANH, SIGMOID = 0, 1, 2, 3
CODES = {"linear": LINEAR, None: LINEAR, "relu": RELU, "tanh": TANH, "sigmoid": SIGMOID}

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
def _fwd_row(a, code):
    """a = act(a) in place. In place on purpose: with separate input and output
    arguments that alias (the layers' usual out = x), LLVM's run-time overlap check
    fails and the loop runs scalar (measured: tanh 8x slower); callers with a
    separate output copy the input into it first."""
    n = a.shape[0]
    if code == 1:
        for i in range(n):
            v = a[i]
            a[i] = v if v > 0 else np.float32(0)
    elif code == 2:
        for i in range(n):
            a[i] = _tanh(a[i])
    elif code == 3:
        half = np.float32(0.5)
        for i in range(n):
            a[i] = half * _tanh(half * a[i]) + half


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


NO_BIAS = np.empty(0, dtype=np.float32)


@njit(parallel=True, cache=True)
def act_forward(x, b, out, code):
    """``out[r] = act(x[r] + b)`` on 2-D ``(R, M)`` float32 rows; ``b`` is ``(M,)`` or
    :data:`NO_BIAS`. ``out`` may be ``x``. One kernel serves the fused Dense epilogue and
    every element-wise activation (a conv output is viewed as ``(N, K*H*W)``)."""
    R, M = x.shape
    has_bias = b.shape[0] > 0
    inplace = x.ctypes.data == out.ctypes.data
    for r in prange(R):
        orow = out[r]
        if has_bias:
            src = x[r]
            for j in range(M):
                orow[j] = src[j] + b[j]
        elif not inplace:
            src = x[r]
            for j in range(M):
                orow[j] = src[j]
        _fwd_row(orow, code)


@njit(parallel=True, cache=True)
def act_backward(gy, y, out, gb, code):
    """``out = gy * act'(x)`` from the forward output ``y`` on ``(R, M)`` rows; when ``gb`` is
    ``(M,)`` (not :data:`NO_BIAS`) also ``gb = out.sum(axis=0)`` (the Dense bias gradient)."""
    R, M = y.shape
    for r in prange(R):
        _bwd_block(gy[r], y[r], out[r], 0, M, code)
    if gb.shape[0] > 0:
        for j in range(M):
            gb[j] = 0
        for r in range(R):
            row = out[r]
            for j in range(M):
                gb[j] += row[j]
