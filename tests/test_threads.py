"""Thread policy: counts from affinity / cgroup quota / OMP_NUM_THREADS, passive waits, CPU sharing
between training processes (real processes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nbcnn import _threads

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, env: dict, timeout: float = 60.0) -> dict:
    full = dict(os.environ)
    for key in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NBCNN_THREADS",
                "OPENBLAS_NUM_THREADS"):
        full.pop(key, None)
    full.update(env)
    full["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


REPORT = """
import json, os, nbcnn, numba
print(json.dumps({"numba": numba.config.NUMBA_NUM_THREADS, "wait": os.environ.get("OMP_WAIT_POLICY"),
                  "blas": os.environ.get("OPENBLAS_NUM_THREADS")}))
"""


def test_defaults_are_passive_waits_and_the_affinity_mask():
    r = _python(REPORT, {})
    assert r["wait"] == "PASSIVE"
    assert r["numba"] == len(os.sched_getaffinity(0))


def test_omp_num_threads_lowers_numba_and_blas_threads():
    r = _python(REPORT, {"OMP_NUM_THREADS": "1"})
    assert r["numba"] == 1
    if len(os.sched_getaffinity(0)) > 1:
        assert r["blas"] == "1"


def test_the_users_settings_win():
    r = _python(REPORT, {"OMP_WAIT_POLICY": "ACTIVE", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "7"})
    assert r == {"numba": 1, "wait": "ACTIVE", "blas": None}
    r = _python(REPORT, {"NBCNN_THREADS": "off"})
    assert r["wait"] is None


def test_numba_imported_before_nbcnn_is_lowered_at_run_time():
    r = _python("""
        import json, numba, nbcnn
        print(json.dumps({"n": numba.get_num_threads()}))
    """, {"OMP_NUM_THREADS": "1"})
    assert r["n"] == 1


def test_cgroup_quota_files(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _threads._read_quota(str(tmp_path / "cpu.max")) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _threads._read_quota(str(tmp_path / "cpu.max")) is None
    (tmp_path / "q").write_text("50000\n")
    (tmp_path / "p").write_text("100000\n")
    assert _threads._read_quota(str(tmp_path / "q"), str(tmp_path / "p")) == 0.5
    (tmp_path / "q").write_text("-1\n")
    assert _threads._read_quota(str(tmp_path / "q"), str(tmp_path / "p")) is None
    assert _threads._read_quota(str(tmp_path / "missing")) is None


def test_plan_takes_the_smallest_limit(monkeypatch):
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    monkeypatch.setattr(_threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(_threads, "_cgroup_cpus", lambda: 2.5)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    p = _threads.plan()
    assert p["threads"] == 2 and p["cpus"] == 8 and not p["explicit"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _threads.plan()["threads"] == 1
    monkeypatch.setattr(_threads, "_cgroup_cpus", lambda: 0.2)  # a fraction of a CPU still gets one thread
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert _threads.plan()["threads"] == 1
    monkeypatch.setenv("NUMBA_NUM_THREADS", "3")
    p = _threads.plan()
    assert p["threads"] == 3 and p["explicit"]


SHARER = """
import json, sys, time, nbcnn, numba
from nbcnn import _threads
# as if nbcnn had chosen 4 threads itself (NUMBA_NUM_THREADS=4 lets numba run 4 on any machine)
_threads._state["threads"] = dict(_threads._state["threads"], threads=4, explicit=False)
_threads._RECHECK_S = 0.0
_threads.training_begin()
seen = set()
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    _threads.rebalance()
    seen.add(numba.get_num_threads())
    time.sleep(0.05)
_threads.training_end()
print(json.dumps({"seen": sorted(seen), "after": numba.get_num_threads()}))
"""


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_two_training_processes_share_the_cpus(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), NBCNN_SHARE_DIR=str(tmp_path), NUMBA_NUM_THREADS="4")
    env.pop("NBCNN_THREADS", None)
    cmd = [sys.executable, "-c", SHARER]
    first = subprocess.Popen(cmd + ["6"], env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not any(n.isdigit() for n in os.listdir(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run(cmd + ["1.5"], env=env, capture_output=True, text=True, timeout=60)
    out1, _ = first.communicate(timeout=60)
    r1, r2 = json.loads(out1.strip().splitlines()[-1]), json.loads(second.stdout.strip().splitlines()[-1])
    assert r2["seen"] == [2]  # 4 threads // 2 training processes
    assert 2 in r1["seen"] and 4 in r1["seen"]  # the first one gave up half, then took it back
    assert r1["after"] == 4
    assert not [n for n in os.listdir(tmp_path) if n.isdigit()]  # both unregistered


def test_a_dead_processes_entry_is_removed(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = proc.stdout.strip()
    (tmp_path / dead).write_text("")
    (tmp_path / str(os.getpid())).write_text("")
    assert _threads._live_peers(str(tmp_path)) == 1
    assert not (tmp_path / dead).exists()
