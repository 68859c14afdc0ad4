"""Data-parallel scaling on this machine: 1 vs 2 MPI ranks, 1 Numba thread each, the same global batch.

    python benchmarks/mpi_scaling.py                       # LeNet-5 (+ ResNet-20 when the zoo has it)
    python benchmarks/mpi_scaling.py --models lenet5 --steps 40 --json out.json

For each model and K in --ranks, ``mpiexec -n K`` runs this file with ``--rank-program``: every
rank trains on synthetic MNIST/CIFAR-shaped data through ``Model.fit(distributed=comm)`` (one
warm-up epoch compiles the kernels, the second is timed), and measures a standalone
``Allreduce`` of the model's gradient size (bandwidth). Printed: images/s, speed-up over one
rank, the share of a step spent waiting for the gradient allreduce after backward, the
allreduce time and bus bandwidth, and the machine load (``uptime``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}


def rank_program(model_name, global_batch, steps, out):
    import numpy as np

    import nbcnn
    from nbcnn import distributed, optim, zoo

    comm = distributed.init()
    k = comm.size
    nbcnn.seed(0)
    model = getattr(zoo, model_name)(input_shape=SHAPES[model_name]) if model_name != "lenet5" else zoo.lenet5()
    model.compile(optimizer=optim.SGD(0.01, momentum=0.9))
    n = global_batch * steps
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (n, *SHAPES[model_name]), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    comm.barrier()

    def reset(epoch, logs):  # the first epoch compiles: count the timed one only
        if epoch == 1:
            comm.stats.update(allreduce_wait_s=0.0, steps=0)

    from nbcnn.callbacks import LambdaCallback

    h = model.fit(x, y, epochs=2, batch_size=global_batch // k, distributed=comm if k > 1 else None,
                  verbose=0, callbacks=[LambdaCallback(on_epoch_begin=reset)])
    train_s = h.history["train_time"][1]
    wait_per_step = comm.stats["allreduce_wait_s"] / max(comm.stats["steps"], 1)
    # forward and forward+backward of one rank's batch (for the overlap model)
    xb, yb = model._to_batch(x[:global_batch // k]), y[:global_batch // k]
    fwd, fb = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        model._run([xb], True, True)  # the training forward alone
        t1 = time.perf_counter()
        model._forward_backward(xb, yb)
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        fb.append(t2 - t1)
    fwd_ms, bwd_ms = 1e3 * min(fwd), 1e3 * (min(fb) - min(fwd))
    # standalone allreduce of the whole gradient (what buckets add up to), for the bandwidth
    g = np.ones(model._flat.size, np.float32)
    reps = 20
    ar_s = None
    if k > 1:
        comm.barrier()
        t0 = time.perf_counter()
        for _ in range(reps):
            comm.comm.Allreduce(comm.MPI.IN_PLACE, g, op=comm.MPI.SUM)
        ar_s = (time.perf_counter() - t0) / reps
    if comm.is_root:
        res = {"model": model_name, "ranks": k, "global_batch": global_batch, "steps": steps,
               "params": int(model._flat.size), "train_s": train_s, "images_per_s": n / train_s,
               "step_ms": 1e3 * train_s / steps, "forward_ms": fwd_ms, "backward_ms": bwd_ms, "allreduce_wait_ms_per_step": 1e3 * wait_per_step,
               "allreduce_share": wait_per_step / (train_s / steps) if k > 1 else 0.0,
               "allreduce_ms": None if ar_s is None else 1e3 * ar_s,
               "bus_GBps": None if ar_s is None else 2 * (k - 1) / k * g.nbytes / ar_s / 1e9,
               "buckets": len(distributed._buckets(model._spans, 4, distributed.BUCKET_BYTES))}
        Path(out).write_text(json.dumps(res))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="comma-separated (default: lenet5 and resnet20 if in the zoo)")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--global-batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per run")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--rank-program", nargs=4, metavar=("MODEL", "BATCH", "STEPS", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rank_program:
        m, b, s, out = a.rank_program
        return rank_program(m, int(b), int(s), out)
    from nbcnn import zoo

    models = a.models.split(",") if a.models else [m for m in ("lenet5", "resnet20") if hasattr(zoo, m)]
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", NBCNN_DEVICE="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    results = []
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime before: {uptime}")
    for m in models:
        for k in map(int, a.ranks.split(",")):
            out = Path(f"/tmp/nbcnn_mpi_scaling_{os.getpid()}_{m}_{k}.json")
            cmd = ["mpiexec", "-n", str(k), sys.executable, __file__, "--rank-program", m,
                   str(a.global_batch), str(a.steps), str(out)]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
            if p.returncode:
                print(f"{m} K={k} failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
                continue
            r = json.loads(out.read_text())
            out.unlink()
            results.append(r)
    one = {r["model"]: r["images_per_s"] for r in results if r["ranks"] == 1}
    print(f"uptime after:  {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print("| model | ranks | global batch | img/s | speed-up | step ms | fwd / bwd ms (rank batch) | "
          "allreduce wait / step | allreduce of all grads | bus bandwidth |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        su = r["images_per_s"] / one[r["model"]] if r["model"] in one else None
        ar = "-" if r["allreduce_ms"] is None else f"{r['allreduce_ms']:.3f} ms ({r['params'] * 4 / 1e6:.2f} MB)"
        bw = "-" if r["bus_GBps"] is None else f"{r['bus_GBps']:.2f} GB/s"
        print(f"| {r['model']} | {r['ranks']} | {r['global_batch']} | {r['images_per_s']:,.0f} | "
              f"{'-' if su is None else f'{su:.2f}x'} | {r['step_ms']:.2f} | "
              f"{r['forward_ms']:.2f} / {r['backward_ms']:.2f} | "
              f"{r['allreduce_wait_ms_per_step']:.3f} ms ({100 * r['allreduce_share']:.1f} %) | {ar} | {bw} |")
        r["speedup"] = su
    if a.json:
        a.json.write_text(json.dumps({"uptime": uptime, "results": results}, indent=2))


if __name__ == "__main__":
    main()
