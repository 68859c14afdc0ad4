"""One-command GPU check of nbcnn's CUDA kernels (issue 3): correct, fast, trains. <= 3 min on an H100.

    python benchmarks/gpu_check.py                 # on a machine with an NVIDIA GPU, CuPy, numba-cuda
    python benchmarks/gpu_check.py --json out.json # also write every number as JSON
    python benchmarks/gpu_check.py --simulate      # rehearse the script under the CUDA simulator (no GPU)

Sections (each guarded: a failure is reported, the rest still runs):
  0. versions: driver/runtime, CuPy, numba-cuda, the PTX ISA its NVVM emits, nbcnn's GPU status;
     first-call time of every kernel (float32 + float64: NVVM compile + load).
  1. launch overhead of one small kernel: nbcnn's launcher (CuPy array interface without a
     stream, CuPy's stream) vs a plain Numba launch on CuPy arrays.
  2. correctness: every op and backward on fresh random shapes/data, CUDA vs the CPU kernels,
     outputs allocated poisoned (NaN), relative error max|gpu - cpu| / max|cpu|; determinism.
  3. speed: conv2d fwd and fwd+bwd on the issue-2 shapes, 2x2 max/avg pooling, with CUDA events,
     side by side with PyTorch/cuDNN when importable (TF32 off on both sides: fp32 vs fp32).
  4. LeNet-5 trained for --steps steps on random data through nbcnn.zoo / Sequential (if present),
     images/s (and the same net in PyTorch when importable).
  5. with --pytest: tests/cuda on the GPU (CuPy arrays, NUMBA_ENABLE_CUDASIM=0), in a subprocess.
  6. one short table (also as Markdown for benchmarks/RESULTS.md).

On the lent GPU machine use its preinstalled numba, numba-cuda and cupy (run from the checkout;
this script puts the checkout first on sys.path, nothing to install); newer NVVM wheels may emit a
PTX ISA the driver cannot load (section 0 prints both). One call does it all:

    python benchmarks/gpu_check.py --pytest --json $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log

then paste the printed Markdown tables into benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _early_args():
    ap = argparse.ArgumentParser(description="nbcnn GPU check (issue 3)")
    ap.add_argument("--simulate", action="store_true",
                    help="run under the Numba CUDA simulator on tiny shapes (rehearsal without a GPU)")
    ap.add_argument("--steps", type=int, default=300, help="LeNet-5 training steps (default 300)")
    ap.add_argument("--batch", type=int, default=64, help="LeNet-5 batch size (default 64)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--budget", type=float, default=170.0, help="seconds; later sections are cut short past it")
    ap.add_argument("--json", type=Path, help="write all results to this JSON file")
    ap.add_argument("--pytest", action="store_true",
                    help="finally run tests/cuda on the GPU (NUMBA_ENABLE_CUDASIM=0) in a subprocess")
    return ap.parse_args()


ARGS = _early_args()
os.environ["NUMBA_ENABLE_CUDASIM"] = "1" if ARGS.simulate else "0"  # before numba loads

import nbcnn  # noqa: E402  (first: it sets the BLAS thread policy before numpy loads)
import nbcnn.ops as ops  # noqa: E402
import numpy as np  # noqa: E402

T0 = time.perf_counter()
RESULTS: dict = {"sections": {}}
SIM = ARGS.simulate


def elapsed() -> float:
    return time.perf_counter() - T0


def over_budget(frac: float = 1.0) -> bool:
    return elapsed() > ARGS.budget * frac


def section(name):
    """Decorator: run a section, record its failure instead of stopping the script."""
    def wrap(fn):
        def run(*a, **kw):
            print(f"\n== {name} ({elapsed():.0f} s)", flush=True)
            t = time.perf_counter()
            try:
                out = fn(*a, **kw)
                RESULTS["sections"][name] = {"ok": True, "seconds": round(time.perf_counter() - t, 1)}
                return out
            except Exception as exc:
                traceback.print_exc()
                RESULTS["sections"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
                return None
        return run
    return wrap


# --------------------------------------------------------------------------------------------
# device helpers: CuPy + CUDA events on a GPU, NumPy + perf_counter under the simulator
# --------------------------------------------------------------------------------------------
if SIM:
    xp = np

    def sync():
        pass

    def to_dev(a):
        return a

    def timer(fn, iters):
        """Seconds per call."""
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t) / iters
else:
    try:
        import cupy as xp
    except Exception as _exc:  # no CuPy: nothing to check on a GPU
        print(f"CuPy is not importable ({type(_exc).__name__}: {_exc}); install nbcnn[cuda13] or run --simulate")
        sys.exit(2)

    def sync():
        xp.cuda.get_current_stream().synchronize()

    def to_dev(a):
        return xp.asarray(a)

    def timer(fn, iters):
        """Seconds per call, measured with CUDA events around ``iters`` back-to-back calls."""
        start, end = xp.cuda.Event(), xp.cuda.Event()
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return xp.cuda.get_elapsed_time(start, end) / 1e3 / iters


def to_host(a):
    return None if a is None else nbcnn.to_numpy(a)


def cpu(fn, *a, **kw):
    with nbcnn.using_device("cpu"):
        return fn(*a, **kw)


def gpu(fn, *a, **kw):
    with nbcnn.using_device("cuda"):
        return fn(*[to_dev(v) if isinstance(v, np.ndarray) else v for v in a], **kw)


# --------------------------------------------------------------------------------------------
# 0. versions and first-call (compile) time
# --------------------------------------------------------------------------------------------
@section("0 versions")
def versions():
    from importlib import metadata

    from nbcnn.kernels.cuda.info import cuda_info, format_cuda_info

    info = cuda_info()
    for line in format_cuda_info(info):
        print(line)
    env = {"python": platform.python_version(), "numpy": np.__version__}
    for dist in ("numba", "numba-cuda", "cupy-cuda13x", "cupy-cuda12x", "torch", "nvidia-nvvm",
                 "nvidia-cuda-nvrtc", "nvidia-nvjitlink"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    RESULTS["env"] = env
    RESULTS["cuda_info"] = info
    print("versions:", ", ".join(f"{k} {v}" for k, v in env.items()))
    if not SIM and not info["usable"]:
        print(f"GPU not usable: {info['reason']}")
        _finish(2)
    from numba import cuda, types

    from nbcnn.kernels.cuda import pad as kpad

    if not SIM:
        ptx, _ = cuda.compile_ptx(kpad._crop_planes.py_func, kpad._crop_planes.signature(types.float32),
                                  cc=cuda.get_current_device().compute_capability)
        ver = next((ln.split()[1] for ln in ptx.splitlines() if ln.startswith(".version")), "?")
        RESULTS["ptx_isa"] = ver
        print(f"PTX ISA emitted by this NVVM: {ver} (driver {info.get('driver')}: CUDA 13.0 loads <= 9.0 "
              f"unless numba-cuda links through nvJitLink)")
        for key in ("CUDA_ENABLE_PYNVJITLINK", "CUDA_ARRAY_INTERFACE_SYNC"):
            val = getattr(__import__("numba").config, key, None)
            if val is not None:
                print(f"numba.config.{key} = {val}")
    # first call of every kernel for both dtypes (compile + load); the tour launches all kernels
    from nbcnn.kernels.cuda import runtime

    for dt in (np.float32, np.float64):
        t = time.perf_counter()
        _tour(dt)
        sync()
        secs = time.perf_counter() - t
        RESULTS[f"first_call_s_{np.dtype(dt).name}"] = round(secs, 2)
        print(f"first call of all {len(runtime.KERNELS)} kernels, {np.dtype(dt).name}: {secs:.1f} s")
    t = time.perf_counter()
    _tour(np.float32)
    sync()
    print(f"same tour, warm: {1e3 * (time.perf_counter() - t):.1f} ms")


def _tour(dt):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(dt)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dt)
    b = rng.standard_normal(4).astype(dt)
    gy = rng.standard_normal((2, 4, 8, 8)).astype(dt)
    gp = rng.standard_normal((2, 3, 4, 4)).astype(dt)

    def run(x, w, b, gy, gp):
        ctx = {}
        ops.conv2d(x, w, b, 1, 1, ctx=ctx)
        ops.conv2d_backward(gy, x, w, 1, 1, ctx=ctx)
        ops.pad2d_backward(ops.pad2d(x, 1), 1)
        ops.max_pool2d_backward(gp, x, 2)
        ops.avg_pool2d_backward(gp, x, 2)
        return ops.avg_pool2d(x, 2)

    gpu(run, x, w, b, gy, gp)


# --------------------------------------------------------------------------------------------
# 1. launch overhead
# --------------------------------------------------------------------------------------------
@section("1 launch overhead")
def launch_overhead():
    from nbcnn.kernels.cuda import pad as kpad

    k = kpad._crop_planes
    g = to_dev(np.ones((4, 6, 6), np.float32))
    out = to_dev(np.empty((4, 4, 4), np.float32))
    n = 20 if SIM else 500
    res = {}

    from nbcnn.kernels.cuda import runtime

    fast_default = runtime.fast_args()

    def ours():
        k.grid3(16, 4, 1, g, 1, 1, out)

    def ours_cai():
        runtime.fast_args(False)
        try:
            k.grid3(16, 4, 1, g, 1, 1, out)
        finally:
            runtime.fast_args(fast_default)

    def plain():  # kernel[grid, block](cupy arrays): Numba syncs the stream the arrays name
        k.jit[1, 256](g, 1, 1, out)

    def whole_op():  # what a layer pays: validation, allocation and the launch
        with nbcnn.using_device("cuda"):
            ops.pad2d_backward(g[None], 1)

    variants = [("nbcnn launcher", ours), ("ops.pad2d_backward", whole_op)]
    if not SIM:
        from numba import cuda

        dg, dout = cuda.as_cuda_array(g, sync=False), cuda.as_cuda_array(out, sync=False)

        def prepared():  # Numba device arrays made once: the floor of a Numba launch
            k.jit[1, 256](dg, 1, 1, dout)

        def per_launch():  # device arrays made at each launch from a stream-less interface
            from nbcnn.kernels.cuda.runtime import _Ref

            k.jit[1, 256](cuda.from_cuda_array_interface(_Ref(g).__cuda_array_interface__, owner=g, sync=False),
                          1, 1,
                          cuda.from_cuda_array_interface(_Ref(out).__cuda_array_interface__, owner=out, sync=False))

        variants += [("nbcnn, array interface", ours_cai), ("plain numba launch", plain),
                     ("numba device arrays", prepared), ("device arrays per launch", per_launch)]
        print(f"nbcnn launcher passes CuPy arrays as {'device-array stand-ins' if fast_default else 'interfaces'}")
    import warnings

    with warnings.catch_warnings():  # Numba's low-occupancy warnings for these 1-block launches
        warnings.simplefilter("ignore")
        for name, fn in variants:
            try:
                fn()
                sync()
                t = time.perf_counter()
                for _ in range(n):
                    fn()
                host = (time.perf_counter() - t) / n
                sync()
            except Exception as exc:
                print(f"{name:22s} failed: {type(exc).__name__}: {exc}"[:300])
                continue
            res[name] = round(host * 1e6, 1)
            print(f"{name:22s} {host * 1e6:8.1f} us/launch (host time)")
    RESULTS["launch_us"] = res


# --------------------------------------------------------------------------------------------
# 2. correctness against the CPU kernels, poisoned outputs
# --------------------------------------------------------------------------------------------
class Poisoned:
    """Inside the block, every output the CUDA kernels allocate starts as NaN (ints: -7)."""

    def __enter__(self):
        from nbcnn.kernels.cuda import conv, pad, pool, runtime

        real = runtime.xp_of

        def poisoned(a):
            mod = real(a)

            class P:
                def __getattr__(self, name):
                    return getattr(mod, name)

                __name__ = mod.__name__

                @staticmethod
                def empty(shape, dtype=float):
                    dt = np.dtype(dtype)
                    return mod.full(shape, np.nan if dt.kind == "f" else -7, dtype=dt)

            return P()

        self.mods = (conv, pad, pool)
        self.saved = [m.xp_of for m in self.mods]
        for m in self.mods:
            m.xp_of = poisoned
        return self

    def __exit__(self, *exc):
        for m, f in zip(self.mods, self.saved):
            m.xp_of = f


def _rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    if not np.all(np.isfinite(got) == np.isfinite(want)):
        return float("inf")  # NaN where the CPU has a number: an unwritten (poisoned) element
    fin = np.isfinite(want)
    scale = max(float(np.abs(want[fin]).max()) if fin.any() else 0.0, 1e-30)
    return float(np.abs(got[fin] - want[fin]).max()) / scale if fin.any() else 0.0


def _random_conv(rng, dt, small):
    N = int(rng.integers(1, 3 if small else 9))
    C = int(rng.integers(1, 4 if small else 17))
    K = int(rng.integers(1, 4 if small else 17))
    kh, kw = (int(v) for v in rng.integers(1, 4 if small else 6, size=2))
    sh, sw = (int(v) for v in rng.integers(1, 3 if small else 4, size=2))
    H = int(rng.integers(kh, (8 if small else 40) + 1))
    W = int(rng.integers(kw, (8 if small else 40) + 1))
    forms = [0, int(rng.integers(0, 3)), (int(rng.integers(0, 3)), int(rng.integers(0, 3))),
             tuple(int(v) for v in rng.integers(0, 3, size=4)), "valid", "same", "full"]
    padding = forms[int(rng.integers(0, len(forms)))]
    return (N, C, H, W), (K, C, kh, kw), (sh, sw), padding


@section("2 correctness")
def correctness():
    seed = int(time.time_ns() % 2**32)
    rng = np.random.default_rng(seed)
    print(f"fresh random data, seed {seed}")
    tol = {np.float32: 2e-5, np.float64: 1e-12}
    rows = []  # (op, dtype, cases, worst rel err, ok)

    def record(op, dt, errs):
        worst = max(errs) if errs else float("nan")
        ok = bool(errs) and worst <= tol[dt]
        rows.append((op, np.dtype(dt).name, len(errs), worst, ok))
        print(f"{op:22s} {np.dtype(dt).name:8s} {len(errs):3d} cases  worst rel err {worst:9.2e}  "
              f"{'ok' if ok else 'FAIL'}", flush=True)

    n_conv = 3 if SIM else 24
    n_pool = 3 if SIM else 16
    with Poisoned():
        for dt in (np.float32, np.float64):
            errs = {k: [] for k in ("conv2d", "conv2d gx", "conv2d gw", "conv2d gb", "max_pool2d",
                                    "max_pool2d bwd", "avg_pool2d", "avg_pool2d bwd", "pad2d", "pad2d bwd")}
            for i in range(n_conv if dt == np.float32 else max(n_conv // 3, 2)):
                xs, ws, stride, padding = _random_conv(rng, dt, SIM)
                x = rng.standard_normal(xs).astype(dt)
                w = rng.standard_normal(ws).astype(dt)
                b = rng.standard_normal(ws[0]).astype(dt)
                gy = rng.standard_normal(ops.conv2d_output_shape(xs, ws, stride, padding)).astype(dt)

                def fb(x, w, b, gy):
                    ctx = {}
                    y = ops.conv2d(x, w, b, stride, padding, ctx=ctx)
                    return (y, *ops.conv2d_backward(gy, x, w, stride, padding, ctx=ctx))

                got = [to_host(a) for a in gpu(fb, x, w, b, gy)]
                want = [cpu(ops.conv2d, x, w, b, stride, padding),
                        *cpu(ops.conv2d_backward, gy, x, w, stride, padding)]
                for name, g_, w_ in zip(("conv2d", "conv2d gx", "conv2d gw", "conv2d gb"), got, want):
                    e = _rel(g_, w_)
                    errs[name].append(e)
                    if e > tol[dt]:
                        print(f"  mismatch {name}: x{xs} w{ws} stride {stride} padding {padding!r}: {e:.2e}")
                if i == 0:  # determinism: the same backward twice, bitwise
                    again = [to_host(a) for a in gpu(fb, x, w, b, gy)]
                    same = all(np.array_equal(a, c) for a, c in zip(got, again))
                    RESULTS.setdefault("deterministic", []).append(same)
                    print(f"  conv fwd+bwd twice bitwise equal: {same}")
            for _ in range(n_pool if dt == np.float32 else max(n_pool // 4, 2)):
                kh, kw = (int(v) for v in rng.integers(1, 5, size=2))
                stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
                padding = (int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1)))
                N, C = int(rng.integers(1, 4)), int(rng.integers(1, 6))
                H, W = (int(v) for v in rng.integers(max(kh, kw), 9 if SIM else 33, size=2))
                x = rng.standard_normal((N, C, H, W)).astype(dt)
                if rng.random() < 0.5:
                    x = np.round(x)  # ties: the first maximum must get the gradient, as on the CPU
                ys = ops.pool2d_output_shape(x.shape, (kh, kw), stride, padding)
                gyp = rng.standard_normal(ys).astype(dt)
                for kind in ("max", "avg"):
                    f, fbk = getattr(ops, f"{kind}_pool2d"), getattr(ops, f"{kind}_pool2d_backward")
                    yg = to_host(gpu(f, x, (kh, kw), stride, padding))
                    gg = to_host(gpu(fbk, gyp, x, (kh, kw), stride, padding))
                    errs[f"{kind}_pool2d"].append(_rel(yg, cpu(f, x, (kh, kw), stride, padding)))
                    errs[f"{kind}_pool2d bwd"].append(_rel(gg, cpu(fbk, gyp, x, (kh, kw), stride, padding)))
                pads = tuple(int(v) for v in rng.integers(0, 4, size=4))
                pg = to_host(gpu(ops.pad2d, x, pads))
                errs["pad2d"].append(_rel(pg, cpu(ops.pad2d, x, pads)))
                errs["pad2d bwd"].append(_rel(to_host(gpu(ops.pad2d_backward, pg, pads)), x))
            for op, e in errs.items():
                record(op, dt, e)
    if not SIM:  # kernels must follow CuPy's current stream (ordered with CuPy's GEMMs)
        xs, ws, stride, padding = _random_conv(rng, np.float32, False)
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        gy = rng.standard_normal(ops.conv2d_output_shape(xs, ws, stride, padding)).astype(np.float32)
        stream = xp.cuda.Stream(non_blocking=True)
        with stream:
            got = gpu(ops.conv2d_backward, gy, x, w, stride, padding)
            got = [a.get(stream=stream) for a in got]
        stream.synchronize()
        want = cpu(ops.conv2d_backward, gy, x, w, stride, padding)
        errs = [_rel(g_, w_) for g_, w_ in zip(got, want)]
        record("conv2d bwd, own stream", np.float32, [max(errs)])
        from nbcnn.kernels.cuda import runtime  # both ways of passing CuPy arrays: bitwise the same

        fast = runtime.fast_args()
        try:
            runtime.fast_args(True)
            a = [to_host(v) for v in gpu(ops.conv2d_backward, gy, x, w, stride, padding)]
            runtime.fast_args(False)
            b_ = [to_host(v) for v in gpu(ops.conv2d_backward, gy, x, w, stride, padding)]
        finally:
            runtime.fast_args(fast)
        same = all(np.array_equal(u, v) for u, v in zip(a, b_))
        print(f"  device-array stand-ins vs array interface: bitwise equal {same}")
        record("fast vs interface args", np.float32, [0.0 if same else float("inf")])
    RESULTS["correctness"] = [dict(zip(("op", "dtype", "cases", "worst_rel_err", "ok"), r)) for r in rows]
    RESULTS["correctness_seed"] = seed
    return rows


# --------------------------------------------------------------------------------------------
# 3. speed vs PyTorch/cuDNN
# --------------------------------------------------------------------------------------------
CONV_SHAPES = [  # name, (N, C, H, W, K, k, s, p) from issue 2
    ("LeNet conv1", (64, 1, 28, 28, 6, 5, 1, 2)),
    ("LeNet conv2", (64, 6, 14, 14, 16, 5, 1, 0)),
    ("VGG", (32, 64, 32, 32, 64, 3, 1, 1)),
    ("VGG deep", (32, 128, 16, 16, 128, 3, 1, 1)),
    ("AlexNet conv1", (8, 3, 227, 227, 96, 11, 4, 0)),
    ("strided", (32, 32, 32, 32, 64, 3, 2, 1)),
]
POOL_SHAPE = (64, 32, 32, 32)
SIM_CONV_SHAPES = [("tiny", (2, 2, 6, 6, 3, 3, 1, 1))]
SIM_POOL_SHAPE = (1, 2, 4, 4)


def _torch():
    if ARGS.no_torch or SIM:
        return None
    try:
        import torch
        import torch.nn.functional as F  # noqa: F401

        if not torch.cuda.is_available():
            print("torch is importable but sees no GPU")
            return None
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False  # fp32 vs fp32 (CuPy's cuBLAS does not use TF32 either)
        torch.backends.cuda.matmul.allow_tf32 = False
        return torch
    except Exception as exc:
        print(f"PyTorch not usable ({type(exc).__name__}: {exc}); nbcnn times only")
        return None


def _measure(fn, target_s=0.15):
    """Seconds per call: warm up, size the loop to ~target_s, best of 3 rounds."""
    fn()
    sync()
    one = timer(fn, 2 if SIM else 3)
    iters = 1 if SIM else int(min(max(target_s / max(one, 1e-6), 5), 500))
    return min(timer(fn, iters) for _ in range(1 if SIM else 3))


@section("3 speed")
def speed():
    torch = _torch()
    if torch is not None:
        import torch.nn.functional as F
    rows = []
    rng = np.random.default_rng(1)
    shapes = SIM_CONV_SHAPES if SIM else CONV_SHAPES
    for name, (N, C, H, W, K, k, s, p) in shapes:
        if over_budget(0.6):
            print(f"time budget: skipping {name} and later shapes")
            break
        x = to_dev(rng.standard_normal((N, C, H, W)).astype(np.float32))
        w = to_dev((rng.standard_normal((K, C, k, k)) * 0.1).astype(np.float32))
        b = to_dev(rng.standard_normal(K).astype(np.float32))
        oshape = ops.conv2d_output_shape(x.shape, w.shape, s, p)
        gy = to_dev(rng.standard_normal(oshape).astype(np.float32))
        ctx: dict = {}
        with nbcnn.using_device("cuda"):
            fwd = lambda: ops.conv2d(x, w, b, s, p, ctx=ctx)  # noqa: E731

            def fwdbwd():
                ops.conv2d(x, w, b, s, p, ctx=ctx)
                ops.conv2d_backward(gy, x, w, s, p, ctx=ctx)

            ours = (_measure(fwd), _measure(fwdbwd))
        theirs = (None, None)
        if torch is not None:
            xt = torch.as_tensor(x, device="cuda").requires_grad_(True)
            wt = torch.as_tensor(w, device="cuda").requires_grad_(True)
            bt = torch.as_tensor(b, device="cuda").requires_grad_(True)
            gyt = torch.as_tensor(gy, device="cuda")

            def tfwd():
                with torch.no_grad():
                    F.conv2d(xt, wt, bt, s, p)

            def tfwdbwd():
                y = F.conv2d(xt, wt, bt, s, p)
                torch.autograd.grad(y, (xt, wt, bt), gyt)

            theirs = (_measure(tfwd), _measure(tfwdbwd))
        rows += _speed_rows(name, ours, theirs)
    x = to_dev(rng.standard_normal(SIM_POOL_SHAPE if SIM else POOL_SHAPE).astype(np.float32))
    gyp = to_dev(rng.standard_normal(ops.pool2d_output_shape(x.shape, 2)).astype(np.float32))
    for kind in ("max", "avg"):
        f, fbk = getattr(ops, f"{kind}_pool2d"), getattr(ops, f"{kind}_pool2d_backward")
        ctx = {}
        with nbcnn.using_device("cuda"):
            if kind == "max":
                def pf():
                    return f(x, 2, ctx=ctx)

                def pfb():
                    f(x, 2, ctx=ctx)
                    fbk(gyp, x, 2, ctx=ctx)
            else:
                def pf():
                    return f(x, 2)

                def pfb():
                    f(x, 2)
                    fbk(gyp, x, 2)
            ours = (_measure(pf), _measure(pfb))
        theirs = (None, None)
        if torch is not None:
            xt = torch.as_tensor(x, device="cuda").requires_grad_(True)
            gyt = torch.as_tensor(gyp, device="cuda")
            tf = getattr(F, f"{kind}_pool2d")

            def tpf():
                with torch.no_grad():
                    tf(xt, 2)

            def tpfb():
                torch.autograd.grad(tf(xt, 2), (xt,), gyt)

            theirs = (_measure(tpf), _measure(tpfb))
        rows += _speed_rows(f"{kind}pool 2x2 {tuple(x.shape)}", ours, theirs)
    RESULTS["speed"] = [dict(zip(("shape", "pass", "nbcnn_ms", "torch_ms", "ratio"), r)) for r in rows]
    return rows


def _speed_rows(name, ours, theirs):
    rows = []
    for label, a, t in zip(("fwd", "fwd+bwd"), ours, theirs):
        ratio = a / t if t else None
        rows.append((name, label, round(a * 1e3, 4), None if t is None else round(t * 1e3, 4),
                     None if ratio is None else round(ratio, 2)))
        print(f"{name:24s} {label:8s} nbcnn {a * 1e3:9.3f} ms" +
              (f"   torch {t * 1e3:9.3f} ms   ratio {ratio:5.2f}" if t else ""), flush=True)
    return rows


# --------------------------------------------------------------------------------------------
# 4. LeNet-5 training through the public model API
# --------------------------------------------------------------------------------------------
@section("4 LeNet-5 training")
def train_lenet():
    out = {}
    steps = 3 if SIM else ARGS.steps
    bs = 4 if SIM else ARGS.batch
    rng = np.random.default_rng(2)
    nb = 8
    xs = rng.standard_normal((nb * bs, 1, 28, 28)).astype(np.float32)
    ys = rng.integers(0, 10, nb * bs)
    try:
        from nbcnn import zoo

        model = zoo.lenet5(device="cuda", seed=0)
        model.compile(loss="cross_entropy", optimizer="sgd")
    except Exception as exc:
        print(f"nbcnn model API not available: {type(exc).__name__}: {exc}")
        out["nbcnn"] = f"n/a: {type(exc).__name__}: {exc}"[:200]
        RESULTS["lenet"] = out
        return out
    xd, yd = to_dev(xs), to_dev(ys)
    losses = []
    for i in range(min(5, steps)):  # warm-up: compiles every kernel the model uses
        losses.append(model.train_on_batch(xd[(i % nb) * bs:(i % nb + 1) * bs], yd[(i % nb) * bs:(i % nb + 1) * bs]))
    sync()
    t = time.perf_counter()
    for i in range(steps):
        j = i % nb
        losses.append(model.train_on_batch(xd[j * bs:(j + 1) * bs], yd[j * bs:(j + 1) * bs]))
    sync()
    secs = time.perf_counter() - t
    ips = steps * bs / secs
    finite = bool(np.all(np.isfinite(losses)))
    out["nbcnn"] = {"steps": steps, "batch": bs, "images_per_s": round(ips, 1),
                    "loss_first": float(losses[0]), "loss_last": float(losses[-1]), "finite": finite}
    print(f"nbcnn LeNet-5: {steps} steps of {bs} in {secs:.2f} s = {ips:,.0f} images/s; "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f} (random labels: ~2.30 expected)")
    torch = _torch()
    if torch is not None:
        import torch.nn as tnn

        net = tnn.Sequential(
            tnn.Conv2d(1, 6, 5, padding=2), tnn.Tanh(), tnn.AvgPool2d(2),
            tnn.Conv2d(6, 16, 5), tnn.Tanh(), tnn.AvgPool2d(2), tnn.Flatten(),
            tnn.Linear(400, 120), tnn.Tanh(), tnn.Linear(120, 84), tnn.Tanh(), tnn.Linear(84, 10)).cuda()
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        xt = torch.as_tensor(xd, device="cuda")
        yt = torch.as_tensor(yd, device="cuda").long()

        def tstep(j):
            opt.zero_grad(set_to_none=True)
            loss = tnn.functional.cross_entropy(net(xt[j * bs:(j + 1) * bs]), yt[j * bs:(j + 1) * bs])
            loss.backward()
            opt.step()
            return loss.item()  # a host sync per step, as train_on_batch returns a float

        for i in range(5):
            tstep(i % nb)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(steps):
            tstep(i % nb)
        torch.cuda.synchronize()
        tips = steps * bs / (time.perf_counter() - t)
        out["torch"] = {"images_per_s": round(tips, 1)}
        print(f"torch LeNet-5 (same layers, SGD, .item() per step): {tips:,.0f} images/s")
    RESULTS["lenet"] = out
    return out


@section("5 pytest tests/cuda on the GPU")
def pytest_on_gpu():
    import subprocess

    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    left = max(ARGS.budget + 60 - elapsed(), 30)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "tests/cuda"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=left)
    tail = (res.stdout + res.stderr).strip().splitlines()[-15:]
    print("\n".join(tail))
    RESULTS["pytest_gpu"] = {"rc": res.returncode, "tail": tail[-1] if tail else ""}
    if res.returncode != 0:
        raise RuntimeError(f"tests/cuda failed on the GPU: {tail[-1] if tail else res.returncode}")


# --------------------------------------------------------------------------------------------
# 6. summary
# --------------------------------------------------------------------------------------------
def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def summary():
    print(f"\n== summary ({elapsed():.0f} s)")
    lines = ["| check | result |", "|---|---|"]
    dev = (RESULTS.get("cuda_info") or {}).get("gpus") or [{}]
    lines.append(f"| device | {'CUDA simulator' if SIM else dev[0].get('name', '?')}, driver "
                 f"{(RESULTS.get('cuda_info') or {}).get('driver')}, PTX ISA {RESULTS.get('ptx_isa', '-')} |")
    env = RESULTS.get("env", {})
    lines.append("| versions | " + ", ".join(f"{k} {v}" for k, v in env.items()) + " |")
    if "first_call_s_float32" in RESULTS:
        lines.append(f"| first call, all kernels | f32 {RESULTS['first_call_s_float32']} s, "
                     f"f64 {RESULTS.get('first_call_s_float64')} s |")
    if RESULTS.get("launch_us"):
        us = ", ".join(f"{k} {v} us" for k, v in RESULTS["launch_us"].items())
        lines.append(f"| launch overhead (host) | {us} |")
    corr = RESULTS.get("correctness") or []
    if corr:
        bad = [c for c in corr if not c["ok"]]
        worst32 = max((c["worst_rel_err"] for c in corr if c["dtype"] == "float32"), default=None)
        worst64 = max((c["worst_rel_err"] for c in corr if c["dtype"] == "float64"), default=None)
        lines.append(f"| correctness vs CPU ({sum(c['cases'] for c in corr)} op results) | "
                     f"{'all ok' if not bad else 'FAIL: ' + ', '.join(c['op'] + ' ' + c['dtype'] for c in bad)}; "
                     f"worst rel err f32 {_fmt(worst32, '.1e')}, f64 {_fmt(worst64, '.1e')}; "
                     f"deterministic {all(RESULTS.get('deterministic', [False]))} |")
    if RESULTS.get("pytest_gpu"):
        lines.append(f"| pytest tests/cuda on the GPU | {RESULTS['pytest_gpu']['tail']} |")
    for name, sec in RESULTS["sections"].items():
        if not sec["ok"]:
            lines.append(f"| section {name} | FAILED: {sec['error'][:150]} |")
    print("\n".join(lines))
    speed_rows = RESULTS.get("speed") or []
    if speed_rows:
        print("\n| shape | pass | nbcnn ms | torch ms | nbcnn/torch |\n|---|---|---:|---:|---:|")
        for r in speed_rows:
            print(f"| {r['shape']} | {r['pass']} | {_fmt(r['nbcnn_ms'], '.3f')} | {_fmt(r['torch_ms'], '.3f')} "
                  f"| {_fmt(r['ratio'], '.2f')} |")
    lenet = RESULTS.get("lenet") or {}
    if lenet:
        n = lenet.get("nbcnn")
        t = (lenet.get("torch") or {}).get("images_per_s")
        if isinstance(n, dict):
            print(f"\nLeNet-5 training, batch {n['batch']}: nbcnn {n['images_per_s']:,.0f} images/s"
                  + (f", torch {t:,.0f} images/s" if t else "") + f"; losses finite: {n['finite']}")
        else:
            print(f"\nLeNet-5 training: {n}")
    print(f"\ntotal {elapsed():.0f} s")


def _finish(code=0):
    summary()
    if ARGS.json:
        ARGS.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = ARGS.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(RESULTS, indent=1, default=str))
        os.replace(tmp, ARGS.json)
    sys.exit(code)


if __name__ == "__main__":
    versions()
    launch_overhead()
    rows = correctness()
    if not over_budget(0.5):
        speed()
    if not over_budget(0.85):
        train_lenet()
    if ARGS.pytest and not SIM:
        pytest_on_gpu()
    failed = any(not s["ok"] for s in RESULTS["sections"].values()) or \
        any(not c["ok"] for c in RESULTS.get("correctness", []))
    _finish(1 if failed else 0)
