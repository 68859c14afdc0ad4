"""Hostile and hand-edited model files: rejected fast, with bounded memory, by a ModelFileError naming the field."""
from __future__ import annotations

import json
import struct
import time
import zipfile
import zlib

import numpy as np
import pytest

import nbcnn
from nbcnn import layers as L
from nbcnn.serialization import ModelFileError, load_model

GIB2 = 2 << 30


def _zeros_deflate(total: int) -> bytes:
    """A raw deflate stream of ``total`` zero bytes (~1000:1), built from one 16 MiB fully-flushed block."""
    c = zlib.compressobj(1, zlib.DEFLATED, -15)
    chunk = 16 << 20
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    return block * (total // chunk) + c.flush()


def _zip_with_member(path, name: str, deflated: bytes, size: int) -> None:
    """A one-member zip, written by hand so the 2 GiB member never exists uncompressed."""
    n = name.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, 0, len(deflated), size, len(n), 0) + n
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, 0, len(deflated), size,
                          len(n), 0, 0, 0, 0, 0, 0) + n
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(deflated), 0)
    path.write_bytes(local + deflated + central + end)


def test_an_index_that_inflates_to_2_gib_is_rejected_at_once(tmp_path):
    bomb = tmp_path / "bomb.nbcnn"
    _zip_with_member(bomb, "nbcnn_model.json", _zeros_deflate(GIB2), GIB2)
    assert bomb.stat().st_size < 10 << 20  # ~230:1
    t = time.perf_counter()
    with pytest.raises(ModelFileError, match="declares 2,147,483,648 bytes"):
        load_model(bomb)
    assert time.perf_counter() - t < 1.0


def test_an_index_that_lies_about_its_size_is_read_bounded(tmp_path):
    bomb = tmp_path / "liar.nbcnn"
    _zip_with_member(bomb, "nbcnn_model.json", _zeros_deflate(GIB2), 1000)
    t = time.perf_counter()
    with pytest.raises(ModelFileError):
        load_model(bomb)
    assert time.perf_counter() - t < 1.0


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    nbcnn.seed(0)
    m = nbcnn.Sequential([L.Flatten(input_shape=(1, 4, 4)), L.Dense(3)])
    m.compile(optimizer="adam")
    m.fit(np.zeros((4, 1, 4, 4), np.float32), np.array([0, 1, 2, 0]), epochs=1, batch_size=2, verbose=0)
    p = tmp_path_factory.mktemp("m") / "m.nbcnn"
    m.save(p)
    return p


def _edited(saved, tmp_path, edit):
    with zipfile.ZipFile(saved) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    index = json.loads(members["nbcnn_model.json"])
    edit(index)
    members["nbcnn_model.json"] = json.dumps(index).encode()
    out = tmp_path / "edited.nbcnn"
    with zipfile.ZipFile(out, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    return out


def _dense(index):
    return next(lc for lc in index["model"]["layers"] if lc["class_name"] == "Dense")


@pytest.mark.parametrize("edit, field", [
    (lambda ix: ix.update(version="abc"), "version"),
    (lambda ix: ix["weights"][0].pop("shape"), "weights[0].shape: missing"),
    (lambda ix: ix.update(weights=5), "weights: expected a list"),
    (lambda ix: ix["optimizer_state"].update(scalars="garbage"), "optimizer_state.scalars"),
    (lambda ix: ix["training"]["progress"].update(epoch="x"), "progress.epoch"),
    (lambda ix: ix["weights"][0].update(shape=[10 ** 9, 4]), "weights/0000.npy"),
    (lambda ix: _dense(ix)["config"].update(units=10 ** 12), "of memory available"),
], ids=["version", "no-shape", "weights-5", "scalars", "epoch", "huge-shape", "dense-1e12"])
def test_hand_edited_index_fields_name_the_field(saved, tmp_path, edit, field):
    bad = _edited(saved, tmp_path, edit)
    t = time.perf_counter()
    with pytest.raises(ModelFileError, match=field.replace("[", r"\[").replace("]", r"\]")):
        load_model(bad)
    assert time.perf_counter() - t < 1.0


def test_the_unedited_file_still_loads(saved):
    assert load_model(saved).count_params() == 16 * 3 + 3


def _gzip_member(raw_deflate: bytes, crc: int, size: int) -> bytes:
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + raw_deflate + struct.pack("<II", crc, size & 0xFFFFFFFF)


@pytest.mark.parametrize("dims", [(10, 28, 28), (2739000, 28, 28)], ids=["small-header", "huge-header"])
def test_a_small_gz_idx_expanding_to_2_gib_is_rejected_at_once(tmp_path, dims):
    import gzip

    from nbcnn.datasets import DatasetError, read_idx

    header = b"\x00\x00\x08\x03" + b"".join(struct.pack(">I", d) for d in dims)
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(header) + _gzip_member(_zeros_deflate(GIB2), 0, GIB2))
    t = time.perf_counter()
    with pytest.raises(DatasetError, match="trailing data|not a real data set"):
        read_idx(bomb, 3)
    assert time.perf_counter() - t < 1.0
