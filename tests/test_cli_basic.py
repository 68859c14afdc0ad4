"""CLI behaviour that needs no trained model: help, info, bench, errors, plots, input reading."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from nbcnn.cli import common, loading
from nbcnn.cli.main import cli

COMMANDS = ["train", "evaluate", "predict", "summary", "bench", "info"]


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize("command", sorted(set(COMMANDS) | set(cli.commands)))
def test_every_command_has_help_with_examples(runner, command):
    res = runner.invoke(cli, [command, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage: nbcnn " + command in res.output
    assert "Examples:" in res.output
    assert f"nbcnn {command}" in res.output.split("Examples:")[1]


def test_group_help_and_version(runner):
    res = runner.invoke(cli, ["--help"])
    assert res.exit_code == 0
    for command in COMMANDS:
        assert command in res.output
    res = runner.invoke(cli, ["--version"])
    assert res.exit_code == 0 and "0.1.0" in res.output


def test_unknown_command_and_bad_option_are_usage_errors(runner):
    res = runner.invoke(cli, ["frobnicate"])
    assert res.exit_code == 2 and "No such command" in res.output
    res = runner.invoke(cli, ["bench", "--op", "nope"])
    assert res.exit_code == 2
    assert res.output.strip() == ("Error: Invalid value for '--op': 'nope' is not one of 'conv', 'pool', 'norm', "
                                  "'global_pool', 'conv_modern', 'act', 'all'. (see 'nbcnn bench --help')")
    res = runner.invoke(cli, ["--bogus"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "--bogus" in res.output


def test_info_text_and_json(runner):
    import numpy

    res = runner.invoke(cli, ["info"])
    assert res.exit_code == 0, res.output
    for key in ("nbcnn", "numpy", "numba", "numba-cuda", "CuPy", "CPU threads", "threading layer",
                "BLAS", "BLAS policy", "GPU usable", "data dir", "kernel cache"):
        assert key in res.output
    assert numpy.__version__ in res.output
    assert "\x1b[" not in res.output  # no colour codes when not on a terminal
    res = runner.invoke(cli, ["info", "--json"])
    facts = json.loads(res.stdout)
    assert facts["numpy"] == numpy.__version__
    assert isinstance(facts["gpu_usable"], bool) and facts["gpu_reason"]
    import nbcnn

    assert (facts["gpu_usable"], facts["gpu_reason"]) == nbcnn.gpu_status()
    assert set(facts["datasets"]) == {"mnist", "fashion-mnist"}
    assert facts["blas_policy"] == nbcnn._threads.blas_policy()


def test_bench_device_cuda_without_gpu_is_one_line(runner, monkeypatch):
    import nbcnn

    monkeypatch.setattr(nbcnn, "gpu_status", lambda: (False, "no GPU in this test"))
    res = runner.invoke(cli, ["bench", "--device", "cuda"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == ["Error: --device cuda: no usable GPU (no GPU in this test)"]


def test_bench_compare_torch_without_torch(runner, monkeypatch):
    from nbcnn import bench

    monkeypatch.setattr(bench, "torch_available", lambda: False)
    res = runner.invoke(cli, ["bench", "--compare", "torch"])
    assert res.exit_code == 1
    assert "needs PyTorch" in res.output and "Traceback" not in res.output


def test_bench_pool_quick_writes_json(runner, tmp_path):
    out = tmp_path / "b.json"
    res = runner.invoke(cli, ["bench", "--op", "pool", "--quick", "--rounds", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["kind"] == "ops"
    ops = {(r["op"], r["mode"]) for r in report["results"]}
    assert ops == {("max_pool", "fwd"), ("max_pool", "fwd+bwd"), ("avg_pool", "fwd"), ("avg_pool", "fwd+bwd")}
    assert all(r["nbcnn_ms"] > 0 for r in report["results"])
    assert "max_pool" in res.output


def test_bench_bad_shapes_is_user_error(runner):
    res = runner.invoke(cli, ["bench", "--op", "conv", "--shapes", "resnet"])
    assert res.exit_code == 1
    assert res.output.startswith("Error: ") and "resnet" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_summary_missing_file(runner, tmp_path):
    res = runner.invoke(cli, ["summary", str(tmp_path / "nope.nbcnn")])
    assert res.exit_code == 1
    assert "model file not found" in res.output and "Traceback" not in res.output


def test_summary_bad_input_shape(runner):
    res = runner.invoke(cli, ["summary", "lenet5", "--input-shape", "28,28"])
    assert res.exit_code == 2 and "C,H,W" in res.output


# ---------------------------------------------------------------- error policy

def _boom_cli(exc):
    import click

    @click.group(cls=common.Group)
    @common.verbose_option
    def g():
        pass

    @g.command()
    @common.verbose_option
    def boom():
        raise exc

    return g


@pytest.mark.parametrize("exc, code, text", [
    (ValueError("x has shape (2, 3) but expected (2, 4)"), 1, "Error: x has shape (2, 3) but expected (2, 4)"),
    (FileNotFoundError(2, "No such file or directory", "a.png"), 1, "Error: No such file or directory: a.png"),
    (KeyboardInterrupt(), 130, "Error: interrupted"),
    (ZeroDivisionError("division by zero"), 1, "Error: internal error: ZeroDivisionError: division by zero"),
])
def test_errors_are_one_line_and_verbose_shows_traceback(runner, exc, code, text):
    g = _boom_cli(exc)
    res = runner.invoke(g, ["boom"])
    assert res.exit_code == code
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(text)
    for args in (["--verbose", "boom"], ["boom", "--verbose"], ["-v", "boom"]):
        res = runner.invoke(g, args)
        assert res.exit_code == code
        assert "Traceback (most recent call last)" in res.output, args


def test_device_error_is_user_error(runner):
    from nbcnn.device import DeviceError

    res = runner.invoke(_boom_cli(DeviceError("device cuda:0 is not usable: no GPU")), ["boom"])
    assert res.exit_code == 1 and res.output.strip() == "Error: device cuda:0 is not usable: no GPU"


def test_colours_only_on_a_terminal(monkeypatch):
    class Tty:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    assert common.style("x", Tty(), bold=True) != "x"
    assert common.style("x", None, bold=True) == "x" or sys.stdout.isatty()
    monkeypatch.setenv("NO_COLOR", "1")
    assert common.style("x", Tty(), bold=True) == "x"


def test_write_json_is_atomic_and_leaves_no_temp(tmp_path):
    p = common.write_json(tmp_path / "sub" / "m.json", {"a": np.float32(1.5), "b": np.arange(3)})
    assert json.loads(p.read_text()) == {"a": 1.5, "b": [0, 1, 2]}
    assert [f.name for f in p.parent.iterdir()] == ["m.json"]


# ---------------------------------------------------------------- plots

def test_confusion_matrix_counts():
    from nbcnn import plots

    y_true = [0, 0, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 2, 0, 2]
    cm = plots.confusion_matrix(y_true, y_pred, 3)
    expected = np.zeros((3, 3), int)
    for t, p in zip(y_true, y_pred):
        expected[t, p] += 1
    np.testing.assert_array_equal(cm, expected)
    with pytest.raises(ValueError, match="y_pred"):
        plots.confusion_matrix([0], [3], 3)
    with pytest.raises(ValueError, match="differ in length"):
        plots.confusion_matrix([0, 1], [0], 3)


def test_plots_write_decodable_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from nbcnn import plots

    h = {"loss": [1.0, 0.5, 0.3], "accuracy": [0.6, 0.8, 0.9], "val_loss": [0.9, 0.6, 0.5],
         "val_accuracy": [0.7, 0.8, 0.85]}
    p = plots.plot_history(h, tmp_path / "c.png", title="t")
    with Image.open(p) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 100
    cm = plots.confusion_matrix([0, 1, 2, 2], [0, 2, 2, 2], 3)
    p = plots.plot_confusion_matrix(cm, tmp_path / "cm.png", ["a", "b", "c"])
    with Image.open(p) as im:
        assert im.format == "PNG" and min(im.size) > 100
    assert sorted(f.name for f in tmp_path.iterdir()) == ["c.png", "cm.png"]


def test_plots_without_matplotlib_say_how_to_install(monkeypatch, tmp_path):
    from nbcnn import plots

    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    with pytest.raises(plots.PlotUnavailable, match=r'pip install "nbcnn\[plot\]"'):
        plots.plot_history({"loss": [1.0]}, tmp_path / "x.png")
    assert not plots.matplotlib_available()


def test_import_nbcnn_and_cli_do_not_import_matplotlib():
    code = ("import sys, nbcnn, nbcnn.plots, nbcnn.cli.main; "
            "print(any(m.split('.')[0] in ('matplotlib', 'cupy', 'torch') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- predict inputs

def test_read_npy_shapes_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    np.save(tmp_path / "one.npy", one)
    np.save(tmp_path / "batch.npy", rng.random((3, 1, 28, 28), dtype=np.float32))
    np.save(tmp_path / "wrong.npy", np.zeros((3, 32, 32), np.float32))
    np.save(tmp_path / "big.npy", np.full((28, 28), 300, np.int64))
    chunks = loading.read_inputs([tmp_path / "one.npy", tmp_path / "batch.npy"], (1, 28, 28))
    assert [c[0].rsplit("/", 1)[-1] for c in chunks] == ["one.npy", "batch.npy[0]", "batch.npy[1]", "batch.npy[2]"]
    assert chunks[0][1].shape == (1, 1, 28, 28) and chunks[0][2] is True
    np.testing.assert_array_equal(chunks[0][1][0, 0], one)
    assert all(c[1].shape == (1, 1, 28, 28) and c[2] is False for c in chunks[1:])
    with pytest.raises(common.UserError, match=r"shape \(3, 32, 32\) but the model expects \(1, 28, 28\)"):
        loading.read_inputs([tmp_path / "wrong.npy"], (1, 28, 28))
    with pytest.raises(common.UserError, match="0..255"):
        loading.read_inputs([tmp_path / "big.npy"], (1, 28, 28))
    with pytest.raises(common.UserError, match="not found"):
        loading.read_inputs([tmp_path / "missing.png"], (1, 28, 28))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(common.UserError, match="unsupported input"):
        loading.read_inputs([tmp_path / "notes.txt"], (1, 28, 28))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(common.UserError, match="no images or .npy files in folder"):
        loading.read_inputs([empty], (1, 28, 28))
    (tmp_path / "fake.png").write_bytes(b"not a png")
    with pytest.raises(common.UserError, match="not a valid image"):
        loading.read_inputs([tmp_path / "fake.png"], (1, 28, 28))


def test_read_image_converts_resizes_and_inverts(tmp_path):
    from PIL import Image

    # A dark digit-like stroke on a white 56x56 RGB image.
    img = np.full((56, 56, 3), 255, np.uint8)
    img[10:46, 24:32] = 0
    Image.fromarray(img).save(tmp_path / "d.png")
    (name, arr, is_px), = loading.read_inputs([tmp_path / "d.png"], (1, 28, 28), invert="auto")
    assert arr.shape == (1, 1, 28, 28) and arr.dtype == np.uint8 and is_px
    assert arr[0, 0, 0, 0] == 0 and arr[0, 0, 14, 14] == 255  # inverted: light stroke on black
    (folder_name, same, _), = loading.read_inputs([tmp_path], (1, 28, 28), invert="auto")  # a folder of images
    assert folder_name.endswith("d.png")
    np.testing.assert_array_equal(same, arr)
    (_, kept, _), = loading.read_inputs([tmp_path / "d.png"], (1, 28, 28), invert="no")
    np.testing.assert_array_equal(kept, 255 - arr)
    (_, rgb, _), = loading.read_inputs([tmp_path / "d.png"], (3, 28, 28), invert="auto")
    assert rgb.shape == (1, 3, 28, 28) and rgb[0, :, 0, 0].tolist() == [255, 255, 255]
    with pytest.raises(common.UserError, match="1- or 3-channel"):
        loading.read_inputs([tmp_path / "d.png"], (2, 28, 28))
