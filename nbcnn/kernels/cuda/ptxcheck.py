"""Compile every CUDA kernel to PTX without a GPU: ``python -m nbcnn.kernels.cuda.ptxcheck``.

The CUDA simulator does no type inference, so a kernel can pass every
simulator test and still be rejected by the real compiler (e.g. a shared
array whose shape is an expression). This runs Numba's real CUDA front end
and NVVM (``numba.cuda.compile_ptx``) on every registered kernel for float32
and float64, for compute capability 9.0 by default. It needs the simulator
off (``NUMBA_ENABLE_CUDASIM=0``; set here before numba loads) and NVVM
(``numba-cuda[cu13]`` wheels or a CUDA toolkit) — no GPU and no driver.

Exit status: 0 all compiled, 1 a kernel failed, 3 NVVM/NVRTC missing.
Prints one line per kernel and dtype, then the PTX ISA version emitted.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import time

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cc", default="9.0", help="compute capability, e.g. 9.0 or 8.6")
    args = ap.parse_args(argv)
    cc = tuple(int(v) for v in args.cc.split("."))

    import numba

    if numba.config.ENABLE_CUDASIM:
        print("the CUDA simulator is on in this process; run in a fresh interpreter", file=sys.stderr)
        return 1
    from numba import cuda, types

    from .runtime import KERNELS

    names = kernel_modules()
    for name in names:  # importing a module registers its kernels
        importlib.import_module(f"{__package__}.{name}")

    failures = 0
    version = None
    t_all = time.perf_counter()
    for k in KERNELS:
        for f in (types.float32, types.float64):
            t0 = time.perf_counter()
            try:
                ptx, _ = cuda.compile_ptx(k.py_func, k.signature(f), cc=cc)
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
                if _missing_lib(text):
                    print(f"NVVM/NVRTC not available: {text.splitlines()[0][:300]}")
                    return 3
                failures += 1
                print(f"FAIL {k.name}[{f}]: {text[:2000]}")
                continue
            if version is None:
                version = next((ln.split()[1] for ln in ptx.splitlines() if ln.startswith(".version")), "?")
            print(f"ok   {k.name}[{f}] {time.perf_counter() - t0:.2f} s, {len(ptx)} chars")
    print(f"modules {', '.join(names)}: {len(KERNELS)} kernels x 2 dtypes for sm_{cc[0]}{cc[1]}: {failures} failed, "
          f"PTX ISA {version}, {time.perf_counter() - t_all:.1f} s")
    return 1 if failures else 0


def kernel_modules() -> list[str]:
    """Every module of this package except the non-kernel ones (new kernel files are found automatically)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return sorted(m.name for m in pkgutil.iter_modules([here]) if m.name not in _NOT_KERNELS)


_NOT_KERNELS = {"info", "ptxcheck", "runtime"}


def _missing_lib(text: str) -> bool:
    t = text.lower()
    return ("dynamiclibnotfound" in t or "libnvvm" in t or "libnvrtc" in t
            or "nvvm support" in t or "cannot find nvvm" in t)


if __name__ == "__main__":
    sys.exit(main())
