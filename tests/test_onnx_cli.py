"""``nbcnn export`` / ``nbcnn import`` and .onnx files in the model-reading commands."""
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnx")

import nbcnn  # noqa: E402
from nbcnn import zoo  # noqa: E402


def _nbcnn(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nbcnn.cli.main", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def test_export_import_summary_round_trip(tmp_path):
    model = zoo.lenet5(device="cpu", seed=5)
    model.compile()
    model.save(tmp_path / "l.nbcnn")
    r = _nbcnn("export", "l.nbcnn", "l.onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote l.onnx (opset 17" in r.stdout
    r = _nbcnn("import", "l.onnx", "back.nbcnn", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Total params: 61,706" in r.stdout and "wrote back.nbcnn" in r.stdout
    back = nbcnn.load_model(tmp_path / "back.nbcnn", device="cpu")
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    assert np.abs(back.predict(x) - model.predict(x)).max() <= 1e-5
    r = _nbcnn("summary", "l.onnx", cwd=tmp_path)
    assert r.returncode == 0 and "Total params: 61,706" in r.stdout


def test_bad_onnx_file_one_line_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x01garbage" * 20)
    r = _nbcnn("import", "bad.onnx", "x.nbcnn", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("Error:") and "bad.onnx" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.nbcnn").exists()
