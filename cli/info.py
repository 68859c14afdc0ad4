"""``nbcnn info``: what this installation runs on, for bug reports and "why is it slow?"."""
from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path

import click

from . import common


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        pass
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception:
        return "not installed"


def _dist_version(*names: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in names:
        try:
            return f"{version(name)} ({name})"
        except PackageNotFoundError:
            continue
    return "not installed"


def _threading_layer() -> str:
    """The Numba threading layer without compiling anything (``numba.threading_layer()``
    only answers after a parallel kernel ran)."""
    import numba

    configured = str(numba.config.THREADING_LAYER)
    try:
        return f"{numba.threading_layer()} (active)"
    except ValueError:
        pass
    available = []
    for name, mod in (("tbb", "tbbpool"), ("omp", "omppool"), ("workqueue", "workqueue")):
        try:
            importlib.import_module(f"numba.np.ufunc.{mod}")
            available.append(name)
        except Exception:
            continue
    if configured in ("default", "safe", "threadsafe", "forksafe"):
        chosen = available[0] if available else "none"
        return f"{chosen} (Numba picks it at the first parallel kernel; available: {', '.join(available)})"
    return f"{configured} (requested by NUMBA_THREADING_LAYER; available: {', '.join(available)})"


def _blas() -> list[str]:
    lines = []
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            if pool.get("user_api") != "blas":
                continue
            desc = f"{pool.get('internal_api')} {pool.get('version') or ''}".strip()
            extra = [f"{pool.get('num_threads')} threads"]
            if pool.get("architecture"):
                extra.append(f"kernel {pool['architecture']}")
            if pool.get("threading_layer"):
                extra.append(f"threading {pool['threading_layer']}")
            lines.append(f"{desc} ({', '.join(extra)})")
    except Exception as exc:  # threadpoolctl missing or failing: say so, don't die
        lines.append(f"unknown ({type(exc).__name__}: {exc})")
    return lines or ["none found by threadpoolctl"]


def _policy(module: str, getter: str) -> str:
    """What nbcnn's start-up configured (``nbcnn._threads.blas_policy`` ...); never raises."""
    try:
        import importlib

        return getattr(importlib.import_module(f"nbcnn.{module}"), getter)()
    except Exception as exc:
        return f"unknown ({exc})"


def _data_sets() -> dict:
    """Where each data set would be loaded from now (no download attempted)."""
    out = {}
    try:
        from nbcnn import datasets

        for name in datasets.DATASETS:
            found = datasets.find_dataset(name)
            if found is not None:
                out[name] = f"{found[1]} ({found[0]})"
            elif name == "mnist" and datasets.SAMPLE_FILE.is_file():
                out[name] = "not found: would download, else use the bundled sample"
            else:
                out[name] = "not found: would download"
    except Exception as exc:  # never let a broken data folder break `nbcnn info`
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def _data_dir() -> str:
    """The folders nbcnn looks in for data: $NBCNN_DATA, then the user cache."""
    try:
        from nbcnn import datasets

        cache = str(datasets.cache_dir())
    except Exception:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache = str(Path(base) / "nbcnn")
    env = os.environ.get("NBCNN_DATA")
    return (f"{env} (NBCNN_DATA), then {cache}" if env else f"{cache} (NBCNN_DATA not set)")


def _gpu_details() -> dict:
    try:
        from nbcnn.kernels.cuda.info import cuda_info

        return cuda_info()
    except Exception as exc:
        return {"errors": [f"{type(exc).__name__}: {exc}"]}


def _kernel_cache_dir() -> str:
    import numba

    for modname, fn in (("nbcnn._cache", "cache_dir"), ("nbcnn.kernels", "cache_dir")):
        try:
            func = getattr(importlib.import_module(modname), fn)
            return str(func())
        except Exception:
            continue
    if numba.config.CACHE_DIR:
        return f"{numba.config.CACHE_DIR} (NUMBA_CACHE_DIR)"
    import nbcnn.kernels

    return f"__pycache__ beside the kernel sources ({Path(nbcnn.kernels.__file__).parent})"


def _mpi() -> str:
    """The MPI library behind ``--distributed`` (mpi4py's), without initialising MPI."""
    try:
        from nbcnn.distributed import mpi_available

        ok, what = mpi_available()
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {exc})"
    return what if ok else f"not available ({what}; pip install 'nbcnn[mpi]')"


def collect() -> dict:
    """Everything ``nbcnn info`` shows, as a dict (also for ``--json``)."""
    import numba
    import numpy

    import nbcnn

    ok, why = nbcnn.gpu_status()
    gpu = _gpu_details()
    return {
        "nbcnn": nbcnn.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "numba-cuda": _dist_version("numba-cuda"),
        "cupy": _dist_version("cupy-cuda13x", "cupy-cuda12x", "cupy"),
        "cpu_count": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "threading_layer": _threading_layer(),
        "blas": _blas(),
        "thread_policy": _policy("_threads", "describe"),
        "blas_policy": _policy("_threads", "blas_policy"),
        "malloc_policy": _policy("_memory", "malloc_policy"),
        "gpu_usable": ok,
        "gpu_reason": why,
        "gpus": gpu.get("gpus", []),
        "cuda_runtime": gpu.get("runtime"),
        "cuda_driver": gpu.get("driver"),
        "cuda_simulator": bool(gpu.get("simulator")),
        "default_device": os.environ.get("NBCNN_DEVICE", "auto"),
        "data_dir": _data_dir(),
        "datasets": _data_sets(),
        "kernel_cache_dir": _kernel_cache_dir(),
        "mpi": _mpi(),
    }


@click.command(epilog=common.examples("nbcnn info", "nbcnn info --json > info.json"))
@click.option("--json", "as_json", is_flag=True, help="Print the same facts as JSON.")
@common.verbose_option
def info(as_json):
    """Versions, CPU threads, BLAS, GPU status and the data/kernel-cache folders.

    Paste this output into bug reports; "GPU usable" says why a GPU is not used.
    """
    facts = collect()
    if as_json:
        import json

        click.echo(json.dumps(facts, indent=2))
        return
    gpu = (common.style("yes", fg="green") if facts["gpu_usable"] else common.style("no", fg="yellow"))
    rows = [
        ("nbcnn", facts["nbcnn"]),
        ("python", f"{facts['python']} on {facts['platform']}"),
        ("numpy", facts["numpy"]),
        ("numba", facts["numba"]),
        ("numba-cuda", facts["numba-cuda"]),
        ("CuPy", facts["cupy"]),
        ("CPU threads", f"{facts['numba_threads']} used by Numba, {facts['cpu_count']} CPUs"),
        ("threading layer", facts["threading_layer"]),
        ("BLAS", "; ".join(facts["blas"])),
        ("thread policy", facts["thread_policy"]),
        ("BLAS policy", facts["blas_policy"]),
        ("malloc policy", facts["malloc_policy"]),
        ("GPU usable", f"{gpu} ({facts['gpu_reason']})"),
        *[(f"  cuda:{g['index']}", f"{g['name']} (compute capability {g['cc']}, {g['memory_gib']} GiB)")
          for g in facts["gpus"]],
        *([("CUDA", f"runtime {facts['cuda_runtime']}, driver {facts['cuda_driver'] or '-'}")]
          if facts["cuda_runtime"] else []),
        ("default device", f"{facts['default_device']} (set NBCNN_DEVICE=cpu|cuda|auto)"),
        ("data dir", facts["data_dir"]),
        *[(f"  {name}", where) for name, where in facts["datasets"].items()],
        ("kernel cache", facts["kernel_cache_dir"]),
        ("MPI", facts["mpi"]),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        common.echo(f"{key:<{width}}  {value}")
