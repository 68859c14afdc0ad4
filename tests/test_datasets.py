"""Data sets: the IDX reader (validation, errors naming the file), real MNIST/Fashion-MNIST facts
from shared/data/README.md, the search order, the bundled sample, and the batch iterator."""
from __future__ import annotations

import gzip
import os
import shutil

import numpy as np
import pytest

from nbcnn import datasets as D
from _data import data_dir


def _idx_bytes(arr: np.ndarray, code=0x08) -> bytes:
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write_set(folder, n_train=12, n_test=5, gz=True, seed=0):
    r = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train-images-idx3-ubyte": r.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
             "train-labels-idx1-ubyte": r.integers(0, 10, n_train, dtype=np.uint8),
             "t10k-images-idx3-ubyte": r.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
             "t10k-labels-idx1-ubyte": r.integers(0, 10, n_test, dtype=np.uint8)}
    for name, arr in parts.items():
        blob = _idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(blob))
        else:
            (folder / name).write_bytes(blob)
    return parts


def test_read_idx_raw_and_gzip_and_other_dtypes(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(a))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(a)))
    assert np.array_equal(D.read_idx(tmp_path / "a"), a)
    assert np.array_equal(D.read_idx(tmp_path / "a.gz", expect_ndim=3), a)
    f = np.array([[1.5, -2.0], [3.25, 4.0]], dtype=np.float32)
    (tmp_path / "f").write_bytes(_idx_bytes(f, code=0x0D))
    got = D.read_idx(tmp_path / "f")
    assert got.dtype == np.float32 and np.array_equal(got, f)


def test_read_idx_errors_name_the_file(tmp_path):
    a = np.zeros((3, 28, 28), np.uint8)
    blob = _idx_bytes(a)
    cases = {
        "truncated": blob[:-1],
        "trailing": blob + b"\0",
        "badmagic": b"\x01\x02" + blob[2:],
        "baddtype": blob[:2] + b"\x07" + blob[3:],
        "shortheader": blob[:6],
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(D.DatasetError, match=str(p)):
            D.read_idx(p)
    with pytest.raises(D.DatasetError, match="truncated: header says shape \\(3, 28, 28\\)"):
        D.read_idx(tmp_path / "truncated")
    p = tmp_path / "labels-as-images"
    p.write_bytes(_idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(D.DatasetError, match="expected an IDX file with 3 dimension"):
        D.read_idx(p, expect_ndim=3)
    gz = tmp_path / "cut.gz"
    gz.write_bytes(gzip.compress(blob)[:-12])
    with pytest.raises(D.DatasetError, match=f"{gz}: corrupt or truncated gzip"):
        D.read_idx(gz)
    with pytest.raises(D.DatasetError, match="file not found"):
        D.read_idx(tmp_path / "nope")


def test_real_mnist_matches_published_facts():
    folder = data_dir("mnist")
    (xtr, ytr), (xte, yte) = D.load_mnist(path=folder)
    assert xtr.shape == (60000, 1, 28, 28) and xte.shape == (10000, 1, 28, 28) and xtr.dtype == np.uint8
    assert np.bincount(ytr).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(yte).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert int(xtr.sum(dtype=np.int64)) == 1567298545 and int(xte.sum(dtype=np.int64)) == 264923200
    assert int(xtr[0].sum()) == 27525 and int(xtr[-1].sum()) == 20920
    assert int(xte[0].sum()) == 18454 and int(xte[-1].sum()) == 41833
    assert ytr[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4] and yte[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    # the bundled sample is exactly the first images of the real set
    (str_, sytr), (ste, syte) = D.load_sample()
    assert np.array_equal(str_, xtr[:len(str_)]) and np.array_equal(sytr, ytr[:len(sytr)])
    assert np.array_equal(ste, xte[:len(ste)]) and np.array_equal(syte, yte[:len(syte)])


def test_real_fashion_mnist_matches_published_facts():
    data_dir("fashion-mnist")
    (xtr, ytr), (xte, yte) = D.load_fashion_mnist(download=False)
    assert D.last_source["source"] == "env"
    assert np.bincount(ytr).tolist() == [6000] * 10 and np.bincount(yte).tolist() == [1000] * 10
    assert int(xtr.sum(dtype=np.int64)) == 3431114169 and int(xte.sum(dtype=np.int64)) == 573469082
    assert int(xtr[0].sum()) == 76247 and int(xte[0].sum()) == 33456
    assert ytr[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5] and yte[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]


def test_search_order_path_env_cache_sample(tmp_path, monkeypatch, capsys):
    env_parts = _write_set(tmp_path / "env" / "mnist", seed=1)
    cache_parts = _write_set(tmp_path / "cache" / "mnist", n_train=7, gz=False, seed=2)
    arg_parts = _write_set(tmp_path / "arg", n_train=9, seed=3)
    monkeypatch.setenv("NBCNN_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("NBCNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NBCNN_OFFLINE", "1")
    (x, y), _ = D.load_mnist(path=tmp_path / "arg")
    assert D.last_source["source"] == "path" and np.array_equal(x[:, 0], arg_parts["train-images-idx3-ubyte"])
    (x, y), _ = D.load_mnist()
    assert D.last_source["source"] == "env" and np.array_equal(y, env_parts["train-labels-idx1-ubyte"])
    shutil.rmtree(tmp_path / "env" / "mnist")
    (x, y), _ = D.load_mnist()
    assert D.last_source["source"] == "cache" and np.array_equal(y, cache_parts["train-labels-idx1-ubyte"])
    shutil.rmtree(tmp_path / "cache" / "mnist")
    capsys.readouterr()
    (x, y), (xt, yt) = D.load_mnist()
    err = capsys.readouterr().err
    assert D.last_source["source"] == "sample" and len(x) == 5000 and len(xt) == 1000
    assert err.count("\n") == 1 and "bundled sample" in err and "NBCNN_OFFLINE" not in err
    with pytest.raises(D.DatasetError, match="fashion-mnist not found"):
        D.load_fashion_mnist()
    with pytest.raises(D.DatasetError, match="no mnist data there"):
        D.load_mnist(path=tmp_path / "nowhere")
    # an incomplete folder is skipped, not half-loaded
    _write_set(tmp_path / "env" / "mnist")
    os.remove(tmp_path / "env" / "mnist" / "t10k-labels-idx1-ubyte.gz")
    D.load_mnist(quiet=True)
    assert D.last_source["source"] == "sample"


def test_bundled_sample_is_small_and_valid():
    assert D.SAMPLE_FILE.stat().st_size <= 2 * 1024 * 1024
    (x, y), (xt, yt) = D.load_sample()
    assert x.shape == (5000, 1, 28, 28) and xt.shape == (1000, 1, 28, 28)
    assert set(np.unique(y)) == set(range(10))


def test_npz_path_and_to_float(tmp_path):
    r = np.random.default_rng(0)
    x = r.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    y = np.arange(6, dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
    (a, b), (c, d) = D.load_mnist(path=tmp_path / "d.npz")
    assert a.shape == (6, 1, 28, 28) and np.array_equal(d, y[:2])
    f = D.to_float(a)
    assert f.dtype == np.float32 and f.max() <= 1.0 and np.allclose(f * 255, a, atol=1e-4)


def test_batch_iterator_covers_each_sample_once_without_copying():
    x = np.arange(103 * 2, dtype=np.float32).reshape(103, 2)
    y = np.arange(103)
    it = D.BatchIterator(x, y, batch_size=10, shuffle=True, seed=5)
    assert len(it) == 11
    seen = np.concatenate([yb for _, yb in it.epoch(0)])
    assert sorted(seen.tolist()) == list(range(103))
    for xb, yb in it.epoch(0):
        assert np.array_equal(xb[:, 0], 2 * yb)  # pairs stay aligned
    # deterministic per (seed, epoch); different across epochs; resumable from a batch
    e0 = [yb.tolist() for _, yb in it.epoch(0)]
    assert e0 == [yb.tolist() for _, yb in D.BatchIterator(x, y, 10, seed=5).epoch(0)]
    assert e0 != [yb.tolist() for _, yb in it.epoch(1)]
    assert [yb.tolist() for _, yb in it.epoch(0, start=4)] == e0[4:]
    # without shuffling the batches are views into the data set
    plain = D.BatchIterator(x, y, batch_size=10, shuffle=False)
    xb, _ = next(iter(plain))
    assert np.shares_memory(xb, x)
    assert len(D.BatchIterator(x, y, batch_size=10, drop_last=True)) == 10
    with pytest.raises(ValueError, match="103 samples but y has 3"):
        D.BatchIterator(x, y[:3])
