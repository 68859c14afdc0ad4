"""Compile every CUDA kernel to PTX without a GPU: ``python -m nbcnn.kernels.cuda.ptxcheck``.

The CUDA simulator does no type inference, so a kernel can pass every
simulator test and still be rejected by the real compiler (e.g. a shared
array whose shape is an expression). This runs Numba's real CUDA front end
and NVVM (``numba.cuda.compile_ptx``) on every registered kernel for float32
and float64, for compute capability 9.0 by default. It needs the simulator
off (``NUMBA_ENABLE_CUDASIM=0``; set here before numba loads) and NVVM
(``numba-cuda[cu13]`` wheels or a CUDA toolkit) — no GPU and no driver.

Per kernel and dtype it also reports the float64 arithmetic in float32 PTX
(slow on consumer GPUs) and, when a CUDA toolkit's ``ptxas`` is on PATH, the
registers per thread (a block needs registers x threads <= 65536 to launch).
``--json PATH`` writes all of it for tests.

Exit status: 0 all compiled, 1 a kernel failed, 3 NVVM/NVRTC missing.
"""
from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
import time

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"

_F64_OPS = re.compile(r"\b(?:add|sub|mul|fma|div)\.[a-z.]*f64")


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cc", default="9.0", help="compute capability, e.g. 9.0 or 8.6")
    ap.add_argument("--json", help="write the per-kernel results to this file")
    args = ap.parse_args(argv)
    cc = tuple(int(v) for v in args.cc.split("."))

    import numba

    if numba.config.ENABLE_CUDASIM:
        print("the CUDA simulator is on in this process; run in a fresh interpreter", file=sys.stderr)
        return 1
    from numba import cuda, types

    from .conv import RED_TPB
    from .runtime import KERNELS, TPB

    names = kernel_modules()
    for name in names:  # importing a module registers its kernels
        importlib.import_module(f"{__package__}.{name}")

    ptxas = shutil.which("ptxas")
    tmp = tempfile.mkdtemp(prefix="nbcnn-ptx-")
    results = []
    failures = 0
    version = None
    t_all = time.perf_counter()
    for k in KERNELS:
        for f in (types.float32, types.float64):
            t0 = time.perf_counter()
            row = {"kernel": k.name, "dtype": str(f), "ok": False,
                   "block": RED_TPB if k.name == "_nk_to_kn_bias_grad" else TPB}
            results.append(row)
            try:
                ptx, _ = cuda.compile_ptx(k.py_func, k.signature(f), cc=cc)
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
                if _missing_lib(text):
                    print(f"NVVM/NVRTC not available: {text.splitlines()[0][:300]}")
                    _write(args.json, {"missing_nvvm": text[:500], "kernels": []})
                    return 3
                failures += 1
                row["error"] = text[:2000]
                print(f"FAIL {k.name}[{f}]: {text[:2000]}")
                continue
            version = version or next((ln.split()[1] for ln in ptx.splitlines() if ln.startswith(".version")), "?")
            row.update(ok=True, seconds=round(time.perf_counter() - t0, 2), chars=len(ptx),
                       f64_ops=sorted(set(_F64_OPS.findall(ptx))))
            if ptxas:
                row["registers"] = _registers(ptxas, ptx, cc, os.path.join(tmp, f"{k.name}_{f}.ptx"))
            regs = f", {row['registers']} registers" if row.get("registers") else ""
            print(f"ok   {k.name}[{f}] {row['seconds']:.2f} s, {len(ptx)} chars{regs}")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"modules {', '.join(names)}: {len(KERNELS)} kernels x 2 dtypes for sm_{cc[0]}{cc[1]}: {failures} failed, "
          f"PTX ISA {version}, {time.perf_counter() - t_all:.1f} s")
    _write(args.json, {"cc": list(cc), "ptx_isa": version, "ptxas": ptxas, "modules": names, "kernels": results})
    return 1 if failures else 0


def _registers(ptxas: str, ptx: str, cc, path: str):
    """Registers per thread from ``ptxas -v``; the PTX version is lowered to one this ptxas takes."""
    with open(path, "w") as fh:
        fh.write(re.sub(r"^\.version \d+\.\d+", ".version 8.0", ptx, flags=re.M))
    try:
        r = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", path, "-o", os.devnull],
                           capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"Used (\d+) registers", r.stderr)
    return int(m.group(1)) if m else None


def _write(path, data) -> None:
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


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
