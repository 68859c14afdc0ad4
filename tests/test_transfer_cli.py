"""`nbcnn transfer` on a tiny synthetic data set: the cache is reused, errors are one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from nbcnn.cli.main import cli
from nbcnn import augment as A


def _dataset(root, name="fashion-mnist", n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = (rng.uniform(0, 60, (n, 1, 28, 28)) + 40 * y[:, None, None, None]).astype(np.uint8)
    A.write_dataset(root, name, (x, y), (x[:24], y[:24]))
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from nbcnn import zoo
    d = tmp_path_factory.mktemp("tcli")
    base = zoo.lenet5(seed=0)
    base.build()
    base.save(d / "base.nbcnn")
    return d, _dataset(d / "data")


def test_transfer_trains_head_on_cached_features(setup):
    d, data = setup
    args = ["transfer", str(d / "base.nbcnn"), "--dataset", "fashion-mnist", "--data-dir", str(data),
            "--classes", "0,1,2", "--train-size", "30", "--epochs", "2", "--cache-dir", str(d / "cache"),
            "--out", str(d / "t.nbcnn"), "--json", str(d / "t.json")]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    info = json.loads((d / "t.json").read_text())
    assert info["cache"] == "miss" and info["train_size"] == 30 and info["classes"] == [0, 1, 2]
    assert info["test_images"] == 18 and 0 <= info["test_accuracy"] <= 1
    import nbcnn
    m = nbcnn.load_model(d / "t.nbcnn")
    assert m.output_shape == (None, 3)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert json.loads((d / "t.json").read_text())["cache"] == "hit"
    assert "cache hit" in r.output


@pytest.mark.parametrize("extra,msg", [(["--classes", "a,b"], "--classes must be"),
                                       (["--classes", "1"], "at least two"),
                                       (["--classes", "0,7"], "do not occur"),
                                       (["--train-size", "100", "--classes", "0,1"], "has only"),
                                       (["--train-last", "9"], "only 5 layers with weights")])
def test_transfer_user_errors_are_one_line(setup, extra, msg):
    d, data = setup
    r = CliRunner().invoke(cli, ["transfer", str(d / "base.nbcnn"), "--data-dir", str(data), "--no-cache",
                                 "--epochs", "1", "--out", str(d / "x.nbcnn"), *extra])
    assert r.exit_code == 1, r.output
    assert msg in r.output and "Traceback" not in r.output


def test_transfer_missing_model(tmp_path):
    r = CliRunner().invoke(cli, ["transfer", str(tmp_path / "nope.nbcnn"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "not found" in r.output


def test_transfer_fine_tunes_everything_without_cache(setup):
    # --train-last = all weighted layers: the base is only the initialisation, nothing is cached
    d, data = setup
    r = CliRunner().invoke(cli, ["transfer", str(d / "base.nbcnn"), "--data-dir", str(data), "--classes", "0,3",
                                 "--train-last", "5", "--epochs", "1", "--cache-dir", str(d / "c2"),
                                 "--out", str(d / "ft.nbcnn")])
    assert r.exit_code == 0, r.output
    assert "frozen: nothing" in r.output and not (d / "c2").exists()
