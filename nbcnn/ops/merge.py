"""Element-wise and concatenation ops of the merge layers, on the CPU (Numba) or the GPU (CUDA).

``ew(a, b, op)`` for ``op`` in ``"add"``, ``"sub"``, ``"mul"``, ``"add_relu"`` (the fused
residual tail), ``ew_scale(a, s)``, and ``concat``/``concat_backward`` along any
axis >= 1 of batched arrays. Arrays of one call must share shape, dtype and device.
"""
from __future__ import annotations

import numpy as np

from ._dispatch import array_module, backend_for, check_float, contiguous

__all__ = ["ew", "ew_scale", "concat", "concat_backward"]

_OPS = {"add": 0, "sub": 1, "mul": 2, "add_relu": 3}


def _kernels(*arrays):
    be = backend_for(*arrays)
    if be.__name__.endswith("cuda"):
        from ..kernels.cuda import merge
    else:
        from ..kernels.cpu import merge
    return merge


def ew(a, b, op: str, out=None):
    """``a op b`` element-wise (same shape and dtype), into ``out`` when given (may be ``a`` or ``b``)."""
    a, b = check_float(a, "a"), check_float(b, "b")
    if op not in _OPS:
        raise ValueError(f"unknown element-wise op {op!r}; one of {sorted(_OPS)}")
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"element-wise {op}: shapes/dtypes differ: {a.dtype}{tuple(a.shape)} and "
                         f"{b.dtype}{tuple(b.shape)}")
    k = _kernels(a, b, out)
    a, b = contiguous(a), contiguous(b)
    if out is None:
        out = array_module(a).empty_like(a)
    k.binary(a.reshape(-1), b.reshape(-1), out.reshape(-1), _OPS[op])
    return out


def ew_scale(a, s: float, out=None):
    """``s * a`` element-wise."""
    a = contiguous(check_float(a, "a"))
    k = _kernels(a, out)
    if out is None:
        out = array_module(a).empty_like(a)
    k.scale(a.reshape(-1), a.dtype.type(s), out.reshape(-1))
    return out


def _axis(ndim: int, axis: int) -> int:
    ax = axis + ndim if axis < 0 else axis
    if not 1 <= ax < ndim:
        raise ValueError(f"concatenation axis {axis} is not a non-batch axis of {ndim}-D arrays")
    return ax


def concat(xs, axis: int = 1):
    """Concatenate batched arrays along ``axis`` (not the batch axis)."""
    xs = [contiguous(check_float(x, f"x{i}")) for i, x in enumerate(xs)]
    ax = _axis(xs[0].ndim, axis)
    N = xs[0].shape[0]
    shape = list(xs[0].shape)
    shape[ax] = sum(int(x.shape[ax]) for x in xs)
    k = _kernels(*xs)
    out = array_module(xs[0]).empty(tuple(shape), dtype=xs[0].dtype)
    outer = N * int(np.prod(shape[1:ax], dtype=np.int64))
    o2 = out.reshape(outer, -1)
    off = 0
    for x in xs:
        x2 = x.reshape(outer, -1)
        k.copy_cols(x2, o2, off, False)
        off += x2.shape[1]
    return out


def concat_backward(gy, sizes, axis: int = 1):
    """The input gradients of :func:`concat`: ``gy`` split along ``axis`` into ``sizes`` (fresh arrays)."""
    gy = contiguous(check_float(gy, "gy"))
    ax = _axis(gy.ndim, axis)
    xp = array_module(gy)
    k = _kernels(gy)
    outer = int(np.prod(gy.shape[:ax], dtype=np.int64))
    g2 = gy.reshape(outer, -1)
    inner = int(np.prod(gy.shape[ax + 1:], dtype=np.int64))
    outs, off = [], 0
    for c in sizes:
        shape = list(gy.shape)
        shape[ax] = int(c)
        o = xp.empty(tuple(shape), dtype=gy.dtype)
        k.copy_cols(g2, o.reshape(outer, -1), off, True)
        off += int(c) * inner
        outs.append(o)
    return outs
