"""Keep OpenBLAS's idle workers from starving Numba's OpenMP pool.

Measured on a 2-core machine (see shared notes): after each GEMM, OpenBLAS's
pthread workers spin for ~0.1 s; every Numba parallel region that follows
waits for a core, and a LeNet step went from ~10k to ~1.2k images/s.
``OPENBLAS_THREAD_TIMEOUT`` shortens that spin but is read only when OpenBLAS
loads, so it must be set before numpy is first imported. When numpy was
imported earlier we fall back to one BLAS thread through threadpoolctl.

On AMD CPUs with AVX-512 that OpenBLAS does not recognise yet (Zen 5) we
also select OpenBLAS's AVX-512 kernels (``OPENBLAS_CORETYPE=SkylakeX``):
about 1.9x the GEMM speed there. A user's own ``OPENBLAS_CORETYPE`` wins;
``NBCNN_BLAS_CORETYPE=0`` disables the choice.

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
        core = _avx512_coretype()
        if core and "OPENBLAS_CORETYPE" not in os.environ:
            os.environ["OPENBLAS_CORETYPE"] = core
            _state["mode"] += f", coretype={core}"
    elif "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        _state["mode"] = "thread-timeout (set by the user)"
    else:
        _state["mode"] = "pending-limit"


def _avx512_coretype() -> str | None:
    """``"SkylakeX"`` on AMD CPUs with AVX-512 that OpenBLAS does not recognise, else None.

    OpenBLAS 0.3.31 maps an AMD Zen 5 (family 26) to its AVX2 ``Haswell``
    kernels; forcing its AVX-512 ``SkylakeX`` kernels measured 1.8-1.9x the
    float32 GEMM throughput there (2 cores: 430-460 vs 230-245 GFLOP/s for
    n = 576..2048). Zen 4 (family 25) and Intel CPUs are detected correctly,
    so they are left alone. Linux only (reads /proc/cpuinfo); never raises.
    """
    if os.environ.get("NBCNN_BLAS_CORETYPE", "1") == "0":
        return None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            info = f.read(16384)
    except OSError:
        return None
    fields = {}
    for line in info.splitlines():
        if not line.strip():
            break  # first processor only
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    try:
        family = int(fields.get("cpu family", "0"))
    except ValueError:
        return None
    needed = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}
    if fields.get("vendor_id") == "AuthenticAMD" and family >= 26 and needed <= flags:
        return "SkylakeX"
    return None


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
