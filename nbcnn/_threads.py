"""Keep OpenBLAS's idle workers from starving Numba's OpenMP pool.

Measured on a 2-core machine (see shared notes): after each GEMM, OpenBLAS's
pthread workers spin for ~0.1 s; every Numba parallel region that follows
waits for a core, and a LeNet step went from ~10k to ~1.2k images/s.
``OPENBLAS_THREAD_TIMEOUT`` shortens that spin but is read only when OpenBLAS
loads, so it must be set before numpy is first imported. When numpy was
imported earlier we fall back to one BLAS thread through threadpoolctl.

``NBCNN_BLAS_THREADS=N`` overrides both (``0`` = leave BLAS alone).
"""
from __future__ import annotations

import os
import sys

_state = {"mode": "untouched"}


def configure_before_numpy() -> None:
    """Run at ``import nbcnn``, before anything imports numpy."""
    if os.environ.get("NBCNN_BLAS_THREADS"):
        _state["mode"] = "pending-explicit"
        return
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
        _state["mode"] = "thread-timeout"
    elif "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        _state["mode"] = "thread-timeout (set by the user)"
    else:
        _state["mode"] = "pending-limit"


def configure_after_numpy() -> None:
    """Apply the threadpoolctl fallback when the environment route was too late."""
    mode = _state["mode"]
    if mode == "pending-explicit":
        n = int(os.environ["NBCNN_BLAS_THREADS"])
        if n > 0:
            _limit_blas(n)
            _state["mode"] = f"blas-threads={n} (NBCNN_BLAS_THREADS)"
        else:
            _state["mode"] = "untouched (NBCNN_BLAS_THREADS=0)"
    elif mode == "pending-limit":
        _limit_blas(1)
        _state["mode"] = "blas-threads=1 (numpy was imported before nbcnn)"


def _limit_blas(n: int) -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return
    threadpool_limits(limits=n, user_api="blas")


def blas_policy() -> str:
    """How nbcnn configured BLAS threads in this process (for ``nbcnn info``)."""
    return _state["mode"]
