"""GPU facts for ``nbcnn info``: versions, the GPU, and whether nbcnn can use it (and why not).

Never raises and never imports ``numba.cuda`` unless CuPy already sees a GPU
(``nbcnn.device.gpu_status`` decides); package versions come from installed
metadata, so a broken CUDA install still gets a report.
"""
from __future__ import annotations

import os
from importlib import metadata


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
    except Exception:  # pragma: no cover - broken metadata
        return None


def _cupy_dist() -> str | None:
    for dist in ("cupy-cuda13x", "cupy-cuda12x", "cupy"):
        if _version(dist):
            return dist
    return None


def cuda_info() -> dict:
    """A dict: ``usable``, ``reason``, ``simulator``, versions, and GPU details when one is visible."""
    from ...device import cuda_simulator_enabled, gpu_status

    info: dict = {}
    dist = _cupy_dist()
    info["cupy"] = f"{dist} {_version(dist)}" if dist else None
    info["numba"] = _version("numba")
    info["numba_cuda"] = _version("numba-cuda")
    try:
        info["simulator"] = cuda_simulator_enabled()
    except Exception:  # pragma: no cover
        info["simulator"] = False
    try:
        usable, reason = gpu_status()
    except Exception as exc:  # pragma: no cover - gpu_status never raises, but be safe
        usable, reason = False, f"{type(exc).__name__}: {exc}"
    info["usable"] = bool(usable)
    info["reason"] = reason
    info["driver"] = info["runtime"] = None
    info["gpus"] = []
    if dist:
        try:
            import cupy

            rt = cupy.cuda.runtime
            info["runtime"] = _cuda_version(rt.runtimeGetVersion())
            drv = rt.driverGetVersion()
            info["driver"] = _cuda_version(drv) if drv else None
            if usable:
                for i in range(rt.getDeviceCount()):
                    p = rt.getDeviceProperties(i)
                    name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
                    info["gpus"].append({"index": i, "name": name, "cc": f"{p['major']}.{p['minor']}",
                                         "memory_gib": round(p["totalGlobalMem"] / 2**30, 1)})
        except Exception as exc:
            info.setdefault("errors", []).append(f"cupy: {type(exc).__name__}: {exc}"[:300])
    if os.environ.get("NUMBA_CUDA_ARRAY_INTERFACE_SYNC") == "0":
        info["note"] = "NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0 is set (nbcnn does not need it)"
    return info


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def format_cuda_info(info: dict | None = None) -> list[str]:
    """Human-readable lines of :func:`cuda_info` for the CLI."""
    info = cuda_info() if info is None else info
    lines = [
        f"CuPy: {info['cupy'] or 'not installed'}   numba-cuda: {info['numba_cuda'] or 'not installed'}"
        + (f"   CUDA runtime {info['runtime']}" if info.get("runtime") else "")
        + (f", driver {info['driver']}" if info.get("driver") else ""),
        f"GPU usable: {'yes' if info['usable'] else 'no'} ({info['reason']})",
    ]
    for g in info.get("gpus", []):
        lines.append(f"  cuda:{g['index']}: {g['name']} (compute capability {g['cc']}, {g['memory_gib']} GiB)")
    if info.get("simulator"):
        lines.append("CUDA simulator: on (device 'cuda' runs the CUDA kernels on NumPy arrays, slowly)")
    for e in info.get("errors", []):
        lines.append(f"  note: {e}")
    if info.get("note"):
        lines.append(f"  note: {info['note']}")
    return lines
