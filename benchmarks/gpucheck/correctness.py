"""GPU-check section: every op and backward on the GPU against the CPU kernels.

Fresh random shapes and data each run; every output the CUDA kernels allocate
starts as NaN (:class:`Poisoned`), so an element a kernel forgets to write shows
as an infinite error. Also: determinism (the same backward twice, bitwise), a
non-default CuPy stream, and both ways of passing CuPy arrays to a kernel.
"""
from __future__ import annotations

import time

import numpy as np

import nbcnn.ops as ops
from nbcnn.bench import rel_err


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


def correctness(ck):
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

    n_conv = 3 if ck.sim else 24
    n_pool = 3 if ck.sim else 16
    with Poisoned():
        for dt in (np.float32, np.float64):
            errs = {k: [] for k in ("conv2d", "conv2d gx", "conv2d gw", "conv2d gb", "max_pool2d",
                                    "max_pool2d bwd", "avg_pool2d", "avg_pool2d bwd", "pad2d", "pad2d bwd")}
            for i in range(n_conv if dt == np.float32 else max(n_conv // 3, 2)):
                xs, ws, stride, padding = _random_conv(rng, dt, ck.sim)
                x = rng.standard_normal(xs).astype(dt)
                w = rng.standard_normal(ws).astype(dt)
                b = rng.standard_normal(ws[0]).astype(dt)
                gy = rng.standard_normal(ops.conv2d_output_shape(xs, ws, stride, padding)).astype(dt)

                def fb(x, w, b, gy):
                    ctx = {}
                    y = ops.conv2d(x, w, b, stride, padding, ctx=ctx)
                    return (y, *ops.conv2d_backward(gy, x, w, stride, padding, ctx=ctx))

                got = [ck.to_host(a) for a in ck.gpu(fb, x, w, b, gy)]
                want = [ck.cpu(ops.conv2d, x, w, b, stride, padding),
                        *ck.cpu(ops.conv2d_backward, gy, x, w, stride, padding)]
                for name, g_, w_ in zip(("conv2d", "conv2d gx", "conv2d gw", "conv2d gb"), got, want):
                    e = rel_err(g_, w_)
                    errs[name].append(e)
                    if e > tol[dt]:
                        print(f"  mismatch {name}: x{xs} w{ws} stride {stride} padding {padding!r}: {e:.2e}")
                if i == 0:  # determinism: the same backward twice, bitwise
                    again = [ck.to_host(a) for a in ck.gpu(fb, x, w, b, gy)]
                    same = all(np.array_equal(a, c) for a, c in zip(got, again))
                    ck.results.setdefault("deterministic", []).append(same)
                    print(f"  conv fwd+bwd twice bitwise equal: {same}")
            for _ in range(n_pool if dt == np.float32 else max(n_pool // 4, 2)):
                kh, kw = (int(v) for v in rng.integers(1, 5, size=2))
                stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
                padding = (int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1)))
                N, C = int(rng.integers(1, 4)), int(rng.integers(1, 6))
                H, W = (int(v) for v in rng.integers(max(kh, kw), 9 if ck.sim else 33, size=2))
                x = rng.standard_normal((N, C, H, W)).astype(dt)
                if rng.random() < 0.5:
                    x = np.round(x)  # ties: the first maximum must get the gradient, as on the CPU
                ys = ops.pool2d_output_shape(x.shape, (kh, kw), stride, padding)
                gyp = rng.standard_normal(ys).astype(dt)
                for kind in ("max", "avg"):
                    f, fbk = getattr(ops, f"{kind}_pool2d"), getattr(ops, f"{kind}_pool2d_backward")
                    yg = ck.to_host(ck.gpu(f, x, (kh, kw), stride, padding))
                    gg = ck.to_host(ck.gpu(fbk, gyp, x, (kh, kw), stride, padding))
                    errs[f"{kind}_pool2d"].append(rel_err(yg, ck.cpu(f, x, (kh, kw), stride, padding)))
                    errs[f"{kind}_pool2d bwd"].append(rel_err(gg, ck.cpu(fbk, gyp, x, (kh, kw), stride, padding)))
                pads = tuple(int(v) for v in rng.integers(0, 4, size=4))
                pg = ck.to_host(ck.gpu(ops.pad2d, x, pads))
                errs["pad2d"].append(rel_err(pg, ck.cpu(ops.pad2d, x, pads)))
                errs["pad2d bwd"].append(rel_err(ck.to_host(ck.gpu(ops.pad2d_backward, pg, pads)), x))
            for op, e in errs.items():
                record(op, dt, e)
    if not ck.sim:  # kernels must follow CuPy's current stream (ordered with CuPy's GEMMs)
        xs, ws, stride, padding = _random_conv(rng, np.float32, False)
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        gy = rng.standard_normal(ops.conv2d_output_shape(xs, ws, stride, padding)).astype(np.float32)
        stream = ck.xp.cuda.Stream(non_blocking=True)
        with stream:
            got = ck.gpu(ops.conv2d_backward, gy, x, w, stride, padding)
            got = [a.get(stream=stream) for a in got]
        stream.synchronize()
        want = ck.cpu(ops.conv2d_backward, gy, x, w, stride, padding)
        errs = [rel_err(g_, w_) for g_, w_ in zip(got, want)]
        record("conv2d bwd, own stream", np.float32, [max(errs)])
        from nbcnn.kernels.cuda import runtime  # both ways of passing CuPy arrays: bitwise the same

        fast = runtime.fast_args()
        try:
            runtime.fast_args(True)
            a = [ck.to_host(v) for v in ck.gpu(ops.conv2d_backward, gy, x, w, stride, padding)]
            runtime.fast_args(False)
            b_ = [ck.to_host(v) for v in ck.gpu(ops.conv2d_backward, gy, x, w, stride, padding)]
        finally:
            runtime.fast_args(fast)
        same = all(np.array_equal(u, v) for u, v in zip(a, b_))
        print(f"  device-array stand-ins vs array interface: bitwise equal {same}")
        record("fast vs interface args", np.float32, [0.0 if same else float("inf")])
    ck.results["correctness"] = [dict(zip(("op", "dtype", "cases", "worst_rel_err", "ok"), r)) for r in rows]
    ck.results["correctness_seed"] = seed
    return rows
