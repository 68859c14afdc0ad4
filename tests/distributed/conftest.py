"""Distributed tests run real MPI: each test launches ``mpiexec -n K`` in a subprocess."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mpirun import WORKER, mpirun  # noqa: E402


@pytest.fixture
def run_worker(tmp_path):
    def run(k, mode, timeout=180, env=None):
        return mpirun(k, [sys.executable, WORKER, mode, tmp_path], timeout=timeout, env=env)
    return run
