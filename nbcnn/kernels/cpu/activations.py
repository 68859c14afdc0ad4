"""Element-wise activation kernels (Numba, CPU), behind :func:`nbcnn.ops.activation`.

Why these exist: in Numba ``np.tanh``/``np.exp`` are scalar libm calls (the
PyPI llvmlite has no SVML), 30-60x slower than a vectorisable rational
approximation; and fusing bias + activation (and activation gradient + bias
gradient) saves passes over memory.

``act_forward`` / ``act_backward`` (float32, the layers' fused Dense epilogue) know
codes 0 linear, 1 relu, 2 tanh, 3 sigmoid. ``act_forward_any`` / ``act_backward_any``
know every activation of :mod:`nbcnn.kernels.act_codes`, in float32 and float64
(float64 with libm ``tanh`` / ``exp``, exact enough for gradient checks). All take
C-contiguous 2-D row arrays and may work in place (``out`` is ``x``). There are
only two kernels (bias optional) because each parallel kernel costs seconds of
first-run compile time. Sigmoid is ``0.5 * tanh(x / 2) + 0.5`` on the same
approximation, so it is as fast as tanh. Unlike the conv and pooling kernels these
are not marked ``compact_code`` (optsize): their three-array loops vectorise only
with run-time alias checks, which optsize forbids (relu backward ran 7x slower).
"""
from __future__ import annotations

import math

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


# ---------------------------------------------------------------------------------------------
# every activation (codes in nbcnn.kernels.act_codes), float32 and float64
# ---------------------------------------------------------------------------------------------
# ``k`` is the constant table of act_codes.constants() in the data's dtype, so that float32 data
# stays float32 arithmetic: k[0] alpha, k[1] 1/2, k[2] 1, k[3] 3, k[4] 6, k[5] 1/6,
# k[6] sqrt(2/pi), k[7] 0.044715, k[8] 1/sqrt(2), k[9] 1/sqrt(2 pi), k[10] 0, k[11] 1/3.
# ``exact``: float64 uses libm tanh (gradient checks); float32 the rational tanh above.

@njit(inline="always")
def _exp_fast(v):
    """exp for float32 data without a libm call (so loops vectorise): e^x = (e^(x/256))^256, the
    inner exponential by its degree-10 Taylor polynomial (|x/256| < 0.35), all in float64
    (relative error ~1e-13 before the rounding to float32)."""
    y = min(max(np.float64(v), -87.5), 88.5) * 0.00390625
    p = 1.0 + y * (1.0 + y * (0.5 + y * (1.0 / 6 + y * (1.0 / 24 + y * (1.0 / 120 + y * (
        1.0 / 720 + y * (1.0 / 5040 + y * (1.0 / 40320 + y * (1.0 / 362880 + y * (1.0 / 3628800))))))))))
    for _ in range(8):
        p = p * p
    return p


@njit(inline="always")
def _exp_any(v, exact):
    return np.exp(v) if exact else _exp_fast(v)


@njit(inline="always")
def _erf_any(v, exact):
    """erf: libm for float64; for float32 the Abramowitz-Stegun 7.1.26 rational form
    (|error| <= 1.5e-7) on the vectorisable exp above."""
    if exact:
        return math.erf(v)
    a = abs(np.float64(v))
    t = 1.0 / (1.0 + 0.3275911 * a)
    q = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    r = 1.0 - q * _exp_fast(-a * a)
    return r if v >= 0 else -r


@njit(inline="always")
def _tanh_any(v, exact):
    return np.tanh(v) if exact else _tanh(v)


@njit(inline="always")
def _sigmoid_any(v, half, one, exact):
    if exact:
        return one / (one + np.exp(-v))
    return half * _tanh(half * v) + half


@njit(inline="always")
def _fwd_any(a, code, k, exact):
    """a = act(a) in place (see _fwd_row for why in place)."""
    # the constants as locals: read through ``k`` inside the loops they could alias the output
    # (a store to it might change them), which stops LLVM from vectorising
    alpha, half, one, three, six, sixth = k[0], k[1], k[2], k[3], k[4], k[5]
    c_gelu, c_cube, inv_sqrt2, inv_sqrt2pi, zero, third = k[6], k[7], k[8], k[9], k[10], k[11]
    n = a.shape[0]
    if code == 1:
        for i in range(n):
            v = a[i]
            a[i] = v if v > zero else zero
    elif code == 2:
        for i in range(n):
            a[i] = _tanh_any(a[i], exact)
    elif code == 3:
        for i in range(n):
            a[i] = _sigmoid_any(a[i], half, one, exact)
    elif code == 4:
        for i in range(n):
            v = a[i]
            a[i] = v if v > zero else alpha * v
    elif code == 5:
        for i in range(n):
            v = a[i]
            a[i] = v if v > zero else alpha * (_exp_any(v, exact) - one)
    elif code == 6:
        for i in range(n):
            v = a[i]
            a[i] = half * v * (one + _erf_any(v * inv_sqrt2, exact))
    elif code == 7:
        for i in range(n):
            v = a[i]
            a[i] = half * v * (one + _tanh_any(c_gelu * (v + c_cube * v * v * v), exact))
    elif code == 8:
        for i in range(n):
            v = a[i]
            a[i] = v * _sigmoid_any(v, half, one, exact)
    elif code == 9:
        for i in range(n):
            a[i] = min(max(a[i], zero), six)
    elif code == 10:
        for i in range(n):
            a[i] = min(max(a[i] + three, zero), six) * sixth
    elif code == 11:
        for i in range(n):
            v = a[i]
            a[i] = v * min(max(v + three, zero), six) * sixth


@njit(inline="always")
def _bwd_any(gy, x, y, out, code, k, exact):
    """out = gy * act'(x); codes 1-3 read the output ``y``, the others the input ``x``."""
    # the constants as locals: read through ``k`` inside the loops they could alias the output
    # (a store to it might change them), which stops LLVM from vectorising
    alpha, half, one, three, six, sixth = k[0], k[1], k[2], k[3], k[4], k[5]
    c_gelu, c_cube, inv_sqrt2, inv_sqrt2pi, zero, third = k[6], k[7], k[8], k[9], k[10], k[11]
    n = out.shape[0]
    if code == 0:
        for i in range(n):
            out[i] = gy[i]
    elif code == 1:
        for i in range(n):
            out[i] = gy[i] if y[i] > zero else zero
    elif code == 2:
        for i in range(n):
            v = y[i]
            out[i] = gy[i] * (one - v * v)
    elif code == 3:
        for i in range(n):
            v = y[i]
            out[i] = gy[i] * v * (one - v)
    elif code == 4:
        for i in range(n):
            out[i] = gy[i] if x[i] > zero else gy[i] * alpha
    elif code == 5:
        for i in range(n):
            v = x[i]
            out[i] = gy[i] if v > zero else gy[i] * alpha * _exp_any(v, exact)
    elif code == 6:
        for i in range(n):
            v = x[i]
            cdf = half * (one + _erf_any(v * inv_sqrt2, exact))
            out[i] = gy[i] * (cdf + v * inv_sqrt2pi * _exp_any(-half * v * v, exact))
    elif code == 7:
        for i in range(n):
            v = x[i]
            t = _tanh_any(c_gelu * (v + c_cube * v * v * v), exact)
            out[i] = gy[i] * (half * (one + t) + half * v * (one - t * t) * c_gelu * (one + three * c_cube * v * v))
    elif code == 8:
        for i in range(n):
            v = x[i]
            s = _sigmoid_any(v, half, one, exact)
            out[i] = gy[i] * s * (one + v * (one - s))
    elif code == 9:
        for i in range(n):
            v = x[i]
            out[i] = gy[i] if (v > zero and v < six) else zero
    elif code == 10:
        for i in range(n):
            v = x[i]
            out[i] = gy[i] * sixth if (v > -three and v < three) else zero
    elif code == 11:
        for i in range(n):
            v = x[i]
            if v <= -three:
                out[i] = zero
            elif v < three:
                out[i] = gy[i] * (v * third + half)
            else:
                out[i] = gy[i]


@njit(parallel=True, cache=True)
def act_forward_any(x, b, out, code, k, exact):
    """``out[r] = act(x[r] + b)`` on ``(R, M)`` rows of any float dtype (``b``: ``(M,)`` or empty);
    ``out`` may be ``x``. One task per row."""
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
        if exact:   # literal flags: each inlined copy folds its branches (float32 loops vectorise)
            _fwd_any(orow, code, k, True)
        else:
            _fwd_any(orow, code, k, False)


@njit(parallel=True, cache=True)
def act_backward_any(gy, x, y, out, gb, code, k, exact):
    """``out = gy * act'(.)`` on ``(R, M)`` rows (``x``: the input, ``y``: the output; the one the
    code does not read may be any array of the right shape); ``gb`` ``(M,)`` (or empty) gets the
    column sums of ``out`` (a Dense bias gradient), in row order."""
    R, M = out.shape
    for r in prange(R):
        if exact:
            _bwd_any(gy[r], x[r], y[r], out[r], code, k, True)
        else:
            _bwd_any(gy[r], x[r], y[r], out[r], code, k, False)
    if gb.shape[0] > 0:
        for j in range(M):
            gb[j] = 0
        for r in range(R):
            row = out[r]
            for j in range(M):
                gb[j] += row[j]


# ---------------------------------------------------------------------------------------------
# backend entry points (kernel contract: 2-D C-contiguous rows, validated by nbcnn.ops)
# ---------------------------------------------------------------------------------------------

def _table(dtype, alpha):
    from ..act_codes import constants

    return np.array(constants(alpha), dtype=dtype)


def activation_forward(x, b, out, code, alpha):
    """``out = act(x + b)`` on ``(R, M)`` rows; ``b`` ``(M,)`` or None; ``out`` may be ``x``."""
    if x.dtype == np.float32 and code <= SIGMOID:
        act_forward(x, NO_BIAS if b is None else b, out, code)
    else:
        bb = np.empty(0, x.dtype) if b is None else b
        act_forward_any(x, bb, out, code, _table(x.dtype, alpha), x.dtype == np.float64)
    return out


def activation_backward(gy, x, y, out, gb, code, alpha):
    """``out = gy * act'``; ``gb`` ``(M,)`` (or None) receives the column sums of ``out``."""
    if gy.dtype == np.float32 and code <= SIGMOID and y is not None:
        act_backward(gy, y, out, NO_BIAS if gb is None else gb, code)
    else:
        g = np.empty(0, gy.dtype) if gb is None else gb
        act_backward_any(gy, y if x is None else x, x if y is None else y, out, g, code,
                         _table(gy.dtype, alpha), gy.dtype == np.float64)
    return out
