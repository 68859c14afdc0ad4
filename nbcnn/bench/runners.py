"""The benchmark cases: one op table (:data:`OPS`), its runners, and LeNet-5 training.

Each op runner builds, for one shape and mode (``fwd`` or ``fwd+bwd``), a
:class:`Case`: zero-argument callables for nbcnn and (when asked) PyTorch, and
a check that returns the relative error of every output against PyTorch. The
timing itself is :func:`nbcnn.bench.timing.interleave`, the same for every op.

Layers keep state between steps, so forward+backward cases reuse one ``ctx``
dict per case, as a layer does; inputs and outputs are fresh each call on both
sides. On ``device="cuda"`` the inputs are CuPy arrays (or NumPy arrays run on
the CUDA kernels under Numba's simulator) and every call is followed by a
device synchronisation.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

from .environment import environment, loadavg
from .peers import BenchError, import_torch, resolve_compare, torch_lenet, torch_sgd_step
from .shapes import MODEL_TARGETS, POOL_SHAPE, SHAPE_GROUPS, ConvShape, select_shapes
from .timing import interleave, median, settings

MODES = ("fwd", "fwd+bwd")


# --------------------------------------------------------------------------- devices and errors

class Device:
    """Array placement and synchronisation for ``cpu`` or ``cuda`` (CuPy, or the simulator)."""

    def __init__(self, name: str):
        if name not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {name!r}")
        self.name = name
        self.simulated = False
        self.sync = None
        self.put = lambda a: a
        if name == "cuda":
            import nbcnn

            if nbcnn.device.cuda_simulator_enabled():
                self.simulated = True  # NumPy arrays, CUDA kernels run by the simulator
                return
            ok, why = nbcnn.gpu_status()
            if not ok:
                raise BenchError(f"no usable GPU: {why}")
            import cupy

            self.put = cupy.asarray
            self.sync = cupy.cuda.runtime.deviceSynchronize

    def to_numpy(self, a):
        return a.get() if hasattr(a, "get") and type(a).__module__.startswith("cupy") else a

    def bind(self, fn):
        """``fn`` run on this device's kernels (only the simulator needs to be told)."""
        if not self.simulated:
            return fn
        import nbcnn

        def on_cuda():
            with nbcnn.using_device("cuda"):
                return fn()

        return on_cuda


def rel_err(got, want) -> float:
    """max|got - want| / max|want| in float64; inf for a shape mismatch or a NaN where ``want`` is finite."""
    import numpy as np

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape or not np.array_equal(np.isfinite(got), np.isfinite(want)):
        return float("inf")
    fin = np.isfinite(want)
    if not fin.any():
        return 0.0
    scale = max(float(np.abs(want[fin]).max()), 1e-30)
    return float(np.abs(got[fin] - want[fin]).max()) / scale


def set_numba_threads(threads: int) -> int:
    import numba

    n = max(1, min(int(threads), int(numba.config.NUMBA_NUM_THREADS)))
    numba.set_num_threads(n)
    return n


# --------------------------------------------------------------------------- the op table

@dataclass
class Case:
    """One timed case: callables by variant name, and a check of nbcnn against PyTorch."""

    variants: dict                       # "nbcnn" (and "torch") -> zero-argument callable
    check: Callable[[], dict] | None     # -> {output name: relative error vs torch}
    label: str                           # the shape, for the table
    flops: int | None = None             # floating-point operations of one call (GFLOP/s column)


@dataclass(frozen=True)
class OpBench:
    """How to benchmark one op.

    ``build(shape, mode, dev, torch, dtype, rng) -> Case``; ``shape`` is a
    :class:`ConvShape` when ``conv_shapes`` is true, otherwise an (N, C, H, W)
    tuple (default ``shape``). ``target`` maps a mode to the ratio
    nbcnn/torch time to stay at or under (or is ``f(mode, shape_name)``).
    """

    build: Callable
    shape: tuple = POOL_SHAPE
    conv_shapes: bool = False
    target: dict | Callable = field(default_factory=dict)
    group: str | None = None             # a --op name that selects several ops ("pool")


def _pair(dev, torch, x_np, *more):
    """The NumPy inputs on ``dev``, and as torch tensors on torch's device (or None)."""
    ours = [dev.put(a) for a in (x_np, *more)]
    if torch is None:
        return ours, None
    tdev = "cuda" if dev.name == "cuda" else "cpu"
    return ours, [torch.from_numpy(a).to(tdev) for a in (x_np, *more)]


def _torch_grad_fn(torch, f, inputs, gy):
    """A torch forward+backward callable: f(*inputs), then grads of every input against gy."""
    req = [t.clone().requires_grad_(True) for t in inputs]

    def tfn():
        y = f(*req)
        return (y.detach(), *torch.autograd.grad(y, req, gy))

    return tfn


def _torch_fwd_fn(torch, f, inputs):
    def tfn():
        with torch.no_grad():
            return f(*inputs)

    return tfn


def _make_check(dev, ours, tfn, names):
    def check():
        a, b = ours(), tfn()
        a = a if isinstance(a, tuple) else (a,)
        b = b if isinstance(b, tuple) else (b,)
        return {k: rel_err(dev.to_numpy(u), v.cpu().numpy()) for k, u, v in zip(names, a, b)}

    return check


def conv_case(shape: ConvShape, mode, dev, torch, dtype, rng) -> Case:
    from .. import ops

    ho, wo = shape.out_hw
    x = rng.standard_normal((shape.N, shape.C, shape.H, shape.W)).astype(dtype)
    w = (rng.standard_normal((shape.K, shape.C, shape.k, shape.k)) / math.sqrt(shape.C * shape.k * shape.k)
         ).astype(dtype)
    gy = rng.standard_normal((shape.N, shape.K, ho, wo)).astype(dtype)
    (xd, wd, gyd), tt = _pair(dev, torch, x, w, gy)
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
    case = Case({"nbcnn": dev.bind(ours)}, None, shape.label(), shape.flops_fwd * (1 if mode == "fwd" else 3))
    if torch is not None:
        F = torch.nn.functional
        conv = lambda a, b: F.conv2d(a, b, None, s, p)  # noqa: E731
        tfn = _torch_fwd_fn(torch, conv, tt[:2]) if mode == "fwd" else _torch_grad_fn(torch, conv, tt[:2], tt[2])
        case.variants["torch"] = tfn
        case.check = _make_check(dev, case.variants["nbcnn"], tfn, ("y", "gx", "gw"))
    return case


def _conv_general_case(k: int, stride: int, pad: int, dilation: int = 1, groups=1, K=None):
    """Depthwise (groups="C"), grouped or dilated convolution on an (N, C, H, W) input.

    ``groups`` shrinks to gcd(groups, C) on inputs it does not divide (the tiny test shapes);
    ``K`` defaults to C.
    """
    def build(shape, mode, dev, torch, dtype, rng) -> Case:
        from .. import ops

        N, C, H, W = shape
        g = C if groups == "C" else math.gcd(groups, C)
        Kc = C if K is None else K
        x = rng.standard_normal(shape).astype(dtype)
        w = (rng.standard_normal((Kc, C // g, k, k)) / math.sqrt(C // g * k * k)).astype(dtype)
        oshape = ops.conv2d_output_shape(shape, w.shape, stride, pad, dilation, g)
        gy = rng.standard_normal(oshape).astype(dtype)
        (xd, wd, gyd), tt = _pair(dev, torch, x, w, gy)
        ctx: dict = {}
        if mode == "fwd":
            def ours():
                return ops.conv2d(xd, wd, None, stride, pad, dilation, g)
        else:
            def ours():
                y = ops.conv2d(xd, wd, None, stride, pad, dilation, g, ctx=ctx)
                gx, gw, _ = ops.conv2d_backward(gyd, xd, wd, stride, pad, dilation, g, ctx=ctx)
                return y, gx, gw
        label = "({},{},{},{})".format(*shape) + f"->{Kc} {k}x{k} s{stride} p{pad}" \
            + (f" d{dilation}" if dilation != 1 else "") + (f" g{g}" if g != 1 else "")
        flops = 2 * N * Kc * oshape[2] * oshape[3] * (C // g) * k * k
        case = Case({"nbcnn": dev.bind(ours)}, None, label, flops * (1 if mode == "fwd" else 3))
        if torch is not None:
            F = torch.nn.functional
            conv = lambda a, b: F.conv2d(a, b, None, stride, pad, dilation, g)  # noqa: E731
            tfn = _torch_fwd_fn(torch, conv, tt[:2]) if mode == "fwd" else _torch_grad_fn(torch, conv, tt[:2],
                                                                                           tt[2])
            case.variants["torch"] = tfn
            case.check = _make_check(dev, case.variants["nbcnn"], tfn, ("y", "gx", "gw"))
        return case

    return build


def _pool_case(kind: str):
    def build(shape, mode, dev, torch, dtype, rng) -> Case:
        from .. import ops

        N, C, H, W = shape
        x = rng.standard_normal(shape).astype(dtype)
        gy = rng.standard_normal((N, C, H // 2, W // 2)).astype(dtype)
        (xd, gyd), tt = _pair(dev, torch, x, gy)
        fwd, bwd = getattr(ops, f"{kind}_pool2d"), getattr(ops, f"{kind}_pool2d_backward")
        ctx: dict = {}
        kw = {"ctx": ctx} if kind == "max" else {}  # max pooling keeps its argmax between the passes
        if mode == "fwd":
            def ours():
                return fwd(xd, 2)
        else:
            def ours():
                return fwd(xd, 2, **kw), bwd(gyd, xd, 2, **kw)
        case = Case({"nbcnn": dev.bind(ours)}, None, "({},{},{},{}) 2x2 s2".format(*shape))
        if torch is not None:
            tpool = getattr(torch.nn.functional, f"{kind}_pool2d")
            f = lambda a: tpool(a, 2)  # noqa: E731
            tfn = _torch_fwd_fn(torch, f, tt[:1]) if mode == "fwd" else _torch_grad_fn(torch, f, tt[:1], tt[1])
            case.variants["torch"] = tfn
            case.check = _make_check(dev, case.variants["nbcnn"], tfn, ("y", "gx"))
        return case

    return build


def _bn_case(shape, mode, dev, torch, dtype, rng) -> Case:
    """Training-mode batch norm (running statistics updated in place), forward or forward+backward."""
    import numpy as np

    from .. import ops

    C = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    g, b = (rng.standard_normal(C).astype(dtype) for _ in range(2))
    (xd, gyd, gd, bd), tt = _pair(dev, torch, x, gy, g, b)
    rm, rv = dev.put(np.zeros(C, dtype)), dev.put(np.ones(C, dtype))
    ctx: dict = {}
    if mode == "fwd":
        def ours():
            return ops.batch_norm(xd, gd, bd, rm, rv, training=True)
    else:
        def ours():
            y = ops.batch_norm(xd, gd, bd, rm, rv, training=True, ctx=ctx)
            return (y, *ops.batch_norm_backward(gyd, xd, gd, ctx=ctx))
    case = Case({"nbcnn": dev.bind(ours)}, None, "({},{},{},{})".format(*shape))
    if torch is not None:
        trm, trv = torch.zeros(C, device=tt[0].device), torch.ones(C, device=tt[0].device)
        trm, trv = trm.to(tt[0].dtype), trv.to(tt[0].dtype)
        f = lambda a, g_, b_: torch.nn.functional.batch_norm(a, trm, trv, g_, b_, training=True)  # noqa: E731
        tin = [tt[0], tt[2], tt[3]]
        tfn = _torch_fwd_fn(torch, f, tin) if mode == "fwd" else _torch_grad_fn(torch, f, tin, tt[1])
        case.variants["torch"] = tfn
        case.check = _make_check(dev, case.variants["nbcnn"], tfn, ("y", "gx", "ggamma", "gbeta"))
    return case


def _lrn_case(shape, mode, dev, torch, dtype, rng) -> Case:
    from .. import ops

    x = rng.standard_normal(shape).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    (xd, gyd), tt = _pair(dev, torch, x, gy)
    ctx: dict = {}
    if mode == "fwd":
        def ours():
            return ops.lrn(xd, 5)
    else:
        def ours():
            return ops.lrn(xd, 5, ctx=ctx), ops.lrn_backward(gyd, xd, 5, ctx=ctx)
    case = Case({"nbcnn": dev.bind(ours)}, None, "({},{},{},{}) size 5".format(*shape))
    if torch is not None:
        f = lambda a: torch.nn.functional.local_response_norm(a, 5)  # noqa: E731
        tfn = _torch_fwd_fn(torch, f, tt[:1]) if mode == "fwd" else _torch_grad_fn(torch, f, tt[:1], tt[1])
        case.variants["torch"] = tfn
        case.check = _make_check(dev, case.variants["nbcnn"], tfn, ("y", "gx"))
    return case


def _global_pool_case(kind: str):
    def build(shape, mode, dev, torch, dtype, rng) -> Case:
        from .. import ops

        x = rng.standard_normal(shape).astype(dtype)
        gy = rng.standard_normal(shape[:2]).astype(dtype)
        (xd, gyd), tt = _pair(dev, torch, x, gy)
        fwd, bwd = getattr(ops, f"global_{kind}_pool2d"), getattr(ops, f"global_{kind}_pool2d_backward")
        ctx: dict = {}
        kw = {"ctx": ctx} if kind == "max" else {}
        if mode == "fwd":
            def ours():
                return fwd(xd)
        else:
            def ours():
                return fwd(xd, **kw), bwd(gyd, xd, **kw)
        case = Case({"nbcnn": dev.bind(ours)}, None, "({},{},{},{})".format(*shape))
        if torch is not None:
            F = torch.nn.functional
            f = (lambda a: F.adaptive_avg_pool2d(a, 1).flatten(1)) if kind == "avg" else \
                (lambda a: F.adaptive_max_pool2d(a, 1).flatten(1))
            tfn = _torch_fwd_fn(torch, f, tt[:1]) if mode == "fwd" else _torch_grad_fn(torch, f, tt[:1], tt[1])
            case.variants["torch"] = tfn
            case.check = _make_check(dev, case.variants["nbcnn"], tfn, ("y", "gx"))
        return case

    return build


_TORCH_ACT = {"gelu": ("gelu", {}), "gelu_tanh": ("gelu", {"approximate": "tanh"}), "silu": ("silu", {}),
              "leaky_relu": ("leaky_relu", {}), "elu": ("elu", {}), "relu6": ("relu6", {}),
              "hard_sigmoid": ("hardsigmoid", {}), "hard_swish": ("hardswish", {})}


def _act_case(name: str):
    def build(shape, mode, dev, torch, dtype, rng) -> Case:
        from .. import ops

        x = rng.standard_normal(shape).astype(dtype)
        gy = rng.standard_normal(shape).astype(dtype)
        (xd, gyd), tt = _pair(dev, torch, x, gy)
        if mode == "fwd":
            def ours():
                return ops.activation(xd, name)
        else:
            def ours():
                return ops.activation(xd, name), ops.activation_backward(gyd, xd, name)
        case = Case({"nbcnn": dev.bind(ours)}, None, "({},{},{},{})".format(*shape))
        if torch is not None:
            tname, kw = _TORCH_ACT[name]
            tf = getattr(torch.nn.functional, tname)
            f = lambda a: tf(a, **kw)  # noqa: E731
            tfn = _torch_fwd_fn(torch, f, tt[:1]) if mode == "fwd" else _torch_grad_fn(torch, f, tt[:1], tt[1])
            case.variants["torch"] = tfn
            case.check = _make_check(dev, case.variants["nbcnn"], tfn, ("y", "gx"))
        return case

    return build


def _conv_target(mode, shape_name):
    if mode != "fwd+bwd":
        return None
    return 0.5 if shape_name in SHAPE_GROUPS["lenet"] else 1.0


# op name -> how to benchmark it. To add an op: one entry here and one builder above.
OPS: dict[str, OpBench] = {
    "conv": OpBench(conv_case, conv_shapes=True, target=_conv_target),
    "max_pool": OpBench(_pool_case("max"), target={"fwd": 0.3, "fwd+bwd": 0.3}, group="pool"),
    "avg_pool": OpBench(_pool_case("avg"), target={"fwd": 0.3, "fwd+bwd": 0.3}, group="pool"),
    "batch_norm": OpBench(_bn_case, shape=(32, 64, 56, 56), target={"fwd+bwd": 0.5}, group="norm"),
    "batch_norm_small": OpBench(_bn_case, shape=(128, 16, 32, 32), target={"fwd+bwd": 0.5}, group="norm"),
    "lrn": OpBench(_lrn_case, shape=(8, 96, 55, 55), target={"fwd+bwd": 0.5}, group="norm"),
    "global_avg_pool": OpBench(_global_pool_case("avg"), shape=(32, 512, 7, 7), target={"fwd+bwd": 0.5},
                               group="global_pool"),
    "global_max_pool": OpBench(_global_pool_case("max"), shape=(32, 512, 7, 7), target={"fwd+bwd": 0.5},
                               group="global_pool"),
    "depthwise": OpBench(_conv_general_case(3, 1, 1, groups="C"), shape=(32, 32, 112, 112),
                         target={"fwd+bwd": 0.5}, group="conv_modern"),
    "depthwise_s2": OpBench(_conv_general_case(3, 2, 1, groups="C"), shape=(32, 64, 112, 112),
                            target={"fwd+bwd": 0.5}, group="conv_modern"),
    "depthwise_28": OpBench(_conv_general_case(3, 1, 1, groups="C"), shape=(32, 256, 28, 28),
                            target={"fwd+bwd": 0.5}, group="conv_modern"),
    "depthwise_14": OpBench(_conv_general_case(3, 1, 1, groups="C"), shape=(32, 512, 14, 14),
                            target={"fwd+bwd": 0.5}, group="conv_modern"),
    "grouped_conv": OpBench(_conv_general_case(5, 1, 2, groups=2, K=256), shape=(8, 96, 27, 27),
                            target={"fwd+bwd": 1.0}, group="conv_modern"),
    "dilated_conv": OpBench(_conv_general_case(3, 1, 2, dilation=2, K=64), shape=(32, 64, 32, 32),
                            target={"fwd+bwd": 1.0}, group="conv_modern"),
    **{f"act_{n}": OpBench(_act_case(n), shape=(32, 64, 56, 56), group="act") for n in _TORCH_ACT},
}


def op_choices() -> list[str]:
    """The values ``--op`` accepts: op names and groups (each once, table order), then ``all``."""
    out: list[str] = []
    for name, spec in OPS.items():
        pick = spec.group or name
        if pick not in out:
            out.append(pick)
    return out + ["all"]


def _ops_for(op: str) -> list[str]:
    if op == "all":
        return list(OPS)
    names = [n for n, s in OPS.items() if n == op or s.group == op]
    if not names:
        raise ValueError(f"op must be {', '.join(op_choices()[:-1])} or all, got {op!r}")
    return names


def _target(spec: OpBench, mode: str, shape_name: str):
    return spec.target(mode, shape_name) if callable(spec.target) else spec.target.get(mode)


def _say(progress, msg: str) -> None:
    if progress:
        progress(msg)


def _syncs(dev, torch, names) -> dict:
    syncs = {n: dev.sync for n in names} if dev.sync else {}
    if torch is not None and dev.name == "cuda" and not dev.simulated:
        syncs["torch"] = torch.cuda.synchronize
    return syncs


def run_ops(op: str = "all", shapes="all", device: str = "cpu", compare="auto", threads: int = 2,
            dtype: str = "float32", quick: bool = False, rounds: int | None = None,
            round_s: float | None = None, modes=MODES, progress=None, seed: int = 0,
            pool_shape=None, op_shapes: dict | None = None) -> dict:
    """Time the ops of :data:`OPS` (forward and forward+backward), optionally vs PyTorch.

    ``op``: an op name, a group (``pool``) or ``all``; ``shapes``: lenet | vgg | alexnet | all
    (or shape names, or :class:`ConvShape` objects) for the convolutions; the other ops run
    on their table shape, or ``op_shapes[name]`` (``pool_shape`` sets it for the pooling ops).
    Returns a JSON-able dict (``{"kind": "ops", "env": ..., "results": [...]}``); each result
    carries ms (median of per-round minima), best ms, GFLOP/s, the ratio ours/torch and its target.
    """
    import numpy as np

    names = _ops_for(op)
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"modes must be 'fwd' and/or 'fwd+bwd', got {bad}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    compare = resolve_compare(compare)
    dev = Device(device)
    nthreads = set_numba_threads(threads) if device == "cpu" else None
    torch = import_torch(threads, device) if compare else None
    rounds, round_s = settings(quick, rounds, round_s)
    rng = np.random.default_rng(seed)
    op_shapes = dict(op_shapes or {})
    if pool_shape is not None:
        op_shapes.update({n: tuple(pool_shape) for n, s in OPS.items() if s.group == "pool"})
    conv_shapes = select_shapes(shapes) if any(OPS[n].conv_shapes for n in names) else []
    cases = []
    for name in names:
        spec = OPS[name]
        for shp in (conv_shapes if spec.conv_shapes else [tuple(op_shapes.get(name, spec.shape))]):
            cases += [(name, shp, mode) for mode in modes]
    env = environment(device=device, torch_imported=torch is not None)
    results = []
    t_start = time.perf_counter()
    for i, (name, shp, mode) in enumerate(cases, 1):
        spec = OPS[name]
        sname = shp.name if isinstance(shp, ConvShape) else "pool" if spec.group == "pool" else name
        t0 = time.perf_counter()
        case = spec.build(shp, mode, dev, torch, dtype, rng)
        _say(progress, f"[{i}/{len(cases)}] {name} {sname} {mode} ...")
        res = interleave(case.variants, rounds=rounds, round_s=round_s, sync=_syncs(dev, torch, case.variants))
        st = res["stats"]
        flops = case.flops
        row = {"op": name, "shape": sname, "mode": mode, "label": case.label, "dtype": str(dtype),
               "device": device, "flops": flops,
               "nbcnn_ms": st["nbcnn"]["median_s"] * 1e3, "nbcnn_best_ms": st["nbcnn"]["min_s"] * 1e3,
               "nbcnn_first_call_s": st["nbcnn"]["first_call_s"],
               "nbcnn_gflops": (flops / st["nbcnn"]["median_s"] / 1e9) if flops else None,
               "torch_ms": None, "torch_best_ms": None, "torch_gflops": None, "ratio": None,
               "ratio_best": None, "max_rel_err": None, "target": _target(spec, mode, sname),
               "rounds": rounds, "reps": {n: s["reps"] for n, s in st.items()},
               "round_min_ms": {n: [t * 1e3 for t in s["round_min_s"]] for n, s in st.items()}}
        if "torch" in st:
            row.update(torch_ms=st["torch"]["median_s"] * 1e3, torch_best_ms=st["torch"]["min_s"] * 1e3,
                       torch_gflops=(flops / st["torch"]["median_s"] / 1e9) if flops else None,
                       ratio=res["ratios"]["nbcnn/torch"],
                       ratio_best=st["nbcnn"]["min_s"] / st["torch"]["min_s"])
            row["max_rel_err"] = case.check()
        results.append(row)
        line = f"    nbcnn {row['nbcnn_ms']:8.3f} ms"
        if row["torch_ms"] is not None:
            line += f" | torch {row['torch_ms']:8.3f} ms | ratio {row['ratio']:.2f}"
        _say(progress, f"{line}   ({time.perf_counter() - t0:.1f} s)")
    env["wall_s"] = time.perf_counter() - t_start
    env["loadavg_after"] = loadavg()
    env["numba_threads"] = nthreads
    return {"kind": "ops", "env": env, "settings": {"rounds": rounds, "round_s": round_s, "threads": threads,
                                                   "compare": compare, "quick": quick},
            "results": results}


# --------------------------------------------------------------------------- LeNet-5 training

LENET_VARIANTS = (("tanh", "avg"), ("relu", "max"))


def nbcnn_lenet(activation: str = "relu", pooling: str = "max", lr: float = 0.01, momentum: float = 0.9,
                device: str = "cpu"):
    """nbcnn's zoo LeNet-5 compiled for training with SGD, on an explicit device."""
    import nbcnn

    try:
        zoo, optim = nbcnn.zoo, nbcnn.optim
    except (ImportError, AttributeError) as exc:
        raise BenchError(f"the model zoo is not available ({type(exc).__name__}: {exc})") from exc
    model = zoo.lenet5(activation=activation, pooling=pooling, device=device)
    model.compile(loss="cross_entropy", optimizer=optim.SGD(lr, momentum=momentum))
    return model


def lenet_data(batch: int, rng, dtype="float32"):
    """A batch of random 28x28 images and labels."""
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

    compare = resolve_compare(compare)
    dev = Device(device)
    nthreads = set_numba_threads(threads) if device == "cpu" else None
    torch = import_torch(threads, device) if compare else None
    rounds, round_s = settings(quick, rounds, round_s)
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
        x, y = lenet_data(batch, rng)
        with nbcnn.using_device(device):
            model = nbcnn_lenet(act, pool, device=device)
        xd, yd = dev.put(x), dev.put(y)
        if what == "train":
            def ours():
                return model.train_on_batch(xd, yd)
        else:
            def ours():
                return model.predict(xd, batch_size=batch)
        fns = {"nbcnn": dev.bind(ours)}
        if torch is not None:
            tdev = "cuda" if device == "cuda" else "cpu"
            tm = torch_lenet(torch, act, pool).to(tdev)
            xt, yt = torch.from_numpy(x).to(tdev), torch.from_numpy(y).to(tdev)
            if what == "train":
                fns["torch"] = torch_sgd_step(torch, tm, xt, yt)
            else:
                tm.eval()

                def tfn():
                    with torch.inference_mode():
                        return torch.softmax(tm(xt), dim=1)
                fns["torch"] = tfn
        res = interleave(fns, rounds=rounds, round_s=round_s, sync=_syncs(dev, torch, fns))
        st = res["stats"]
        row = {"op": what, "activation": act, "pooling": pool, "batch": batch, "device": device,
               "nbcnn_ms": st["nbcnn"]["median_s"] * 1e3,
               "nbcnn_ips": batch / st["nbcnn"]["median_s"],
               "nbcnn_ips_best": batch / st["nbcnn"]["min_s"],
               "nbcnn_ips_sustained": batch / st["nbcnn"]["median_mean_s"],
               "nbcnn_first_call_s": st["nbcnn"]["first_call_s"],
               "torch_ms": None, "torch_ips": None, "torch_ips_best": None, "torch_ips_sustained": None,
               "speedup": None, "target": MODEL_TARGETS.get(what), "rounds": rounds,
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
    env["loadavg_after"] = loadavg()
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
        ours = median(rm["nbcnn"])
        m["nbcnn_ms"] = ours
        per_round = ([a / b for r in group for a, b in zip(r["round_min_ms"]["nbcnn"], r["round_min_ms"]["torch"])]
                     if "torch" in rm else [])
        if kind == "ops":
            m["nbcnn_best_ms"] = min(rm["nbcnn"])
            m["nbcnn_gflops"] = m["flops"] / ours / 1e6 if m["flops"] else None
            if per_round:
                m["torch_ms"] = median(rm["torch"])
                m["torch_best_ms"] = min(rm["torch"])
                m["torch_gflops"] = m["flops"] / m["torch_ms"] / 1e6 if m["flops"] else None
                m["ratio"] = median(per_round)
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
                m["torch_ms"] = median(rm["torch"])
                m["torch_ips"] = b / m["torch_ms"] * 1e3
                m["torch_ips_best"] = b / min(rm["torch"]) * 1e3
                m["speedup"] = 1.0 / median(per_round)
                m["speedup_passes"] = [r["speedup"] for r in group]
        merged.append(m)
    out = dict(reports[0])
    out["results"] = merged
    out["passes"] = [{"env": r["env"], "settings": r.get("settings")} for r in reports]
    return out
