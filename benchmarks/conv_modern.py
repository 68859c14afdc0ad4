"""Depthwise, grouped and dilated convolution, fwd + bwd, side by side with PyTorch (CPU).

Alternating rounds in one process, the same thread count for both (default 2);
prints the median times and the ratio nbcnn / torch per shape, and the cold
compile (first call) time of nbcnn's kernels for each shape.

    NUMBA_NUM_THREADS=2 python benchmarks/conv_modern.py [--rounds 5] [--json out.json] [--only NAME]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "2")

import numpy as np  # noqa: E402

SHAPES = [
    # name, (N, C, H, W), K, k, stride, padding, dilation, groups
    ("depthwise 3x3 (32,32,112,112) s1", (32, 32, 112, 112), 32, 3, 1, 1, 1, 32),
    ("depthwise 3x3 (32,64,112,112) s2", (32, 64, 112, 112), 64, 3, 2, 1, 1, 64),
    ("depthwise 3x3 (32,256,28,28) s1", (32, 256, 28, 28), 256, 3, 1, 1, 1, 256),
    ("depthwise 3x3 (32,512,14,14) s1", (32, 512, 14, 14), 512, 3, 1, 1, 1, 512),
    ("grouped 5x5 AlexNet conv2 (8,96,27,27)->256 g2", (8, 96, 27, 27), 256, 5, 1, 2, 1, 2),
    ("dilated 3x3 d2 (32,64,32,32)->64 p2", (32, 64, 32, 32), 64, 3, 1, 2, 2, 1),
]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=int(os.environ["NUMBA_NUM_THREADS"]))
    ap.add_argument("--only", default="")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import torch
    import torch.nn.functional as F

    from nbcnn import ops

    torch.set_num_threads(args.threads)
    import numba
    numba.set_num_threads(args.threads)
    rows = []
    for name, xs, K, k, s, p, d, g in SHAPES:
        if args.only and args.only not in name:
            continue
        rng = np.random.default_rng(0)
        x = rng.standard_normal(xs, dtype=np.float32)
        w = (rng.standard_normal((K, xs[1] // g, k, k), dtype=np.float32) * 0.1)
        b = np.zeros(K, np.float32)
        ctx = {}

        def ours():
            y = ops.conv2d(x, w, b, s, p, d, g, ctx=ctx)
            return ops.conv2d_backward(y, x, w, s, p, d, g, ctx=ctx)

        xt = torch.from_numpy(x).requires_grad_(True)
        wt = torch.from_numpy(w).requires_grad_(True)
        bt = torch.from_numpy(b).requires_grad_(True)

        def theirs():
            y = F.conv2d(xt, wt, bt, s, p, d, g)
            y.backward(y.detach())
            xt.grad = wt.grad = bt.grad = None

        t0 = time.perf_counter()
        ours()
        cold = time.perf_counter() - t0
        theirs()
        a, t = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter(); ours(); a.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); theirs(); t.append(time.perf_counter() - t0)
        ma, mt = statistics.median(a), statistics.median(t)
        rows.append(dict(shape=name, nbcnn_ms=ma * 1e3, torch_ms=mt * 1e3, ratio=ma / mt, first_call_s=cold))
        print(f"{name:50s} nbcnn {ma*1e3:8.1f} ms  torch {mt*1e3:8.1f} ms  ratio {ma/mt:5.2f}  first call {cold:5.1f} s",
              flush=True)
    print("uptime:", os.popen("uptime").read().strip())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(threads=args.threads, torch=torch.__version__, numba=numba.__version__,
                           uptime=os.popen("uptime").read().strip(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
