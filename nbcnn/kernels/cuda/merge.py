"""Element-wise kernels of the merge layers on the GPU: one thread per output element, grid-stride.

Same contract as :mod:`nbcnn.kernels.cpu.merge` (operation codes, flat or 2-D views).
"""
from __future__ import annotations

from numba import cuda

from .runtime import I64, arr, kernel


@kernel(lambda f: (arr(f, 1), arr(f, 1), arr(f, 1), I64))
def _binary(a, b, out, op):
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    step = cuda.gridDim.x * cuda.blockDim.x
    for i in range(t0, out.size, step):
        if op == 0:
            out[i] = a[i] + b[i]
        elif op == 1:
            out[i] = a[i] - b[i]
        elif op == 2:
            out[i] = a[i] * b[i]
        else:
            v = a[i] + b[i]
            out[i] = v if v > 0 else 0


@kernel(lambda f: (arr(f, 1), f, arr(f, 1)))
def _scale(a, s, out):
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    step = cuda.gridDim.x * cuda.blockDim.x
    for i in range(t0, out.size, step):
        out[i] = a[i] * s


@kernel(lambda f: (arr(f, 2), arr(f, 2), I64))
def _put_cols(src, out, off):
    N, F = src.shape
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    step = cuda.gridDim.x * cuda.blockDim.x
    for n in range(cuda.blockIdx.y, N, cuda.gridDim.y):
        for f in range(t0, F, step):
            out[n, off + f] = src[n, f]


@kernel(lambda f: (arr(f, 2), arr(f, 2), I64))
def _take_cols(src, out, off):
    N, F = out.shape
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    step = cuda.gridDim.x * cuda.blockDim.x
    for n in range(cuda.blockIdx.y, N, cuda.gridDim.y):
        for f in range(t0, F, step):
            out[n, f] = src[n, off + f]


def binary(a, b, out, op):
    _binary.grid3(out.size, 1, 1, a, b, out, op)


def scale(a, s, out):
    _scale.grid3(out.size, 1, 1, a, out.dtype.type(s), out)


def copy_cols(src, out, off, back):
    if back:
        _take_cols.grid3(out.shape[1], out.shape[0], 1, src, out, off)
    else:
        _put_cols.grid3(src.shape[1], src.shape[0], 1, src, out, off)
