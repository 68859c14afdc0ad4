"""summary(explain=True) / nbcnn summary --explain: the per-layer arithmetic, checked against
numbers worked out independently here."""
from __future__ import annotations

import nbcnn
from nbcnn import layers as L
from nbcnn import zoo


def test_lenet5_arithmetic_and_totals():
    m = zoo.lenet5()
    text = m.summary(print_fn=None, explain=True, batch_size=32)
    assert "Total params: 61,706" in text                       # the table comes first
    assert "H: ⌊(28 + 2·2 − 5) / 1⌋ + 1 = 28" in text           # conv 5x5, padding 2
    assert "H: ⌊(14 + 2·0 − 5) / 1⌋ + 1 = 10" in text
    assert "receptive field 16×16 input pixels, jump 4×4" in text
    # multiply-adds by hand: two convs (K·Ho·Wo·C·k·k) and three dense layers (in·out)
    macs = 6 * 28 * 28 * 1 * 25 + 16 * 10 * 10 * 6 * 25 + 400 * 120 + 120 * 84 + 84 * 10
    assert f"forward multiply-adds per image: {macs:,} ({2 * macs:,} FLOPs)" in text
    assert f"= {6 * macs * 32:,} FLOPs" in text
    acts = 6 * 28 * 28 + 6 * 14 * 14 + 16 * 10 * 10 + 16 * 5 * 5 + 400 + 120 + 84 + 10
    assert f"activations per image: {acts:,} values" in text


def test_dilation_ceil_mode_and_asymmetric_padding_are_shown():
    m = nbcnn.Sequential([L.Conv2D(4, 3, dilation_rate=2, input_shape=(1, 9, 9)),
                          L.MaxPool2D(2, ceil_mode=True),
                          L.Conv2D(2, 2, padding="same", strides=2)])
    text = m.summary(print_fn=None, explain=True)
    assert "H: ⌊(9 + 2·0 − 5) / 1⌋ + 1 = 5   (dilated kernel: (3 − 1)·2 + 1 = 5)" in text
    assert "H: ⌈(5 + 2·0 − 2) / 2⌉ + 1 = 3   (ceil mode)" in text
    assert "H: ⌊(3 + 0 + 1 − 2) / 2⌋ + 1 = 2" in text          # 'same' with stride 2 pads after only
    assert "receptive field 5×5 input pixels, jump 1×1" in text
    assert "receptive field 6×6 input pixels, jump 2×2" in text
    assert f"multiply-adds 4·5·5 outputs × 1·3·3 taps = {4 * 5 * 5 * 9:,}" in text


def test_graph_explain_names_sources_and_unions_receptive_fields():
    x = nbcnn.Input((3, 8, 8), name="image")
    a = L.Conv2D(4, 3, padding=1, name="a")(x)
    b = L.Conv2D(4, 3, padding=1, name="b")(a)
    s = L.Add(name="s")([a, b])
    c = L.Concatenate(axis=1, name="cat")([s, a])
    m = nbcnn.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(c)))
    text = m.summary(print_fn=None, explain=True)
    assert "s (Add)  ← a, b" in text and "a (Conv2D)  ← image" in text
    assert "axis 1: 4 + 4 = 8" in text
    # a: 3x3; b on a: 5x5; their sum sees the union (5x5); the concatenation too
    assert text.count("receptive field 5×5 input pixels, jump 1×1") == 3
    assert "Connected to" in text


def test_cli_summary_explain(tmp_path):
    from click.testing import CliRunner

    from nbcnn.cli.main import cli

    res = CliRunner().invoke(cli, ["summary", "lenet5", "--explain", "--batch", "8"])
    assert res.exit_code == 0, res.output
    assert "receptive field" in res.output and "training step at batch 8" in res.output
    res = CliRunner().invoke(cli, ["summary", "lenet5", "--batch", "0"])
    assert res.exit_code != 0


def test_cli_summary_plot_draws_the_graph(tmp_path):
    import pytest
    from click.testing import CliRunner

    from nbcnn import plots
    from nbcnn.cli.main import cli

    if not plots.matplotlib_available():
        pytest.skip("matplotlib not installed")
    x = nbcnn.Input((1, 8, 8))
    a = L.Conv2D(2, 3, padding=1)(x)
    m = nbcnn.Model(x, L.Dense(2)(L.Flatten()(L.Add()([a, L.Conv2D(2, 3, padding=1)(a)]))))
    m.save(tmp_path / "m.nbcnn")
    out = tmp_path / "g.png"
    res = CliRunner().invoke(cli, ["summary", str(tmp_path / "m.nbcnn"), "--plot", str(out)])
    assert res.exit_code == 0, res.output
    from PIL import Image

    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
