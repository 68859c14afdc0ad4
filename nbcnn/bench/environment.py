"""What a benchmark records beside its numbers: versions, threads, BLAS, CPU model and load."""
from __future__ import annotations

import os
import platform
import sys
import time


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _cpu_times():
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals), idle


def busy_fraction(interval: float = 0.5) -> float | None:
    """Fraction of all CPUs busy over ``interval`` seconds (Linux /proc/stat; None elsewhere)."""
    try:
        t0, i0 = _cpu_times()
        time.sleep(interval)
        t1, i1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def wait_for_quiet(max_wait_s: float = 120.0, threshold: float = 0.15, progress=None) -> dict:
    """Wait (at most ``max_wait_s``) until other processes use < ``threshold`` of the CPUs.

    On a shared machine a neighbour's burst skews a whole case; waiting for a
    quiet moment first is cheaper than re-running. Returns what it saw.
    """
    t0 = time.perf_counter()
    seen = []
    while True:
        b = busy_fraction(1.0)
        if b is None:
            return {"waited_s": 0.0, "busy": None, "quiet": None}
        seen.append(round(b, 3))
        waited = time.perf_counter() - t0
        if b < threshold:
            return {"waited_s": waited, "busy": seen[-5:], "quiet": True}
        if waited >= max_wait_s:
            if progress:
                progress(f"machine still busy ({b:.0%} of the CPUs) after {waited:.0f} s: measuring anyway")
            return {"waited_s": waited, "busy": seen[-5:], "quiet": False}
        if len(seen) == 1 and progress:
            progress(f"waiting for a quiet machine ({b:.0%} of the CPUs busy) ...")


def _cpu_model() -> str:
    """Model name, family/model and the widest SIMD: "AMD EPYC" alone does not tell Zen 3 from Zen 5."""
    fields: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if not ln.strip():
                    break  # first CPU only
                k, _, v = ln.partition(":")
                fields[k.strip()] = v.strip()
    except OSError:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    fam = fields.get("cpu family")
    return (f"{fields.get('model name', '?')} (vendor {fields.get('vendor_id', '?')}, family {fam}, "
            f"model {fields.get('model', '?')}, {simd}{' + FMA' if 'fma' in flags else ''})")


def environment(device: str = "cpu", torch_imported: bool = False) -> dict:
    """Versions, threads and BLAS of this process, and the machine's load (for the record)."""
    import numba
    import numpy

    import nbcnn
    from .. import _memory, _threads

    env = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
           "platform": platform.platform(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
           "nbcnn": nbcnn.__version__, "numpy": numpy.__version__, "numba": numba.__version__,
           "numba_num_threads": numba.get_num_threads(), "blas_policy": _threads.blas_policy(),
           "malloc_policy": _memory.malloc_policy(), "loadavg": loadavg(), "device": device,
           # thread/BLAS steering variables as this process saw them (a machine image may pin them)
           "env_vars": {k: v for k, v in os.environ.items()
                        if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "NUMBA_", "NBCNN_", "GOMP_"))}}
    try:
        import llvmlite

        env["llvmlite"] = llvmlite.__version__
    except ImportError:
        pass
    try:
        env["numba_threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        env["numba_threading_layer"] = None
    try:
        from threadpoolctl import threadpool_info

        env["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "version", "architecture",
                                                      "num_threads", "filepath")} for p in threadpool_info()]
    except Exception:  # threadpoolctl is a dependency, but never fail a benchmark on it
        env["threadpools"] = None
    if torch_imported and "torch" in sys.modules:
        torch = sys.modules["torch"]
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        try:
            env["torch_parallel_info"] = torch.__config__.parallel_info().splitlines()[:12]
        except Exception:
            pass
    if device == "cuda" and "cupy" in sys.modules:
        cupy = sys.modules["cupy"]
        env["cupy"] = cupy.__version__
        try:
            env["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        except Exception:
            pass
    return env
