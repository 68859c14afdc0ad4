"""Losses: softmax cross-entropy on logits (fused, stable gradient, optional label smoothing) and MSE.

A loss object returns ``(loss, grad)`` in one call, where ``grad`` is the
gradient of the *mean* loss over the batch with respect to the model output.
Labels may be integer class indices ``(N,)`` or one-hot / soft targets ``(N, K)``.
"""
from __future__ import annotations

import numpy as np

from .device import is_gpu_array

__all__ = ["Loss", "CrossEntropy", "MeanSquaredError", "get"]


def _xp(a):
    if is_gpu_array(a):
        import cupy

        return cupy
    return np


def _targets(xp, y, n, k, dtype):
    """(labels or None, dense targets or None) after checking ``y`` against the output (n, k)."""
    if y.ndim == 1:
        if y.shape[0] != n:
            raise ValueError(f"labels have {y.shape[0]} entries but the batch has {n} samples")
        return y, None
    if y.ndim == 2 and tuple(y.shape) == (n, k):
        return None, y.astype(dtype, copy=False)
    raise ValueError(f"targets must be class indices (N,) or (N, {k}) one-hot, got shape {tuple(y.shape)} "
                     f"for an output of shape {(n, k)}")


class Loss:
    name = "loss"
    #: the model may skip a final Softmax layer and hand raw logits to this loss
    expects_logits = False

    def __call__(self, out, y):
        return self.loss_and_grad(out, y)[0]

    def loss_and_grad(self, out, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def get_config(self):
        """What a model file stores: the name, or a dict when the loss has settings."""
        return self.name

    def value(self, out, y) -> float:
        """The summed (not mean) loss of a batch, for evaluation."""
        return self.loss_and_grad(out, y, grad=False)[0] * out.shape[0]


class CrossEntropy(Loss):
    """Softmax cross-entropy on logits: ``mean(logsumexp(z) - sum_k t_k z_k)``; gradient ``(softmax(z) - t) / N``.

    ``label_smoothing = e`` trains against ``t = (1 - e) * target + e / K`` (Szegedy et al. 2016),
    as PyTorch's ``CrossEntropyLoss(label_smoothing=e)``; the reported loss is the smoothed one.
    """

    name = "cross_entropy"
    expects_logits = True

    def __init__(self, label_smoothing: float = 0.0):
        e = float(label_smoothing)
        if not 0.0 <= e < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = e

    def get_config(self):
        if not self.label_smoothing:
            return self.name
        return {"class_name": "CrossEntropy", "label_smoothing": self.label_smoothing}

    def loss_and_grad(self, z, y, grad=True):
        xp = _xp(z)
        if z.ndim != 2:
            raise ValueError(f"cross-entropy needs (N, classes) logits, got shape {tuple(z.shape)}")
        n, k = z.shape
        labels, t = _targets(xp, y, n, k, z.dtype)
        eps = self.label_smoothing
        m = z.max(axis=1, keepdims=True)
        e = z - m
        xp.exp(e, out=e)
        s = e.sum(axis=1, keepdims=True)
        logs = xp.log(s)
        if labels is not None:
            rows = xp.arange(n)
            zy = z[rows, labels]
            if eps:  # t = (1 - eps) onehot + eps / K
                per = logs[:, 0] + m[:, 0] - (1 - eps) * zy - (eps / k) * z.sum(axis=1)
            else:
                per = logs[:, 0] + m[:, 0] - zy
            loss = per.mean()
        else:
            if eps:
                t = (1 - eps) * t + eps / k
                t = t.astype(z.dtype, copy=False)
            loss = ((logs + m - z) * t).sum(axis=1).mean()
        if not grad:
            return float(loss), None
        e /= s
        if labels is not None:
            if eps:
                e -= z.dtype.type(eps / k)
                e[rows, labels] -= z.dtype.type(1 - eps)
            else:
                e[rows, labels] -= 1
        else:
            e -= t
        e *= z.dtype.type(1.0 / n)
        return float(loss), e


class MeanSquaredError(Loss):
    """``mean over samples of sum_k (out - t)^2 / K``; integer labels become one-hot targets."""

    name = "mse"

    def loss_and_grad(self, out, y, grad=True):
        xp = _xp(out)
        o2 = out.reshape(out.shape[0], -1)
        n, k = o2.shape
        if y.ndim == 1 and y.dtype.kind in "iu":
            t = xp.zeros((n, k), dtype=out.dtype)
            t[xp.arange(n), y] = 1
        else:
            if tuple(y.shape) != tuple(out.shape) and tuple(y.shape) != (n, k):
                raise ValueError(f"mse targets must have the output's shape {tuple(out.shape)}, "
                                 f"got {tuple(y.shape)}")
            t = y.reshape(n, k).astype(out.dtype, copy=False)
        d = o2 - t
        loss = float((d * d).sum() / (n * k))
        if not grad:
            return loss, None
        d *= out.dtype.type(2.0 / (n * k))
        return loss, d.reshape(out.shape)


_ALIASES = {"cross_entropy": CrossEntropy, "categorical_crossentropy": CrossEntropy,
            "sparse_categorical_crossentropy": CrossEntropy, "crossentropy": CrossEntropy,
            "ce": CrossEntropy, "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError}


def get(spec) -> Loss:
    """A loss from a name (``"cross_entropy"``, ``"mse"``) or an instance."""
    if isinstance(spec, Loss):
        return spec
    if isinstance(spec, str) and spec.lower() in _ALIASES:
        return _ALIASES[spec.lower()]()
    if isinstance(spec, dict) and spec.get("class_name") == "CrossEntropy":
        cfg = {k: v for k, v in spec.items() if k != "class_name"}
        return CrossEntropy(**cfg)
    raise ValueError(f"unknown loss {spec!r}; choose one of {sorted(_ALIASES)} or pass a Loss")
