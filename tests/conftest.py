"""Shared test setup: real data via NBCNN_DATA (skipped cleanly when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "NBCNN_DATA" not in os.environ and _SHARED.is_dir():
    os.environ["NBCNN_DATA"] = str(_SHARED)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
