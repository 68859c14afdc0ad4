"""``nbcnn train / predict / evaluate`` on users' own data: image folders and CIFAR, end to end, in seconds."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

import nbcnn  # noqa: E402
from nbcnn.cli.main import cli  # noqa: E402

CLASSES = {"apple": (220, 30, 30), "leaf": (30, 200, 40), "sky": (40, 80, 230)}
FAST = ["--epochs", "1", "--batch-size", "8", "--seed", "3", "--no-plot", "--workers", "0"]


def make_tree(root, n, rng, formats=("png", "jpg", "bmp")):
    for name, rgb in CLASSES.items():
        d = root / name
        d.mkdir(parents=True)
        for i in range(n):
            h, w = 8 + i % 3, 9 + i % 2
            a = np.clip(np.array(rgb)[None, None] + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
            im = Image.fromarray(a)
            if i % 4 == 3:
                im = im.convert("RGBA")
            fmt = formats[i % len(formats)]
            if fmt == "jpg":
                im = im.convert("RGB")
            im.save(d / f"{i}.{fmt}")


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("NBCNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NBCNN_OFFLINE", "1")
    monkeypatch.delenv("NBCNN_DEVICE", raising=False)
    return tmp_path


@pytest.fixture
def tree(env):
    rng = np.random.default_rng(0)
    make_tree(env / "photos" / "train", 12, rng)
    make_tree(env / "photos" / "test", 4, rng)
    (env / "photos" / "train" / "sky" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (env / "photos" / "train" / "leaf" / "README.txt").write_text("notes")
    return env / "photos"


def run(args):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    return res


def test_folder_train_predict_evaluate(tree, env):
    out = env / "m.nbcnn"
    res = run(["train", "--data-dir", tree, "--image-size", 8, 8, *FAST, "--out", out])
    assert res.exit_code == 0, res.output
    assert "3 classes: apple, leaf, sky" in res.output
    assert "Training small_cnn" in res.output
    assert "test accuracy" in res.output and "on 12 images" in res.output
    lines = [line.split() for line in res.output.splitlines()]
    assert ["apple", "11", "1", "4"] in lines or ["apple", "12", "0", "4"] in lines or any(
        r[:1] == ["apple"] and r[-1] == "4" for r in lines)
    m = nbcnn.load_model(out)
    assert m.metadata["class_names"] == ["apple", "leaf", "sky"]
    assert tuple(m.input_shape) == (3, 8, 8)
    assert type(m.layers[0]).__name__ == "Normalization" and m.layers[0].adapted  # raw pixels in, standardised
    # predict: the raw file (another size) -> a class name and its probability
    img = tree / "test" / "sky" / "1.jpg"
    res = run(["predict", out, img, "--top-k", "2"])
    assert res.exit_code == 0, res.output
    row = res.output.strip().splitlines()[-1]
    names = [tok for tok in row.split() if tok in CLASSES]
    assert len(names) == 2 and "%)" in row and "inverted" not in res.output
    res = run(["predict", out, img, "--json", "-"])
    top = json.loads(res.output)[0]["top"]
    assert top[0]["label"] in CLASSES and abs(sum(t["probability"] for t in top) - 1) < 0.05
    # evaluate: accuracy, a per-class table with the names, the confusion matrix
    png = env / "cm.png"
    res = run(["evaluate", out, "--data-dir", tree, "--plot", png])
    assert res.exit_code == 0, res.output
    assert "folder test: 12 images" in res.output and "accuracy" in res.output
    for name in CLASSES:
        assert any(line.startswith(name) for line in res.output.splitlines())
    if "confusion matrix:" in res.output:
        assert png.is_file()
    res = run(["evaluate", out, "--no-plot"])
    assert res.exit_code == 1 and "pass --data-dir" in res.output


def test_one_level_split_grayscale_streamed(env, monkeypatch):
    make_tree(env / "flat", 8, np.random.default_rng(1))
    monkeypatch.setenv("NBCNN_IN_MEMORY_MB", "0.001")  # force the streamed path
    out = env / "g.nbcnn"
    res = run(["train", "--data-dir", env / "flat", "--test-split", "0.25", "--color", "grayscale",
               "--image-size", 6, 6, "--model", "small_vgg", *FAST, "--out", out])
    assert res.exit_code == 0, res.output
    assert "on 6 images" in res.output  # 2 of 8 per class
    m = nbcnn.load_model(out)
    assert tuple(m.input_shape) == (1, 6, 6) and m.output_shape[-1] == 3
    res = run(["train", "--data-dir", env / "flat", "--test-split", "0.25", "--color", "grayscale",
               "--image-size", 6, 6, "--model", "small_vgg", *FAST, "--out", env / "g2.nbcnn"])
    w1, w2 = nbcnn.load_model(out).get_weights(), nbcnn.load_model(env / "g2.nbcnn").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(w1, w2))  # seeded split, seeded run


def test_bad_folders_are_one_line_errors(env):
    rng = np.random.default_rng(2)
    make_tree(env / "a" / "train", 3, rng)
    make_tree(env / "a" / "test", 1, rng)
    (env / "a" / "test" / "moon").mkdir()
    Image.new("RGB", (5, 5)).save(env / "a" / "test" / "moon" / "m.png")
    res = run(["train", "--data-dir", env / "a", *FAST])
    assert res.exit_code == 1
    assert "Error:" in res.output and "moon" in res.output and "not among the training classes" in res.output
    (env / "a" / "test" / "moon" / "m.png").unlink()
    (env / "a" / "test" / "moon").rmdir()
    (env / "a" / "train" / "moon").mkdir()
    res = run(["train", "--data-dir", env / "a", *FAST])
    assert res.exit_code == 1 and "a/train/moon: empty class folder" in res.output
    (env / "a" / "train" / "moon").rmdir()
    (env / "a" / "train" / "sky" / "bad.png").write_bytes(b"not a png at all")
    res = run(["train", "--data-dir", env / "a", "--image-size", 6, 6, *FAST, "--out", env / "b.nbcnn"])
    assert res.exit_code == 0, res.output
    assert "skipped 1 unreadable image file(s)" in res.output and "bad.png" in res.output
    res = run(["train", "--data-dir", env / "a", "--image-size", 6, 6, "--strict", *FAST])
    assert res.exit_code == 1 and "bad.png: cannot read image" in res.output
    (env / "empty").mkdir()
    res = run(["train", "--data-dir", env / "empty", *FAST])
    assert res.exit_code == 1 and "no mnist data there" in res.output and "one sub-folder per class" in res.output


def test_cifar10_layout_in_data_dir(env):
    from test_cifar import write_cifar10

    write_cifar10(env / "c", np.random.default_rng(3), per_file=4)
    out = env / "c.nbcnn"
    res = run(["train", "--data-dir", env / "c", "--model", "small_vgg", *FAST, "--out", out])
    assert res.exit_code == 0, res.output
    assert "10 classes: plane, car" in res.output and "test accuracy" in res.output
    m = nbcnn.load_model(out)
    assert tuple(m.input_shape) == (3, 32, 32) and m.output_shape[-1] == 10
    assert m.metadata["dataset"] == "cifar10" and m.metadata["class_names"][0] == "plane"
    res = run(["train", "--dataset", "cifar10", *FAST])
    assert res.exit_code == 1 and "cifar10 not found" in res.output
