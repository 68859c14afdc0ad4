"""Normalisation ops: batch normalisation and local response normalisation, with backward passes.

Batch norm follows PyTorch's ``batch_norm`` on ``(N, C, H, W)`` or ``(N, C)``:
in training it normalises with the batch mean and the *biased* batch variance
and updates ``running_mean`` / ``running_var`` **in place** with
``new = (1 - momentum) * old + momentum * batch`` (the *unbiased* variance);
with ``training=False`` it normalises with the running statistics and changes
nothing. (Keras's ``momentum`` is the weight of the *old* value:
``BatchNormalization(momentum=0.99)`` calls this op with ``momentum=0.01``.)

The inference-mode ("frozen") backward is :func:`batch_norm_backward` with
``training=False`` and the running statistics: the statistics are constants
there, so ``gx = gamma * gy / sqrt(running_var + eps)``.

LRN is ONNX's / PyTorch's ``local_response_norm`` across channels:
``y = x / (k + alpha / size * sum(x^2 over the window)) ** beta``, the window
``(size - 1) // 2`` channels before and the rest after, zero beyond the edges.
"""
from __future__ import annotations

import numbers

from ._dispatch import array_module, backend_for, check_float, check_ndim, contiguous

__all__ = ["batch_norm", "batch_norm_backward", "lrn", "lrn_backward"]


def _check_x(x, name="x"):
    x = check_float(x, name)
    if x.ndim not in (2, 4):
        raise ValueError(f"{name} must be 4-D (N, C, H, W) or 2-D (N, C), got shape {tuple(x.shape)}")
    return x


def _per_channel(a, name, x, *, cast=True):
    """A ``(C,)`` vector for ``x``: ``gamma``/``beta`` are cast to x's dtype, running statistics must
    already have it (they are updated in place)."""
    C = x.shape[1]
    a = check_float(a, name)
    if a.ndim != 1 or a.shape[0] != C:
        raise ValueError(f"{name} must have shape ({C},) for x of shape {tuple(x.shape)}, got {tuple(a.shape)}")
    if a.dtype != x.dtype:
        if not cast:
            raise TypeError(f"{name} has dtype {a.dtype} but x has dtype {x.dtype}; running statistics are "
                            f"updated in place and must have x's dtype")
        a = a.astype(x.dtype)
    return a


def _check_scalar(v, name, lo=None, hi=None, positive=False):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number, got {v!r}")
    v = float(v)
    if v != v or (positive and v <= 0) or (lo is not None and v < lo) or (hi is not None and v > hi):
        want = "> 0" if positive else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {want}, got {v!r}")
    return v


def _gamma_beta(gamma, beta, x):
    xp = array_module(x)
    C = x.shape[1]
    g = xp.ones(C, x.dtype) if gamma is None else _per_channel(gamma, "gamma", x)
    b = xp.zeros(C, x.dtype) if beta is None else _per_channel(beta, "beta", x)
    return contiguous(g), contiguous(b)


def batch_norm(x, gamma, beta, running_mean, running_var, *, training, momentum=0.1, eps=1e-5, ctx=None):
    """Batch normalisation over N (and H, W) per channel; PyTorch semantics (see the module doc).

    ``gamma``/``beta`` may be None (1 and 0). ``running_mean``/``running_var`` (``(C,)``, x's dtype,
    C-contiguous) are read with ``training=False`` and updated in place with ``training=True``.
    ``ctx`` (a dict owned by the caller) keeps the statistics for :func:`batch_norm_backward`.
    """
    x = _check_x(x)
    if not isinstance(training, (bool,)) and not hasattr(training, "__bool__"):
        raise TypeError(f"training must be a bool, got {training!r}")
    training = bool(training)
    momentum = _check_scalar(momentum, "momentum", 0.0, 1.0)
    eps = _check_scalar(eps, "eps", positive=True)
    g, b = _gamma_beta(gamma, beta, x)
    rm = _per_channel(running_mean, "running_mean", x, cast=False)
    rv = _per_channel(running_var, "running_var", x, cast=False)
    if training and not (rm.flags.c_contiguous and rv.flags.c_contiguous):
        raise ValueError("running_mean and running_var must be C-contiguous (they are updated in place)")
    be = backend_for(x, g, b, rm, rv)
    if training and x.size > 0 and x.size // x.shape[1] <= 1:
        raise ValueError(f"batch_norm in training needs more than one value per channel, got x of shape "
                         f"{tuple(x.shape)}")
    if x.size == 0:
        return array_module(x).zeros(x.shape, dtype=x.dtype)
    return be.batch_norm_forward(contiguous(x), g, b, rm, rv, training, momentum, eps, ctx)


def batch_norm_backward(gy, x, gamma, *, eps=1e-5, training=True, running_mean=None, running_var=None,
                        ctx=None):
    """Gradients ``(gx, ggamma, gbeta)`` of :func:`batch_norm`.

    ``training=True`` (default): of the training-mode forward (batch statistics, whose own
    gradient is part of ``gx``). ``training=False``: of the inference-mode forward, which needs
    ``running_mean`` and ``running_var`` (the frozen-layer backward). ``gamma`` may be None (1).
    Pass the ``ctx`` the forward got to reuse its statistics.
    """
    x = _check_x(x)
    gy = check_float(gy, "gy")
    if tuple(gy.shape) != tuple(x.shape):
        raise ValueError(f"gy has shape {tuple(gy.shape)} but x has shape {tuple(x.shape)}")
    if gy.dtype != x.dtype:
        gy = gy.astype(x.dtype)
    eps = _check_scalar(eps, "eps", positive=True)
    training = bool(training)
    g, _ = _gamma_beta(gamma, None, x)
    rm = rv = None
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm_backward(training=False) needs running_mean= and running_var=")
        rm = _per_channel(running_mean, "running_mean", x)
        rv = _per_channel(running_var, "running_var", x)
    be = backend_for(gy, x, g, rm, rv)
    if x.size == 0:
        xp = array_module(x)
        return xp.zeros(x.shape, x.dtype), xp.zeros(x.shape[1], x.dtype), xp.zeros(x.shape[1], x.dtype)
    return be.batch_norm_backward(contiguous(gy), contiguous(x), g, eps, training, rm, rv, ctx)


def _lrn_args(size, alpha, beta, k):
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size <= 0:
        raise ValueError(f"lrn size must be a positive int, got {size!r}")
    alpha = _check_scalar(alpha, "alpha")
    beta = _check_scalar(beta, "beta")
    k = _check_scalar(k, "k")
    if k <= 0:
        raise ValueError(f"lrn k must be > 0 (the denominator's base), got {k!r}")
    if alpha < 0:
        raise ValueError(f"lrn alpha must be >= 0, got {alpha!r}")
    return int(size), alpha, beta, k


def lrn(x, size, *, alpha=1e-4, beta=0.75, k=1.0, ctx=None):
    """Local response normalisation across channels of ``(N, C, H, W)`` (see the module doc).
    ``ctx`` (a dict owned by the caller) keeps the denominators for :func:`lrn_backward`."""
    x = check_ndim(check_float(x, "x"), 4, "x", "(N, C, H, W)")
    size, alpha, beta, k = _lrn_args(size, alpha, beta, k)
    if x.size == 0:
        return array_module(x).zeros(x.shape, dtype=x.dtype)
    return backend_for(x).lrn_forward(contiguous(x), size, alpha, beta, k, ctx)


def lrn_backward(gy, x, size, *, alpha=1e-4, beta=0.75, k=1.0, ctx=None):
    """Gradient of :func:`lrn` with respect to ``x``."""
    x = check_ndim(check_float(x, "x"), 4, "x", "(N, C, H, W)")
    gy = check_float(gy, "gy")
    if tuple(gy.shape) != tuple(x.shape):
        raise ValueError(f"gy has shape {tuple(gy.shape)} but x has shape {tuple(x.shape)}")
    if gy.dtype != x.dtype:
        gy = gy.astype(x.dtype)
    size, alpha, beta, k = _lrn_args(size, alpha, beta, k)
    if x.size == 0:
        return array_module(x).zeros(x.shape, dtype=x.dtype)
    return backend_for(gy, x).lrn_backward(contiguous(gy), contiguous(x), size, alpha, beta, k, ctx)
