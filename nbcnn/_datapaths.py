"""What every data-set reader shares: its error type and the user cache folder.

A module of its own so that the readers (:mod:`nbcnn.datasets`,
:mod:`nbcnn.imagefolder`, :mod:`nbcnn.cifar`) import it without importing each other.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["DatasetError", "cache_dir", "file_md5", "offline"]


class DatasetError(ValueError):
    """A data file is missing, truncated or not what it claims to be."""


def cache_dir() -> Path:
    """``$NBCNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/nbcnn``, else ``~/.cache/nbcnn``."""
    if os.environ.get("NBCNN_CACHE_DIR"):
        return Path(os.environ["NBCNN_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nbcnn"


def file_md5(p) -> str:
    h = hashlib.md5()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def offline() -> bool:
    """``NBCNN_OFFLINE=1``: never download."""
    return os.environ.get("NBCNN_OFFLINE", "") in ("1", "true", "yes")
