"""Optimisers (SGD with momentum/Nesterov/weight decay, Adam) and learning-rate schedules.

A model keeps all parameters in one flat buffer and all gradients in
another; an optimiser updates the trainable ``[lo, hi)`` ranges of that buffer
in one fused pass (a Numba kernel on the CPU, a few in-place CuPy ops on a
GPU). Its state (momentum, Adam moments, step count) is flat too, which makes
checkpoints trivial and resumed runs bit-exact.

Learning rates are a float or a schedule: a callable of the step count
(``StepDecay``, ``CosineDecay``) evaluated at every step.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange
from .kernels.cpu.microkernel import compact_code

from .device import is_gpu_array

__all__ = ["Optimizer", "SGD", "Adam", "Schedule", "StepDecay", "CosineDecay", "get"]

_BLOCK = 16384


@njit(parallel=True, cache=True)
def _sgd_kernel(p, g, v, lo, hi, lr, mom, wd, nesterov):
    """In-place SGD step on p[lo:hi]. Blocks are sliced so every loop indexes from 0:
    offset indexing (p[i] for i in range(s, e)) kept LLVM from vectorising (6x slower)."""
    n = hi - lo
    nb = (n + _BLOCK - 1) // _BLOCK
    for b in prange(nb):
        compact_code()
        s = lo + b * _BLOCK
        e = min(s + _BLOCK, hi)
        ps, gs, vs = p[s:e], g[s:e], v[s:e]
        if mom == 0:
            for i in range(e - s):
                ps[i] -= lr * (gs[i] + wd * ps[i])
        elif nesterov:
            for i in range(e - s):
                gi = gs[i] + wd * ps[i]
                vi = mom * vs[i] + gi
                vs[i] = vi
                ps[i] -= lr * (gi + mom * vi)
        else:
            for i in range(e - s):
                gi = gs[i] + wd * ps[i]
                vi = mom * vs[i] + gi
                vs[i] = vi
                ps[i] -= lr * vi


@njit(parallel=True, cache=True)
def _adam_kernel(p, g, m, v, lo, hi, lr_c, b1, b2, eps_c, wd):
    """In-place Adam step on p[lo:hi] (bias corrections folded into lr_c, eps_c by the caller);
    blocks sliced to index from 0, as in _sgd_kernel (Adam: 92 -> 15 us on LeNet-5)."""
    n = hi - lo
    nb = (n + _BLOCK - 1) // _BLOCK
    one = b1 - b1 + 1
    for b in prange(nb):
        compact_code()
        s = lo + b * _BLOCK
        e = min(s + _BLOCK, hi)
        ps, gs, ms, vs = p[s:e], g[s:e], m[s:e], v[s:e]
        for i in range(e - s):
            gi = gs[i] + wd * ps[i]
            mi = b1 * ms[i] + (one - b1) * gi
            vi = b2 * vs[i] + (one - b2) * gi * gi
            ms[i] = mi
            vs[i] = vi
            ps[i] -= lr_c * mi / (np.sqrt(vi) + eps_c)


# ----------------------------------------------------------------------------------------------
# schedules
# ----------------------------------------------------------------------------------------------

class Schedule:
    """A learning rate as a function of the optimiser's step count (0-based)."""

    def __call__(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"class_name": type(self).__name__, **{k: v for k, v in vars(self).items()}}


class StepDecay(Schedule):
    """``initial * gamma ** (step // step_size)``: multiply by ``gamma`` every ``step_size`` steps."""

    def __init__(self, initial: float, step_size: int, gamma: float = 0.1):
        if step_size <= 0:
            raise ValueError(f"step_size must be positive, got {step_size!r}")
        self.initial, self.step_size, self.gamma = float(initial), int(step_size), float(gamma)

    def __call__(self, step):
        return self.initial * self.gamma ** (step // self.step_size)


class CosineDecay(Schedule):
    """Cosine from ``initial`` to ``final`` over ``decay_steps`` steps, then ``final``; optional linear warm-up."""

    def __init__(self, initial: float, decay_steps: int, final: float = 0.0, warmup_steps: int = 0):
        if decay_steps <= 0:
            raise ValueError(f"decay_steps must be positive, got {decay_steps!r}")
        self.initial, self.decay_steps = float(initial), int(decay_steps)
        self.final, self.warmup_steps = float(final), int(warmup_steps)

    def __call__(self, step):
        if step < self.warmup_steps:
            return self.initial * (step + 1) / self.warmup_steps
        t = min(step - self.warmup_steps, self.decay_steps) / self.decay_steps
        return self.final + 0.5 * (self.initial - self.final) * (1 + math.cos(math.pi * t))


_SCHEDULES = {"StepDecay": StepDecay, "CosineDecay": CosineDecay}


def _schedule_from(cfg):
    if isinstance(cfg, dict):
        cfg = dict(cfg)
        cls = _SCHEDULES.get(cfg.pop("class_name", None))
        if cls is None:
            raise ValueError(f"unknown learning-rate schedule {cfg!r}")
        return cls(**cfg)
    return float(cfg)


# ----------------------------------------------------------------------------------------------
# optimisers
# ----------------------------------------------------------------------------------------------

class Optimizer:
    """Base class: ``lr`` is a float or a :class:`Schedule`; ``iterations`` counts steps."""

    slots: tuple = ()

    def __init__(self, lr=0.01, weight_decay: float = 0.0):
        if not isinstance(lr, Schedule) and not callable(lr):
            lr = float(lr)
            if not lr > 0:
                raise ValueError(f"learning rate must be positive, got {lr!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        self.lr = lr
        self.weight_decay = float(weight_decay)
        self.iterations = 0
        self.state: dict = {}

    @property
    def current_lr(self) -> float:
        """The learning rate the next step will use."""
        return float(self.lr(self.iterations)) if callable(self.lr) else self.lr

    def setup(self, n: int, dtype, xp=np) -> None:
        """Allocate the flat state for ``n`` parameters (kept when already the right size)."""
        for k in self.slots:
            s = self.state.get(k)
            if s is None or s.shape != (n,) or s.dtype != np.dtype(dtype) or is_gpu_array(s) != (xp is not np):
                self.state[k] = xp.zeros(n, dtype=dtype)

    def step(self, params, grads, ranges) -> None:
        """Update ``params`` (flat) from ``grads`` (flat) inside the ``[lo, hi)`` ``ranges``."""
        lr = self.current_lr
        for lo, hi in ranges:
            if hi > lo:
                self._update(params, grads, lo, hi, lr)
        self.iterations += 1

    def _update(self, p, g, lo, hi, lr):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- persistence ----------------------------------------------------------------------
    def get_config(self) -> dict:
        lr = self.lr.get_config() if isinstance(self.lr, Schedule) else self.lr
        if callable(lr):
            raise ValueError("a plain-function learning rate cannot be saved; use a Schedule subclass")
        return {"class_name": type(self).__name__, "lr": lr, "weight_decay": self.weight_decay}

    def get_state(self) -> tuple[dict, dict]:
        """``(scalars, arrays)``: JSON-able scalars and NumPy copies of the slots."""
        from .device import to_numpy

        return {"iterations": self.iterations}, {k: to_numpy(v).copy() for k, v in self.state.items()}

    def set_state(self, scalars: dict, arrays: dict, xp=np) -> None:
        self.iterations = int(scalars.get("iterations", 0))
        self.state = {k: (xp.asarray(v) if xp is not np else np.array(v)) for k, v in arrays.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_config()})"


class SGD(Optimizer):
    """``v = momentum * v + (g + wd * p)``; ``p -= lr * v`` (or the Nesterov form), as in PyTorch."""

    def __init__(self, lr=0.01, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.slots = ("velocity",) if momentum > 0 else ()

    def _update(self, p, g, lo, hi, lr):
        v = self.state.get("velocity")
        if not is_gpu_array(p):
            t = p.dtype.type
            _sgd_kernel(p, g, v if v is not None else p, lo, hi, t(lr), t(self.momentum),
                        t(self.weight_decay), self.nesterov)
            return
        ps, gs = p[lo:hi], g[lo:hi]
        gi = gs + self.weight_decay * ps if self.weight_decay else gs
        if self.momentum == 0:
            ps -= lr * gi
            return
        vs = v[lo:hi]
        vs *= self.momentum
        vs += gi
        ps -= lr * (gi + self.momentum * vs) if self.nesterov else lr * vs

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's bias correction; ``weight_decay`` is L2 added to the gradient."""

    def __init__(self, lr=0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        for nm, b in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{nm} must be in [0, 1), got {b!r}")
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.slots = ("m", "v")

    def _update(self, p, g, lo, hi, lr):
        t = self.iterations + 1
        bc1 = 1.0 - self.beta_1 ** t
        bc2 = 1.0 - self.beta_2 ** t
        # p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) == lr*sqrt(bc2)/bc1 * m / (sqrt(v) + eps*sqrt(bc2))
        lr_c = lr * math.sqrt(bc2) / bc1
        eps_c = self.epsilon * math.sqrt(bc2)
        m, v = self.state["m"], self.state["v"]
        if not is_gpu_array(p):
            ty = p.dtype.type
            _adam_kernel(p, g, m, v, lo, hi, ty(lr_c), ty(self.beta_1), ty(self.beta_2), ty(eps_c),
                         ty(self.weight_decay))
            return
        import cupy

        ps, gs, ms, vs = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
        gi = gs + self.weight_decay * ps if self.weight_decay else gs
        ms *= self.beta_1
        ms += (1 - self.beta_1) * gi
        vs *= self.beta_2
        vs += (1 - self.beta_2) * gi * gi
        ps -= lr_c * ms / (cupy.sqrt(vs) + eps_c)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


_CLASSES = {"SGD": SGD, "Adam": Adam}


def get(spec) -> Optimizer:
    """An optimiser from ``"sgd"``, ``"adam"``, a config dict, or an instance."""
    if isinstance(spec, Optimizer):
        return spec
    if isinstance(spec, str):
        s = spec.lower()
        if s == "sgd":
            return SGD(0.01)
        if s == "adam":
            return Adam(0.001)
        raise ValueError(f"unknown optimizer {spec!r}; use 'sgd', 'adam' or an nbcnn.optim object")
    if isinstance(spec, dict):
        cfg = dict(spec)
        cls = _CLASSES.get(cfg.pop("class_name", None))
        if cls is None:
            raise ValueError(f"unknown optimizer config {spec!r}")
        cfg["lr"] = _schedule_from(cfg["lr"])
        return cls(**cfg)
    raise TypeError(f"optimizer must be 'sgd', 'adam' or an Optimizer, got {type(spec).__name__}")
