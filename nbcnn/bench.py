"""Benchmark harness: nbcnn's ops and LeNet-5 training, side by side with PyTorch.

Used by ``nbcnn bench`` and by the scripts in ``benchmarks/``. PyTorch is
optional and imported lazily (only when a comparison is asked for), so this
module works on an install without it.

How the numbers are made, and why (the machine this project measures on is
a shared 2-core VM whose timings jump 2-40x when a neighbour wakes up):

* Both libraries run in **one process**, in **alternating rounds** (ours then
  torch, then torch then ours, ...). Each round calls each variant ``reps``
  times and keeps the **minimum**; the reported time is the median over
  rounds of those minima, and the ratio ours/torch is the **median over
  rounds of the per-round ratios**, which survives most load spikes (a
  spike rarely hits both halves of one round).
* Thread counts are pinned on both sides (``torch.set_num_threads(n)``,
  ``numba.set_num_threads(n)``; default 2): the comparison is per core set,
  not "who grabs more cores".
* Layers keep state between steps, so the forward+backward cases reuse one
  ``ctx`` dict per case, as a layer does; inputs and outputs are fresh each
  call on both sides.
* ``device="cuda"`` times CuPy arrays (and torch CUDA tensors) with a device
  synchronisation after every call.

Start-up, memory and the BLAS-threading check run in **fresh subprocesses**
(:func:`run_startup`, :func:`run_memory`, :func:`run_threads`): they are
about what a new process pays, which one long-lived process cannot show.
"""
from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

__all__ = [
    "BenchError", "ConvShape", "CONV_SHAPES", "POOL_SHAPE", "SHAPE_GROUPS", "TARGETS",
    "select_shapes", "interleave", "merge_passes", "run_ops", "run_train", "run_startup", "run_memory",
    "run_threads", "environment", "format_table", "format_report", "torch_available", "main",
]


class BenchError(RuntimeError):
    """A benchmark cannot run as asked (no PyTorch for --compare torch, no GPU, no model zoo)."""


# --------------------------------------------------------------------------- shapes and targets

@dataclass(frozen=True)
class ConvShape:
    """One convolution layer: input (N, C, H, W), K square k x k filters, stride s, padding p."""

    name: str
    N: int
    C: int
    H: int
    W: int
    K: int
    k: int
    s: int
    p: int

    @property
    def out_hw(self) -> tuple[int, int]:
        return ((self.H + 2 * self.p - self.k) // self.s + 1, (self.W + 2 * self.p - self.k) // self.s + 1)

    @property
    def flops_fwd(self) -> int:
        """Multiply-adds x 2 of the forward pass (no bias)."""
        ho, wo = self.out_hw
        return 2 * self.N * self.K * self.C * self.k * self.k * ho * wo

    def label(self) -> str:
        return f"({self.N},{self.C},{self.H},{self.W})->{self.K} {self.k}x{self.k} s{self.s} p{self.p}"


# The shapes of issue 2, section 6.
CONV_SHAPES: dict[str, ConvShape] = {s.name: s for s in (
    ConvShape("lenet_conv1", 64, 1, 28, 28, 6, 5, 1, 2),
    ConvShape("lenet_conv2", 64, 6, 14, 14, 16, 5, 1, 0),
    ConvShape("vgg", 32, 64, 32, 32, 64, 3, 1, 1),
    ConvShape("vgg_deep", 32, 128, 16, 16, 128, 3, 1, 1),
    ConvShape("alexnet_conv1", 8, 3, 227, 227, 96, 11, 4, 0),
    ConvShape("strided", 32, 32, 32, 32, 64, 3, 2, 1),
)}
POOL_SHAPE = (64, 32, 32, 32)
SHAPE_GROUPS: dict[str, tuple[str, ...]] = {
    "lenet": ("lenet_conv1", "lenet_conv2"),
    "vgg": ("vgg", "vgg_deep", "strided"),  # the 3x3 layers, stride 1 and 2
    "alexnet": ("alexnet_conv1",),
    "all": tuple(CONV_SHAPES),
}

# Targets as ours/torch time ratios (<=), per issue. Training/predict targets are
# speed-ups (ours images/s / torch images/s, >=).
TARGETS = {
    ("conv", "fwd+bwd", "lenet"): {"issue2": 1.0, "issue7": 0.5},
    ("conv", "fwd+bwd", "big"): {"issue2": 1.5, "issue7": 1.0},
    ("pool", "fwd", None): {"issue2": 0.5, "issue7": 0.3},
    ("pool", "fwd+bwd", None): {"issue2": 0.5, "issue7": 0.3},
    ("train", None, None): {"issue7": 1.5},
    ("predict", None, None): {"issue7": 1.5},
}


def _target_for(op: str, mode: str | None, shape: str | None) -> dict:
    if op == "conv":
        if mode != "fwd+bwd":
            return {}
        return TARGETS[("conv", mode, "lenet" if shape in SHAPE_GROUPS["lenet"] else "big")]
    if op in ("max_pool", "avg_pool"):
        return TARGETS[("pool", mode, None)]
    return TARGETS.get((op, None, None), {})


def select_shapes(shapes) -> list[ConvShape]:
    """Shapes for a group name (lenet|vgg|alexnet|all), a shape name, a ConvShape, or a list of those."""
    items = [shapes] if isinstance(shapes, (str, ConvShape)) else list(shapes)
    out: dict[str, ConvShape] = {}
    for n in items:
        if isinstance(n, ConvShape):
            out[n.name] = n
        elif n in SHAPE_GROUPS:
            out.update((m, CONV_SHAPES[m]) for m in SHAPE_GROUPS[n])
        elif n in CONV_SHAPES:
            out[n] = CONV_SHAPES[n]
        else:
            raise ValueError(f"unknown shape group or shape {n!r}: choose from "
                             f"{', '.join([*SHAPE_GROUPS, *CONV_SHAPES])}")
    return list(out.values())


# --------------------------------------------------------------------------- timing core

def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def interleave(variants: dict, rounds: int = 7, round_s: float = 0.2, max_reps: int = 50,
               min_reps: int = 3, sync: dict | None = None) -> dict:
    """Time callables in alternating rounds; return per-variant stats and pairwise ratios.

    ``variants`` maps a name to a zero-argument callable; ``sync`` optionally maps
    a name to a callable run after each call (device synchronisation). Each
    variant is called twice untimed first (compilation, caches), then timed
    (best of 3) to pick how many calls fill ``round_s`` per round (at least
    ``min_reps``, at most ``max_reps``; a round stops early past ``4 * round_s``,
    so a load spike cannot stretch the run).

    Returns ``{"stats": {name: {...}}, "ratios": {"a/b": median of per-round ratios}}``;
    times in seconds.
    """
    sync = sync or {}
    names = list(variants)
    first = {}
    for n in names:
        fn, sy = variants[n], sync.get(n)
        t0 = time.perf_counter()
        fn()
        if sy:
            sy()
        first[n] = time.perf_counter() - t0
        fn()
        if sy:
            sy()
    reps = {}
    for n in names:  # best of 3 calls, so one unlucky call does not shrink the sample
        fn, sy = variants[n], sync.get(n)
        dts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            if sy:
                sy()
            dts.append(time.perf_counter() - t0)
        dt = max(min(dts), 1e-7)
        reps[n] = int(min(max_reps, max(min_reps, math.ceil(round_s / dt))))
    round_min = {n: [] for n in names}
    round_mean = {n: [] for n in names}
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            for n in order:
                fn, sy = variants[n], sync.get(n)
                ts = []
                for _ in range(reps[n]):
                    t0 = time.perf_counter()
                    fn()
                    if sy:
                        sy()
                    ts.append(time.perf_counter() - t0)
                    if sum(ts) > 4 * round_s:  # a loaded machine: keep the run bounded
                        break
                round_min[n].append(min(ts))
                round_mean[n].append(sum(ts) / len(ts))
    finally:
        if gc_was:
            gc.enable()
    stats = {n: {"first_call_s": first[n], "reps": reps[n], "rounds": rounds,
                 "min_s": min(round_min[n]), "median_s": _median(round_min[n]),
                 "median_mean_s": _median(round_mean[n]), "round_min_s": round_min[n]}
             for n in names}
    ratios = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ratios[f"{a}/{b}"] = _median([x / y for x, y in zip(round_min[a], round_min[b])])
    return {"stats": stats, "ratios": ratios}


def _settings(quick: bool, rounds, round_s):
    return (rounds or (3 if quick else 7)), (round_s or (0.05 if quick else 0.2))


# --------------------------------------------------------------------------- torch / device helpers

def torch_available() -> bool:
    """True when PyTorch can be imported (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _resolve_compare(compare) -> str | None:
    if compare in (None, False, "none", ""):
        return None
    if compare == "auto":
        return "torch" if torch_available() else None
    if compare in ("torch", True):
        if not torch_available():
            raise BenchError("--compare torch needs PyTorch, which is not importable here "
                             "(pip install torch; it is not an nbcnn dependency)")
        return "torch"
    raise ValueError(f"compare must be 'torch', 'auto' or None, got {compare!r}")


def _import_torch(threads: int, device: str):
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set or inter-op work already started
        pass
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError("torch has no CUDA here: cannot compare on the GPU (run without --compare)")
    return torch


def _set_numba_threads(threads: int) -> int:
    import numba

    n = max(1, min(int(threads), int(numba.config.NUMBA_NUM_THREADS)))
    numba.set_num_threads(n)
    return n


class _Dev:
    """Array module + synchronisation for ``cpu`` or ``cuda``."""

    def __init__(self, device: str):
        import numpy as np

        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.name = device
        self.np = np
        if device == "cuda":
            import nbcnn

            ok, why = nbcnn.gpu_status()
            if not ok:
                raise BenchError(f"no usable GPU: {why}")
            import cupy

            self.cupy = cupy
            self.put = cupy.asarray
            self.sync = cupy.cuda.runtime.deviceSynchronize
        else:
            self.put = lambda a: a
            self.sync = None

    def to_numpy(self, a):
        return a.get() if self.name == "cuda" else a


def _rel_err(a, b) -> float:
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(float(np.max(np.abs(b))), 1e-30)
    return float(np.max(np.abs(a - b)) / scale)


# --------------------------------------------------------------------------- op benchmarks

def _conv_case(shape: ConvShape, mode: str, dev: _Dev, torch, dtype, rng):
    """Callables for one conv case, plus a function that returns (ours, torch) results for a check."""
    from . import ops

    ho, wo = shape.out_hw
    x = rng.standard_normal((shape.N, shape.C, shape.H, shape.W)).astype(dtype)
    w = (rng.standard_normal((shape.K, shape.C, shape.k, shape.k))
         / math.sqrt(shape.C * shape.k * shape.k)).astype(dtype)
    gy = rng.standard_normal((shape.N, shape.K, ho, wo)).astype(dtype)
    xd, wd, gyd = dev.put(x), dev.put(w), dev.put(gy)
    s, p = shape.s, shape.p
    ctx: dict = {}
    if mode == "fwd":
        def ours():
            return ops.conv2d(xd, wd, None, s, p)
    else:
        def ours():
            y = ops.conv2d(xd, wd, None, s, p, ctx=ctx)
            gx, gw, _ = ops.conv2d_backward(gyd, xd, wd, s, p, ctx=ctx)
            return y, gx, gw
    variants = {"nbcnn": ours}
    if torch is None:
        return variants, None
    F = torch.nn.functional
    tdev = "cuda" if dev.name == "cuda" else "cpu"
    xt, wt, gyt = (torch.from_numpy(a).to(tdev) for a in (x, w, gy))
    if mode == "fwd":
        def tfn():
            with torch.no_grad():
                return F.conv2d(xt, wt, None, s, p)
    else:
        xg, wg = xt.clone().requires_grad_(True), wt.clone().requires_grad_(True)

        def tfn():
            y = F.conv2d(xg, wg, None, s, p)
            gx, gw = torch.autograd.grad(y, (xg, wg), gyt)
            return y.detach(), gx, gw
    variants["torch"] = tfn

    def check():
        a = ours()
        b = tfn()
        if mode == "fwd":
            return {"y": _rel_err(dev.to_numpy(a), b.cpu().numpy())}
        return {k: _rel_err(dev.to_numpy(u), v.cpu().numpy()) for k, u, v in zip(("y", "gx", "gw"), a, b)}

    return variants, check


def _pool_case(kind: str, mode: str, dev: _Dev, torch, dtype, rng, pool_shape=POOL_SHAPE):
    from . import ops

    x = rng.standard_normal(pool_shape).astype(dtype)
    N, C, H, W = pool_shape
    gy = rng.standard_normal((N, C, H // 2, W // 2)).astype(dtype)
    xd, gyd = dev.put(x), dev.put(gy)
    ctx: dict = {}
    if kind == "max_pool":
        if mode == "fwd":
            def ours():
                return ops.max_pool2d(xd, 2)
        else:
            def ours():
                y = ops.max_pool2d(xd, 2, ctx=ctx)
                return y, ops.max_pool2d_backward(gyd, xd, 2, ctx=ctx)
    else:
        if mode == "fwd":
            def ours():
                return ops.avg_pool2d(xd, 2)
        else:
            def ours():
                y = ops.avg_pool2d(xd, 2)
                return y, ops.avg_pool2d_backward(gyd, xd, 2)
    variants = {"nbcnn": ours}
    if torch is None:
        return variants, None
    F = torch.nn.functional
    tpool = F.max_pool2d if kind == "max_pool" else F.avg_pool2d
    tdev = "cuda" if dev.name == "cuda" else "cpu"
    xt, gyt = torch.from_numpy(x).to(tdev), torch.from_numpy(gy).to(tdev)
    if mode == "fwd":
        def tfn():
            with torch.no_grad():
                return tpool(xt, 2)
    else:
        xg = xt.clone().requires_grad_(True)

        def tfn():
            y = tpool(xg, 2)
            (gx,) = torch.autograd.grad(y, (xg,), gyt)
            return y.detach(), gx
    variants["torch"] = tfn

    def check():
        a, b = ours(), tfn()
        if mode == "fwd":
            return {"y": _rel_err(dev.to_numpy(a), b.cpu().numpy())}
        return {k: _rel_err(dev.to_numpy(u), v.cpu().numpy()) for k, u, v in zip(("y", "gx"), a, b)}

    return variants, check


def _say(progress, msg: str) -> None:
    if progress:
        progress(msg)


def _fmt_case_line(r: dict) -> str:
    o = r["nbcnn_ms"]
    s = f"nbcnn {o:8.3f} ms"
    if r.get("torch_ms") is not None:
        s += f" | torch {r['torch_ms']:8.3f} ms | ratio {r['ratio']:.2f}"
    return s


def run_ops(op: str = "all", shapes="all", device: str = "cpu", compare="auto", threads: int = 2,
            dtype: str = "float32", quick: bool = False, rounds: int | None = None,
            round_s: float | None = None, modes=("fwd", "fwd+bwd"), progress=None, seed: int = 0,
            pool_shape=POOL_SHAPE) -> dict:
    """Time conv2d / max / avg pooling (forward and forward+backward), optionally vs PyTorch.

    ``op``: conv | pool | all; ``shapes``: lenet | vgg | alexnet | all (or shape names, or
    :class:`ConvShape` objects) for the convolutions; pooling (2x2, stride 2) runs on
    ``pool_shape``. Returns a JSON-able dict
    (``{"kind": "ops", "env": ..., "results": [...]}``); each result carries ms (median
    of per-round minima), best ms, GFLOP/s, the ratio ours/torch and the issue targets.
    """
    import numpy as np

    if op not in ("conv", "pool", "all"):
        raise ValueError(f"op must be conv, pool or all, got {op!r}")
    bad = [m for m in modes if m not in ("fwd", "fwd+bwd")]
    if bad:
        raise ValueError(f"modes must be 'fwd' and/or 'fwd+bwd', got {bad}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    compare = _resolve_compare(compare)
    dev = _Dev(device)
    nthreads = _set_numba_threads(threads) if device == "cpu" else None
    torch = _import_torch(threads, device) if compare else None
    rounds, round_s = _settings(quick, rounds, round_s)
    rng = np.random.default_rng(seed)
    cases = []
    conv_shapes = {shp.name: shp for shp in select_shapes(shapes)} if op in ("conv", "all") else {}
    for shp in conv_shapes.values():
        for mode in modes:
            cases.append(("conv", shp.name, mode))
    if op in ("pool", "all"):
        for kind in ("max_pool", "avg_pool"):
            for mode in modes:
                cases.append((kind, "pool", mode))
    env = environment(device=device, torch_imported=torch is not None)
    results = []
    t_start = time.perf_counter()
    for i, (kind, sname, mode) in enumerate(cases, 1):
        t0 = time.perf_counter()
        if kind == "conv":
            shp = conv_shapes[sname]
            variants, check = _conv_case(shp, mode, dev, torch, dtype, rng)
            flops = shp.flops_fwd * (1 if mode == "fwd" else 3)
            label = shp.label()
        else:
            variants, check = _pool_case(kind, mode, dev, torch, dtype, rng, tuple(pool_shape))
            flops = None
            label = "({},{},{},{}) 2x2 s2".format(*pool_shape)
        _say(progress, f"[{i}/{len(cases)}] {kind} {sname} {mode} ...")
        syncs = {n: dev.sync for n in variants} if dev.sync else {}
        if torch is not None and device == "cuda":
            syncs["torch"] = torch.cuda.synchronize
        res = interleave(variants, rounds=rounds, round_s=round_s, sync=syncs)
        st = res["stats"]
        row = {"op": kind, "shape": sname, "mode": mode, "label": label, "dtype": str(dtype),
               "device": device, "flops": flops,
               "nbcnn_ms": st["nbcnn"]["median_s"] * 1e3, "nbcnn_best_ms": st["nbcnn"]["min_s"] * 1e3,
               "nbcnn_first_call_s": st["nbcnn"]["first_call_s"],
               "nbcnn_gflops": (flops / st["nbcnn"]["median_s"] / 1e9) if flops else None,
               "torch_ms": None, "torch_best_ms": None, "torch_gflops": None, "ratio": None,
               "ratio_best": None, "max_rel_err": None, "target": _target_for(kind, mode, sname),
               "rounds": rounds, "reps": {n: s["reps"] for n, s in st.items()},
               "round_min_ms": {n: [t * 1e3 for t in s["round_min_s"]] for n, s in st.items()}}
        if "torch" in st:
            row.update(torch_ms=st["torch"]["median_s"] * 1e3, torch_best_ms=st["torch"]["min_s"] * 1e3,
                       torch_gflops=(flops / st["torch"]["median_s"] / 1e9) if flops else None,
                       ratio=res["ratios"]["nbcnn/torch"],
                       ratio_best=st["nbcnn"]["min_s"] / st["torch"]["min_s"])
            row["max_rel_err"] = check()
        results.append(row)
        _say(progress, f"    {_fmt_case_line(row)}   ({time.perf_counter() - t0:.1f} s)")
    env["wall_s"] = time.perf_counter() - t_start
    env["loadavg_after"] = _loadavg()
    env["numba_threads"] = nthreads
    return {"kind": "ops", "env": env, "settings": {"rounds": rounds, "round_s": round_s, "threads": threads,
                                                   "compare": compare, "quick": quick},
            "results": results}


# --------------------------------------------------------------------------- LeNet-5 training

LENET_VARIANTS = (("tanh", "avg"), ("relu", "max"))


def _nbcnn_lenet(activation: str, pooling: str, lr: float = 0.01, momentum: float = 0.9, device: str = "cpu"):
    """nbcnn's zoo LeNet-5 compiled for training (issue-4 API), on an explicit device."""
    import nbcnn

    try:
        zoo, optim = nbcnn.zoo, nbcnn.optim
    except (ImportError, AttributeError) as exc:
        raise BenchError(f"the model zoo is not available ({type(exc).__name__}: {exc})") from exc
    model = zoo.lenet5(activation=activation, pooling=pooling, device=device)
    model.compile(loss="cross_entropy", optimizer=optim.SGD(lr, momentum=momentum))
    return model


def _torch_lenet(torch, activation: str, pooling: str):
    """The same network in PyTorch: conv 6@5x5 p2, pool, conv 16@5x5, pool, 120, 84, 10."""
    nn = torch.nn
    act = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}[activation]
    pool = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}[pooling]
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), act(), pool(2),
        nn.Conv2d(6, 16, 5), act(), pool(2),
        nn.Flatten(),
        nn.Linear(400, 120), act(),
        nn.Linear(120, 84), act(),
        nn.Linear(84, 10),
    )


def _lenet_data(batch: int, rng, dtype="float32"):
    x = rng.standard_normal((batch, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, size=batch).astype("int64")
    return x, y


def run_train(batches=(64, 256), variants=LENET_VARIANTS, predict_batch: int | None = 256,
              device: str = "cpu", compare="auto", threads: int = 2, quick: bool = False,
              rounds: int | None = None, round_s: float | None = None, progress=None, seed: int = 0) -> dict:
    """LeNet-5 training throughput (images/s) through ``Sequential.train_on_batch``, and ``predict``.

    One step = forward, loss, backward, SGD(0.01, momentum 0.9) update on one batch of
    random 28x28 images; torch runs the same network and optimiser. The speed-up is
    ours images/s / torch images/s (median over rounds of per-round ratios).
    """
    import numpy as np

    import nbcnn

    compare = _resolve_compare(compare)
    dev = _Dev(device)
    nthreads = _set_numba_threads(threads) if device == "cpu" else None
    torch = _import_torch(threads, device) if compare else None
    rounds, round_s = _settings(quick, rounds, round_s)
    rng = np.random.default_rng(seed)
    jobs = [("train", a, p, b) for a, p in variants for b in batches]
    if predict_batch:
        jobs += [("predict", a, p, predict_batch) for a, p in variants]
    env = environment(device=device, torch_imported=torch is not None)
    results = []
    t_start = time.perf_counter()
    for i, (what, act, pool, batch) in enumerate(jobs, 1):
        _say(progress, f"[{i}/{len(jobs)}] LeNet-5 {what} {act}/{pool} batch {batch} ...")
        t0 = time.perf_counter()
        x, y = _lenet_data(batch, rng)
        if device == "cuda":
            with nbcnn.using_device("cuda"):
                model = _nbcnn_lenet(act, pool, device="cuda")
        else:
            model = _nbcnn_lenet(act, pool, device="cpu")
        xd, yd = dev.put(x), dev.put(y)
        if what == "train":
            def ours():
                return model.train_on_batch(xd, yd)
        else:
            def ours():
                return model.predict(xd, batch_size=batch)
        fns = {"nbcnn": ours}
        if torch is not None:
            tdev = "cuda" if device == "cuda" else "cpu"
            tm = _torch_lenet(torch, act, pool).to(tdev)
            xt, yt = torch.from_numpy(x).to(tdev), torch.from_numpy(y).to(tdev)
            if what == "train":
                opt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
                F = torch.nn.functional

                def tfn():
                    opt.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(tm(xt), yt)
                    loss.backward()
                    opt.step()
                    return loss
            else:
                tm.eval()

                def tfn():
                    with torch.inference_mode():
                        return torch.softmax(tm(xt), dim=1)
            fns["torch"] = tfn
        syncs = {n: dev.sync for n in fns} if dev.sync else {}
        if torch is not None and device == "cuda":
            syncs["torch"] = torch.cuda.synchronize
        res = interleave(fns, rounds=rounds, round_s=round_s, sync=syncs)
        st = res["stats"]
        row = {"op": what, "activation": act, "pooling": pool, "batch": batch, "device": device,
               "nbcnn_ms": st["nbcnn"]["median_s"] * 1e3,
               "nbcnn_ips": batch / st["nbcnn"]["median_s"],
               "nbcnn_ips_best": batch / st["nbcnn"]["min_s"],
               "nbcnn_ips_sustained": batch / st["nbcnn"]["median_mean_s"],
               "nbcnn_first_call_s": st["nbcnn"]["first_call_s"],
               "torch_ms": None, "torch_ips": None, "torch_ips_best": None, "torch_ips_sustained": None,
               "speedup": None, "target": _target_for(what, None, None), "rounds": rounds,
               "reps": {n: s["reps"] for n, s in st.items()},
               "round_min_ms": {n: [t * 1e3 for t in s["round_min_s"]] for n, s in st.items()}}
        if "torch" in st:
            row.update(torch_ms=st["torch"]["median_s"] * 1e3, torch_ips=batch / st["torch"]["median_s"],
                       torch_ips_best=batch / st["torch"]["min_s"],
                       torch_ips_sustained=batch / st["torch"]["median_mean_s"],
                       speedup=1.0 / res["ratios"]["nbcnn/torch"])
        results.append(row)
        msg = f"    nbcnn {row['nbcnn_ips']:8.0f} img/s"
        if row["torch_ips"]:
            msg += f" | torch {row['torch_ips']:8.0f} img/s | speed-up {row['speedup']:.2f}"
        _say(progress, msg + f"   ({time.perf_counter() - t0:.1f} s)")
    env["wall_s"] = time.perf_counter() - t_start
    env["loadavg_after"] = _loadavg()
    env["numba_threads"] = nthreads
    return {"kind": "train", "env": env, "settings": {"rounds": rounds, "round_s": round_s, "threads": threads,
                                                     "compare": compare, "quick": quick},
            "results": results}


def merge_passes(reports: list) -> dict:
    """Pool several passes of :func:`run_ops` / :func:`run_train` (same cases) into one report.

    Times and ratios are recomputed over the rounds of all passes; each row keeps
    the per-pass ratios (``ratio_passes`` / ``speedup_passes``) so a table can show
    how far passes disagree (on a shared machine that spread is the error bar).
    """
    if not reports:
        raise ValueError("merge_passes needs at least one report")
    kind = reports[0]["kind"]
    if kind not in ("ops", "train") or any(r["kind"] != kind for r in reports):
        raise ValueError("merge_passes takes reports of one kind, 'ops' or 'train'")
    key = (lambda r: (r["op"], r["shape"], r["mode"])) if kind == "ops" else \
        (lambda r: (r["op"], r["activation"], r["pooling"], r["batch"]))
    rows: dict = {}
    for rep in reports:
        for r in rep["results"]:
            rows.setdefault(key(r), []).append(r)
    merged = []
    for group in rows.values():
        m = dict(group[0])
        rm = {n: [t for r in group for t in r["round_min_ms"].get(n, [])] for n in group[0]["round_min_ms"]}
        m["round_min_ms"] = rm
        m["passes"] = len(group)
        ours = _median(rm["nbcnn"])
        m["nbcnn_ms"] = ours
        per_round = ([a / b for r in group for a, b in zip(r["round_min_ms"]["nbcnn"], r["round_min_ms"]["torch"])]
                     if "torch" in rm else [])
        if kind == "ops":
            m["nbcnn_best_ms"] = min(rm["nbcnn"])
            m["nbcnn_gflops"] = m["flops"] / ours / 1e6 if m["flops"] else None
            if per_round:
                m["torch_ms"] = _median(rm["torch"])
                m["torch_best_ms"] = min(rm["torch"])
                m["torch_gflops"] = m["flops"] / m["torch_ms"] / 1e6 if m["flops"] else None
                m["ratio"] = _median(per_round)
                m["ratio_best"] = m["nbcnn_best_ms"] / m["torch_best_ms"]
                m["ratio_passes"] = [r["ratio"] for r in group]
                errs = [r["max_rel_err"] for r in group if r.get("max_rel_err")]
                if errs:
                    m["max_rel_err"] = {k: max(e[k] for e in errs) for k in errs[0]}
        else:
            b = m["batch"]
            m["nbcnn_ips"] = b / ours * 1e3
            m["nbcnn_ips_best"] = b / min(rm["nbcnn"]) * 1e3
            if per_round:
                m["torch_ms"] = _median(rm["torch"])
                m["torch_ips"] = b / m["torch_ms"] * 1e3
                m["torch_ips_best"] = b / min(rm["torch"]) * 1e3
                m["speedup"] = 1.0 / _median(per_round)
                m["speedup_passes"] = [r["speedup"] for r in group]
        merged.append(m)
    out = dict(reports[0])
    out["results"] = merged
    out["passes"] = [{"env": r["env"], "settings": r.get("settings")} for r in reports]
    return out


# --------------------------------------------------------------------------- subprocess benchmarks

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
from nbcnn.bench import _nbcnn_lenet, _lenet_data
t_import = time.perf_counter() - t0
model = _nbcnn_lenet("relu", "max")
x, y = _lenet_data(64, np.random.default_rng(0))
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
    env_info["loadavg_after"] = _loadavg()
    return {"kind": "startup", "env": env_info, "results": results}


# Child: peak RSS of LeNet-5 training at batch 256 (nbcnn or torch). The torch
# child must not import nbcnn (numba + llvmlite would count against torch), so
# it builds the network from _TORCH_LENET_SRC.
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
    from nbcnn.bench import _nbcnn_lenet, _lenet_data
    numba.set_num_threads(threads)
    after_import = rss()
    model = _nbcnn_lenet("relu", "max")
    x, y = _lenet_data(256, np.random.default_rng(0))
    step = lambda: model.train_on_batch(x, y)
else:
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    after_import = rss()
    m = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84), torch.nn.ReLU(),
        torch.nn.Linear(84, 10))
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((256, 1, 28, 28)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, size=256).astype(np.int64))
    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
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
    compare = _resolve_compare(compare)
    which = ["nbcnn"] + (["torch"] if compare else [])
    results = []
    for w in which:
        _say(progress, f"memory: {w} LeNet-5 training, batch 256, {steps} steps (fresh process) ...")
        if w == "nbcnn":
            _run_child(_MEMORY, _child_env(threads), timeout, ("nbcnn", 1, threads))
        out = _run_child(_MEMORY, _child_env(threads), timeout, (w, steps, threads))
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
    from nbcnn.bench import _nbcnn_lenet, _lenet_data
    model = _nbcnn_lenet("relu", "max")
    xb, yb = _lenet_data(64, rng)
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


# --------------------------------------------------------------------------- environment

def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _cpu_times():
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals), idle


def busy_fraction(interval: float = 0.5) -> float | None:
    """Fraction of all CPUs busy over ``interval`` seconds (Linux /proc/stat; None elsewhere)."""
    try:
        t0, i0 = _cpu_times()
        time.sleep(interval)
        t1, i1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def wait_for_quiet(max_wait_s: float = 120.0, threshold: float = 0.15, progress=None) -> dict:
    """Wait (at most ``max_wait_s``) until other processes use < ``threshold`` of the CPUs.

    On a shared machine a neighbour's burst skews a whole case; waiting for a
    quiet moment first is cheaper than re-running. Returns what it saw.
    """
    t0 = time.perf_counter()
    seen = []
    while True:
        b = busy_fraction(1.0)
        if b is None:
            return {"waited_s": 0.0, "busy": None, "quiet": None}
        seen.append(round(b, 3))
        waited = time.perf_counter() - t0
        if b < threshold:
            return {"waited_s": waited, "busy": seen[-5:], "quiet": True}
        if waited >= max_wait_s:
            _say(progress, f"machine still busy ({b:.0%} of the CPUs) after {waited:.0f} s: measuring anyway")
            return {"waited_s": waited, "busy": seen[-5:], "quiet": False}
        if len(seen) == 1:
            _say(progress, f"waiting for a quiet machine ({b:.0%} of the CPUs busy) ...")


def _cpu_model() -> str:
    """Model name, family/model and the widest SIMD: "AMD EPYC" alone does not tell Zen 3 from Zen 5."""
    fields: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if not ln.strip():
                    break  # first CPU only
                k, _, v = ln.partition(":")
                fields[k.strip()] = v.strip()
    except OSError:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    fam = fields.get("cpu family")
    return (f"{fields.get('model name', '?')} (vendor {fields.get('vendor_id', '?')}, family {fam}, "
            f"model {fields.get('model', '?')}, {simd}{' + FMA' if 'fma' in flags else ''})")


def environment(device: str = "cpu", torch_imported: bool = False) -> dict:
    """Versions, threads and BLAS of this process, and the machine's load (for the record)."""
    import numba
    import numpy

    import nbcnn
    from . import _memory, _threads

    env = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
           "platform": platform.platform(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
           "nbcnn": nbcnn.__version__, "numpy": numpy.__version__, "numba": numba.__version__,
           "numba_num_threads": numba.get_num_threads(), "blas_policy": _threads.blas_policy(),
           "malloc_policy": _memory.malloc_policy(), "loadavg": _loadavg(), "device": device,
           # thread/BLAS steering variables as this process saw them (a machine image may pin them)
           "env_vars": {k: v for k, v in os.environ.items()
                        if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "NUMBA_", "NBCNN_", "GOMP_"))}}
    try:
        import llvmlite

        env["llvmlite"] = llvmlite.__version__
    except ImportError:
        pass
    try:
        env["numba_threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        env["numba_threading_layer"] = None
    try:
        from threadpoolctl import threadpool_info

        env["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "version", "architecture",
                                                      "num_threads", "filepath")} for p in threadpool_info()]
    except Exception:  # threadpoolctl is a dependency, but never fail a benchmark on it
        env["threadpools"] = None
    if torch_imported and "torch" in sys.modules:
        torch = sys.modules["torch"]
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        try:
            env["torch_parallel_info"] = torch.__config__.parallel_info().splitlines()[:12]
        except Exception:
            pass
    if device == "cuda" and "cupy" in sys.modules:
        cupy = sys.modules["cupy"]
        env["cupy"] = cupy.__version__
        try:
            env["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        except Exception:
            pass
    return env


# --------------------------------------------------------------------------- output

def _f(v, spec=".2f", none="-"):
    return none if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _target_str(t: dict, kind: str = "le") -> str:
    if not t:
        return "-"
    sym = "<=" if kind == "le" else ">="
    return " / ".join(f"{sym}{v:g} (#{k[5:]})" for k, v in t.items())


def _met(value, t: dict, kind: str = "le") -> str:
    if value is None or not t:
        return ""
    marks = []
    for k, v in t.items():
        ok = value <= v if kind == "le" else value >= v
        marks.append(f"#{k[5:]} {'met' if ok else 'missed'}")
    return ", ".join(marks)


def _passes(values) -> str:
    """' (p1 ; p2)' for a merged row, '' otherwise."""
    if not values or len(values) < 2:
        return ""
    return " (" + " ; ".join(_f(v) for v in values) + ")"


def _table(header, rows, markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def format_table(report: dict, markdown: bool = False) -> str:
    """The summary table of one report from :func:`run_ops`, :func:`run_train`, ... as text or Markdown."""
    kind = report.get("kind")
    res = report["results"]
    if kind == "ops":
        has_t = any(r["torch_ms"] is not None for r in res)
        head = ["op", "shape", "pass", "nbcnn ms", "GFLOP/s"]
        if has_t:
            head += ["torch ms", "GFLOP/s", "ratio", "target", "status"]
        rows = []
        for r in res:
            row = [r["op"], r["shape"], r["mode"], _f(r["nbcnn_ms"], ".3g" if r["nbcnn_ms"] < 1 else ".2f"),
                   _f(r["nbcnn_gflops"], ".0f")]
            if has_t:
                row += [_f(r["torch_ms"], ".3g" if (r["torch_ms"] or 0) < 1 else ".2f"), _f(r["torch_gflops"], ".0f"),
                        _f(r["ratio"]) + _passes(r.get("ratio_passes")), _target_str(r["target"]),
                        _met(r["ratio"], r["target"])]
            rows.append(row)
        return _table(head, rows, markdown)
    if kind == "train":
        has_t = any(r["torch_ips"] is not None for r in res)
        head = ["what", "act/pool", "batch", "nbcnn img/s"]
        if has_t:
            head += ["torch img/s", "speed-up", "target", "status"]
        rows = []
        for r in res:
            row = [r["op"], f"{r['activation']}/{r['pooling']}", r["batch"], _f(r["nbcnn_ips"], ".0f")]
            if has_t:
                row += [_f(r["torch_ips"], ".0f"), _f(r["speedup"]) + _passes(r.get("speedup_passes")),
                        _target_str(r["target"], "ge"),
                        _met(r["speedup"], r["target"], "ge")]
            rows.append(row)
        return _table(head, rows, markdown)
    if kind == "startup":
        head = ["what", "cache", "import s", "to first result s", "process wall s", "peak RSS MB"]
        rows = []
        for r in res:
            if not r.get("ok"):
                rows.append([r["what"], r["phase"], "failed", r.get("error", "")[:60], "", ""])
                continue
            first = r.get("first_conv_s", r.get("first_step_s"))
            rows.append([r["what"], r["phase"], _f(r["import_s"]), _f(first), _f(r["wall_s"]),
                         _f(r.get("peak_rss_mb"), ".0f")])
        out = _table(head, rows, markdown)
        groups = [r for r in res if r.get("ok") and r.get("groups_s")]
        if groups:
            names = list(groups[0]["groups_s"])
            grows = [[g] + [_f(r["groups_s"].get(g)) for r in groups] for g in names]
            grows.append(["all of the above + the first conv"] +
                         [_f(r["first_conv_s"] - r["import_s"] + r["groups_total_s"]) for r in groups])
            out += "\n\n" + _table(["kernel group (first - second call, s)"] + [r["phase"] for r in groups],
                                   grows, markdown)
        return out
    if kind == "memory":
        head = ["library", "RSS after import MB", "RSS after build MB", "peak RSS MB", "steps/s"]
        rows = [[r["which"], _f(r.get("rss_after_import_mb"), ".0f"), _f(r.get("rss_after_build_mb"), ".0f"),
                 _f(r.get("peak_rss_mb"), ".0f"),
                 _f(r["steps"] / r["steps_s"] if r.get("steps_s") else None, ".1f")] if r.get("ok")
                else [r["which"], "failed", r.get("error", "")[:60], "", ""] for r in res]
        return _table(head, rows, markdown)
    if kind == "threads":
        head = ["config", "pass", "BLAS policy", "conv2 fwd+bwd float64 ms (median / min)", "LeNet step b64 img/s (median)"]
        rows = []
        for r in res:
            if not r.get("ok"):
                rows.append([r["config"], r["passno"], "failed", r.get("error", "")[:60], ""])
                continue
            c = r["conv2_fwd_bwd"]
            le = r.get("lenet_step_b64")
            rows.append([r["config"], r["passno"], r["blas_policy"], f"{c['median_ms']:.2f} / {c['min_ms']:.2f}",
                         _f(64 / le["median_ms"] * 1e3 if le else None, ".0f")])
        return _table(head, rows, markdown)
    raise ValueError(f"unknown report kind {kind!r}")


def format_report(report: dict, markdown: bool = False) -> str:
    """Table plus a one-line environment summary."""
    e = report.get("env", {})
    bits = [f"python {e.get('python')}", f"numpy {e.get('numpy')}", f"numba {e.get('numba')}"]
    if e.get("torch"):
        bits.append(f"torch {e['torch']} ({e.get('torch_threads')} threads)")
    bits.append(f"numba threads {e.get('numba_num_threads')}")
    if e.get("loadavg"):
        bits.append("load {:.2f} {:.2f} {:.2f}".format(*e["loadavg"]))
    return format_table(report, markdown) + "\n\n" + ", ".join(bits)


# --------------------------------------------------------------------------- command line

def _write_json(path: str, data) -> None:
    """Atomic write, so an interrupted benchmark never leaves half a report."""
    from ._atomic import write_json

    write_json(path, data, indent=1, default=str)


def main(argv=None) -> int:
    """``python -m nbcnn.bench``: the ops table, the LeNet-5 table, or the subprocess checks."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m nbcnn.bench", description=main.__doc__)
    ap.add_argument("what", nargs="?", default="ops", choices=["ops", "train", "startup", "memory", "threads"])
    ap.add_argument("--op", default="all", choices=["conv", "pool", "all"])
    ap.add_argument("--shapes", default="all", help="lenet|vgg|alexnet|all or shape names, comma-separated")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--compare", default="auto", choices=["auto", "torch", "none"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--passes", type=int, default=1, help="ops/train: repeat and pool the passes (ratios per pass shown)")
    ap.add_argument("--json", dest="json_path", help="write the full report as JSON")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    a = ap.parse_args(argv)
    progress = None if a.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    compare = None if a.compare == "none" else a.compare
    try:
        if a.what in ("ops", "train"):
            reps = []
            for i in range(max(1, a.passes)):
                if a.passes > 1:
                    _say(progress, f"pass {i + 1} of {a.passes}")
                if a.what == "ops":
                    reps.append(run_ops(a.op, a.shapes.split(","), a.device, compare, a.threads, a.dtype, a.quick,
                                        a.rounds, progress=progress))
                else:
                    reps.append(run_train(device=a.device, compare=compare, threads=a.threads, quick=a.quick,
                                          rounds=a.rounds, progress=progress))
            rep = merge_passes(reps) if len(reps) > 1 else reps[0]
        elif a.what == "startup":
            rep = run_startup(threads=a.threads, progress=progress)
        elif a.what == "memory":
            rep = run_memory(steps=10 if a.quick else 30, threads=a.threads, compare=compare, progress=progress)
        else:
            rep = run_threads(seconds=1.0 if a.quick else 2.0, passes=1 if a.quick else 2, threads=a.threads,
                              progress=progress)
    except (BenchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.json_path:
        _write_json(a.json_path, rep)
    print(format_report(rep, a.markdown))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
