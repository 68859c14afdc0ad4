"""Numba ``@cuda.jit`` kernels behind :mod:`nbcnn.ops`, on CuPy arrays (or NumPy under the simulator).

Same kernel contract as :mod:`nbcnn.kernels.cpu` (see :mod:`nbcnn.kernels`),
same algorithms where they fit a GPU; every backward pass is a gather (one
thread per written element), so results are race-free and identical run to
run. Launch policy (grids, streams, the simulator): :mod:`.runtime`.

The kernel functions load on first attribute access (PEP 562), so that
``nbcnn.kernels.cuda.info`` — versions and GPU status for ``nbcnn info`` —
can be imported without importing ``numba.cuda``, which may raise on a
machine without a CUDA runtime.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "conv2d_forward": "conv", "conv2d_backward": "conv",
    "pad2d": "pad", "pad2d_backward": "pad",
    "max_pool2d_forward": "pool", "max_pool2d_backward": "pool",
    "avg_pool2d_forward": "pool", "avg_pool2d_backward": "pool",
    "global_avg_pool2d_forward": "pool", "global_avg_pool2d_backward": "pool",
    "global_max_pool2d_forward": "pool", "global_max_pool2d_backward": "pool",
    "activation_forward": "activations", "activation_backward": "activations",
    "batch_norm_forward": "norm", "batch_norm_backward": "norm", "lrn_forward": "norm", "lrn_backward": "norm",
    "channel_affine": "preprocess", "resize_bilinear": "preprocess", "resize_bilinear_backward": "preprocess",
}
__all__ = list(_WHERE)


def __getattr__(name):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
