"""CIFAR-10 and CIFAR-100 from the official binary format.

``load_cifar10(path=None)`` -> ``((x_train, y_train), (x_test, y_test))``, ``x`` uint8
``(N, 3, 32, 32)``, ``y`` int64. A CIFAR-10 record is 1 label byte + 3,072 pixel bytes
(the 1,024 red, then green, then blue values of a 32x32 image, row-major); a
CIFAR-100 record has 2 label bytes (coarse, fine; the fine label is used).

Where the data comes from, first hit wins: ``path`` (the folder holding
``cifar-10-batches-bin`` / ``cifar-100-binary``, or that folder itself);
``$NBCNN_DATA/<name>/``; the user cache; a download of the official tar.gz into
the cache. The download is checked before anything is unpacked: its MD5 must
match the published one, the gzip trailer's size must be plausible, and each
tar member must be a plain file inside the expected folder, no larger than the
real files (path traversal, links, devices and decompression bombs are refused).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import tarfile
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from ._datapaths import DatasetError, cache_dir, file_md5, offline

__all__ = ["load_cifar10", "load_cifar100", "read_cifar_file", "safe_extract", "CIFAR", "find_cifar"]

_PIXELS = 3 * 32 * 32

CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-bin",
        "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
        "test": ["test_batch.bin"],
        "label_bytes": 1, "label_index": 0, "names_file": "batches.meta.txt",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "md5": "c32a1d4ab5d03f1284b67883e8d87530",
        "classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    },
    "cifar100": {
        "folder": "cifar-100-binary",
        "train": ["train.bin"],
        "test": ["test.bin"],
        "label_bytes": 2, "label_index": 1, "names_file": "fine_label_names.txt",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        "md5": "03b5dce01913d631647c71ecec9e9cb8",
        "classes": None,
    },
}

_MAX_ARCHIVE = 200 << 20       # the official archives are ~162 MB
_MAX_MEMBER = 200 << 20        # the largest member (cifar-100 train.bin) is 154 MB
_MAX_TOTAL = 400 << 20


def _spec(name):
    key = name.lower().replace("-", "").replace("_", "")
    if key not in CIFAR:
        raise ValueError(f"unknown CIFAR data set {name!r}; choose cifar10 or cifar100")
    return key, CIFAR[key]


def read_cifar_file(path, label_bytes: int = 1, label_index: int = 0):
    """One binary batch file -> ``(x uint8 (N, 3, 32, 32), y int64 (N,))``; truncated files are errors."""
    path = Path(path)
    rec = label_bytes + _PIXELS
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data.size == 0 or data.size % rec:
        raise DatasetError(f"{path}: truncated or not a CIFAR batch: {data.size:,} bytes is not a whole number "
                           f"of {rec:,}-byte records")
    recs = data.reshape(-1, rec)
    y = recs[:, label_index].astype(np.int64)
    x = np.ascontiguousarray(recs[:, label_bytes:]).reshape(-1, 3, 32, 32)
    return x, y


def _complete(folder: Path, spec) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in spec["train"] + spec["test"])


def find_cifar(name: str, path=None):
    """The folder with the batch files, or None (no download)."""
    key, spec = _spec(name)
    cands = []
    if path is not None:
        p = Path(path).expanduser()
        cands = [p, p / spec["folder"], p / key / spec["folder"]]
    else:
        env = os.environ.get("NBCNN_DATA")
        if env:
            cands += [Path(env) / key / spec["folder"], Path(env) / key, Path(env) / spec["folder"]]
        cands.append(cache_dir() / key / spec["folder"])
    for c in cands:
        if _complete(c, spec):
            return c
    return None


def _class_names(folder: Path, spec, y_max: int) -> list[str]:
    try:
        names = [n.strip() for n in (folder / spec["names_file"]).read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
    except (OSError, UnicodeDecodeError):
        names = []
    if not names:
        names = list(spec["classes"] or [])
    if len(names) <= y_max:
        names = [str(i) for i in range(y_max + 1)]
    return names


def load_cifar(name: str, path=None, download: bool = True, timeout: float = 30.0):
    """``((x_train, y_train), (x_test, y_test), class_names)`` of ``"cifar10"`` or ``"cifar100"``."""
    key, spec = _spec(name)
    folder = find_cifar(key, path)
    if folder is None and path is not None:
        raise DatasetError(f"{path}: no {key} binary files there (need {spec['folder']}/ with "
                           f"{', '.join(spec['train'] + spec['test'])})")
    if folder is None:
        if not download or offline():
            raise DatasetError(f"{key} not found (looked in $NBCNN_DATA/{key} and {cache_dir() / key}; downloads "
                               "disabled); pass path= the folder holding " + spec["folder"])
        folder = download_cifar(key, timeout=timeout)
    parts = []
    for split in ("train", "test"):
        xs, ys = zip(*(read_cifar_file(folder / f, spec["label_bytes"], spec["label_index"])
                       for f in spec[split]))
        parts.append((np.concatenate(xs), np.concatenate(ys)))
    y_max = int(max(parts[0][1].max(initial=0), parts[1][1].max(initial=0)))
    return parts[0], parts[1], _class_names(folder, spec, y_max)


def load_cifar10(path=None, download: bool = True):
    """CIFAR-10 as ``((x_train, y_train), (x_test, y_test))`` (see the module docstring)."""
    tr, te, _ = load_cifar("cifar10", path, download)
    return tr, te


def load_cifar100(path=None, download: bool = True):
    """CIFAR-100 (fine labels) as ``((x_train, y_train), (x_test, y_test))``."""
    tr, te, _ = load_cifar("cifar100", path, download)
    return tr, te


# ------------------------------------------------------------------ download + safe unpacking

def download_cifar(name: str, timeout: float = 30.0) -> Path:
    key, spec = _spec(name)
    dest = cache_dir() / key
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / Path(spec["url"]).name
    if not (archive.is_file() and file_md5(archive) == spec["md5"]):
        tmp = dest / f".{archive.name}.{os.getpid()}.part"
        h = hashlib.md5()
        size = 0
        try:
            with urllib.request.urlopen(spec["url"], timeout=timeout) as r, open(tmp, "wb") as f:  # noqa: S310
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    size += len(chunk)
                    if size > _MAX_ARCHIVE:
                        raise DatasetError(f"{spec['url']}: larger than {_MAX_ARCHIVE >> 20} MB; refusing it")
                    h.update(chunk)
                    f.write(chunk)
            if h.hexdigest() != spec["md5"]:
                raise DatasetError(f"{spec['url']}: MD5 {h.hexdigest()} != {spec['md5']}; not using it")
            os.replace(tmp, archive)
        except Exception as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, DatasetError):
                raise
            raise DatasetError(f"{key}: download from {spec['url']} failed ({exc})") from None
    safe_extract(archive, dest, spec["folder"])
    folder = dest / spec["folder"]
    if not _complete(folder, spec):
        raise DatasetError(f"{archive}: the archive does not hold the expected {spec['folder']}/ files")
    return folder


def _gzip_size(path: Path) -> int:
    """The uncompressed size a gzip file claims (its trailer, modulo 4 GiB)."""
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            raise DatasetError(f"{path}: not a gzip file")
        f.seek(-4, os.SEEK_END)
        return struct.unpack("<I", f.read(4))[0]


def safe_extract(archive, dest, folder: str, max_member: int = _MAX_MEMBER, max_total: int = _MAX_TOTAL) -> Path:
    """Unpack the regular files under ``folder/`` of a tar.gz into ``dest`` (atomically per folder).

    Refused, naming the member: absolute paths, ``..``, anything outside ``folder/``,
    links, devices, a member or a total larger than the limits (counted while
    decompressing, not trusted from the headers).
    """
    archive, dest = Path(archive), Path(dest)
    claimed = _gzip_size(archive)
    if claimed > max_total:
        raise DatasetError(f"{archive}: unpacks to {claimed:,} bytes, more than the {max_total:,} allowed")
    tmp = dest / f".{folder}.{os.getpid()}-{time.monotonic_ns()}.tmp"
    tmp.mkdir(parents=True)
    total = 0
    try:
        try:
            tf = tarfile.open(archive, "r:gz")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DatasetError(f"{archive}: not a readable tar.gz ({exc})") from None
        with tf:
            for m in tf:
                name = m.name
                parts = Path(name).parts
                if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts or not parts:
                    raise DatasetError(f"{archive}: unsafe member path {name!r}")
                if parts[0] != folder:
                    raise DatasetError(f"{archive}: member {name!r} is outside {folder}/")
                if m.isdir():
                    continue
                if not m.isfile():
                    raise DatasetError(f"{archive}: member {name!r} is not a regular file (links and devices "
                                       "are refused)")
                if m.size > max_member:
                    raise DatasetError(f"{archive}: member {name!r} is {m.size:,} bytes, more than the "
                                       f"{max_member:,} allowed")
                target = tmp.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                written = 0
                with open(target, "wb") as out:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        written += len(chunk)
                        total += len(chunk)
                        if written > max_member or total > max_total:
                            raise DatasetError(f"{archive}: member {name!r} unpacks past the size limit")
                        out.write(chunk)
        final = dest / folder
        produced = tmp / folder
        if not produced.is_dir():
            raise DatasetError(f"{archive}: no {folder}/ in the archive")
        if final.exists():
            shutil.rmtree(final)
        os.rename(produced, final)
        return final
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(f"{archive}: corrupt archive ({exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

