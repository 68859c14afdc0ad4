"""CUDA tests run in their own pytest process with the Numba CUDA simulator on.

NUMBA_ENABLE_CUDASIM is read once, when numba is first imported, so it must be
set here, before anything imports numba. Set NUMBA_ENABLE_CUDASIM=0 yourself
to run these tests on a real GPU.
"""
import os
import sys

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import pytest  # noqa: E402

if "numba" in sys.modules:
    import numba

    if os.environ["NUMBA_ENABLE_CUDASIM"] == "1" and not numba.config.ENABLE_CUDASIM:
        pytest.exit("tests/cuda must run in its own pytest process: numba was imported before the "
                    "simulator could be enabled (run `python -m pytest tests/cuda`)", returncode=4)
