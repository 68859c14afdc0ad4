"""State shared by the GPU-check sections: where arrays live, how to synchronise, what was found."""
from __future__ import annotations

import time
import traceback

import numpy as np

import nbcnn


class StopCheck(RuntimeError):
    """Nothing more can be checked (no usable GPU): the run ends after the summary."""


class Check:
    """One run of the GPU check: on a real GPU (CuPy) or under the Numba CUDA simulator (NumPy)."""

    def __init__(self, simulate: bool, budget_s: float):
        self.sim = simulate
        self.budget_s = budget_s
        self.t0 = time.perf_counter()
        self.results: dict = {"sections": {}}
        if simulate:
            self.xp = np
        else:
            import cupy

            self.xp = cupy

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over_budget(self, frac: float = 1.0) -> bool:
        return self.elapsed() > self.budget_s * frac

    def sync(self) -> None:
        if not self.sim:
            self.xp.cuda.get_current_stream().synchronize()

    def to_dev(self, a):
        return a if self.sim else self.xp.asarray(a)

    @staticmethod
    def to_host(a):
        return None if a is None else nbcnn.to_numpy(a)

    @staticmethod
    def cpu(fn, *a, **kw):
        """``fn`` on the CPU kernels."""
        with nbcnn.using_device("cpu"):
            return fn(*a, **kw)

    def gpu(self, fn, *a, **kw):
        """``fn`` on the CUDA kernels, its NumPy arguments moved to the device first."""
        with nbcnn.using_device("cuda"):
            return fn(*[self.to_dev(v) if isinstance(v, np.ndarray) else v for v in a], **kw)

    def section(self, name: str, fn, *a, **kw):
        """Run one section; record its failure instead of stopping the check."""
        print(f"\n== {name} ({self.elapsed():.0f} s)", flush=True)
        t = time.perf_counter()
        try:
            out = fn(self, *a, **kw)
            self.results["sections"][name] = {"ok": True, "seconds": round(time.perf_counter() - t, 1)}
            return out
        except StopCheck:
            raise
        except Exception as exc:
            traceback.print_exc()
            self.results["sections"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
            return None
