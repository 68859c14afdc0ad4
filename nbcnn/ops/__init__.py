"""The ops API: convolution, padding, pooling, normalisation and activations with their backward passes.

Layout NCHW; convolution is cross-correlation. Output dtype = dtype of ``x``
(float32 or float64); weights and bias of another float dtype are cast to it.
Inputs are validated here, once, so the kernels can assume clean,
C-contiguous arrays. NumPy arrays run the Numba CPU kernels, CuPy arrays the
Numba CUDA kernels; under the CUDA simulator, NumPy arrays inside
``using_device("cuda")`` run the CUDA kernels.

Padding forms: int ``p``; ``(ph, pw)``; ``(top, bottom, left, right)``;
``"valid"``; ``"same"`` (output ceil(n/s), extra row/column at the
bottom/right, also for stride > 1); ``"full"`` (f - 1 per side). With
dilation d, 'same' and 'full' pad for the effective kernel (f - 1) * d + 1.
"""
from __future__ import annotations

import numbers

from ..kernels.geometry import (as_dilation, as_pair, as_stride, conv2d_output_hw, conv_output_size,
                                effective_kernel, resolve_padding)
from ._dispatch import array_module, backend_for, check_float, check_ndim, contiguous
from .activations import (ACTIVATION_NAMES, activation, activation_backward, elu, elu_backward, gelu,
                          gelu_backward, hard_sigmoid, hard_sigmoid_backward, hard_swish, hard_swish_backward,
                          leaky_relu, leaky_relu_backward, relu6, relu6_backward, silu, silu_backward, swish,
                          swish_backward)
from .activations import __all__ as _act_all
from .norm import batch_norm, batch_norm_backward, lrn, lrn_backward
from .pool import (avg_pool2d, avg_pool2d_backward, global_avg_pool2d, global_avg_pool2d_backward,
                   global_max_pool2d, global_max_pool2d_backward, max_pool2d, max_pool2d_backward,
                   pool2d_output_shape)
from .preprocess import channel_affine, resize_bilinear, resize_bilinear_backward
from .merge import concat, concat_backward, ew, ew_scale

__all__ = [
    "conv_output_size", "conv2d", "conv2d_backward", "pad2d", "pad2d_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "conv2d_output_shape", "pool2d_output_shape",
    "global_avg_pool2d", "global_avg_pool2d_backward", "global_max_pool2d", "global_max_pool2d_backward",
    "batch_norm", "batch_norm_backward", "lrn", "lrn_backward", *_act_all,
    "channel_affine", "resize_bilinear", "resize_bilinear_backward",
    "ew", "ew_scale", "concat", "concat_backward",
]


def _conv_setup(x, w, stride, padding, dilation=1, groups=1, name_x="x"):
    x = check_ndim(check_float(x, name_x), 4, name_x, "(N, C, H, W)")
    w = check_ndim(check_float(w, "w"), 4, "w", "(K, C // groups, kh, kw)")
    if w.dtype != x.dtype:
        w = w.astype(x.dtype)
    N, C, H, W = x.shape
    K, Cw, kh, kw = w.shape
    if min(w.shape) <= 0 or min(x.shape[1:]) <= 0:
        raise ValueError(f"empty array: x has shape {tuple(x.shape)}, w has shape {tuple(w.shape)}")
    groups = _check_groups(groups, C, K)
    if Cw != C // groups:
        if groups == 1:
            raise ValueError(f"channel mismatch: x has C={C} (shape {x.shape}) but w expects C={Cw} "
                             f"(shape {w.shape})")
        raise ValueError(f"channel mismatch: with groups={groups} w must have C // groups = {C // groups} "
                         f"input channels (x has C={C}), got w of shape {tuple(w.shape)}")
    sh, sw = as_stride(stride)
    dil = as_dilation(dilation)
    pads = resolve_padding(padding, (kh, kw), (sh, sw), (H, W), dil)
    pt, pb, pl, pr = pads
    Ho, Wo = conv2d_output_hw(H, W, (kh, kw), (sh, sw), pads, dil)
    if Ho <= 0 or Wo <= 0:
        ext = "" if dil == (1, 1) else f" (extent {effective_kernel(kh, dil[0])}x{effective_kernel(kw, dil[1])} " \
                                          f"with dilation {dil})"
        raise ValueError(
            f"kernel {kh}x{kw}{ext} (w shape {w.shape}) is larger than the padded input "
            f"{H + pt + pb}x{W + pl + pr} (x shape {x.shape}, padding {padding!r})")
    return x, w, (sh, sw), pads, dil, groups, (N, K, Ho, Wo)


def _check_groups(groups, C, K) -> int:
    if type(groups) is bool or not isinstance(groups, numbers.Integral):
        raise TypeError(f"groups must be an int, got {groups!r}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if C % groups:
        raise ValueError(f"input channels C={C} are not divisible by groups={groups}")
    if K % groups:
        raise ValueError(f"filters K={K} are not divisible by groups={groups}")
    return groups


def conv2d_output_shape(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1) -> tuple:
    """Output shape of :func:`conv2d` for these shapes (no data needed)."""
    N, C, H, W = x_shape
    K, Cw, kh, kw = w_shape
    groups = _check_groups(groups, C, K)
    if Cw != C // groups:
        raise ValueError(f"channel mismatch: with groups={groups} w must have C // groups = {C // groups} "
                         f"input channels (x has C={C}), got w of shape {tuple(w_shape)}")
    sh, sw = as_stride(stride)
    dil = as_dilation(dilation)
    pads = resolve_padding(padding, (kh, kw), (sh, sw), (H, W), dil)
    return (N, K, *conv2d_output_hw(H, W, (kh, kw), (sh, sw), pads, dil))


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, *, ctx=None):
    """Cross-correlation: ``y[n,k] = sum_c x[n,c] * w[k,c] + b[k]`` (PyTorch's ``conv2d``).

    x ``(N, C, H, W)``, w ``(K, C // groups, kh, kw)``, b ``(K,)`` or None.
    ``dilation`` (int or pair) spaces the taps; ``groups`` splits the channels
    into independent groups (``groups == C``: depthwise, ``K = m * C`` gives
    depth multiplier m). ``ctx`` (a dict owned by the caller) lets
    :func:`conv2d_backward` reuse forward work.
    """
    x, w, stride, pads, dil, groups, oshape = _conv_setup(x, w, stride, padding, dilation, groups)
    if b is not None:
        b = check_ndim(check_float(b, "b"), 1, "b", "(K,)")
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"bias b has shape {b.shape} but w has K={w.shape[0]} filters (shape {w.shape})")
        if b.dtype != x.dtype:
            b = b.astype(x.dtype)
    be = backend_for(x, w, b)
    if oshape[0] == 0:  # an empty batch: nothing to compute (kernels need not handle it)
        return array_module(x).zeros(oshape, dtype=x.dtype)
    return be.conv2d_forward(contiguous(x), contiguous(w), None if b is None else contiguous(b),
                             stride, pads, ctx, dilation=dil, groups=groups)


def conv2d_backward(gy, x, w, stride=1, padding=0, dilation=1, groups=1, *, need_gx=True, ctx=None):
    """Gradients ``(gx, gw, gb)`` of :func:`conv2d` given the output gradient ``gy``.

    ``need_gx=False`` skips the input gradient (first layer) and returns None for it.
    """
    x, w, stride, pads, dil, groups, oshape = _conv_setup(x, w, stride, padding, dilation, groups)
    gy = check_ndim(check_float(gy, "gy"), 4, "gy", "(N, K, Ho, Wo)")
    if tuple(gy.shape) != oshape:
        raise ValueError(f"gy has shape {tuple(gy.shape)} but the convolution output has shape {oshape}")
    if gy.dtype != x.dtype:
        gy = gy.astype(x.dtype)
    be = backend_for(gy, x, w)
    if oshape[0] == 0:
        xp = array_module(x)
        return (xp.zeros(x.shape, x.dtype) if need_gx else None, xp.zeros(w.shape, x.dtype),
                xp.zeros(w.shape[0], x.dtype))
    return be.conv2d_backward(contiguous(gy), contiguous(x), contiguous(w), stride, pads, need_gx, ctx,
                              dilation=dil, groups=groups)


def _pad_setup(shape, padding, kernel_size, stride):
    if isinstance(padding, str) and padding.lower() in ("same", "full") and kernel_size is None:
        raise ValueError(f"padding={padding!r} needs kernel_size= (the filter size it pads for)")
    k = as_pair(kernel_size, "kernel_size") if kernel_size is not None else (1, 1)
    return resolve_padding(padding, k, as_stride(stride), shape[2:])


def pad2d(x, padding, kernel_size=None, stride=1):
    """Zero-pad H and W. ``'same'``/``'full'`` need ``kernel_size`` (and ``stride`` for 'same')."""
    x = check_ndim(check_float(x, "x"), 4, "x", "(N, C, H, W)")
    pads = _pad_setup(x.shape, padding, kernel_size, stride)
    return backend_for(x).pad2d(contiguous(x), pads)


def pad2d_backward(gy, padding, kernel_size=None, stride=1, input_shape=None):
    """Gradient of :func:`pad2d`: crop the padding off ``gy``.

    For ``'same'`` with stride > 1 the padding depends on the unpadded size: pass ``input_shape``.
    """
    gy = check_ndim(check_float(gy, "gy"), 4, "gy", "(N, C, Hp, Wp)")
    if isinstance(padding, str) and padding.lower() == "same" and as_stride(stride) != (1, 1):
        if input_shape is None:
            raise ValueError("pad2d_backward with padding='same' and stride > 1 needs input_shape=")
        shape = tuple(input_shape)
    else:
        shape = gy.shape
    pads = _pad_setup(shape, padding, kernel_size, stride)
    pt, pb, pl, pr = pads
    if gy.shape[2] <= pt + pb or gy.shape[3] <= pl + pr:
        raise ValueError(f"gy of shape {tuple(gy.shape)} is not larger than the padding {pads}")
    return backend_for(gy).pad2d_backward(contiguous(gy), pads)
