"""Where the tests find real data sets (imported as ``from _data import data_dir``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def data_dir(name: str) -> Path:
    """The folder of a real data set, or skip the test."""
    root = os.environ.get("NBCNN_DATA")
    if not root or not (Path(root) / name).is_dir():
        pytest.skip(f"real data set {name!r} not found (set NBCNN_DATA)")
    return Path(root) / name
