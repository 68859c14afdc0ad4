"""`nbcnn augment` writes a data set that nbcnn.datasets (and so `nbcnn train --data-dir`) reads."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from PIL import Image

from nbcnn.cli import loading
from nbcnn.cli.main import cli
from nbcnn.cli.train import validation_cut
from nbcnn import augment as A
from nbcnn import datasets


def test_augment_writes_readable_dataset(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 1, 28, 28), dtype=np.uint8)
    y = np.arange(20) % 10
    A.write_dataset(tmp_path / "src", "mnist", (x, y), (x[:5], y[:5]))
    out = tmp_path / "aug"
    r = CliRunner().invoke(cli, ["augment", "--data-dir", str(tmp_path / "src"), "--ops", "rotate=10,noise=0.05",
                                 "--copies", "2", "--out", str(out), "--preview", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.output
    (xt, yt), (xe, ye) = datasets.load_dataset("mnist", path=out)
    # each source image is followed by its two copies (so a held-out tail never splits a group)
    assert xt.shape[0] == 60 and np.array_equal(xt[0::3].reshape(x.shape), x)
    assert yt.tolist() == np.repeat(y, 3).tolist() and xe.shape[0] == 5
    assert not np.array_equal(xt[1::3], xt[2::3])
    assert not np.array_equal(xt[1::3].reshape(x.shape), x)
    info = loading.load_dataset("mnist", out)[2]
    assert info["group_size"] == 3
    # --val-split 0.1 of 60 images = 6 = two whole groups; 0.15 (9) rounds up to 3 groups
    assert validation_cut(60, 0.1, 3) == 54 and validation_cut(60, 0.15, 3) == 51
    assert validation_cut(60, 0.15, 1) == 51 and validation_cut(61, 0.1, 3) == 55
    with Image.open(tmp_path / "p.png") as im:  # 8 rows (originals) x 3 columns, 28 px x2 + 2 px gaps
        assert im.size == (3 * 56 + 4 * 2, 8 * 56 + 9 * 2)


def test_augment_bad_spec_is_a_one_line_error(tmp_path):
    r = CliRunner().invoke(cli, ["augment", "--ops", "spin=3", "--out", str(tmp_path)])
    assert r.exit_code == 1 and "unknown augmentation 'spin'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["augment", "--ops", "none", "--out", str(tmp_path)])
    assert r.exit_code == 1 and "nothing to do" in r.output
