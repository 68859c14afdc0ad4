"""Numba CPU kernels (``@njit(parallel=True, cache=True)``) behind :mod:`nbcnn.ops`.

Every parallel loop writes disjoint outputs (one task per output row, plane
or weight slice), so results are race-free and identical run to run.
"""
from .conv_general import conv2d_backward, conv2d_forward
from .activations import activation_backward, activation_forward
from .norm import batch_norm_backward, batch_norm_forward, lrn_backward, lrn_forward
from .pad import pad2d, pad2d_backward
from .pool import (avg_pool2d_backward, avg_pool2d_forward, global_avg_pool2d_backward,
                   global_avg_pool2d_forward, global_max_pool2d_backward, global_max_pool2d_forward,
                   max_pool2d_backward, max_pool2d_forward)
from .preprocess import channel_affine, resize_bilinear, resize_bilinear_backward

__all__ = [
    "conv2d_forward", "conv2d_backward", "pad2d", "pad2d_backward",
    "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
    "global_avg_pool2d_forward", "global_avg_pool2d_backward",
    "global_max_pool2d_forward", "global_max_pool2d_backward",
    "batch_norm_forward", "batch_norm_backward", "lrn_forward", "lrn_backward",
    "channel_affine", "resize_bilinear", "resize_bilinear_backward",
    "activation_forward", "activation_backward",
]
