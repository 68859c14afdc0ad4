"""Pooling ops: max / average pooling (floor or ceil mode) and global pooling, with backward passes.

PyTorch's rules: stride defaults to the window size; padding (an int, a pair or
'valid') is at most half the window; ``ceil_mode`` rounds the output size up but
drops a window that would start in the right/bottom padding; max pooling never
picks a padded cell; average pooling divides by the window clipped to the padded
input (``count_include_pad=True``) or by its real cells (``False``), and the part
of a ceil-mode window past the padding never counts. The size arithmetic lives in
:mod:`nbcnn.kernels.geometry` (one home for the ops, the layers and both backends).
"""
from __future__ import annotations

from ..kernels.geometry import as_pair, as_stride, check_pool_padding, pool_output_size
from ._dispatch import array_module, backend_for, check_float, check_ndim, contiguous

__all__ = [
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "pool2d_output_shape",
    "global_avg_pool2d", "global_avg_pool2d_backward", "global_max_pool2d", "global_max_pool2d_backward",
]


def pool_padding(padding) -> tuple[int, int]:
    """An int, a pair or 'valid' -> (ph, pw) (range checked by :func:`check_pool_padding`)."""
    if isinstance(padding, str):
        if padding.lower() == "valid":
            return 0, 0
        raise ValueError(f"pooling padding must be between 0 and size // 2 (an int, a pair or 'valid'), "
                         f"got {padding!r}")
    return as_pair(padding, "padding")


def pool_geometry(size, stride, padding):
    """Validated ``(kh, kw), (sh, sw), (ph, pw)`` of a pooling window."""
    kh, kw = as_pair(size, "size")
    if kh <= 0 or kw <= 0:
        raise ValueError(f"pool size must be positive, got {size!r}")
    st = as_stride((kh, kw) if stride is None else stride)
    pad = pool_padding(padding)
    check_pool_padding((kh, kw), pad)
    return (kh, kw), st, pad


def pool2d_output_shape(x_shape, size=2, stride=None, padding=0, *, ceil_mode=False) -> tuple:
    """Output shape of the pooling ops (no data needed)."""
    N, C, H, W = x_shape
    (kh, kw), (sh, sw), (ph, pw) = pool_geometry(size, stride, padding)
    return (N, C, pool_output_size(H, kh, ph, sh, ceil_mode), pool_output_size(W, kw, pw, sw, ceil_mode))


def _pool_setup(x, size, stride, padding, ceil_mode, name="x"):
    x = check_ndim(check_float(x, name), 4, name, "(N, C, H, W)")
    (kh, kw), st, (ph, pw) = pool_geometry(size, stride, padding)
    N, C, H, W = x.shape
    if kh > H + 2 * ph or kw > W + 2 * pw:
        raise ValueError(f"pool window {kh}x{kw} is larger than the padded input {H + 2 * ph}x{W + 2 * pw} "
                         f"(x shape {tuple(x.shape)})")
    oshape = (N, C, pool_output_size(H, kh, ph, st[0], bool(ceil_mode)),
              pool_output_size(W, kw, pw, st[1], bool(ceil_mode)))
    return x, (kh, kw), st, (ph, ph, pw, pw), oshape


def _grad_check(gy, oshape, x, layout="(N, C, Ho, Wo)"):
    gy = check_ndim(check_float(gy, "gy"), len(oshape), "gy", layout)
    if tuple(gy.shape) != tuple(oshape):
        raise ValueError(f"gy has shape {tuple(gy.shape)} but the pooling output has shape {tuple(oshape)}")
    return gy.astype(x.dtype) if gy.dtype != x.dtype else gy


def max_pool2d(x, size=2, stride=None, padding=0, *, ceil_mode=False, ctx=None):
    """Max pooling; stride defaults to size; padded cells never win. ``ctx`` (a dict owned by
    the caller) keeps the argmax for :func:`max_pool2d_backward`."""
    x, size, stride, pads, oshape = _pool_setup(x, size, stride, padding, ceil_mode)
    be = backend_for(x)
    if x.size == 0:
        return array_module(x).zeros(oshape, dtype=x.dtype)
    return be.max_pool2d_forward(contiguous(x), size, stride, pads, ctx, ceil_mode=bool(ceil_mode))


def max_pool2d_backward(gy, x, size=2, stride=None, padding=0, *, ceil_mode=False, ctx=None):
    """Gradient of :func:`max_pool2d`: each window's gradient goes to its (first) maximum."""
    x, size, stride, pads, oshape = _pool_setup(x, size, stride, padding, ceil_mode)
    gy = _grad_check(gy, oshape, x)
    be = backend_for(gy, x)
    if x.size == 0:
        return array_module(x).zeros(x.shape, dtype=x.dtype)
    return be.max_pool2d_backward(contiguous(gy), contiguous(x), size, stride, pads, ctx,
                                  ceil_mode=bool(ceil_mode))


def avg_pool2d(x, size=2, stride=None, padding=0, *, ceil_mode=False, count_include_pad=True):
    """Average pooling; by default padded zeros count in the divisor (PyTorch's default)."""
    x, size, stride, pads, oshape = _pool_setup(x, size, stride, padding, ceil_mode)
    be = backend_for(x)
    if x.size == 0:
        return array_module(x).zeros(oshape, dtype=x.dtype)
    return be.avg_pool2d_forward(contiguous(x), size, stride, pads, ceil_mode=bool(ceil_mode),
                                 count_include_pad=bool(count_include_pad))


def avg_pool2d_backward(gy, x, size=2, stride=None, padding=0, *, ceil_mode=False, count_include_pad=True):
    """Gradient of :func:`avg_pool2d` (``x`` is used for its shape only)."""
    x, size, stride, pads, oshape = _pool_setup(x, size, stride, padding, ceil_mode)
    gy = _grad_check(gy, oshape, x)
    be = backend_for(gy, x)
    if x.size == 0:
        return array_module(x).zeros(x.shape, dtype=x.dtype)
    return be.avg_pool2d_backward(contiguous(gy), tuple(x.shape), size, stride, pads,
                                  ceil_mode=bool(ceil_mode), count_include_pad=bool(count_include_pad))


def _global_setup(x):
    x = check_ndim(check_float(x, "x"), 4, "x", "(N, C, H, W)")
    if x.shape[2] <= 0 or x.shape[3] <= 0:
        raise ValueError(f"global pooling needs H, W > 0, got x shape {tuple(x.shape)}")
    return x


def global_avg_pool2d(x):
    """Mean over H and W: ``(N, C, H, W) -> (N, C)``."""
    x = _global_setup(x)
    if x.size == 0:
        return array_module(x).zeros(x.shape[:2], dtype=x.dtype)
    return backend_for(x).global_avg_pool2d_forward(contiguous(x))


def global_avg_pool2d_backward(gy, x):
    """Gradient of :func:`global_avg_pool2d`: ``gy / (H * W)`` spread over each plane."""
    x = _global_setup(x)
    gy = _grad_check(gy, x.shape[:2], x, "(N, C)")
    if x.size == 0:
        return array_module(x).zeros(x.shape, dtype=x.dtype)
    return backend_for(gy, x).global_avg_pool2d_backward(contiguous(gy), tuple(x.shape))


def global_max_pool2d(x, *, ctx=None):
    """Max over H and W: ``(N, C, H, W) -> (N, C)`` (a NaN wins, the first maximum on ties)."""
    x = _global_setup(x)
    if x.size == 0:
        return array_module(x).zeros(x.shape[:2], dtype=x.dtype)
    return backend_for(x).global_max_pool2d_forward(contiguous(x), ctx)


def global_max_pool2d_backward(gy, x, *, ctx=None):
    """Gradient of :func:`global_max_pool2d`: each plane's gradient goes to its first maximum."""
    x = _global_setup(x)
    gy = _grad_check(gy, x.shape[:2], x, "(N, C)")
    if x.size == 0:
        return array_module(x).zeros(x.shape, dtype=x.dtype)
    return backend_for(gy, x).global_max_pool2d_backward(contiguous(gy), contiguous(x), ctx)
