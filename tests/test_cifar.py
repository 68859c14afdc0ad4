"""The CIFAR binary reader on synthetic records, and the archive checks of its download."""
from __future__ import annotations

import gzip
import io
import tarfile

import numpy as np
import pytest

from nbcnn import cifar, datasets
from nbcnn._datapaths import DatasetError


def records(rng, n, label_bytes=1, classes=10):
    """n records: label byte(s), then 1024 R, 1024 G, 1024 B bytes; returned with the expected arrays."""
    labels = rng.integers(0, classes, size=(n, label_bytes), dtype=np.uint8)
    img = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)   # HWC, as a photo
    raw = bytearray()
    for i in range(n):
        raw += labels[i].tobytes()
        for c in range(3):  # the planes, one after the other, each row-major
            raw += bytes(int(v) for v in img[i, :, :, c].ravel())
    return bytes(raw), img.transpose(0, 3, 1, 2), labels


def write_cifar10(root, rng, per_file=3):
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    xs, ys = [], []
    for f in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        raw, x, y = records(rng, per_file)
        (d / f).write_bytes(raw)
        xs.append(x)
        ys.append(y[:, 0])
    (d / "batches.meta.txt").write_text("\n".join(["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse",
                                                   "ship", "truck"]) + "\n\n")
    return d, xs, ys


def test_cifar10_exact_pixels_and_labels(tmp_path, rng):
    d, xs, ys = write_cifar10(tmp_path, rng)
    for where in (tmp_path, d):  # the folder holding cifar-10-batches-bin, or that folder
        (x_tr, y_tr), (x_te, y_te) = datasets.load_cifar10(where)
        assert x_tr.shape == (15, 3, 32, 32) and x_tr.dtype == np.uint8 and x_te.shape == (3, 3, 32, 32)
        np.testing.assert_array_equal(x_tr, np.concatenate(xs[:5]))
        np.testing.assert_array_equal(y_tr, np.concatenate(ys[:5]))
        np.testing.assert_array_equal(x_te, xs[5])
        np.testing.assert_array_equal(y_te, ys[5])
    *_, names = cifar.load_cifar("cifar10", tmp_path)
    assert names[:2] == ["plane", "car"] and len(names) == 10


def test_one_record_by_hand(tmp_path):
    rec = bytes([7]) + bytes([10] * 1024) + bytes([20] * 1024) + bytes(range(256)) * 4
    (tmp_path / "one.bin").write_bytes(rec)
    x, y = cifar.read_cifar_file(tmp_path / "one.bin")
    assert y.tolist() == [7]
    assert (x[0, 0] == 10).all() and (x[0, 1] == 20).all()
    assert x[0, 2, 0, :5].tolist() == [0, 1, 2, 3, 4] and x[0, 2, 7, 31] == 255  # row 7 ends a 256-run


def test_cifar100_fine_labels(tmp_path, rng):
    d = tmp_path / "cifar-100-binary"
    d.mkdir()
    raw, x, lab = records(rng, 4, label_bytes=2, classes=100)
    (d / "train.bin").write_bytes(raw)
    raw_t, x_t, lab_t = records(rng, 2, label_bytes=2, classes=100)
    (d / "test.bin").write_bytes(raw_t)
    (x_tr, y_tr), (x_te, y_te) = datasets.load_cifar100(tmp_path)
    np.testing.assert_array_equal(y_tr, lab[:, 1])  # byte 0 is the coarse label
    np.testing.assert_array_equal(x_tr, x)
    np.testing.assert_array_equal(y_te, lab_t[:, 1])


def test_truncated_file_names_it(tmp_path, rng):
    d, *_ = write_cifar10(tmp_path, rng)
    p = d / "data_batch_3.bin"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"data_batch_3\.bin: truncated"):
        datasets.load_cifar10(tmp_path)
    (d / "test_batch.bin").unlink()
    with pytest.raises(DatasetError, match="no cifar10 binary files"):
        datasets.load_cifar10(tmp_path)


def test_no_download_when_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("NBCNN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("NBCNN_OFFLINE", "1")
    monkeypatch.delenv("NBCNN_DATA", raising=False)
    with pytest.raises(DatasetError, match="downloads disabled"):
        datasets.load_cifar10()


def tar_gz(path, members):
    """members: (name, bytes | None for a dir | ('link', target))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            elif isinstance(data, tuple):
                info.type = tarfile.SYMTYPE
                info.linkname = data[1]
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue()))
    return path


def test_safe_extract_accepts_a_good_archive(tmp_path):
    a = tar_gz(tmp_path / "ok.tar.gz", [("cifar-10-batches-bin", None), ("cifar-10-batches-bin/a.bin", b"x" * 10)])
    out = cifar.safe_extract(a, tmp_path / "dest", "cifar-10-batches-bin")
    assert (out / "a.bin").read_bytes() == b"x" * 10
    assert [p.name for p in (tmp_path / "dest").iterdir()] == ["cifar-10-batches-bin"]  # no temp left


@pytest.mark.parametrize("members, why", [
    ([("cifar-10-batches-bin/../../evil", b"x")], "unsafe member path"),
    ([("/etc/evil", b"x")], "unsafe member path"),
    ([("elsewhere/a.bin", b"x")], "outside cifar-10-batches-bin"),
    ([("cifar-10-batches-bin/link", ("link", "/etc/passwd"))], "not a regular file"),
    ([("cifar-10-batches-bin/big.bin", b"\0" * 5000)], "more than the 4,096 allowed"),
])
def test_safe_extract_refuses_hostile_archives(tmp_path, members, why):
    a = tar_gz(tmp_path / "bad.tar.gz", members)
    with pytest.raises(DatasetError, match=why):
        cifar.safe_extract(a, tmp_path / "dest", "cifar-10-batches-bin", max_member=4096, max_total=1 << 20)
    assert not (tmp_path / "evil").exists() and not list((tmp_path / "dest").glob("*"))


def test_safe_extract_refuses_a_bomb_by_its_trailer(tmp_path):
    a = tar_gz(tmp_path / "bomb.tar.gz", [("cifar-10-batches-bin/z.bin", b"\0" * (3 << 20))])
    with pytest.raises(DatasetError, match="unpacks to"):
        cifar.safe_extract(a, tmp_path / "dest", "cifar-10-batches-bin", max_total=1 << 20)
