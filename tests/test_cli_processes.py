"""``nbcnn train`` as real processes: the --out lock (second run refused, stale lock after kill -9 taken
over), SIGTERM saves a checkpoint like Ctrl-C, a finished run resumed with fewer epochs touches nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbcnn import _lockfile

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")


def _env(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), NBCNN_OFFLINE="1", NBCNN_CACHE_DIR=str(tmp_path / "cache"),
               NBCNN_SHARE_DIR=str(tmp_path / "share"))
    env.pop("NBCNN_TEST_INTERRUPT_AFTER", None)
    env.pop("NBCNN_DEVICE", None)
    return env


def _train(tmp_path, *args, **kw):
    cmd = [sys.executable, "-c", "import sys; from nbcnn.cli.main import main; sys.exit(main())", "train",
           "--no-plot", "--seed", "3", "--test-size", "20", "--val-split", "0", *args]
    return subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=str(tmp_path), **kw)


def _wait_for(pred, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early ({proc.returncode}): {proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.02)


LONG = ["--epochs", "30", "--train-size", "2000", "--batch-size", "50"]


def test_a_second_run_with_the_same_out_is_refused_and_the_first_one_finishes(tmp_path):
    out = tmp_path / "m.nbcnn"
    lock = Path(_lockfile.lock_path_for(out))
    first = _train(tmp_path, "--epochs", "2", "--train-size", "600", "--batch-size", "50", "--out", str(out))
    _wait_for(lock.exists, first)
    second = _train(tmp_path, "--epochs", "1", "--train-size", "100", "--out", str(out))
    text, _ = second.communicate(timeout=120)
    assert second.returncode == 1, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: another `nbcnn train` (pid ")
    assert f"is writing {out}" in lines[0] and "pass another --out" in lines[0]
    text, _ = first.communicate(timeout=300)
    assert first.returncode == 0, text
    assert out.exists() and not (tmp_path / "m.ckpt.nbcnn").exists() and not lock.exists()
    metrics = json.loads((tmp_path / "m.metrics.json").read_text())
    assert metrics["epochs"] == 2 and len(metrics["history"]["loss"]) == 2


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "k.nbcnn"
    lock = Path(_lockfile.lock_path_for(out))
    ckpt = tmp_path / "k.ckpt.nbcnn"
    victim = _train(tmp_path, *LONG, "--out", str(out))
    _wait_for(ckpt.exists, victim)  # one epoch done
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert lock.exists()  # stale: its holder is dead
    again = _train(tmp_path, "--resume", str(ckpt), "--epochs", "2")
    text, _ = again.communicate(timeout=300)
    assert again.returncode == 0, text
    assert "Resuming from" in text and out.exists() and not ckpt.exists() and not lock.exists()


def test_sigterm_saves_a_checkpoint_like_ctrl_c(tmp_path):
    out = tmp_path / "t.nbcnn"
    ckpt = tmp_path / "t.ckpt.nbcnn"
    proc = _train(tmp_path, *LONG, "--out", str(out))
    _wait_for(ckpt.exists, proc)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, text
    assert "Terminated (SIGTERM): stopping after this batch and saving a checkpoint" in text
    assert f"Resume with: nbcnn train --resume {ckpt}" in text
    assert ckpt.exists() and not out.exists() and not Path(_lockfile.lock_path_for(out)).exists()
    import nbcnn

    progress = nbcnn.load_model(ckpt).progress
    assert 1 <= int(progress["epoch"]) < 30


def test_resuming_a_finished_model_with_fewer_epochs_touches_nothing(tmp_path):
    out = tmp_path / "f.nbcnn"
    proc = _train(tmp_path, "--epochs", "3", "--train-size", "100", "--batch-size", "50", "--out", str(out))
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text
    files = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir() if p.is_file()}
    proc = _train(tmp_path, "--resume", str(out), "--epochs", "2")
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text
    assert "Already trained for 3 epochs; nothing to do (files left as they are)" in text
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.iterdir() if p.is_file()}
    assert after == files


def test_pid_fallback_without_flock(tmp_path, monkeypatch):
    """Where flock is unavailable the recorded pid decides: a dead pid on this host is stale."""
    monkeypatch.setattr(_lockfile, "fcntl", None)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    target = tmp_path / "x.nbcnn"
    import socket

    Path(_lockfile.lock_path_for(target)).write_text(json.dumps({"pid": int(dead), "host": socket.gethostname()}))
    with _lockfile.PathLock(target):
        rec = json.loads(Path(_lockfile.lock_path_for(target)).read_text())
        assert rec["pid"] == os.getpid()
    Path(_lockfile.lock_path_for(target)).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(_lockfile.LockHeld, match=f"pid {os.getppid()}"):
        _lockfile.PathLock(target).acquire()
    Path(_lockfile.lock_path_for(target)).write_text(json.dumps({"pid": int(dead), "host": "elsewhere"}))
    with pytest.raises(_lockfile.LockHeld, match="elsewhere"):
        _lockfile.PathLock(target).acquire()


def test_flock_is_exclusive_between_processes(tmp_path):
    target = tmp_path / "y.nbcnn"
    with _lockfile.PathLock(target):
        code = ("import sys; sys.path.insert(0, sys.argv[2]); from nbcnn import _lockfile\n"
                "try:\n    _lockfile.PathLock(sys.argv[1]).acquire()\nexcept _lockfile.LockHeld as e:\n"
                "    print(e.holder['pid']); sys.exit(3)\n")
        r = subprocess.run([sys.executable, "-c", code, str(target), str(ROOT)], capture_output=True, text=True)
        assert r.returncode == 3 and r.stdout.strip() == str(os.getpid())
    r = subprocess.run([sys.executable, "-c", code, str(target), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
