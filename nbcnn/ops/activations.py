"""Element-wise activations and their gradients (CPU or CUDA kernels by the arrays' device).

:func:`activation` / :func:`activation_backward` take the activation's name (see
:mod:`nbcnn.kernels.act_codes` for the definitions): ``linear``, ``relu``, ``tanh``,
``sigmoid``, ``leaky_relu``, ``elu``, ``gelu``, ``gelu_tanh``, ``silu`` (= ``swish``),
``relu6``, ``hard_sigmoid``, ``hard_swish``. ``alpha`` is leaky_relu's negative slope
(default 0.01, PyTorch's) or elu's alpha (default 1). The forward may add a bias per
column first (``(R, M)`` input, ``(M,)`` bias: a Dense epilogue) and write into ``out``
(which may be ``x``); the backward may also return that bias's gradient (the column sums).

The backward reads the forward's input ``x``; relu, tanh and sigmoid may instead give the
output ``y`` (so in-place layers need not keep the input). Named wrappers (``gelu(x)``,
``gelu_backward(gy, x)``, ...) follow PyTorch's functional names and defaults.
"""
from __future__ import annotations

import numbers

from ..kernels.act_codes import CODES, DEFAULT_ALPHA, FROM_OUTPUT
from ._dispatch import array_module, backend_for, check_float, contiguous

__all__ = [
    "ACTIVATION_NAMES", "activation", "activation_backward",
    "leaky_relu", "leaky_relu_backward", "elu", "elu_backward", "gelu", "gelu_backward", "silu", "silu_backward",
    "swish", "swish_backward", "relu6", "relu6_backward", "hard_sigmoid", "hard_sigmoid_backward",
    "hard_swish", "hard_swish_backward",
]

ACTIVATION_NAMES = tuple(CODES)


def _code(name):
    if not isinstance(name, str) or name.lower() not in CODES:
        raise ValueError(f"unknown activation {name!r}: use one of {ACTIVATION_NAMES}")
    return name.lower(), CODES[name.lower()]


def _alpha(name, alpha):
    if alpha is None:
        return DEFAULT_ALPHA.get(name, 0.0)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or alpha != alpha:
        raise TypeError(f"alpha must be a number, got {alpha!r}")
    return float(alpha)


def _rows(a):
    """The (R, M) row view the kernels take (a C-contiguous view, no copy)."""
    if a.ndim == 0:
        return a.reshape(1, 1)
    if a.ndim == 1:
        return a.reshape(1, -1)
    return a.reshape(a.shape[0], -1)


def _check_out(out, x, what="out"):
    if out is None:
        return array_module(x).empty(x.shape, x.dtype)
    if tuple(out.shape) != tuple(x.shape) or out.dtype != x.dtype or not out.flags.c_contiguous:
        raise ValueError(f"{what} must be a C-contiguous {x.dtype} array of shape {tuple(x.shape)}, got "
                         f"{out.dtype} {tuple(out.shape)}")
    return out


def activation(x, name, *, alpha=None, bias=None, out=None):
    """``act(x [+ bias])`` element-wise; ``out`` (optional) receives it and may be ``x``."""
    name, code = _code(name)
    x = contiguous(check_float(x, "x"))
    alpha = _alpha(name, alpha)
    b = None
    if bias is not None:
        b = check_float(bias, "bias")
        if x.ndim != 2 or b.ndim != 1 or b.shape[0] != x.shape[1]:
            raise ValueError(f"bias must have shape (M,) for (R, M) input, got bias {tuple(b.shape)} and x "
                             f"{tuple(x.shape)}")
        b = contiguous(b.astype(x.dtype) if b.dtype != x.dtype else b)
    out = _check_out(out, x)
    if x.size == 0:
        return out
    if code == 0 and b is None:
        if out is not x:
            out[...] = x
        return out
    backend_for(x, b, out).activation_forward(_rows(x), b, _rows(out), code, alpha)
    return out


def activation_backward(gy, x, name, *, y=None, alpha=None, out=None, bias_grad=None):
    """``gy * act'(x)``. ``x`` is the forward's input (may be None for relu / tanh / sigmoid when
    the output ``y`` is given). ``bias_grad`` (a ``(M,)`` array, for ``(R, M)`` input) receives the
    column sums of the result."""
    name, code = _code(name)
    gy = contiguous(check_float(gy, "gy"))
    ref = x if x is not None else y
    if ref is None:
        raise ValueError(f"activation_backward({name!r}) needs x (the forward's input)"
                         + (" or y (its output)" if name in FROM_OUTPUT else ""))
    if x is None and name not in FROM_OUTPUT:
        raise ValueError(f"activation_backward({name!r}) needs x, the forward's input (only "
                         f"{sorted(FROM_OUTPUT)} work from the output)")
    arrays = []
    for a, what in ((x, "x"), (y, "y")):
        if a is not None:
            a = check_float(a, what)
            if tuple(a.shape) != tuple(gy.shape):
                raise ValueError(f"gy has shape {tuple(gy.shape)} but {what} has shape {tuple(a.shape)}")
            a = contiguous(a.astype(gy.dtype) if a.dtype != gy.dtype else a)
        arrays.append(a)
    x, y = arrays
    if code in (1, 2, 3) and y is None:      # these read the output: compute it from x
        y = activation(x, name)
    alpha = _alpha(name, alpha)
    out = _check_out(out, gy)
    if bias_grad is not None:
        if gy.ndim != 2 or tuple(bias_grad.shape) != (gy.shape[1],) or bias_grad.dtype != gy.dtype \
                or not bias_grad.flags.c_contiguous:
            raise ValueError(f"bias_grad must be a C-contiguous {gy.dtype} array of shape ({gy.shape[-1]},) "
                             f"for (R, M) gy, got {tuple(bias_grad.shape)}")
    if gy.size == 0:
        if bias_grad is not None:
            bias_grad[...] = 0
        return out
    backend_for(gy, x, y, out, bias_grad).activation_backward(
        _rows(gy), None if x is None else _rows(x), None if y is None else _rows(y), _rows(out), bias_grad,
        code, alpha)
    return out


# -- named wrappers (PyTorch's functional names and defaults) --------------------------------------

def leaky_relu(x, negative_slope=0.01):
    return activation(x, "leaky_relu", alpha=negative_slope)


def leaky_relu_backward(gy, x, negative_slope=0.01):
    return activation_backward(gy, x, "leaky_relu", alpha=negative_slope)


def elu(x, alpha=1.0):
    return activation(x, "elu", alpha=alpha)


def elu_backward(gy, x, alpha=1.0):
    return activation_backward(gy, x, "elu", alpha=alpha)


def _gelu_name(approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return "gelu" if approximate == "none" else "gelu_tanh"


def gelu(x, approximate="none"):
    """Exact GELU ``x * Phi(x)``, or the tanh approximation with ``approximate='tanh'``."""
    return activation(x, _gelu_name(approximate))


def gelu_backward(gy, x, approximate="none"):
    return activation_backward(gy, x, _gelu_name(approximate))


def silu(x):
    return activation(x, "silu")


def silu_backward(gy, x):
    return activation_backward(gy, x, "silu")


swish, swish_backward = silu, silu_backward


def relu6(x):
    return activation(x, "relu6")


def relu6_backward(gy, x):
    return activation_backward(gy, x, "relu6")


def hard_sigmoid(x):
    """``relu6(x + 3) / 6`` (PyTorch's hardsigmoid, Keras 3's hard_sigmoid)."""
    return activation(x, "hard_sigmoid")


def hard_sigmoid_backward(gy, x):
    return activation_backward(gy, x, "hard_sigmoid")


def hard_swish(x):
    return activation(x, "hard_swish")


def hard_swish_backward(gy, x):
    return activation_backward(gy, x, "hard_swish")
