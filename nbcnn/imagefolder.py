"""Folders of images, one sub-folder per class, as uint8 ``(N, C, H, W)`` arrays or a stream.

``image_folder(path)`` scans ``path/<class>/**`` (PNG, JPEG, BMP, GIF, WebP, TIFF,
PPM/PGM in any size and colour mode), decodes every image once to the model's
channels (``color_mode="rgb"`` or ``"grayscale"``) and size (bilinear), and
keeps the result in a cache: one uint8 ``.npy`` file per folder and setting,
in the user cache (``nbcnn.datasets.cache_dir() / "image-folders"``).

Why a cache: decoding JPEGs is the slow part of reading a photo collection
(hundreds of images/s per core), while reading decoded rows back is a
memory copy. The cache is

* **built once, in parallel**: worker processes (spawned, never forked: a
  fork after Numba's OpenMP runtime ran can hang the child) decode chunks of
  files while the parent writes the rows, with a progress bar on a terminal;
* **atomic**: it is written into a temporary folder that is renamed into
  place when complete, so an interrupted build leaves no half cache;
* **invalidated** when the folder's file list, a size or a modification time
  changes (a fingerprint of all three is stored with it).

Small sets (``in_memory=None``: up to 512 MiB decoded, or ``$NBCNN_IN_MEMORY_MB``) come back as NumPy
arrays. Larger ones come back as an :class:`ImageArray`: reading rows from
the cache file with ``pread``, so resident memory stays one batch per reader
(the loader's worker processes open the file themselves), never the data set.

Bad data: unreadable images are skipped with one warning that counts them
and names the first few (``strict=True``: an error); an empty class folder,
a folder without images, a class in the test folder that training lacks are
errors naming the path; hidden files, ``Thumbs.db``, ``desktop.ini`` and
non-image files are ignored; symbolic-link loops are walked once.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ._datapaths import DatasetError, cache_dir

__all__ = [
    "image_folder", "ImageFolder", "ImageArray", "scan_classes", "detect_layout", "IMAGE_SUFFIXES",
    "CACHE_VERSION",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                            ".pgm", ".pnm"})
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db"})
CACHE_VERSION = 1
IN_MEMORY_BYTES = 512 << 20
_PARALLEL_FROM = 1500     # fewer files decode faster in this process than spawning workers
_CHUNK = 128              # files per worker task
_SHOW_SKIPPED = 5


def _visible(name: str) -> bool:
    return not name.startswith(".") and name.lower() not in IGNORED_NAMES


def _walk_images(folder: Path, seen: set) -> list[Path]:
    """Image files below ``folder`` (sorted), following links but entering each real folder once."""
    out = []
    stack = [folder]
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:  # a symlink loop or a second link to a folder already read
            continue
        seen.add(key)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            raise DatasetError(f"{d}: cannot list the folder ({exc.strerror or exc})") from None
        for e in entries:
            if not _visible(e.name):
                continue
            try:
                if e.is_dir():
                    stack.append(Path(e.path))
                elif e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES:
                    out.append(Path(e.path))
            except OSError:
                continue
    return sorted(out)


def _class_dirs(root: Path) -> list[Path]:
    try:
        return sorted((Path(e.path) for e in os.scandir(root) if _visible(e.name) and e.is_dir()),
                      key=lambda p: p.name)
    except OSError as exc:
        raise DatasetError(f"{root}: cannot list the folder ({exc.strerror or exc})") from None


def scan_classes(root, class_names=None):
    """``(class_names, files, labels)`` of a class-per-sub-folder tree.

    With ``class_names`` (the training split's), every sub-folder must be one of them.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    dirs = _class_dirs(root)
    if not dirs:
        raise DatasetError(f"{root}: no class folders (expected one sub-folder of images per class)")
    names = [d.name for d in dirs]
    if class_names is not None:
        unknown = [n for n in names if n not in class_names]
        if unknown:
            raise DatasetError(f"{root / unknown[0]}: class {unknown[0]!r} is not among the training classes "
                               f"({', '.join(class_names[:10])}{', ...' if len(class_names) > 10 else ''})")
        index = {n: i for i, n in enumerate(class_names)}
    else:
        class_names, index = names, {n: i for i, n in enumerate(names)}
    files, labels = [], []
    for d in dirs:
        found = _walk_images(d, set())
        if not found:
            raise DatasetError(f"{d}: empty class folder (no PNG/JPEG/BMP/GIF/WebP/TIFF images)")
        files.extend(found)
        labels.extend([index[d.name]] * len(found))
    return list(class_names), files, np.asarray(labels, np.int64)


def detect_layout(root) -> dict:
    """``{"kind": "split", "train": p, "val": p|None, "test": p|None}`` for ``train/`` + ``test/``
    (or ``val/``) trees, ``{"kind": "classes", "root": p}`` for one level of class folders."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")

    def sub(*names):
        for n in names:
            if (root / n).is_dir():
                return root / n
        return None

    train = sub("train", "training")
    val, test = sub("val", "valid", "validation"), sub("test", "testing")
    if train is not None and (val is not None or test is not None):
        return {"kind": "split", "train": train, "val": val, "test": test}
    return {"kind": "classes", "root": root}


# ------------------------------------------------------------------ decoding

def _decode(path, hw, color: str) -> np.ndarray:
    """One image file -> uint8 ``(C, H, W)`` (C = 3 for rgb, 1 for grayscale), resized bilinearly."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            a = np.asarray(im, dtype=np.float64)
            top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
            im = Image.fromarray(np.clip(a * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
        if im.mode == "P" or (im.mode in ("LA", "PA", "RGBA") or "transparency" in im.info):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (0, 0, 0, 255))  # transparent areas become black
            im = Image.alpha_composite(bg, im)
        im = im.convert("L" if color == "grayscale" else "RGB")
        if hw is not None and im.size != (hw[1], hw[0]):
            im = im.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _decode_chunk(paths, hw, color):
    """Worker task: decode ``paths`` into one array; failures are reported, not raised."""
    c = 1 if color == "grayscale" else 3
    out = np.zeros((len(paths), c, hw[0], hw[1]), np.uint8)
    bad = []
    for i, p in enumerate(paths):
        try:
            out[i] = _decode(p, hw, color)
        except Exception as exc:  # corrupt, truncated, unsupported: the caller decides
            bad.append((i, f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"))
    return out, bad


def _image_size(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size[1], im.size[0]


def median_size(files, sample: int = 256, cap: int = 128) -> tuple[int, int]:
    """The median (height, width) of up to ``sample`` files, rounded to a multiple of 4 and scaled
    down to at most ``cap`` pixels on the longer side (a default for a model made for the data)."""
    idx = np.linspace(0, len(files) - 1, min(sample, len(files))).round().astype(int)
    sizes = []
    for i in np.unique(idx):
        try:
            sizes.append(_image_size(files[i]))
        except Exception:
            continue
    if not sizes:
        raise DatasetError(f"{Path(files[0]).parent}: none of the sampled images can be read")
    h, w = (float(np.median([s[k] for s in sizes])) for k in (0, 1))
    scale = min(1.0, cap / max(h, w))
    return tuple(max(4, int(round(v * scale / 4)) * 4) for v in (h, w))


# ------------------------------------------------------------------ file-backed array

class ImageArray:
    """Read-only uint8 ``(N, C, H, W)`` rows of a cache file, read on demand with ``pread``.

    ``a[idx]`` (int, slice or index array) returns a NumPy copy of those rows;
    ``a.view(idx)`` a new ImageArray over a subset without reading anything.
    Picklable (a worker process reopens the file), so the loader's workers
    read their own batches: resident memory is a batch per process.
    """

    def __init__(self, path, offset: int, shape, index=None):
        self.path = str(path)
        self.offset = int(offset)
        self._full = tuple(int(s) for s in shape)
        self.index = None if index is None else np.asarray(index, np.int64)
        self._fd = None
        self._pid = None

    dtype = np.dtype(np.uint8)
    ndim = 4

    @property
    def shape(self):
        n = self._full[0] if self.index is None else len(self.index)
        return (n, *self._full[1:])

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self):
        return self.shape[0]

    def _rows(self, key) -> np.ndarray:
        n = len(self)
        if isinstance(key, (int, np.integer)):
            k = int(key)
            if not -n <= k < n:
                raise IndexError(f"index {k} out of range for {n} images")
            rows = np.asarray([k % n])
        elif isinstance(key, slice):
            rows = np.arange(n)[key]
        else:
            rows = np.asarray(key)
            if rows.dtype == bool:
                rows = np.flatnonzero(rows)
            rows = rows.astype(np.int64).ravel()
            if rows.size and (rows.min() < -n or rows.max() >= n):
                raise IndexError(f"index out of range for {n} images")
            rows = rows % max(n, 1)
        return rows if self.index is None else self.index[rows]

    def view(self, key) -> "ImageArray":
        return ImageArray(self.path, self.offset, self._full, self._rows(key))

    def _fileno(self):
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def __getitem__(self, key):
        rows = self._rows(key)
        out = np.empty((len(rows), *self._full[1:]), np.uint8)
        row_bytes = int(np.prod(self._full[1:]))
        flat = out.reshape(len(rows), row_bytes)
        fd = self._fileno()
        i = 0
        while i < len(rows):  # merge runs of consecutive rows into one read
            j = i + 1
            while j < len(rows) and rows[j] == rows[j - 1] + 1:
                j += 1
            buf = memoryview(flat[i:j]).cast("B")
            pos, done = self.offset + int(rows[i]) * row_bytes, 0
            while done < len(buf):
                got = os.preadv(fd, [buf[done:]], pos + done)
                if got <= 0:
                    raise DatasetError(f"{self.path}: cache file is shorter than its header says")
                done += got
            i = j
        return out[0] if isinstance(key, (int, np.integer)) else out

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a if dtype is None else a.astype(dtype)

    def __getstate__(self):
        return {"path": self.path, "offset": self.offset, "_full": self._full, "index": self.index}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fd = self._pid = None

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass

    def __repr__(self):
        return f"<ImageArray {self.shape} uint8 from {self.path}>"


def is_file_backed(x) -> bool:
    return isinstance(x, ImageArray)


# ------------------------------------------------------------------ the cache

def _fingerprint(root: Path, files, labels, class_names) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(class_names).encode())
    for f, y in zip(files, labels):
        st = os.stat(f)
        h.update(f"{os.path.relpath(f, root)}\0{int(y)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _cache_folder(root: Path, hw, color, where=None) -> Path:
    base = Path(where) if where is not None else cache_dir() / "image-folders"
    key = hashlib.sha1(f"{root.resolve()}|{hw[0]}x{hw[1]}|{color}|v{CACHE_VERSION}".encode()).hexdigest()[:20]
    return base / f"{root.name or 'root'}-{key}"


def _read_cache(folder: Path, fingerprint: str):
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("fingerprint") != fingerprint or meta.get("version") != CACHE_VERSION:
        return None
    try:
        x = np.load(folder / "images.npy", mmap_mode="r")
        y = np.load(folder / "labels.npy")
    except (OSError, ValueError):
        return None
    if x.dtype != np.uint8 or x.ndim != 4 or y.shape != (x.shape[0],):
        return None
    offset = int(x.offset)
    shape = x.shape
    del x
    return meta, offset, shape, y


def _build_cache(folder: Path, files, labels, hw, color, fingerprint, workers, progress, extra_meta):
    """Decode every file into ``folder/images.npy`` (atomically: a temp folder renamed into place)."""
    from .progress import ProgressBar

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    c = 1 if color == "grayscale" else 3
    n = len(files)
    bad: list[tuple[int, str]] = []
    try:
        chunks = [(s, [str(p) for p in files[s:s + _CHUNK]]) for s in range(0, n, _CHUNK)]
        bar = ProgressBar(n, prefix=f"decoding {n:,} images", enabled=progress)
        done = 0
        with open(tmp / "images.npy", "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                    "shape": (n, c, hw[0], hw[1])})

            def write(s, arr, b):
                nonlocal done
                f.write(np.ascontiguousarray(arr).data)  # chunks arrive in order: a sequential write
                bad.extend((s + i, why) for i, why in b)
                done += len(arr)
                bar.update(done, items=len(arr))

            if workers and n >= _PARALLEL_FROM:
                import multiprocessing as mp
                from collections import deque
                from concurrent.futures import ProcessPoolExecutor

                window = 4 * int(workers)  # chunks in flight: memory stays O(workers), not O(data set)
                with ProcessPoolExecutor(max_workers=int(workers), mp_context=mp.get_context("spawn")) as pool:
                    pending: deque = deque()
                    for s, paths in chunks:
                        pending.append((s, pool.submit(_decode_chunk, paths, hw, color)))
                        if len(pending) >= window:
                            s0, fut = pending.popleft()
                            write(s0, *fut.result())
                    while pending:
                        s0, fut = pending.popleft()
                        write(s0, *fut.result())
            else:
                for s, paths in chunks:
                    write(s, *_decode_chunk(paths, hw, color))
        bar.close()
        y = np.asarray(labels, np.int64).copy()
        for i, _ in bad:
            y[i] = -1  # unreadable: kept as a row, excluded by every reader
        np.save(tmp / "labels.npy", y)
        meta = {"version": CACHE_VERSION, "fingerprint": fingerprint, "image_size": list(hw), "color": color,
                "files": [str(f) for f in files], "skipped": [[str(files[i]), why] for i, why in bad],
                **extra_meta}
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        for f in ("images.npy", "labels.npy", "meta.json"):
            with open(tmp / f, "rb+") as fh:
                os.fsync(fh.fileno())
        if folder.exists():  # an outdated cache: move it aside, then drop it
            old = folder.parent / f".{folder.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            try:
                os.rename(folder, old)
                shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same cache first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------ the data set

class ImageFolder:
    """An image data set: ``x`` uint8 ``(N, C, H, W)`` (array or :class:`ImageArray`), ``y`` int64,
    ``class_names``; iterating it yields ``(xb, yb)`` mini-batches (one epoch per ``iter()``),
    so ``model.fit(ds, epochs=...)`` works for any size; ``len()`` is batches per epoch."""

    def __init__(self, x, y, class_names, files=(), skipped=(), root=None, batch_size=32, shuffle=True,
                 seed=0):
        self.x, self.y = x, np.asarray(y, np.int64)
        self.class_names = list(class_names)
        self.files = list(files)
        self.skipped = list(skipped)
        self.root = root
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self._epoch = 0

    @property
    def streaming(self) -> bool:
        return is_file_backed(self.x)

    @property
    def num_images(self) -> int:
        return int(len(self.y))

    @property
    def image_shape(self) -> tuple:
        return tuple(self.x.shape[1:])

    @property
    def counts(self) -> dict:
        c = np.bincount(self.y, minlength=len(self.class_names))
        return {n: int(k) for n, k in zip(self.class_names, c)}

    def __len__(self) -> int:
        return -(-self.num_images // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def __iter__(self):
        e = self._epoch
        self._epoch += 1
        n = self.num_images
        order = (np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(e,))).permutation(n)
                 if self.shuffle else np.arange(n))
        for s in range(0, n, self.batch_size):
            idx = order[s:s + self.batch_size]
            yield self.x[idx], self.y[idx]

    def arrays(self):
        """``(x, y)`` with ``x`` in memory (reads a streamed set whole)."""
        return np.asarray(self.x), self.y

    def subset(self, index) -> "ImageFolder":
        index = np.asarray(index, np.int64)
        x = self.x.view(index) if self.streaming else self.x[index]
        files = [self.files[i] for i in index] if len(self.files) == self.num_images else []
        return ImageFolder(x, self.y[index], self.class_names, files, (), self.root, self.batch_size,
                           self.shuffle, self.seed)

    def split(self, fraction: float, seed: int = 0):
        """``(rest, held_out)``: ``fraction`` of every class held out, chosen by ``seed`` (stratified)."""
        if not 0.0 < float(fraction) < 1.0:
            raise ValueError(f"split fraction must be in (0, 1), got {fraction!r}")
        rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(7,)))
        held = []
        for c in range(len(self.class_names)):
            members = np.flatnonzero(self.y == c)
            k = int(round(len(members) * float(fraction)))
            held.extend(rng.permutation(members)[:k].tolist())
        mask = np.zeros(self.num_images, bool)
        mask[np.asarray(held, np.int64)] = True
        rest, out = np.flatnonzero(~mask), np.flatnonzero(mask)
        return self.subset(rest), self.subset(out)

    def __repr__(self):
        kind = "streamed" if self.streaming else "in memory"
        return (f"<ImageFolder {self.num_images} images {self.image_shape} in {len(self.class_names)} classes, "
                f"{kind}>")


def _warn_skipped(skipped, root):
    if not skipped:
        return
    names = ", ".join(f"{p} ({why})" for p, why in skipped[:_SHOW_SKIPPED])
    more = f" and {len(skipped) - _SHOW_SKIPPED} more" if len(skipped) > _SHOW_SKIPPED else ""
    warnings.warn(f"{root}: skipped {len(skipped)} unreadable image file(s): {names}{more}", UserWarning,
                  stacklevel=3)


def _color(color_mode) -> str:
    c = str(color_mode).lower()
    if c in ("rgb", "color", "colour"):
        return "rgb"
    if c in ("grayscale", "greyscale", "gray", "grey", "l"):
        return "grayscale"
    raise ValueError(f"color_mode must be 'rgb' or 'grayscale', got {color_mode!r}")


def _hw(image_size):
    if isinstance(image_size, (int, np.integer)):
        image_size = (int(image_size), int(image_size))
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width) or an int, got {image_size!r}") from None
    if h < 1 or w < 1 or h > 4096 or w > 4096:
        raise ValueError(f"image_size must be between 1 and 4096 pixels, got {image_size!r}")
    return h, w


def image_folder(path, image_size=None, color_mode: str = "rgb", *, class_names=None, batch_size: int = 32,
                 shuffle: bool = True, seed: int = 0, in_memory=None, strict: bool = False, workers=None,
                 cache_dir=None, progress=None, min_size=None) -> ImageFolder:
    """Load ``path/<class>/...`` images as an :class:`ImageFolder` (see the module docstring).

    ``image_size``: ``(height, width)`` every image is resized to (default: the median size,
    see :func:`median_size`). ``class_names``: the training split's, for a test split.
    ``in_memory``: True = arrays, False = streamed from the cache, None = arrays up to
    512 MiB. ``workers``: decoding processes for the cache (default: the CPU count, at
    most 8). ``min_size``: ``(h, w)``; a smaller source image is an error naming it (e.g.
    below a crop). ``strict``: an unreadable image is an error instead of a warning.
    """
    root = Path(path).expanduser()
    color = _color(color_mode)
    names, files, labels = scan_classes(root, class_names)
    if class_names is not None:
        names = list(class_names)
    hw = median_size(files) if image_size is None else _hw(image_size)
    if min_size is not None:
        mh, mw = _hw(min_size)
        for f in files:
            try:
                h, w = _image_size(f)
            except Exception:
                continue
            if h < mh or w < mw:
                raise DatasetError(f"{f}: image is {h}x{w}, smaller than the {mh}x{mw} crop")
    fp = _fingerprint(root, files, labels, names)
    folder = _cache_folder(root, hw, color, cache_dir)
    got = _read_cache(folder, fp)
    if got is None:
        if workers is None:
            workers = min(8, os.cpu_count() or 1)
        show = progress if progress is not None else (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
        _build_cache(folder, files, labels, hw, color, fp, workers, show, {"class_names": names})
        got = _read_cache(folder, fp)
        if got is None:
            raise DatasetError(f"{folder}: the image cache could not be written or read back")
    meta, offset, shape, y = got
    skipped = [tuple(s) for s in meta.get("skipped", [])]
    if skipped and strict:
        p, why = skipped[0]
        raise DatasetError(f"{p}: cannot read image ({why})" +
                           (f"; {len(skipped) - 1} more unreadable" if len(skipped) > 1 else ""))
    _warn_skipped(skipped, root)
    keep = np.flatnonzero(y >= 0)
    if len(keep) == 0:
        raise DatasetError(f"{root}: no readable images")
    arr = ImageArray(folder / "images.npy", offset, shape, None if len(keep) == len(y) else keep)
    nbytes = int(len(keep) * np.prod(shape[1:]))
    if in_memory is None:
        limit = os.environ.get("NBCNN_IN_MEMORY_MB")
        in_memory = nbytes <= (int(float(limit) * (1 << 20)) if limit else IN_MEMORY_BYTES)
    x = np.asarray(arr) if in_memory else arr
    kept_files = [files[i] for i in keep]
    return ImageFolder(x, y[keep], names, kept_files, skipped, root, batch_size, shuffle, seed)
