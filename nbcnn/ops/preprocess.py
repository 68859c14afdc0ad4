"""Preprocessing ops: per-channel affine maps and bilinear resizing, with their backward passes.

Resizing uses half-pixel centres (``src = (dst + 0.5) * in / out - 0.5``,
clamped to the image; no antialiasing): PyTorch's ``align_corners=False`` and
TensorFlow 2's convention. :func:`resize_tables` computes, once per shape pair
and in float64, each output index's two source indices and weights, and for
the backward each input index's list of (output index, weight): the CPU and
CUDA kernels only gather with them, in the data's dtype.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ._dispatch import array_module, backend_for, check_float, check_ndim, contiguous

__all__ = ["channel_affine", "resize_bilinear", "resize_bilinear_backward", "resize_tables"]


def _per_channel(v, C, name, dtype, xp):
    a = np.asarray(v, dtype=np.float64)
    if a.ndim == 0:
        a = np.full(C, float(a))
    if a.shape != (C,):
        raise ValueError(f"{name} must be a scalar or have one value per channel ({C}), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return xp.asarray(a.astype(dtype))


def channel_affine(x, scale, offset=0.0):
    """``y[n, c] = x[n, c] * scale[c] + offset[c]`` (scalars broadcast over channels)."""
    x = check_ndim(check_float(x, "x"), 4, "x", "(N, C, H, W)")
    xp = array_module(x)
    C = x.shape[1]
    s = _per_channel(scale, C, "scale", x.dtype, xp)
    o = _per_channel(offset, C, "offset", x.dtype, xp)
    return backend_for(x).channel_affine(contiguous(x), s, o)


def _axis(n_in: int, n_out: int):
    ratio = n_in / n_out
    i0 = np.empty(n_out, np.int64)
    i1 = np.empty(n_out, np.int64)
    w1 = np.empty(n_out, np.float64)
    for o in range(n_out):
        s = max((o + 0.5) * ratio - 0.5, 0.0)
        a = min(int(math.floor(s)), n_in - 1)
        i0[o], i1[o], w1[o] = a, min(a + 1, n_in - 1), s - a
    w0 = 1.0 - w1
    # backward: for each input index, the outputs that read it and with what weight
    rows = [[] for _ in range(n_in)]
    for o in range(n_out):
        if i0[o] == i1[o]:
            rows[i0[o]].append((o, 1.0))
        else:
            rows[i0[o]].append((o, w0[o]))
            rows[i1[o]].append((o, w1[o]))
    ptr = np.zeros(n_in + 1, np.int64)
    ptr[1:] = np.cumsum([len(r) for r in rows])
    outs = np.asarray([o for r in rows for o, _ in r], np.int64)
    ws = np.asarray([w for r in rows for _, w in r], np.float64)
    return (i0, i1, w0, w1), (ptr, outs, ws)


@functools.lru_cache(maxsize=64)
def _tables_f64(hw_in, hw_out):
    return _axis(hw_in[0], hw_out[0]), _axis(hw_in[1], hw_out[1])


def resize_tables(hw_in, hw_out, dtype=np.float32, xp=np) -> dict:
    """``{"fwd": (rows, cols), "bwd": (rows, cols)}`` index/weight arrays for the kernels."""
    (fr, br), (fc, bc) = _tables_f64(tuple(int(v) for v in hw_in), tuple(int(v) for v in hw_out))

    def cast(t):
        return tuple(xp.asarray(a if a.dtype == np.int64 else a.astype(dtype)) for a in t)

    return {"fwd": (cast(fr), cast(fc)), "bwd": (cast(br), cast(bc))}


def _check_size(size, name="size"):
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive, got {size!r}")
    return h, w


def resize_bilinear(x, size):
    """Resize ``(N, C, H, W)`` to ``(N, C, *size)``, bilinear with half-pixel centres."""
    x = check_ndim(check_float(x, "x"), 4, "x", "(N, C, H, W)")
    h, w = _check_size(size)
    tables = resize_tables(x.shape[2:], (h, w), x.dtype, array_module(x))
    return backend_for(x).resize_bilinear(contiguous(x), (h, w), tables)


def resize_bilinear_backward(gy, input_hw):
    """Gradient of :func:`resize_bilinear` with respect to its input of spatial size ``input_hw``."""
    gy = check_ndim(check_float(gy, "gy"), 4, "gy", "(N, C, Ho, Wo)")
    H, W = _check_size(input_hw, "input_hw")
    tables = resize_tables((H, W), gy.shape[2:], gy.dtype, array_module(gy))
    return backend_for(gy).resize_bilinear_backward(contiguous(gy), (H, W), tables)
