"""The parameter-free residual shortcut of CIFAR ResNets (He et al. 2016, "option A").

``shortcut(x, stride, out_channels)`` subsamples ``x`` spatially by ``stride``
(``x[:, :, ::stride, ::stride]``) and zero-pads its channels to
``out_channels``: ``(out_channels - C) // 2`` zero channels before the input's,
the rest after (the usual layout of option A). It lets an identity shortcut
join a block that halves the resolution and doubles the width without adding
parameters. CPU and CUDA kernels: :mod:`nbcnn.kernels.cpu.shortcut`,
:mod:`nbcnn.kernels.cuda.shortcut`.
"""
from __future__ import annotations

import importlib

import numpy as np

from ._dispatch import backend_for, check_float, check_ndim, contiguous

__all__ = ["shortcut", "shortcut_backward", "shortcut_output_shape"]


def _kernels(*arrays):
    name = backend_for(*arrays).__name__  # nbcnn.kernels.cpu or nbcnn.kernels.cuda
    return importlib.import_module(f"{name}.shortcut")


def _check(stride, out_channels, C):
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"shortcut stride must be a positive int, got {stride!r}")
    if isinstance(out_channels, bool) or not isinstance(out_channels, (int, np.integer)) or out_channels < C:
        raise ValueError(f"shortcut out_channels must be an int >= the input's {C} channels, got {out_channels!r}")
    return (int(out_channels) - C) // 2


def shortcut_output_shape(x_shape, stride, out_channels) -> tuple:
    N, C, H, W = x_shape
    _check(stride, out_channels, C)
    return (N, out_channels, (H - 1) // stride + 1, (W - 1) // stride + 1)


def shortcut(x, stride: int, out_channels: int):
    """``x[:, :, ::stride, ::stride]`` with zero channels around it, ``out_channels`` in all."""
    x = contiguous(check_ndim(check_float(x, "x"), 4, "x", "(N, C, H, W)"))
    off = _check(stride, out_channels, x.shape[1])
    return _kernels(x).shortcut_forward(x, int(stride), off, int(out_channels))


def shortcut_backward(gy, x_shape, stride: int):
    """The gradient with respect to ``x`` (of shape ``x_shape``) of :func:`shortcut`."""
    gy = contiguous(check_ndim(check_float(gy, "gy"), 4, "gy", "(N, K, Ho, Wo)"))
    x_shape = tuple(int(s) for s in x_shape)
    want = shortcut_output_shape(x_shape, stride, int(gy.shape[1]))
    if tuple(gy.shape) != want:
        raise ValueError(f"shortcut gradient has shape {tuple(gy.shape)}, expected {want} for input {x_shape}")
    off = (int(gy.shape[1]) - x_shape[1]) // 2
    return _kernels(gy).shortcut_backward(gy, int(stride), off, x_shape)
