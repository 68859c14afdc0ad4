"""``mpiexec -n K`` for the distributed tests; they skip (with the reason) only where mpi4py or
``mpiexec`` is not available."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORKER = HERE / "_worker.py"


def _mpi_reason():
    try:
        import mpi4py  # noqa: F401
    except ImportError as exc:
        return f"mpi4py is not installed ({exc}): pip install 'nbcnn[mpi]'"
    if _mpiexec() is None:
        return "no mpiexec on PATH or beside the Python interpreter (pip install mpich)"
    return None


def _mpiexec():
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def mpirun(k, args, timeout=180, cwd=None, env=None):
    """``mpiexec -n k ARGS`` with one Numba thread per rank; returns the CompletedProcess."""
    reason = _mpi_reason()
    if reason:
        pytest.skip(reason)
    e = dict(os.environ)
    e.update({"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "NBCNN_DEVICE": "cpu",
              "PYTHONPATH": os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")])})
    e.update(env or {})
    return subprocess.run([_mpiexec(), "-n", str(k), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=e)

