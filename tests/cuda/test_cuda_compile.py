"""The real CUDA compiler on every kernel (no GPU needed), and the GPU facts for ``nbcnn info``.

The simulator does no type inference: a kernel can pass every simulator test
and still be rejected by Numba's CUDA front end or NVVM. So every registered
kernel is compiled to PTX for sm_90, float32 and float64, in a subprocess with
the simulator off. With numba-cuda's NVVM/NVRTC wheels installed (the `test`
extra) this always runs; it skips only where those libraries are missing.
"""
from __future__ import annotations

import os
import re
import shutil
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


def test_every_kernel_compiles_to_ptx_for_sm90():
    res = _run("nbcnn.kernels.cuda.ptxcheck", "--cc", "9.0")
    out = res.stdout + res.stderr
    if res.returncode == 3:
        wheels = _have("nvidia-nvvm") and _have("nvidia-cuda-nvrtc")
        assert not wheels, f"NVVM/NVRTC wheels are installed but the compiler was not found:\n{out}"
        pytest.skip(f"NVVM/NVRTC not available (install numba-cuda[cu13]): {out.strip()[:300]}")
    assert res.returncode == 0, out
    import importlib

    from nbcnn.kernels.cuda.ptxcheck import kernel_modules
    from nbcnn.kernels.cuda.runtime import KERNELS

    for name in kernel_modules():
        importlib.import_module(f"nbcnn.kernels.cuda.{name}")
    ok = re.findall(r"^ok +(\w+)\[(float32|float64)\]", res.stdout, flags=re.M)
    assert sorted(set(ok)) == sorted({(k.name, f) for k in KERNELS for f in ("float32", "float64")}), out


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


def test_float32_kernels_do_no_float64_math():
    """Consumer GPUs run float64 at 1/32-1/64 speed: only the bias-gradient reduction may use it."""
    code = (
        "import re\n"
        "from numba import cuda, types\n"
        "import nbcnn.kernels.cuda.conv, nbcnn.kernels.cuda.pool, nbcnn.kernels.cuda.pad\n"
        "from nbcnn.kernels.cuda.runtime import KERNELS\n"
        "for k in KERNELS:\n"
        "    ptx, _ = cuda.compile_ptx(k.py_func, k.signature(types.float32), cc=(9, 0))\n"
        "    print(k.name, sorted(set(re.findall(r'\\b(?:add|mul|fma|sub|div)\\.[a-z.]*f64', ptx))))\n"
    )
    res = _run(code)
    if res.returncode != 0 and ("nvvm" in res.stderr.lower() or "nvrtc" in res.stderr.lower()) \
            and not _have("nvidia-nvvm"):
        pytest.skip("NVVM not available")
    assert res.returncode == 0, res.stderr
    for line in res.stdout.splitlines():
        name, ops = line.split(" ", 1)
        if name != "_nk_to_kn_bias_grad":
            assert ops == "[]", f"{name} does float64 arithmetic on float32 data: {ops}"


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


@pytest.mark.skipif(shutil.which("ptxas") is None, reason="no ptxas (CUDA toolkit) on PATH")
def test_kernels_fit_their_block_size_in_registers():
    """A block needs regs/thread x threads <= 65536 registers, or the launch fails on the GPU.

    ptxas from a CUDA toolkit assembles the PTX for sm_90 and reports register use. The PTX
    version line is lowered to what this ptxas accepts (the kernels use no newer feature).
    """
    code = (
        "import re, subprocess, tempfile, os\n"
        "from numba import cuda, types\n"
        "import nbcnn.kernels.cuda.conv as conv, nbcnn.kernels.cuda.pool, nbcnn.kernels.cuda.pad\n"
        "from nbcnn.kernels.cuda.runtime import KERNELS, TPB\n"
        "d = tempfile.mkdtemp()\n"
        "for k in KERNELS:\n"
        "    tpb = conv.RED_TPB if k.name == '_nk_to_kn_bias_grad' else TPB\n"
        "    for f in (types.float32, types.float64):\n"
        "        ptx, _ = cuda.compile_ptx(k.py_func, k.signature(f), cc=(9, 0))\n"
        "        ptx = re.sub(r'^\\.version \\d+\\.\\d+', '.version 8.0', ptx, flags=re.M)\n"
        "        path = os.path.join(d, k.name + '.ptx')\n"
        "        open(path, 'w').write(ptx)\n"
        "        r = subprocess.run(['ptxas', '-arch=sm_90', '-v', path, '-o', os.devnull],\n"
        "                           capture_output=True, text=True)\n"
        "        m = re.search(r'Used (\\d+) registers', r.stderr)\n"
        "        if m is None:\n"
        "            print('NOPTXAS', k.name, r.stderr.strip()[:300]); continue\n"
        "        print(k.name, f, int(m.group(1)), tpb)\n"
    )
    res = _run(code)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    if lines and all(line.startswith("NOPTXAS") for line in lines):
        pytest.skip(f"this ptxas cannot assemble the PTX: {lines[0][:200]}")
    for line in lines:
        assert not line.startswith("NOPTXAS"), line
        name, f, regs, tpb = line.split()
        per_thread = -(-int(regs) // 8) * 8  # allocation granularity
        assert per_thread * int(tpb) <= 65536, f"{name}[{f}]: {regs} registers x {tpb} threads"
