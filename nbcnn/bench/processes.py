"""Benchmarks that need a fresh process: start-up (cold/warm kernel cache), peak memory, BLAS threads.

They are about what a new process pays, which one long-lived process cannot
show. Each child is ``python -c SCRIPT``; its last stdout line is a JSON object.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from . import peers
from .environment import environment, loadavg
from .peers import resolve_compare, torch_available


def _say(progress, msg: str) -> None:
    if progress:
        progress(msg)


# Environment variables that steer thread pools: scrubbed from children so each
# configuration starts from a known state (this process itself has
# OPENBLAS_THREAD_TIMEOUT set by `import nbcnn`).
_THREAD_VARS = ("OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "NBCNN_BLAS_THREADS",
                "GOMP_SPINCOUNT")


def _child_env(threads: int = 2, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_VARS}
    env["NUMBA_NUM_THREADS"] = str(threads)
    env.setdefault("PYTHONHASHSEED", "0")
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


def _run_child(code: str, env: dict, timeout: float, args=()) -> dict:
    """Run ``python -c code args...`` in a fresh process; its last stdout line is a JSON object."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s", "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in (proc.stderr or proc.stdout or "").strip().splitlines() if ln.strip()]
        last = tail[-1].strip() if tail else "no output"
        return {"ok": False, "error": f"exit {proc.returncode}: {last[:300]}", "stderr_tail": tail[-12:],
                "wall_s": wall}
    out = json.loads(lines[-1])
    out.update(ok=True, wall_s=wall)
    return out


# Every child script starts with this: its own peak RSS (VmHWM; ru_maxrss would
# carry the parent's peak over fork + exec). Imports nothing, so timings start clean.
_CHILD_PRELUDE = r"""
import json, sys, time
def _hwm():
    # VmHWM (this process's own peak): ru_maxrss would carry the parent's peak over fork + exec
    with open("/proc/self/status") as f:
        for ln in f:
            if ln.startswith("VmHWM:"):
                return int(ln.split()[1]) / 1024
"""

# Child: time from `import nbcnn` to the first conv result, then each kernel
# group's first call (compile or cache load) minus its second call.
_STARTUP_OPS = _CHILD_PRELUDE + r"""
t0 = time.perf_counter()
import nbcnn
from nbcnn import ops
import numpy as np
t_import = time.perf_counter() - t0
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
w = rng.standard_normal((6, 1, 5, 5)).astype(np.float32)
b = np.zeros(6, np.float32)
y = ops.conv2d(x, w, b, 1, 2)
t_first = time.perf_counter() - t0
groups = {}
def group(name, fn):
    t = time.perf_counter(); fn(); a = time.perf_counter() - t
    t = time.perf_counter(); fn(); c = time.perf_counter() - t
    groups[name] = max(a - c, 0.0)
x2 = rng.standard_normal((8, 6, 14, 14)).astype(np.float32)
w2 = rng.standard_normal((16, 6, 5, 5)).astype(np.float32)
g1 = rng.standard_normal(y.shape).astype(np.float32)
g2 = rng.standard_normal((8, 16, 10, 10)).astype(np.float32)
x3 = rng.standard_normal((8, 4, 8, 8)).astype(np.float32)
g3 = rng.standard_normal((8, 4, 4, 4)).astype(np.float32)
tc = time.perf_counter()
group("conv bwd, C=1 5x5 p2 (LeNet conv1, batch 64: batch in lanes)", lambda: ops.conv2d_backward(g1, x, w, 1, 2))
group("conv fwd, C=6 5x5 (LeNet conv2, batch 8: implicit GEMM)", lambda: ops.conv2d(x2, w2, None, 1, 0))
group("conv bwd, C=6 5x5 (LeNet conv2, batch 8: implicit GEMM)", lambda: ops.conv2d_backward(g2, x2, w2, 1, 0))
x5 = rng.standard_normal((4, 8, 9, 9)).astype(np.float32)
w5 = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
g5 = rng.standard_normal((4, 8, 5, 5)).astype(np.float32)
x4 = rng.standard_normal((4, 32, 16, 16)).astype(np.float32)   # >= 32 channels, 1024 pixels: Winograd
w4 = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
g4 = rng.standard_normal((4, 32, 16, 16)).astype(np.float32)
group("conv fwd+bwd, 3x3 s2 C=8 (stride phases)",
      lambda: (ops.conv2d(x5, w5, None, 2, 1), ops.conv2d_backward(g5, x5, w5, 2, 1)))
group("conv fwd, 3x3 C=32 (Winograd)", lambda: ops.conv2d(x4, w4, None, 1, 1))
group("conv bwd, 3x3 C=32 (Winograd)", lambda: ops.conv2d_backward(g4, x4, w4, 1, 1))
group("max_pool fwd+bwd", lambda: ops.max_pool2d_backward(g3, x3, 2))
group("avg_pool fwd+bwd", lambda: (ops.avg_pool2d(x3, 2), ops.avg_pool2d_backward(g3, x3, 2)))
group("pad", lambda: ops.pad2d_backward(ops.pad2d(x3, 1), 1))
t_groups = time.perf_counter() - tc
import numba
print(json.dumps({"import_s": t_import, "first_conv_s": t_first, "groups_s": groups, "groups_total_s": t_groups,
                  "cache_dir": numba.config.CACHE_DIR,
                  "peak_rss_mb": _hwm()}))
"""

# Child: time from `import nbcnn` to the end of the first LeNet-5 training step.
_STARTUP_TRAIN = _CHILD_PRELUDE + r"""
t0 = time.perf_counter()
import nbcnn
import numpy as np
from nbcnn.bench.runners import nbcnn_lenet, lenet_data
t_import = time.perf_counter() - t0
model = nbcnn_lenet("relu", "max")
x, y = lenet_data(64, np.random.default_rng(0))
t_build = time.perf_counter() - t0
model.train_on_batch(x, y)
t_step = time.perf_counter() - t0
t = time.perf_counter(); model.train_on_batch(x, y); second = time.perf_counter() - t
import numba
print(json.dumps({"import_s": t_import, "built_s": t_build, "first_step_s": t_step, "second_step_s": second,
                  "cache_dir": numba.config.CACHE_DIR,
                  "peak_rss_mb": _hwm()}))
"""


def run_startup(what=("conv", "train"), threads: int = 2, timeout: float = 600, progress=None) -> dict:
    """Cold (empty ``NUMBA_CACHE_DIR``) and warm start-up, each in a fresh process.

    ``conv``: ``import nbcnn`` -> first conv2d result (LeNet conv1 shape), then the
    compile time of each kernel group (first call minus second call).
    ``train``: ``import nbcnn`` -> first LeNet-5 ``train_on_batch`` (relu/max, batch 64).
    """
    results = []
    env_info = environment(device="cpu", torch_imported=False)
    for kind in what:
        code = {"conv": _STARTUP_OPS, "train": _STARTUP_TRAIN}[kind]
        with tempfile.TemporaryDirectory(prefix="nbcnn-bench-cache-") as cache:
            env = _child_env(threads, NUMBA_CACHE_DIR=cache)
            for phase in ("cold", "warm"):
                _say(progress, f"start-up {kind} {phase} (fresh process, NUMBA_CACHE_DIR={cache}) ...")
                out = _run_child(code, env, timeout)
                out.update(what=kind, phase=phase)
                if out.get("ok") and out.get("cache_dir") and os.path.realpath(out["cache_dir"]) != \
                        os.path.realpath(cache):
                    out["warning"] = f"the child used cache dir {out['cache_dir']!r}, not the empty one"
                results.append(out)
                if out.get("ok"):
                    key = "first_conv_s" if kind == "conv" else "first_step_s"
                    _say(progress, f"    {key} {out[key]:.2f} s (import {out['import_s']:.2f} s, "
                                   f"process wall {out['wall_s']:.2f} s)")
                else:
                    _say(progress, f"    failed: {out['error']}")
    env_info["loadavg_after"] = loadavg()
    return {"kind": "startup", "env": env_info, "results": results}


# Child: peak RSS of LeNet-5 training at batch 256 (nbcnn or torch). The torch
# child must not import nbcnn (numba + llvmlite would count against torch), so
# it loads nbcnn/bench/peers.py by path.
_MEMORY = _CHILD_PRELUDE + r"""
which, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def rss():
    with open("/proc/self/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) / 1024
base = rss()
if which == "nbcnn":
    import nbcnn, numba
    import numpy as np
    from nbcnn.bench.runners import nbcnn_lenet, lenet_data
    numba.set_num_threads(threads)
    after_import = rss()
    model = nbcnn_lenet("relu", "max")
    x, y = lenet_data(256, np.random.default_rng(0))
    step = lambda: model.train_on_batch(x, y)
else:
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    after_import = rss()
    import importlib.util
    spec = importlib.util.spec_from_file_location("peers", sys.argv[4])  # by path: no nbcnn import
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((256, 1, 28, 28)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, size=256).astype(np.int64))
    step = peers.torch_sgd_step(torch, peers.torch_lenet(torch, "relu", "max"), x, y)
built = rss()
t = time.perf_counter()
for _ in range(steps):
    step()
dt = time.perf_counter() - t
print(json.dumps({"which": which, "rss_start_mb": base, "rss_after_import_mb": after_import,
                  "rss_after_build_mb": built, "rss_end_mb": rss(),
                  "peak_rss_mb": _hwm(),
                  "steps": steps, "steps_s": dt}))
"""


def run_memory(steps: int = 30, threads: int = 2, compare="auto", timeout: float = 600, progress=None) -> dict:
    """Peak RSS of LeNet-5 (relu/max) training at batch 256, nbcnn vs torch, each in its own process.

    nbcnn runs with the default kernel cache, warmed by a first short run, so
    compilation memory is not counted (the cold start-up run reports its own peak).
    """
    compare = resolve_compare(compare)
    which = ["nbcnn"] + (["torch"] if compare else [])
    results = []
    for w in which:
        _say(progress, f"memory: {w} LeNet-5 training, batch 256, {steps} steps (fresh process) ...")
        if w == "nbcnn":
            _run_child(_MEMORY, _child_env(threads), timeout, ("nbcnn", 1, threads, peers.__file__))
        out = _run_child(_MEMORY, _child_env(threads), timeout, (w, steps, threads, peers.__file__))
        out["which"] = w
        results.append(out)
        if out.get("ok"):
            _say(progress, f"    peak RSS {out['peak_rss_mb']:.0f} MB "
                           f"(after import {out['rss_after_import_mb']:.0f} MB)")
        else:
            _say(progress, f"    failed: {out['error']}")
    return {"kind": "memory", "env": environment(device="cpu", torch_imported=False), "results": results}


# Child: the OpenBLAS-vs-Numba thread fight. A GEMM-then-Numba pattern (LeNet conv2
# forward+backward in float64, im2col + BLAS, and a LeNet-5 training step when the zoo exists)
# under several import orders / environments.
_THREADS = r"""
import json, sys, time
order, seconds, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
if order == "numpy-first":
    import numpy
elif order == "torch-first":
    import torch
    torch.set_num_threads(threads)
    torch.ones(64, 64) @ torch.ones(64, 64)  # start torch's own OpenMP pool
import nbcnn, numba
import numpy as np
from nbcnn import ops, _threads
numba.set_num_threads(threads)
rng = np.random.default_rng(0)
def timeit(fn):
    fn(); fn()
    ts = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(ts) < 5:
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    ts.sort()
    return {"min_ms": ts[0] * 1e3, "median_ms": ts[len(ts) // 2] * 1e3, "n": len(ts)}
# float64: this path still is im2col + a BLAS GEMM (float32 convolutions use nbcnn's own
# micro-kernels, no BLAS), i.e. a GEMM-then-Numba workload
x = rng.standard_normal((64, 6, 14, 14))
w = rng.standard_normal((16, 6, 5, 5))
gy = rng.standard_normal((64, 16, 10, 10))
ctx = {}
def conv():
    ops.conv2d(x, w, None, 1, 0, ctx=ctx); ops.conv2d_backward(gy, x, w, 1, 0, ctx=ctx)
out = {"order": order, "blas_policy": _threads.blas_policy(), "conv2_fwd_bwd": timeit(conv)}
try:
    from nbcnn.bench.runners import nbcnn_lenet, lenet_data
    model = nbcnn_lenet("relu", "max")
    xb, yb = lenet_data(64, rng)
    out["lenet_step_b64"] = timeit(lambda: model.train_on_batch(xb, yb))
except Exception as exc:
    out["lenet_error"] = f"{type(exc).__name__}: {exc}"
try:
    from threadpoolctl import threadpool_info
    out["blas_threads"] = [p.get("num_threads") for p in threadpool_info() if p.get("user_api") == "blas"]
except Exception:
    pass
print(json.dumps(out))
"""

THREAD_CONFIGS = {
    # name: (import order, extra environment, what it shows)
    "nbcnn-default": ("nbcnn-first", {}, "import nbcnn first: it sets OPENBLAS_THREAD_TIMEOUT before numpy loads"),
    "numpy-first": ("numpy-first", {}, "numpy imported before nbcnn, no OPENBLAS_THREAD_TIMEOUT: nbcnn limits "
                                       "BLAS to 1 thread with threadpoolctl"),
    "unprotected": ("numpy-first", {"NBCNN_BLAS_THREADS": "0"},
                    "numpy first and NBCNN_BLAS_THREADS=0 (nbcnn leaves BLAS alone): the problem nbcnn avoids"),
    "torch-first": ("torch-first", {}, "torch (MKL + its own OpenMP pool) imported and used before nbcnn"),
}


def run_threads(configs=None, seconds: float = 2.0, passes: int = 2, threads: int = 2,
                timeout: float = 600, progress=None) -> dict:
    """Show nbcnn is immune to OpenBLAS's spinning workers, whatever the import order.

    Each configuration runs in a fresh process (the environment is read when
    OpenBLAS loads); passes alternate the order (A B C, C B A) against drift.
    ``torch-first`` runs only where PyTorch is importable.
    """
    if configs is None:
        configs = tuple(c for c in THREAD_CONFIGS if c != "torch-first" or torch_available())
    unknown = [c for c in configs if c not in THREAD_CONFIGS]
    if unknown:
        raise ValueError(f"unknown thread configurations {unknown}: choose from {list(THREAD_CONFIGS)}")
    results = []
    for ps in range(passes):
        order = list(configs) if ps % 2 == 0 else list(configs)[::-1]
        for name in order:
            imp, extra, _ = THREAD_CONFIGS[name]
            _say(progress, f"threads pass {ps + 1}: {name} ...")
            out = _run_child(_THREADS, _child_env(threads, **extra), timeout, (imp, seconds, threads))
            out.update(config=name, passno=ps + 1)
            results.append(out)
            if out.get("ok"):
                msg = f"    conv2 fwd+bwd {out['conv2_fwd_bwd']['median_ms']:.2f} ms"
                if "lenet_step_b64" in out:
                    msg += f", LeNet step {64 / out['lenet_step_b64']['median_ms'] * 1e3:.0f} img/s"
                _say(progress, msg + f"  [{out['blas_policy']}]")
            else:
                _say(progress, f"    failed: {out['error']}")
    return {"kind": "threads", "env": environment(device="cpu", torch_imported=False),
            "configs": {k: THREAD_CONFIGS[k][2] for k in configs}, "results": results}
