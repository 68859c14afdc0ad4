"""The real CUDA compiler on every kernel (no GPU needed), and the GPU facts for ``nbcnn info``.

The simulator does no type inference: a kernel can pass every simulator test
and still be rejected by Numba's CUDA front end or NVVM. So every registered
kernel is compiled to PTX for sm_90, float32 and float64, in a subprocess with
the simulator off. With numba-cuda's NVVM/NVRTC wheels installed (the `test`
extra) this always runs; it skips only where those libraries are missing.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "nbcnn" / "kernels" / "cuda"


def _have(dist):
    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


def _run(code_or_module, *args, timeout=600):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    cmd = [sys.executable, *(["-m", code_or_module] if "." in code_or_module and " " not in code_or_module
                             else ["-c", code_or_module]), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def ptx_report(tmp_path_factory):
    """One real-compiler pass over every kernel and dtype (simulator off), shared by the tests below."""
    out = tmp_path_factory.mktemp("ptx") / "ptx.json"
    res = _run("nbcnn.kernels.cuda.ptxcheck", "--cc", "9.0", "--json", str(out))
    text = res.stdout + res.stderr
    if res.returncode == 3:
        wheels = _have("nvidia-nvvm") and _have("nvidia-cuda-nvrtc")
        assert not wheels, f"NVVM/NVRTC wheels are installed but the compiler was not found:\n{text}"
        pytest.skip(f"NVVM/NVRTC not available (install numba-cuda[cu13]): {text.strip()[:300]}")
    assert out.exists(), text
    return res.returncode, text, json.loads(out.read_text())


def test_every_kernel_compiles_to_ptx_for_sm90(ptx_report):
    rc, text, report = ptx_report
    assert rc == 0, text
    import importlib

    from nbcnn.kernels.cuda.ptxcheck import kernel_modules
    from nbcnn.kernels.cuda.runtime import KERNELS

    for name in kernel_modules():
        importlib.import_module(f"nbcnn.kernels.cuda.{name}")
    compiled = {(r["kernel"], r["dtype"]) for r in report["kernels"] if r["ok"]}
    assert compiled == {(k.name, f) for k in KERNELS for f in ("float32", "float64")}, text


def test_float32_kernels_do_no_float64_math(ptx_report):
    """Consumer GPUs run float64 at 1/32-1/64 speed: only the float64 sums of the gradient
    reductions (bias gradient, depthwise weight gradient) may use it."""
    for r in ptx_report[2]["kernels"]:
        if r["dtype"] == "float32" and r["kernel"] not in ("_nk_to_kn_bias_grad", "_dw_weight_grad"):
            assert r["f64_ops"] == [], f"{r['kernel']} does float64 arithmetic on float32 data: {r['f64_ops']}"


def test_kernels_fit_their_block_size_in_registers(ptx_report):
    """A block needs registers/thread x threads <= 65536, or its launch fails on the GPU.

    Register counts come from a CUDA toolkit's ptxas (skipped where there is none).
    """
    rows = [r for r in ptx_report[2]["kernels"] if r.get("registers")]
    if not rows:
        pytest.skip(f"no register counts: ptxas {'missing' if not ptx_report[2].get('ptxas') else 'failed'}")
    assert len(rows) == len(ptx_report[2]["kernels"])
    for r in rows:
        per_thread = -(-r["registers"] // 8) * 8  # allocation granularity
        assert per_thread * r["block"] <= 65536, f"{r['kernel']}[{r['dtype']}]: {r['registers']} x {r['block']}"


def test_kernels_are_declared_only_through_the_registry():
    """A bare @cuda.jit kernel would escape the PTX check and the launch counters."""
    from nbcnn.kernels.cuda.ptxcheck import kernel_modules

    for path in PKG.glob("*.py"):
        text = path.read_text()
        if path.name != "runtime.py":
            assert not re.search(r"^\s*@cuda\.jit|cuda\.jit\(", text, flags=re.M), \
                f"{path.name}: declare kernels with runtime.kernel(...)"
        if "@kernel(" in text:
            assert path.stem in kernel_modules(), f"{path.name} has kernels but the PTX check skips it"


def test_importing_nbcnn_and_cuda_info_does_not_import_numba_cuda():
    code = ("import sys, nbcnn, nbcnn.ops, nbcnn.kernels.cuda, nbcnn.kernels.cuda.info as i\n"
            "i.cuda_info()\n"
            "print(sorted(m for m in sys.modules if m.startswith(('numba.cuda', 'numba_cuda', 'cupy'))))")
    res = _run(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout


def test_cuda_info_reports_versions_and_why_no_gpu():
    from nbcnn.kernels.cuda.info import cuda_info, format_cuda_info

    info = cuda_info()
    assert info["numba_cuda"] == metadata.version("numba-cuda")
    assert info["numba"] == metadata.version("numba")
    assert isinstance(info["usable"], bool) and info["reason"]
    if info["simulator"]:  # this pytest process runs the simulator
        assert info["usable"] is False and "simulator" in info["reason"]
    lines = format_cuda_info(info)
    assert any(line.startswith("GPU usable: ") for line in lines)
    assert any("numba-cuda: " in line for line in lines)


def test_cupy_arrays_reach_numba_as_device_arrays():
    """The launch fast path: Numba's own typeof and kernel-parameter builder on a _FastRef.

    Runs the real (non-simulator) numba-cuda code that turns an argument into kernel
    parameters; no GPU is needed for that step. The parameters must be Numba's array ABI:
    meminfo, parent, size, itemsize, data pointer, shape, strides (bytes).
    """
    code = (
        "import numpy as np\n"
        "from types import SimpleNamespace as NS\n"
        "from numba import types\n"
        "from numba.np.numpy_support import from_dtype\n"
        "from numba.cuda.dispatcher import _Kernel\n"
        "from numba.cuda.typing.typeof import Purpose, typeof\n"
        "from nbcnn.kernels.cuda import runtime\n"
        "assert runtime.fast_args(), 'device-array protocol not found in this numba-cuda'\n"
        "for a, layout in ((np.zeros((3, 4, 5), np.float32), 'C'), (np.zeros((4, 6), np.float64)[:, ::2], 'A')):\n"
        "    fake = NS(flags=a.flags, dtype=a.dtype, ndim=a.ndim, shape=a.shape, size=a.size, strides=a.strides,\n"
        "              data=NS(ptr=0xDEAD0000))\n"
        "    ref = runtime._FastRef(fake)\n"
        "    ty = typeof(ref, Purpose.argument)\n"
        "    assert ty == types.Array(from_dtype(a.dtype), a.ndim, layout), ty\n"
        "    params = []\n"
        "    _Kernel._prepare_args(NS(extensions=[]), ty, ref, 0, [], params)\n"
        "    want = [0, 0, a.size, a.itemsize, 0xDEAD0000, *a.shape, *a.strides]\n"
        "    assert params == want, (params, want)\n"
        "print('ok')\n"
    )
    res = _run(code)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr
