"""Thread policy: keep worker threads from starving each other, in this process and across processes.

Two problems, both measured on a 2-core machine:

* Busy-waiting. libgomp (Numba's ``omp`` threading layer) lets a worker spin
  ~300k iterations after each parallel region before it sleeps; a LeNet step
  runs hundreds of short regions. With two training processes on two cores,
  each one's spinning workers held the cores the other's needed and both ran
  ~29x slower than alone. ``OMP_WAIT_POLICY=PASSIVE`` makes idle workers
  sleep at once (libgomp reads it when it loads, i.e. at Numba's first
  parallel call, so setting it at ``import nbcnn`` is early enough).
* Thread counts that ignore limits. Numba sizes its pool from the CPU affinity
  mask only; a cgroup CPU quota (containers: ``docker --cpus``) and the user's
  ``OMP_NUM_THREADS`` are ignored. nbcnn sets ``NUMBA_NUM_THREADS`` (and
  OpenBLAS's count) to the smallest of the affinity mask, the quota and
  ``OMP_NUM_THREADS``, unless ``NUMBA_NUM_THREADS`` is set already.

A user's own ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` / ``NUMBA_NUM_THREADS``
win; ``NBCNN_THREADS=off`` leaves all of this (and the BLAS settings below) to
the libraries' defaults.

The BLAS part: keep OpenBLAS's idle workers from starving Numba's OpenMP pool.

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


def _cgroup_cpus() -> float | None:
    """CPUs allowed by a cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or None."""
    limits = []
    try:
        with open("/proc/self/cgroup", encoding="ascii", errors="replace") as f:
            lines = f.read(65536).splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        rel = parts[2].strip("/")
        if parts[1] == "":  # cgroup v2: the quota of this group and of every group above it
            root = "/sys/fs/cgroup"
            chain = rel.split("/") if rel else []
            for depth in range(len(chain), -1, -1):
                q = _read_quota(os.path.join(root, *chain[:depth], "cpu.max"))
                if q:
                    limits.append(q)
        elif "cpu" in parts[1].split(","):
            for root in ("/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"):
                q = _read_quota(os.path.join(root, rel, "cpu.cfs_quota_us"),
                                os.path.join(root, rel, "cpu.cfs_period_us"))
                if q:
                    limits.append(q)
                    break
    return min(limits) if limits else None


def _read_quota(path: str, period_path: str | None = None) -> float | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read(256).split()
        if period_path is not None:
            with open(period_path, encoding="ascii") as f:
                text = [text[0], f.read(64).strip()]
        quota, period = text[0], float(text[1]) if len(text) > 1 else 100000.0
        if quota in ("max", "-1") or period <= 0:
            return None
        return float(quota) / period
    except (OSError, ValueError, IndexError):
        return None


def _positive_int(value) -> int | None:
    try:
        n = int(str(value).strip().split(",")[0])
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def plan() -> dict:
    """How many threads nbcnn wants and why (pure: reads the environment, changes nothing)."""
    try:
        cpus = len(os.sched_getaffinity(0))
        why = [f"{cpus} CPUs in the affinity mask"]
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
        why = [f"{cpus} CPUs"]
    n = cpus
    quota = _cgroup_cpus()
    if quota is not None and max(1, int(quota)) < n:
        n = max(1, int(quota))
        why.append(f"cgroup quota {quota:g} CPUs")
    omp = _positive_int(os.environ.get("OMP_NUM_THREADS"))
    if omp is not None and omp < n:
        n = omp
        why.append(f"OMP_NUM_THREADS={omp}")
    user = _positive_int(os.environ.get("NUMBA_NUM_THREADS"))
    if user is not None:
        n, why = user, [f"NUMBA_NUM_THREADS={user} (set by the user)"]
    return {"threads": n, "cpus": cpus, "why": why, "explicit": user is not None, "off": os.environ.get("NBCNN_THREADS", "").lower() == "off",
            "wait_policy": os.environ.get("OMP_WAIT_POLICY") or "PASSIVE"}


def describe(p: dict | None = None) -> str:
    """One line for ``nbcnn info`` and benchmark reports."""
    p = (_state.get("threads") or plan()) if p is None else p
    if p["off"]:
        return "off (NBCNN_THREADS=off: library defaults)"
    return f"{p['threads']} threads ({', '.join(p['why'])}), OMP_WAIT_POLICY={p['wait_policy']}"


def _configure_threads() -> None:
    p = plan()
    _state["threads"] = p
    if p["off"]:
        return
    if "GOMP_SPINCOUNT" not in os.environ:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "NUMBA_NUM_THREADS" in os.environ:
        return
    if "numba" in sys.modules:  # too late for the environment: lower the count at run time
        _state["numba_late"] = p["threads"]
    else:
        os.environ["NUMBA_NUM_THREADS"] = str(p["threads"])
    if p["threads"] < p["cpus"] and "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", str(p["threads"]))


def configure_before_numpy() -> None:
    """Run at ``import nbcnn``, before anything imports numpy."""
    _configure_threads()
    if _state["threads"]["off"]:
        _state["mode"] = "untouched (NBCNN_THREADS=off)"
        return
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
    """Apply the run-time fallbacks when the environment route was too late."""
    late = _state.pop("numba_late", None)
    if late is not None:
        import numba

        if late < numba.config.NUMBA_NUM_THREADS:
            numba.set_num_threads(late)
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


# ---------------------------------------------------------------- sharing the CPUs between nbcnn processes
# Passive waits alone left two concurrent 2-thread runs on 2 cores at ~0.2x their solo speed: every
# parallel region waits for its slowest thread, and with 4 threads on 2 cores one of them is always
# descheduled for a time slice. So each training process registers itself in a per-user folder and uses
# ``threads // (live training processes)`` threads (at least 1), re-checked every ``_RECHECK_S``. The
# kernels' results do not depend on the thread count, so this changes speed only, never the weights.
_RECHECK_S = 0.5
_share = {"dir": None, "registered": False, "next": 0.0, "current": None}


def _share_dir() -> str:
    import tempfile

    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return os.environ.get("NBCNN_SHARE_DIR") or os.path.join(tempfile.gettempdir(), f"nbcnn-threads-{uid}")


def _sharing_enabled() -> bool:
    p = _state.get("threads") or plan()
    return not p["off"] and not p["explicit"] and os.environ.get("NBCNN_SHARE", "1") != "0"


def _live_peers(folder: str) -> int:
    live = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 1
    for name in names:
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == os.getpid():
            live += 1
            continue
        try:
            os.kill(pid, 0)
            live += 1
        except ProcessLookupError:  # a crashed run's entry: remove it
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass
        except PermissionError:
            live += 1
    return max(live, 1)


def training_begin() -> None:
    """This process starts training: register it and take its share of the CPUs."""
    if not _sharing_enabled() or _share["registered"]:
        return
    folder = _share_dir()
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        with open(os.path.join(folder, str(os.getpid())), "w"):
            pass
    except OSError:
        return  # no shared folder: run with the full thread count
    _share.update(dir=folder, registered=True, next=0.0)
    import atexit

    atexit.register(training_end)
    rebalance()


def rebalance() -> None:
    """Re-check the number of training processes (cheap; does real work every ``_RECHECK_S``)."""
    if not _share["registered"]:
        return
    import time

    now = time.monotonic()
    if now < _share["next"]:
        return
    _share["next"] = now + _RECHECK_S
    total = (_state.get("threads") or plan())["threads"]
    want = max(1, total // _live_peers(_share["dir"]))
    if want != _share["current"]:
        _set_threads(want)
        _share["current"] = want


def training_end() -> None:
    """Training stopped: unregister and return to the full thread count."""
    if not _share["registered"]:
        return
    _share["registered"] = False
    try:
        os.unlink(os.path.join(_share["dir"], str(os.getpid())))
    except OSError:
        pass
    if _share["current"] is not None:
        _set_threads((_state.get("threads") or plan())["threads"])
        _share["current"] = None


def _set_threads(n: int) -> None:
    if "numba" not in sys.modules:
        return
    import numba

    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
