"""nbcnn's malloc tuning (nbcnn/_memory.py): applied at import, opt-out honoured, never fatal."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CODE = """
import resource, nbcnn, numpy as np
from nbcnn import _memory
print(_memory.malloc_policy())
sizes = [3 << 20, 5 << 20, 7 << 20, 9 << 20]     # a training step's mix of fresh arrays
for _ in range(3):                                # warm-up: the heap grows once
    arrs = [np.ones(s // 4, np.float32) for s in sizes]
    del arrs
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    arrs = [np.ones(s // 4, np.float32) for s in sizes]
    del arrs
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 20)
"""


def _run(env_extra):
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    policy, faults = out.stdout.strip().splitlines()
    return policy, float(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_import_tunes_malloc_so_big_arrays_reuse_memory():
    policy, faults = _run({})
    assert policy.startswith("mmap-threshold=32MB")
    # 24 MB of fresh arrays per round would be ~6000 page faults if each came from fresh mmaps
    assert faults < 50, faults


def test_opt_out_leaves_malloc_alone():
    policy, _ = _run({"NBCNN_MALLOC_TUNING": "0"})
    assert policy == "untouched (NBCNN_MALLOC_TUNING=0)"
