"""Optimisers (SGD with momentum/Nesterov, Adam, AdamW, RMSprop) and learning-rate schedules.

A model keeps all parameters in one flat buffer and all gradients in
another; an optimiser updates the trainable ``[lo, hi)`` ranges of that buffer
in one fused pass per range (a Numba kernel: :mod:`nbcnn.kernels.cpu.optim` on
the CPU, :mod:`nbcnn.kernels.cuda.optim` on a GPU). Its state (momentum, Adam
moments, step count) is flat too, which makes checkpoints trivial and resumed
runs bit-exact.

Training aids every optimiser takes:

* ``weight_decay``: L2 added to the gradient (SGD, Adam, RMSprop) or decoupled
  from it (AdamW: ``p *= 1 - lr * wd``, as in PyTorch);
* ``decay_biases=False`` exempts biases and normalisation scales/shifts — every
  1-D parameter — from weight decay (the model passes their flat ranges);
* ``clipnorm``: scale all gradients by ``min(1, clipnorm / (||g|| + 1e-6))``,
  ``||g||`` the global L2 norm over every trainable parameter (PyTorch's
  ``clip_grad_norm_``), fused into the update.

Learning rates are a float or a schedule: a callable of the step count
(``StepDecay``, ``CosineDecay``, ``LinearWarmup``, ``OneCycle``) evaluated at
every step. Schedules hold no state, so the step count alone resumes them.
"""
from __future__ import annotations

import importlib
import math

import numpy as np

from .device import is_gpu_array
from .kernels.cpu import optim as _cpu
from .ops._dispatch import backend_for

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Schedule", "StepDecay", "CosineDecay",
           "LinearWarmup", "OneCycle", "get"]


def _kernels(p):
    """The CPU or CUDA update kernels for the flat buffer ``p`` (CUDA also on a simulated GPU)."""
    if backend_for(p).__name__.endswith(".cuda"):
        return importlib.import_module(".kernels.cuda.optim", __package__)
    return _cpu


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


class LinearWarmup(Schedule):
    """Linear ramp from ``start`` to ``after(0)`` over ``warmup_steps`` steps, then ``after(step - warmup_steps)``.

    ``after`` is a float (constant after the warm-up) or another schedule, e.g.
    ``LinearWarmup(CosineDecay(0.1, 10_000), 500)``. Step ``s < warmup_steps`` gets
    ``start + (after(0) - start) * (s + 1) / warmup_steps``, so the last warm-up step reaches ``after(0)``.
    """

    def __init__(self, after, warmup_steps: int, start: float = 0.0):
        if int(warmup_steps) <= 0:
            raise ValueError(f"warmup_steps must be positive, got {warmup_steps!r}")
        if not isinstance(after, Schedule):
            after = float(after)
        self.after, self.warmup_steps, self.start = after, int(warmup_steps), float(start)

    def _after(self, step):
        return float(self.after(step)) if isinstance(self.after, Schedule) else self.after

    def __call__(self, step):
        if step < self.warmup_steps:
            return self.start + (self._after(0) - self.start) * (step + 1) / self.warmup_steps
        return self._after(step - self.warmup_steps)

    def get_config(self):
        after = self.after.get_config() if isinstance(self.after, Schedule) else self.after
        return {"class_name": "LinearWarmup", "after": after, "warmup_steps": self.warmup_steps,
                "start": self.start}


class OneCycle(Schedule):
    """The one-cycle policy (Smith & Topin 2018) with PyTorch's ``OneCycleLR`` formulas.

    From ``max_lr / div_factor`` up to ``max_lr`` over the first ``pct_start`` of
    ``total_steps``, then down to ``max_lr / (div_factor * final_div_factor)`` at step
    ``total_steps - 1`` (and there after), cosine (``anneal="cos"``) or linear. The
    phase boundary is step ``pct_start * total_steps - 1``. Momentum is not cycled.
    """

    def __init__(self, max_lr: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, anneal: str = "cos"):
        if int(total_steps) < 2:
            raise ValueError(f"total_steps must be at least 2, got {total_steps!r}")
        if not 0.0 < pct_start < 1.0:
            raise ValueError(f"pct_start must be in (0, 1), got {pct_start!r}")
        if anneal not in ("cos", "linear"):
            raise ValueError(f"anneal must be 'cos' or 'linear', got {anneal!r}")
        if not (div_factor > 0 and final_div_factor > 0 and max_lr > 0):
            raise ValueError("max_lr, div_factor and final_div_factor must be positive")
        self.max_lr, self.total_steps, self.pct_start = float(max_lr), int(total_steps), float(pct_start)
        self.div_factor, self.final_div_factor, self.anneal = float(div_factor), float(final_div_factor), anneal

    def _interp(self, a, b, pct):
        if self.anneal == "cos":
            return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (b - a) * pct + a

    def __call__(self, step):
        lo = self.max_lr / self.div_factor
        end1 = self.pct_start * self.total_steps - 1
        end2 = self.total_steps - 1
        if step <= end1:
            return self._interp(lo, self.max_lr, step / end1 if end1 > 0 else 1.0)
        pct = min((step - end1) / (end2 - end1), 1.0)
        return self._interp(self.max_lr, lo / self.final_div_factor, pct)


_SCHEDULES = {"StepDecay": StepDecay, "CosineDecay": CosineDecay, "LinearWarmup": LinearWarmup,
              "OneCycle": OneCycle}


def _schedule_from(cfg):
    if isinstance(cfg, dict):
        cfg = dict(cfg)
        cls = _SCHEDULES.get(cfg.pop("class_name", None))
        if cls is None:
            raise ValueError(f"unknown learning-rate schedule {cfg!r}")
        if "after" in cfg:
            cfg["after"] = _schedule_from(cfg["after"])
        return cls(**cfg)
    return float(cfg)


# ----------------------------------------------------------------------------------------------
# optimisers
# ----------------------------------------------------------------------------------------------

def _split(ranges, no_decay):
    """``ranges`` cut at the ``no_decay`` ranges: ``[(lo, hi, decay?)]`` in order."""
    nd = sorted((int(a), int(b)) for a, b in no_decay)
    out = []
    for lo, hi in ranges:
        pos = lo
        for a, b in nd:
            a, b = max(a, lo), min(b, hi)
            if a >= b:
                continue
            if a > pos:
                out.append((pos, a, True))
            out.append((a, b, False))
            pos = b
        if pos < hi:
            out.append((pos, hi, True))
    return out


class Optimizer:
    """Base class: ``lr`` is a float or a :class:`Schedule`; ``iterations`` counts steps.

    ``weight_decay``, ``decay_biases`` and ``clipnorm``: see the module docstring.
    """

    slots: tuple = ()

    def __init__(self, lr=0.01, weight_decay: float = 0.0, clipnorm: float | None = None,
                 decay_biases: bool = True):
        if not isinstance(lr, Schedule) and not callable(lr):
            lr = float(lr)
            if not lr > 0:
                raise ValueError(f"learning rate must be positive, got {lr!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if clipnorm is not None:
            clipnorm = float(clipnorm)
            if not clipnorm > 0:
                raise ValueError(f"clipnorm must be positive (or None), got {clipnorm!r}")
        self.lr = lr
        self.weight_decay = float(weight_decay)
        self.clipnorm = clipnorm
        self.decay_biases = bool(decay_biases)
        self.iterations = 0
        self.state: dict = {}
        self._scratch: dict = {}
        self._cuts: tuple = (None, None)

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

    def step(self, params, grads, ranges, no_decay=()) -> None:
        """Update ``params`` (flat) from ``grads`` (flat) inside the ``[lo, hi)`` ``ranges``.

        ``no_decay``: flat ``[lo, hi)`` ranges of the biases and normalisation parameters, which
        get no weight decay when ``decay_biases`` is False.
        """
        lr = self.current_lr
        k = _kernels(params)
        ty = params.dtype.type
        ranges = [(int(lo), int(hi)) for lo, hi in ranges if hi > lo]
        gsc = self._grad_scale(k, grads, ranges, ty)
        for lo, hi, decay in self._pieces(ranges, no_decay):
            self._update(k, params, grads, lo, hi, lr, self.weight_decay if decay else 0.0, gsc)
        self.iterations += 1

    def _pieces(self, ranges, no_decay):
        if self.decay_biases or not self.weight_decay or not no_decay:
            return [(lo, hi, True) for lo, hi in ranges]
        key = (tuple(ranges), tuple(map(tuple, no_decay)))
        if self._cuts[0] != key:
            self._cuts = (key, _split(ranges, no_decay))
        return self._cuts[1]

    def _buf(self, name, like, n, fill):
        """Device scratch (not state: never saved) of ``n`` elements on ``like``'s device."""
        key = (name, type(like), like.dtype.str)
        b = self._scratch.get(key)
        if b is None:
            if is_gpu_array(like):
                import cupy as xp
            else:
                xp = np
            b = self._scratch[key] = xp.full(n, fill, dtype=like.dtype)
        return b

    def _grad_scale(self, k, g, ranges, ty):
        """The clip factor: a scalar on the CPU, a one-element device array for the CUDA kernels."""
        if k is _cpu:
            if self.clipnorm is None:
                return ty(1)
            tot = 0.0
            for lo, hi in ranges:
                tot += _cpu.sum_squares(g, lo, hi)
            return ty(min(self.clipnorm / (math.sqrt(tot) + 1e-6), 1.0))
        if self.clipnorm is None:
            return self._buf("ones", g, 1, 1)
        gsc = self._buf("gsc", g, 1, 1)
        part = self._buf("part", g, k.NORM_BLOCKS * k.TPB, 0)
        k.clip_scale(g, ranges, ty(self.clipnorm), part, gsc)
        return gsc

    def _update(self, k, p, g, lo, hi, lr, wd, gsc):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- persistence ----------------------------------------------------------------------
    def get_config(self) -> dict:
        lr = self.lr.get_config() if isinstance(self.lr, Schedule) else self.lr
        if callable(lr):
            raise ValueError("a plain-function learning rate cannot be saved; use a Schedule subclass")
        return {"class_name": type(self).__name__, "lr": lr, "weight_decay": self.weight_decay,
                "clipnorm": self.clipnorm, "decay_biases": self.decay_biases}

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
    """``v = momentum * v + (g + wd * p)``; ``p -= lr * v`` (or the Nesterov form
    ``p -= lr * (g + wd * p + momentum * v)``), as in PyTorch."""

    def __init__(self, lr=0.01, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 clipnorm: float | None = None, decay_biases: bool = True):
        super().__init__(lr, weight_decay, clipnorm, decay_biases)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.slots = ("velocity",) if momentum > 0 else ()

    def _update(self, k, p, g, lo, hi, lr, wd, gsc):
        ty = p.dtype.type
        v = self.state.get("velocity")
        if v is None:  # no momentum: the kernel never reads the slot (and it must not alias p)
            v = self._buf("unused", p, 1, 0)
        k.sgd_update(p, g, v, lo, hi, ty(lr), ty(self.momentum), ty(wd), self.nesterov, gsc)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's bias correction; ``weight_decay`` is L2 added to the gradient."""

    decoupled = False

    def __init__(self, lr=0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8,
                 weight_decay: float = 0.0, clipnorm: float | None = None, decay_biases: bool = True):
        super().__init__(lr, weight_decay, clipnorm, decay_biases)
        for nm, b in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{nm} must be in [0, 1), got {b!r}")
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.slots = ("m", "v")

    def _update(self, k, p, g, lo, hi, lr, wd, gsc):
        t = self.iterations + 1
        bc1 = 1.0 - self.beta_1 ** t
        bc2 = 1.0 - self.beta_2 ** t
        # p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) == lr*sqrt(bc2)/bc1 * m / (sqrt(v) + eps*sqrt(bc2))
        lr_c = lr * math.sqrt(bc2) / bc1
        eps_c = self.epsilon * math.sqrt(bc2)
        l2, pd = (0.0, 1.0 - lr * wd) if self.decoupled else (wd, 1.0)
        ty = p.dtype.type
        b1, b2 = self.beta_1, self.beta_2
        k.adam_update(p, g, self.state["m"], self.state["v"], lo, hi, ty(lr_c), ty(b1), ty(1 - b1), ty(b2),
                      ty(1 - b2), ty(eps_c), ty(l2), ty(pd), gsc)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr * wd`` before the Adam
    step, the decay kept out of the moments, as in PyTorch's ``AdamW`` (default ``wd = 0.01``)."""

    decoupled = True

    def __init__(self, lr=0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8,
                 weight_decay: float = 0.01, clipnorm: float | None = None, decay_biases: bool = True):
        super().__init__(lr, beta_1, beta_2, epsilon, weight_decay, clipnorm, decay_biases)


class RMSprop(Optimizer):
    """RMSprop as in PyTorch: ``v = rho v + (1 - rho) g^2``; ``p -= lr g / (sqrt(v) + eps)``.

    ``centered`` divides by the running standard deviation instead (``sqrt(v - mean(g)^2)``),
    ``momentum`` accumulates ``g / (sqrt(v) + eps)`` into a buffer first; ``weight_decay`` is L2.
    """

    def __init__(self, lr=0.01, rho: float = 0.99, momentum: float = 0.0, epsilon: float = 1e-8,
                 centered: bool = False, weight_decay: float = 0.0, clipnorm: float | None = None,
                 decay_biases: bool = True):
        super().__init__(lr, weight_decay, clipnorm, decay_biases)
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"rho must be in [0, 1), got {rho!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon!r}")
        self.rho, self.momentum, self.epsilon = float(rho), float(momentum), float(epsilon)
        self.centered = bool(centered)
        self.slots = ("square_avg",) + (("grad_avg",) if centered else ()) + \
            (("momentum_buffer",) if momentum > 0 else ())

    def _update(self, k, p, g, lo, hi, lr, wd, gsc):
        ty = p.dtype.type
        st = self.state
        unused = self._buf("unused", p, 1, 0)  # a slot the flags leave unread (never an alias of p)
        k.rmsprop_update(p, g, st["square_avg"], st.get("grad_avg", unused), st.get("momentum_buffer", unused),
                         lo, hi, ty(lr), ty(self.rho), ty(1 - self.rho), ty(self.epsilon), ty(self.momentum),
                         ty(wd), self.centered, gsc)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon,
                "centered": self.centered}


_CLASSES = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW, "RMSprop": RMSprop}
_DEFAULTS = {"sgd": lambda: SGD(0.01), "adam": lambda: Adam(0.001), "adamw": lambda: AdamW(0.001),
             "rmsprop": lambda: RMSprop(0.01)}


def get(spec) -> Optimizer:
    """An optimiser from ``"sgd"``, ``"adam"``, ``"adamw"``, ``"rmsprop"``, a config dict, or an instance."""
    if isinstance(spec, Optimizer):
        return spec
    if isinstance(spec, str):
        make = _DEFAULTS.get(spec.lower())
        if make is None:
            raise ValueError(f"unknown optimizer {spec!r}; use one of {sorted(_DEFAULTS)} or an nbcnn.optim object")
        return make()
    if isinstance(spec, dict):
        cfg = dict(spec)
        cls = _CLASSES.get(cfg.pop("class_name", None))
        if cls is None:
            raise ValueError(f"unknown optimizer config {spec!r}")
        cfg["lr"] = _schedule_from(cfg["lr"])
        return cls(**cfg)
    raise TypeError(f"optimizer must be one of {sorted(_DEFAULTS)} or an Optimizer, got {type(spec).__name__}")
