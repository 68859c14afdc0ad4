"""Seeding: one call makes a CPU training run reproducible.

``nbcnn.seed(n)`` seeds the generator that initialisers, shuffling and
dropout draw from when no explicit ``seed=`` is given. Everything derives
from NumPy ``Generator`` objects (never the legacy global state), so user
code that calls ``np.random`` does not disturb a run, and a run does not
disturb it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["seed", "get_seed", "default_rng", "derive_seed"]

_state = {"seed": None, "rng": np.random.default_rng()}


def seed(n: int | None) -> None:
    """Seed nbcnn's global generator (``None`` = fresh OS entropy)."""
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"seed must be a non-negative int or None, got {n!r}")
        n = int(n)
    _state["seed"] = n
    _state["rng"] = np.random.default_rng(n)


def get_seed() -> int | None:
    """The seed last given to :func:`seed` (None when unseeded)."""
    return _state["seed"]


def default_rng(seed_: int | None = None) -> np.random.Generator:
    """A Generator: ``np.random.default_rng(seed_)`` if given, else a child of the global one.

    Children are spawned deterministically from the global generator, so after
    ``nbcnn.seed(n)`` every later draw is reproducible in call order.
    """
    if seed_ is not None:
        return np.random.default_rng(seed_)
    return np.random.default_rng(derive_seed())


def derive_seed() -> int:
    """A 63-bit integer seed drawn from the global generator."""
    return int(_state["rng"].integers(0, 2**63 - 1))
