"""Atomic file writes: a temp file beside the target, fsync, then ``os.replace``.

Every file nbcnn writes (models, checkpoints, caches, data sets, PNGs, JSON)
goes through here, so an interrupted run never leaves a half-written file
in place of a good one.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def default_mode() -> int:
    """0o666 minus the umask: what ``open()`` would give (``mkstemp`` makes 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_path(path, suffix: str = ".tmp"):
    """Yield a temp path beside ``path``; when the block succeeds it replaces ``path``.

    On any exception (Ctrl-C included) the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", **kwargs):
    """``open()`` for writing, atomically: the file appears complete or not at all."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh


def write_bytes(path, data: bytes) -> Path:
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return Path(path)


def write_json(path, obj, **dumps_kwargs) -> Path:
    dumps_kwargs.setdefault("indent", 2)
    return write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")
