"""Model files: bit-identical round trip, optimizer state and metadata, corrupt/truncated files."""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

import nbcnn
from nbcnn import layers as L
from nbcnn import optim
from nbcnn.serialization import ModelFileError, read_index


def _model(seed=1):
    return nbcnn.Sequential([
        L.Conv2D(3, 3, padding="same", activation="tanh", input_shape=(1, 9, 9)), L.AvgPool2D(2),
        L.Conv2D(4, 2, stride=2, activation="relu", use_bias=False), L.MaxPool2D(2, padding=1),
        L.Flatten(), L.Dense(8, activation="sigmoid"), L.Dropout(0.2), L.Dense(5), L.Softmax(),
    ], device="cpu", seed=seed, name="roundtrip")


@pytest.fixture
def trained(rng):
    m = _model()
    m.compile(optimizer=optim.Adam(optim.CosineDecay(0.01, 100)))
    x = rng.normal(0, 1, (40, 1, 9, 9)).astype(np.float32)
    y = rng.integers(0, 5, 40)
    m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    return m, x, y


def test_round_trip_is_bit_identical(tmp_path, trained):
    m, x, y = trained
    path = tmp_path / "m.nbcnn"
    m.save(path, metadata={"dataset": "toy", "classes": [0, 1, 2, 3, 4]})
    r = nbcnn.load_model(path)
    assert [type(a).__name__ for a in r.layers] == [type(a).__name__ for a in m.layers]
    assert [a.name for a in r.layers] == [a.name for a in m.layers]
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(m.get_weights(), r.get_weights()))
    assert np.array_equal(m.predict(x), r.predict(x))  # bit-identical
    assert r.metadata == {"dataset": "toy", "classes": [0, 1, 2, 3, 4]}
    assert r.summary(print_fn=None) == m.summary(print_fn=None)
    # optimiser: config, schedule and state come back; the next step matches exactly
    assert r.optimizer.get_config() == m.optimizer.get_config()
    assert r.optimizer.iterations == m.optimizer.iterations == 10
    for k in ("m", "v"):
        assert np.array_equal(r.optimizer.state[k], m.optimizer.state[k])
    assert m.train_on_batch(x[:8], y[:8]) == r.train_on_batch(x[:8], y[:8])
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), r.get_weights()))
    # the file is a plain zip with a JSON index and .npy arrays
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert "nbcnn_model.json" in names and all(n.endswith(".npy") for n in names if n != "nbcnn_model.json")
    assert read_index(path)["model"]["name"] == "roundtrip"


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, trained):
    m, _, _ = trained
    path = tmp_path / "m.nbcnn"
    m.save(path)
    first = path.read_bytes()
    with pytest.raises(TypeError, match="JSON"):
        m.save(path, metadata={"bad": object()})
    assert path.read_bytes() == first  # untouched by the failed save
    assert os.listdir(tmp_path) == ["m.nbcnn"]


def test_corrupt_and_truncated_files_give_clear_errors(tmp_path, trained):
    m, _, _ = trained
    path = tmp_path / "m.nbcnn"
    m.save(path)
    data = path.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "tiny": data[:10],
        "empty": b"",
        "text": b"hello, I am not a model",
    }
    # flip a byte inside the first weight array (CRC mismatch)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("weights/0000.npy")
    off = info.header_offset + 30 + len(info.filename) + len(info.extra) + 140
    flipped = bytearray(data)
    flipped[off] ^= 0xFF
    cases["flipped"] = bytes(flipped)
    for name, blob in cases.items():
        p = tmp_path / f"{name}.nbcnn"
        p.write_bytes(blob)
        with pytest.raises(ModelFileError, match=str(p).replace("\\", "\\\\")) as ei:
            nbcnn.load_model(p)
        assert "corrupt" in str(ei.value) or "not" in str(ei.value), (name, ei.value)
    with pytest.raises(ModelFileError, match="no such model file"):
        nbcnn.load_model(tmp_path / "missing.nbcnn")
    # a zip that is not an nbcnn model, and an index that does not match its arrays
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("a.txt", "x")
    with pytest.raises(ModelFileError, match="not an nbcnn model"):
        nbcnn.load_model(other)
    edited = tmp_path / "edited.nbcnn"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(edited, "w") as dst:
        for item in src.namelist():
            blob = src.read(item)
            if item == "nbcnn_model.json":
                idx = json.loads(blob)
                idx["weights"][0]["shape"] = [1, 2, 3]
                blob = json.dumps(idx).encode()
            dst.writestr(item, blob)
    with pytest.raises(ModelFileError, match="index says"):
        nbcnn.load_model(edited)


def test_untrained_and_uncompiled_models_round_trip(tmp_path):
    m = _model(seed=5)
    path = tmp_path / "fresh.nbcnn"
    m.save(path)
    r = nbcnn.load_model(path)
    assert r.optimizer is None and r.loss is None
    x = np.random.default_rng(0).normal(0, 1, (3, 1, 9, 9)).astype(np.float32)
    assert np.array_equal(m.predict(x), r.predict(x))
