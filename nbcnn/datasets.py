"""MNIST and Fashion-MNIST: a real IDX reader, a well-defined search order, a bundled sample.

``load_mnist()`` / ``load_fashion_mnist()`` return ``(x_train, y_train), (x_test, y_test)``
with images as uint8 ``(N, 1, 28, 28)`` and labels as uint8 ``(N,)``. Use
:func:`to_float` for float32 in [0, 1] (models also accept the uint8 arrays directly).

Users' own images: :func:`image_folder` (a class per sub-folder, cached decoded,
streamed when large; :mod:`nbcnn.imagefolder`) and :func:`load_cifar10` /
:func:`load_cifar100` (the official binary format; :mod:`nbcnn.cifar`).

Where the MNIST data comes from, first hit wins:

1. the ``path`` argument: a folder with the four IDX files (``.gz`` or raw), a
   folder holding ``<name>/``, or an ``.npz`` with ``x_train, y_train, x_test, y_test``;
2. ``$NBCNN_DATA/<name>/``;
3. the user cache ``$NBCNN_CACHE_DIR`` or ``$XDG_CACHE_HOME/nbcnn`` (default
   ``~/.cache/nbcnn``) ``/<name>/``;
4. a download from the canonical mirrors into that cache (MD5-checked, short
   timeout, each file written atomically; skipped when ``download=False`` or
   ``NBCNN_OFFLINE=1``);
5. MNIST only: the sample bundled in the package (the first 5000 training and
   1000 test images of the real set) with a one-line notice on stderr.

:data:`last_source` says which one was used (the CLI reports it).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import sys
import urllib.request
from pathlib import Path

import numpy as np

from ._atomic import atomic_open, write_bytes
from ._datapaths import DatasetError, cache_dir
from .cifar import load_cifar10, load_cifar100
from .imagefolder import ImageArray, ImageFolder, image_folder

__all__ = [
    "load_mnist", "load_fashion_mnist", "load_dataset", "read_idx", "to_float", "BatchIterator",
    "DatasetError", "DATASETS", "cache_dir", "find_dataset", "last_source",
    "image_folder", "ImageFolder", "ImageArray", "load_cifar10", "load_cifar100",
]


_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

DATASETS = {
    "mnist": {
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                    "https://storage.googleapis.com/cvdf-datasets/mnist/",
                    "http://yann.lecun.com/exdb/mnist/"],
        "md5": {"train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
                "test_images": "9fb629c4189551a2d022fa330f9573f3",
                "test_labels": "ec29112dd5afa0611ce80d1b7f02629c"},
        "classes": [str(i) for i in range(10)],
    },
    "fashion-mnist": {
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "md5": {"train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
                "test_images": "bef4ecab320f06d8554ea6380940ec79",
                "test_labels": "bb300cfdad3c16e7a12a480ee83cd310"},
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                    "Bag", "Ankle boot"],
    },
}

SAMPLE_FILE = Path(__file__).parent / "data" / "mnist_sample.npz"

#: how the last load found its data: {"name", "source" (path|env|cache|download|sample), "location"}
last_source: dict = {}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


# ----------------------------------------------------------------------------------------------
# IDX
# ----------------------------------------------------------------------------------------------

_IDX_MAX_RATIO = 100  # real image sets compress ~2-10:1; zero-filled bombs 200-1000:1


def _bounded_idx_read(g, path, packed: int) -> bytes:
    """Decompress only what the IDX header declares (+1 byte to detect trailing data), after checking
    that size against the compressed size: a small .gz that would expand to gigabytes fails at once."""
    head = g.read(4)
    if len(head) < 4 or head[0] or head[1] or head[2] not in _IDX_DTYPES or not head[3]:
        return head  # the caller reports the bad header
    dims_raw = g.read(4 * head[3])
    if len(dims_raw) < 4 * head[3]:
        return head + dims_raw
    dims = [int.from_bytes(dims_raw[4 * i:4 * i + 4], "big") for i in range(head[3])]
    need = int(np.prod(dims, dtype=object)) * np.dtype(_IDX_DTYPES[head[2]]).itemsize
    if need > max(packed, 1 << 20) * _IDX_MAX_RATIO:
        raise DatasetError(f"{path}: header says shape {tuple(dims)} ({need:,} bytes), {need / max(packed, 1):,.0f} "
                           f"times the {packed:,}-byte compressed file: not a real data set")
    body = g.read(need + 1)
    return head + dims_raw + body


def read_idx(path, expect_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip'd or raw), validating the magic number and the exact size.

    Raises :class:`DatasetError` naming the file when it is truncated, too long, not gzip
    when it claims to be, or has a bad header.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                try:
                    with gzip.GzipFile(fileobj=f) as g:
                        data = _bounded_idx_read(g, path, os.fstat(f.fileno()).st_size)
                except (EOFError, OSError, gzip.BadGzipFile) as exc:
                    raise DatasetError(f"{path}: corrupt or truncated gzip file ({exc})") from None
            else:
                data = f.read()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    if len(data) < 4:
        raise DatasetError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise DatasetError(f"{path}: not an IDX file (magic bytes {data[:4].hex()})")
    ndim = data[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise DatasetError(f"{path}: expected an IDX file with {expect_ndim} dimension(s) "
                           f"(magic 0x{0x800 + expect_ndim:x}), got magic 0x{int.from_bytes(data[2:4], 'big'):x}")
    hdr = 4 + 4 * ndim
    if len(data) < hdr:
        raise DatasetError(f"{path}: truncated header ({len(data)} bytes, need {hdr})")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    need = hdr + int(np.prod(dims)) * dtype.itemsize
    if len(data) != need:
        if len(data) < need:
            raise DatasetError(f"{path}: truncated: header says shape {dims} ({need:,} bytes in all), "
                               f"file has {len(data):,} bytes")
        raise DatasetError(f"{path}: has trailing data: header says shape {dims} ({need:,} bytes in all), "
                           f"the file holds more")
    arr = np.frombuffer(data, dtype=dtype, offset=hdr).reshape(dims)
    return arr.astype(dtype.newbyteorder("=")) if dtype.byteorder == ">" else arr.copy()


def _find_file(folder: Path, key: str) -> Path | None:
    base = _FILES[key]
    alt = base.replace("-idx", ".idx")
    for name in (base + ".gz", base, alt + ".gz", alt):
        p = folder / name
        if p.is_file():
            return p
    return None


def _complete(folder: Path) -> bool:
    return folder.is_dir() and all(_find_file(folder, k) for k in _FILES)


def _load_folder(folder: Path, name: str):
    tr_x = read_idx(_find_file(folder, "train_images"), 3)
    tr_y = read_idx(_find_file(folder, "train_labels"), 1)
    te_x = read_idx(_find_file(folder, "test_images"), 3)
    te_y = read_idx(_find_file(folder, "test_labels"), 1)
    return _finish(name, folder, tr_x, tr_y, te_x, te_y)


def _finish(name, where, tr_x, tr_y, te_x, te_y):
    for split, x, y in (("train", tr_x, tr_y), ("test", te_x, te_y)):
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.dtype != np.uint8:
            raise DatasetError(f"{where}: {split} images must be uint8 (N, H, W) or (N, C, H, W), "
                               f"got {x.dtype} {x.shape}")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DatasetError(f"{where}: {split} has {x.shape[0]} images but labels of shape {y.shape}")
        if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
            raise DatasetError(f"{where}: {split} labels must be 0..9, got {int(y.min())}..{int(y.max())}")
        if split == "train":
            tr_x, tr_y = x, y.astype(np.uint8)
        else:
            te_x, te_y = x, y.astype(np.uint8)
    return (tr_x, tr_y), (te_x, te_y)


def _load_npz(path: Path, name: str):
    try:
        with np.load(path, allow_pickle=False) as z:
            arrs = [z[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    except KeyError as exc:
        raise DatasetError(f"{path}: an .npz data set needs x_train, y_train, x_test, y_test ({exc})") from None
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    return _finish(name, path, *arrs)


# ----------------------------------------------------------------------------------------------
# search order
# ----------------------------------------------------------------------------------------------

def find_dataset(name: str, path=None) -> tuple[str, Path] | None:
    """``(source, location)`` of a complete local copy, or None (no download, no sample)."""
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file() and p.suffix == ".npz":
            return "path", p
        for cand in (p, p / name):
            if _complete(cand):
                return "path", cand
        return None
    env = os.environ.get("NBCNN_DATA")
    if env and _complete(Path(env).expanduser() / name):
        return "env", Path(env).expanduser() / name
    c = cache_dir() / name
    if _complete(c):
        return "cache", c
    return None


def _download(name: str, timeout: float) -> Path:
    spec = DATASETS[name]
    dest = cache_dir() / name
    dest.mkdir(parents=True, exist_ok=True)
    for key, base in _FILES.items():
        target = dest / (base + ".gz")
        if target.is_file() and _md5(target) == spec["md5"][key]:
            continue
        errors = []
        for mirror in spec["mirrors"]:
            url = mirror + base + ".gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - fixed https/http mirrors
                    data = r.read()
            except Exception as exc:  # URLError, timeout, HTTP errors
                errors.append(f"{url}: {exc}")
                continue
            got = hashlib.md5(data).hexdigest()
            if got != spec["md5"][key]:
                errors.append(f"{url}: MD5 {got} != {spec['md5'][key]}")
                continue
            write_bytes(target, data)
            break
        else:
            raise OSError("; ".join(errors))
    return dest



def _md5(p: Path) -> str:
    h = hashlib.md5()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_sample():
    """The bundled MNIST sample: the first 5000 training and 1000 test images of the real set."""
    return _load_npz(SAMPLE_FILE, "mnist")


def load_dataset(name: str, path=None, download: bool = True, allow_sample: bool = True,
                 timeout: float = 10.0, quiet: bool = False):
    """Load ``"mnist"`` or ``"fashion-mnist"`` following the search order in the module docstring."""
    key = name.lower().replace("_", "-")
    if key == "fashion":
        key = "fashion-mnist"
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}")
    found = find_dataset(key, path)
    if path is not None and found is None:
        raise DatasetError(f"{path}: no {key} data there (need the four IDX files "
                           f"{', '.join(v + '.gz' for v in _FILES.values())}, a {key}/ folder with them, "
                           f"or an .npz with x_train, y_train, x_test, y_test)")
    if found is not None:
        source, where = found
        data = _load_npz(where, key) if where.suffix == ".npz" else _load_folder(where, key)
        last_source.clear()
        last_source.update(name=key, source=source, location=str(where))
        return data
    why = "downloads disabled"
    if download and os.environ.get("NBCNN_OFFLINE", "") not in ("1", "true", "yes"):
        try:
            where = _download(key, timeout)
            data = _load_folder(where, key)
            last_source.clear()
            last_source.update(name=key, source="download", location=str(where))
            return data
        except (OSError, DatasetError) as exc:
            why = f"download failed: {' '.join(str(exc).split(';')[0].split())[:160]}"
    looked = [f"$NBCNN_DATA/{key}" if os.environ.get("NBCNN_DATA") else "$NBCNN_DATA (unset)",
              str(cache_dir() / key)]
    if key == "mnist" and allow_sample and SAMPLE_FILE.is_file():
        data = load_sample()
        if not quiet:
            print(f"nbcnn: full MNIST not found ({', '.join(looked)}; {why}); using the bundled sample "
                  f"of {len(data[0][0])} training / {len(data[1][0])} test images", file=sys.stderr)
        last_source.clear()
        last_source.update(name=key, source="sample", location=str(SAMPLE_FILE))
        return data
    raise DatasetError(f"{key} not found (looked in {', '.join(looked)}; {why}); set NBCNN_DATA to a folder "
                       f"holding {key}/ with the four IDX .gz files, or pass path=")


def load_mnist(path=None, download: bool = True, allow_sample: bool = True, timeout: float = 10.0,
               quiet: bool = False):
    """MNIST as ``(x_train, y_train), (x_test, y_test)``: uint8 ``(N, 1, 28, 28)`` and uint8 labels."""
    return load_dataset("mnist", path, download, allow_sample, timeout, quiet)


def load_fashion_mnist(path=None, download: bool = True, timeout: float = 10.0, quiet: bool = False):
    """Fashion-MNIST, same layout as :func:`load_mnist` (no bundled sample)."""
    return load_dataset("fashion-mnist", path, download, False, timeout, quiet)


def build_sample(source=None, dest=SAMPLE_FILE, n_train: int = 5000, n_test: int = 1000) -> Path:
    """Rebuild the bundled sample from a full MNIST copy (deterministic: the first images).

    ``python -c "from nbcnn.datasets import build_sample; build_sample('shared/data/mnist')"``
    """
    (xtr, ytr), (xte, yte) = load_dataset("mnist", path=source, download=False, allow_sample=False)
    if len(xtr) < 60000 or len(xte) < 10000:
        raise DatasetError(f"build_sample needs the full MNIST, got {len(xtr)} / {len(xte)} images")
    dest = Path(dest)
    with atomic_open(dest, "wb") as f:
        np.savez_compressed(f, x_train=xtr[:n_train, 0], y_train=ytr[:n_train],
                            x_test=xte[:n_test, 0], y_test=yte[:n_test])
    return dest


def to_float(x, dtype=np.float32) -> np.ndarray:
    """uint8 images -> floats in [0, 1] (the same scaling models apply to uint8 input)."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        dt = np.dtype(dtype)
        return np.multiply(x, dt.type(1.0 / 255.0), dtype=dt)
    return x.astype(dtype, copy=False)


# ----------------------------------------------------------------------------------------------
# mini-batches
# ----------------------------------------------------------------------------------------------

class BatchIterator:
    """Mini-batches of ``(x, y)`` without copying the data set: each epoch draws an index
    permutation (N ints) and gathers one batch at a time; unshuffled batches are views.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees the same
    batches. Iterating the object itself walks epochs 0, 1, 2, ... in turn.
    """

    def __init__(self, x, y=None, batch_size: int = 32, shuffle: bool = True, seed=None,
                 drop_last: bool = False):
        if int(batch_size) != batch_size or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        n = len(x)
        if y is not None and len(y) != n:
            raise ValueError(f"x has {n} samples but y has {len(y)}")
        if n == 0:
            raise ValueError("cannot iterate over an empty data set")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        if seed is None:
            from .random import derive_seed

            seed = derive_seed()
        self.seed = list(seed) if isinstance(seed, (list, tuple)) else [int(seed)]
        self._epoch = 0

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray | None:
        """The sample order of ``epoch`` (None = natural order)."""
        if not self.shuffle:
            return None
        return np.random.default_rng([*self.seed, int(epoch)]).permutation(len(self.x))

    def epoch(self, epoch: int, start: int = 0):
        """Yield the batches of ``epoch``, from batch number ``start`` on."""
        idx = self.order(epoch)
        bs = self.batch_size
        n = len(self.x)
        for b in range(start, len(self)):
            lo, hi = b * bs, min(n, (b + 1) * bs)
            if idx is None:
                xb = self.x[lo:hi]
                yb = None if self.y is None else self.y[lo:hi]
            else:
                sel = idx[lo:hi]
                xb = self.x[sel]
                yb = None if self.y is None else self.y[sel]
            yield (xb, yb) if self.y is not None else xb

    def __iter__(self):
        e = self._epoch
        self._epoch += 1
        return self.epoch(e)
