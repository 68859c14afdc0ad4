"""Element-wise activations on the GPU: forward (optional fused bias), backward, bias gradient.

Codes and definitions: :mod:`nbcnn.kernels.act_codes` (the same as the CPU kernels). Arrays are
``(R, M)`` rows; one thread per element; the bias gradient is one thread per column adding the
rows in order (deterministic, no atomics). ``k`` is the constant table in the data's dtype.
"""
from __future__ import annotations

import math

from numba import cuda

from ..act_codes import constants
from .runtime import I64, MAX_BLOCKS, TPB, arr, kernel, xp_of


@kernel(lambda f: (arr(f, 2), arr(f, 1), arr(f, 2), I64, arr(f, 1)))
def _act_fwd(x, b, out, code, k):
    R, M = x.shape
    has_bias = b.shape[0] > 0
    zero = k[10]
    one = k[2]
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for r in range(cuda.blockIdx.y, R, cuda.gridDim.y):
        for j in range(t0, M, tstep):
            v = x[r, j]
            if has_bias:
                v += b[j]
            if code == 1:
                v = v if v > zero else zero
            elif code == 2:
                v = math.tanh(v)
            elif code == 3:
                v = one / (one + math.exp(-v))
            elif code == 4:
                v = v if v > zero else k[0] * v
            elif code == 5:
                v = v if v > zero else k[0] * (math.exp(v) - one)
            elif code == 6:
                v = k[1] * v * (one + math.erf(v * k[8]))
            elif code == 7:
                v = k[1] * v * (one + math.tanh(k[6] * (v + k[7] * v * v * v)))
            elif code == 8:
                v = v / (one + math.exp(-v))
            elif code == 9:
                v = min(max(v, zero), k[4])
            elif code == 10:
                v = min(max(v + k[3], zero), k[4]) * k[5]
            elif code == 11:
                v = v * min(max(v + k[3], zero), k[4]) * k[5]
            out[r, j] = v


@kernel(lambda f: (arr(f, 2), arr(f, 2), arr(f, 2), arr(f, 2), I64, arr(f, 1)))
def _act_bwd(gy, x, y, out, code, k):
    """out = gy * act'; codes 1-3 read the output y, the others the input x."""
    R, M = out.shape
    zero = k[10]
    one = k[2]
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for r in range(cuda.blockIdx.y, R, cuda.gridDim.y):
        for j in range(t0, M, tstep):
            g = gy[r, j]
            if code == 1:
                g = g if y[r, j] > zero else zero
            elif code == 2:
                v = y[r, j]
                g = g * (one - v * v)
            elif code == 3:
                v = y[r, j]
                g = g * v * (one - v)
            elif code == 4:
                g = g if x[r, j] > zero else g * k[0]
            elif code == 5:
                v = x[r, j]
                g = g if v > zero else g * k[0] * math.exp(v)
            elif code == 6:
                v = x[r, j]
                g = g * (k[1] * (one + math.erf(v * k[8])) + v * k[9] * math.exp(-k[1] * v * v))
            elif code == 7:
                v = x[r, j]
                t = math.tanh(k[6] * (v + k[7] * v * v * v))
                g = g * (k[1] * (one + t) + k[1] * v * (one - t * t) * k[6] * (one + k[3] * k[7] * v * v))
            elif code == 8:
                v = x[r, j]
                s = one / (one + math.exp(-v))
                g = g * s * (one + v * (one - s))
            elif code == 9:
                v = x[r, j]
                g = g if (v > zero and v < k[4]) else zero
            elif code == 10:
                v = x[r, j]
                g = g * k[5] if (v > -k[3] and v < k[3]) else zero
            elif code == 11:
                v = x[r, j]
                if v <= -k[3]:
                    g = zero
                elif v < k[3]:
                    g = g * (v * k[11] + k[1])
            out[r, j] = g


@kernel(lambda f: (arr(f, 2), arr(f, 1)))
def _col_sum(g, gb):
    R, M = g.shape
    for j in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, M, cuda.gridDim.x * cuda.blockDim.x):
        s = g.dtype.type(0)
        for r in range(R):
            s += g[r, j]
        gb[j] = s


def _table(xp, dtype, alpha):
    return xp.asarray(constants(alpha), dtype=dtype)


def activation_forward(x, b, out, code, alpha):
    xp = xp_of(x)
    bb = xp.empty(0, x.dtype) if b is None else b
    _act_fwd.grid3(x.shape[1], x.shape[0], 1, x, bb, out, int(code), _table(xp, x.dtype, alpha))
    return out


def activation_backward(gy, x, y, out, gb, code, alpha):
    xp = xp_of(gy)
    xx = y if x is None else x
    yy = x if y is None else y
    _act_bwd.grid3(out.shape[1], out.shape[0], 1, gy, xx, yy, out, int(code), _table(xp, gy.dtype, alpha))
    if gb is not None:
        _col_sum.launch(min(max(-(-out.shape[1] // TPB), 1), MAX_BLOCKS), TPB, out, gb)
    return out
