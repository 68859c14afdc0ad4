"""The installed ``nbcnn`` console script, end to end, in subprocesses.

Train one epoch on a tiny real subset, evaluate and predict with the saved
model, continue it for a second epoch with a Ctrl-C (a real SIGINT) in the
middle, resume, and check the result equals an uninterrupted two-epoch run
bit for bit. Output is piped, so there must be no progress bars or colours.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

RUN = ["--train-size", "400", "--test-size", "100", "--batch-size", "50", "--seed", "11", "--no-plot",
       "--schedule", "constant"]  # constant rate: 1 epoch then 1 more == 2 epochs straight


def _script() -> str:
    exe = Path(sys.executable).parent / "nbcnn"
    found = str(exe) if exe.exists() else shutil.which("nbcnn")
    if not found:
        pytest.skip("the nbcnn console script is not installed (pip install -e .)")
    return found


@pytest.fixture
def nbcnn_cli(tmp_path):
    script = _script()
    env = dict(os.environ, NBCNN_OFFLINE="1", NBCNN_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("NBCNN_DEVICE", None)
    env.pop("NBCNN_TEST_INTERRUPT_AFTER", None)

    def run(*args, expect=0, **extra_env):
        proc = subprocess.run([script, *map(str, args)], cwd=tmp_path, env={**env, **extra_env},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        for stream in (proc.stdout, proc.stderr):
            assert "\r" not in stream and "\x1b[" not in stream  # piped: no bars, no colours
            assert "Traceback" not in stream
        return proc

    return run


def test_console_train_evaluate_predict_resume(nbcnn_cli, tmp_path):
    import nbcnn

    p = nbcnn_cli("train", "--epochs", 1, *RUN, "--out", "m.nbcnn")
    assert "epoch 1/1" in p.stdout and "test accuracy" in p.stdout and ", 1 epoch, seed" in p.stdout
    assert (tmp_path / "m.nbcnn").exists() and (tmp_path / "m.metrics.json").exists()

    p = nbcnn_cli("evaluate", "m.nbcnn", "--limit", 100, "--json", "ev.json", "--no-plot")
    report = json.loads((tmp_path / "ev.json").read_text())
    assert report["images"] == 100 and 0.0 <= report["accuracy"] <= 1.0
    assert f"{report['accuracy']:.2%}" in p.stdout

    (_, _), (xt, yt) = nbcnn.datasets.load_mnist(quiet=True)
    np.save(tmp_path / "x.npy", xt[:2])
    p = nbcnn_cli("predict", "m.nbcnn", "x.npy", "--json", "-", "-k", 1)
    preds = json.loads(p.stdout)
    expected = nbcnn.load_model(tmp_path / "m.nbcnn").predict(xt[:2]).argmax(axis=1)
    assert [r["top"][0]["class"] for r in preds] == expected.tolist()
    p = nbcnn_cli("predict", "m.nbcnn", "x.npy", "--json", "pred.json", "-k", 1)   # a file, and the text
    assert json.loads((tmp_path / "pred.json").read_text()) == preds and "x.npy[0]" in p.stdout

    # Continue the 1-epoch model to 2 epochs, with a real SIGINT after 3 batches of epoch 2.
    p = nbcnn_cli("train", "--resume", "m.nbcnn", "--epochs", 2, "--out", "m2.nbcnn", expect=130,
                  NBCNN_TEST_INTERRUPT_AFTER="3")
    assert "Resume with: nbcnn train --resume m2.ckpt.nbcnn" in p.stderr
    assert not (tmp_path / "m2.nbcnn").exists()
    p = nbcnn_cli("train", "--resume", "m2.ckpt.nbcnn")
    assert "epoch 2/2" in p.stdout

    # The same two epochs in one go give the same weights, bit for bit.
    nbcnn_cli("train", "--epochs", 2, *RUN, "--out", "straight.nbcnn")
    a = nbcnn.load_model(tmp_path / "m2.nbcnn").get_weights()
    b = nbcnn.load_model(tmp_path / "straight.nbcnn").get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    h2 = json.loads((tmp_path / "m2.metrics.json").read_text())["history"]
    hs = json.loads((tmp_path / "straight.metrics.json").read_text())["history"]
    assert h2["val_loss"] == hs["val_loss"] and h2["loss"] == hs["loss"]


def test_console_user_error_exit_code_and_verbose(nbcnn_cli, tmp_path):
    p = nbcnn_cli("predict", "missing.nbcnn", "x.png", expect=1)
    assert p.stderr.strip() == "Error: model file not found: missing.nbcnn"
    assert p.stdout == ""
    proc = subprocess.run([_script(), "--verbose", "predict", "missing.nbcnn", "x.png"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "Error: model file not found: missing.nbcnn"


def test_console_sigint_from_outside(tmp_path):
    """Ctrl-C at an arbitrary moment (here: right after the first epoch line) -> exit 130 and a
    checkpoint that resumes; a second Ctrl-C is not needed and no traceback is printed."""
    import signal

    import nbcnn

    env = dict(os.environ, NBCNN_OFFLINE="1", NBCNN_CACHE_DIR=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    env.pop("NBCNN_TEST_INTERRUPT_AFTER", None)
    proc = subprocess.Popen([_script(), "train", "--epochs", "500", *RUN, "--out", "long.nbcnn"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("epoch 1/500"):
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Resume with: nbcnn train --resume long.ckpt.nbcnn" in err
    ckpt = nbcnn.load_model(tmp_path / "long.ckpt.nbcnn")
    done = int(ckpt.progress["epoch"])
    assert done >= 1
    p = subprocess.run([_script(), "train", "--resume", "long.ckpt.nbcnn", "--epochs", str(done + 1)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"epoch {done + 1}/{done + 1}" in p.stdout and (tmp_path / "long.nbcnn").exists()
