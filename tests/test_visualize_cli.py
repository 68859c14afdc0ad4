"""`nbcnn visualize` writes decodable PNGs of the expected size."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner
from PIL import Image

from nbcnn.cli.main import cli
from nbcnn import augment as A
from nbcnn import visualize as V


def test_visualize_writes_pngs(tmp_path):
    from nbcnn import zoo
    m = zoo.lenet5(seed=0)
    m.build()
    m.save(tmp_path / "m.nbcnn")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 1, 28, 28), dtype=np.uint8)
    A.write_dataset(tmp_path / "d", "mnist", (x, np.arange(30) % 10), (x, np.arange(30) % 10))
    r = CliRunner().invoke(cli, ["visualize", str(tmp_path / "m.nbcnn"), "--layer", "2", "--units", "4",
                                 "--top", "5", "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "v"),
                                 "--scale", "2"])
    assert r.exit_code == 0, r.output
    assert "receptive field 14x14, stride 2x2, offset -2,-2" in r.output
    name = m.layers[2].name
    with Image.open(tmp_path / "v" / f"{name}_top5.png") as im:
        assert im.format == "PNG" and (im.height, im.width) == V.grid_size(4, 5, 14, 14, scale=2, gap=2)
    with Image.open(tmp_path / "v" / "filters_first_conv.png") as im:  # 6 filters 5x5: 3 columns x 2 rows
        assert (im.height, im.width) == V.grid_size(2, 3, 5, 5, scale=8, gap=2)
    with Image.open(tmp_path / "v" / f"{name}_feature_maps.png") as im:  # 16 maps 10x10: 4 x 4
        assert (im.height, im.width) == V.grid_size(4, 4, 10, 10, scale=2, gap=2)
    r = CliRunner().invoke(cli, ["visualize", str(tmp_path / "m.nbcnn"), "--layer", "nope",
                                 "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "v")])
    assert r.exit_code == 1 and "no layer named 'nope'" in r.output
