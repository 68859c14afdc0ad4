"""Inference speed: nbcnn ``Model.predict`` vs onnxruntime on the same model, each in its own process.

For each zoo model (lenet5, small_vgg, resnet20) the script builds the model with a fixed seed,
exports it with ``nbcnn.export_onnx``, then times, in separate worker processes (2 intra-op
threads each, alternating nbcnn / onnxruntime rounds): batch-1 latency (median of many single
calls) and batch-256 throughput. A third column times a resnet50 import (``load_onnx`` of the
onnx package's light ResNet-50 with random weights) and its peak memory.

    python benchmarks/onnx_inference.py [--rounds 3] [--out benchmarks/results/onnx_inference.md]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

MODELS = ["lenet5", "small_vgg", "resnet20"]


def _worker(kind, path, shape, batch, reps):
    """Runs in a fresh process: load the model once, warm up, then time ``reps`` calls."""
    import numpy as np

    x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    if kind == "ort":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        run = lambda: sess.run(None, {name: x})  # noqa: E731
    else:
        import nbcnn

        model = nbcnn.load_model(path, device="cpu")
        run = lambda: model.predict(x, batch_size=batch)  # noqa: E731
    for _ in range(3):
        run()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _run_worker(kind, path, shape, batch, reps):
    env = dict(os.environ, NUMBA_NUM_THREADS="2", OMP_NUM_THREADS="2")
    code = ("import json,sys; sys.path.insert(0, %r); from onnx_inference import _worker; "
            "print(json.dumps(_worker(%r, %r, %r, %d, %d)))") % (
        os.path.dirname(os.path.abspath(__file__)), kind, path, tuple(shape), batch, reps)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def _import_resnet50():
    code = r"""
import os, resource, sys, time, numpy as np, onnx
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(%r)), "..", "tests"))
from test_onnx_zoo_light import LIGHT, randomized
p = randomized(onnx.load(os.path.join(LIGHT, "light_resnet50.onnx")))
path = os.path.join(%r, "resnet50.onnx"); onnx.save(p, path)
import nbcnn
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter(); m = nbcnn.load_onnx(path, device="cpu"); dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(dt, m.count_params(), (peak - base) / 1024, os.path.getsize(path) / 2**20)
"""
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run([sys.executable, "-c", code % (__file__, d)], capture_output=True, text=True,
                             timeout=900)
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        dt, n, mem, size = out.stdout.split()
        return float(dt), int(n), float(mem), float(size)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "onnx_inference.md"))
    args = ap.parse_args()
    import numpy as np

    import nbcnn
    from nbcnn import zoo

    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            nbcnn.seed(0)
            kw = {"input_shape": (3, 32, 32), "num_classes": 10} if name == "resnet20" else {}
            model = getattr(zoo, name)(**kw) if kw else getattr(zoo, name)()
            model.to("cpu")
            model.build()
            shape = tuple(model.input_shape if hasattr(model, "input_shape") else model.inputs[0].shape[1:])
            npath, opath = os.path.join(d, f"{name}.nbcnn"), os.path.join(d, f"{name}.onnx")
            model.save(npath)
            nbcnn.export_onnx(model, opath)
            res = {"nb1": [], "ort1": [], "nb256": [], "ort256": []}
            for r in range(args.rounds):
                order = [("nb", npath), ("ort", opath)] if r % 2 == 0 else [("ort", opath), ("nb", npath)]
                for kind, path in order:
                    res[f"{kind}1"].append(_run_worker(kind, path, shape, 1, 200))
                    res[f"{kind}256"].append(_run_worker(kind, path, shape, 256, 10))
            med = {k: float(np.median(v)) for k, v in res.items()}
            rows.append((name, med))
            print(name, json.dumps(med), flush=True)
    t_imp, n_par, mem, size = _import_resnet50()
    lines = [
        "# Inference: nbcnn predict vs onnxruntime", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; nbcnn {nbcnn.__version__}, "
        f"onnxruntime {__import__('onnxruntime').__version__}; 2 threads each, each side in its own process, "
        f"{args.rounds} alternating rounds, medians. Speed-up = onnxruntime time / nbcnn time (> 1: nbcnn faster).",
        "", "| model | batch 1: nbcnn | onnxruntime | speed-up | batch 256: nbcnn img/s | onnxruntime img/s | speed-up |",
        "|---|---|---|---|---|---|---|"]
    for name, m in rows:
        lines.append(f"| {name} | {m['nb1'] * 1e3:.3f} ms | {m['ort1'] * 1e3:.3f} ms | {m['ort1'] / m['nb1']:.2f}x | "
                     f"{256 / m['nb256']:,.0f} | {256 / m['ort256']:,.0f} | {m['ort256'] / m['nb256']:.2f}x |")
    lines += ["", f"Importing ResNet-50 ({n_par:,} parameters, {size:.0f} MB file): {t_imp:.2f} s (no kernel runs "
              f"during an import), peak memory growth over the already parsed protobuf {mem:.0f} MB "
              f"({mem / (n_par * 4 / 2**20):.2f}x the float32 weights)."]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
