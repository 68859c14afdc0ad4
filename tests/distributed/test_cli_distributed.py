"""``mpiexec -n K nbcnn train --distributed``: one set of files, resumable with another K."""
from __future__ import annotations

import json
import sys

import numpy as np

import nbcnn
from _mpirun import mpirun

NB = [sys.executable, "-m", "nbcnn.cli.main", "train"]
OPTS = ["--train-size", "600", "--test-size", "200", "--val-split", "0.2", "--epochs", "2", "--seed", "5",
        "--no-plot", "-q"]


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _weights(path):
    return np.concatenate([w.ravel() for w in nbcnn.load_model(path).get_weights()])


def test_rank0_writes_one_set_of_files(tmp_path):
    proc = mpirun(2, [*NB, "--distributed", *OPTS[:-1], "--batch-size", "16", "--out", "run/m.nbcnn"], cwd=tmp_path)
    _ok(proc)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["run/m.metrics.json", "run/m.nbcnn"]
    out = proc.stdout
    assert out.count("Training lenet5") == 1 and out.count("test accuracy") == 1
    assert "batch 16 per rank x 2 ranks = global batch 32" in out and "not rescaled" in out
    metrics = json.loads((tmp_path / "run/m.metrics.json").read_text())
    assert metrics["ranks"] == 2 and metrics["batch_size"] == 32 and metrics["batch_size_per_rank"] == 16
    # 480 training images, global batch 32: 15 global steps per epoch, 30 in all
    assert nbcnn.load_model(tmp_path / "run/m.nbcnn").optimizer.iterations == 30


def test_checkpoint_of_two_ranks_resumes_on_one_and_on_three(tmp_path):
    """Interrupted after 7 global steps on 2 ranks (batch 24 each), resumed on 1 rank and,
    separately, on 3 ranks (batch 16 each): both end where one uninterrupted process with
    batch 48 ends."""
    ref = mpirun(1, [*NB, *OPTS, "--batch-size", "48", "--out", "ref.nbcnn"], cwd=tmp_path)
    _ok(ref)
    cut = mpirun(2, [*NB, "--distributed", *OPTS, "--batch-size", "24", "--out", "a.nbcnn"], cwd=tmp_path,
                 env={"NBCNN_TEST_INTERRUPT_AFTER": "7"})
    assert cut.returncode == 130, cut.stdout + cut.stderr
    ck = tmp_path / "a.ckpt.nbcnn"
    assert ck.is_file() and not (tmp_path / "a.nbcnn").exists()
    (tmp_path / "b.ckpt.nbcnn").write_bytes(ck.read_bytes())
    _ok(mpirun(1, [*NB, "--resume", "a.ckpt.nbcnn", "-q"], cwd=tmp_path))
    _ok(mpirun(3, [*NB, "--distributed", "--resume", "b.ckpt.nbcnn", "-q"], cwd=tmp_path))
    want = _weights(tmp_path / "ref.nbcnn")
    for name in ("a.nbcnn", "b.nbcnn"):
        got = _weights(tmp_path / name)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), name
