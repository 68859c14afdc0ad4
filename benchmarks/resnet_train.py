"""ResNet-20 and a MobileNet-style net: training images/s side by side with PyTorch (CPU), and where the time goes.

Both frameworks train the same architecture with the same step (cross-entropy,
SGD with momentum 0.9) at batch 128 on 3x32x32 inputs, with the same number of
threads (default 2), in alternating rounds in one process. Reported: the median
images/s of each and the speed ratio (nbcnn images/s / torch images/s; the
target is >= 1.5), then nbcnn's time per layer type (forward and backward,
measured by timing every layer call of a few extra steps) and the optimiser
step, so the ops that dominate are visible.

    NUMBA_NUM_THREADS=2 python benchmarks/resnet_train.py [--rounds 3] [--steps 3] [--md results/resnet_train.md]

The MobileNet-style net: conv 32@3x3 + BN + ReLU, then five blocks of depthwise
3x3 + BN + ReLU + pointwise 1x1 + BN + ReLU with 64, 128 (stride 2), 128, 256
(stride 2), 256 channels, global average pooling, dense 10.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nbcnn  # noqa: E402  (first: BLAS thread policy before numpy loads)
import numpy as np  # noqa: E402

MOBILE_PLAN = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1)]


# -- the two nets in nbcnn --------------------------------------------------------------------

def nbcnn_resnet20(seed=0):
    from nbcnn import zoo

    return zoo.resnet20(input_shape=(3, 32, 32), num_classes=10, seed=seed)


def nbcnn_mobile(seed=0):
    from nbcnn import layers as L

    def bn():
        return L.BatchNormalization(momentum=0.9, epsilon=1e-5)

    x = inp = nbcnn.Input((3, 32, 32))
    x = L.ReLU()(bn()(L.Conv2D(32, 3, padding=1, use_bias=False)(x)))
    for c, s in MOBILE_PLAN:
        x = L.ReLU()(bn()(L.DepthwiseConv2D(3, strides=s, padding=1, use_bias=False)(x)))
        x = L.ReLU()(bn()(L.Conv2D(c, 1, use_bias=False)(x)))
    out = L.Dense(10)(L.GlobalAveragePooling2D()(x))
    return nbcnn.Model(inp, out, name="mobile_style", seed=seed)


# -- the same nets in torch -------------------------------------------------------------------

def torch_resnet20():
    import torch
    from torch import nn

    class ShortcutA(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.s, self.lo, self.hi = stride, (cout - cin) // 2, cout - cin - (cout - cin) // 2

        def forward(self, x):
            return nn.functional.pad(x[:, :, ::self.s, ::self.s], (0, 0, 0, 0, self.lo, self.hi))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.sc = ShortcutA(cin, cout, stride) if stride != 1 or cin != cout else nn.Identity()

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(y)) + self.sc(x))

    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for i, c in enumerate((16, 32, 64)):
        for j in range(3):
            layers.append(Block(cin, c, 2 if i and not j else 1))
            cin = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


def torch_mobile():
    from torch import nn

    layers = [nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU()]
    cin = 32
    for c, s in MOBILE_PLAN:
        layers += [nn.Conv2d(cin, cin, 3, s, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                   nn.Conv2d(cin, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        cin = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


# -- timing -----------------------------------------------------------------------------------

def _layer_profile(model, x, y, steps):
    """Seconds per step by layer type and direction, timing every layer call (wrappers on the instances)."""
    acc = collections.defaultdict(float)
    saved = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        for d in ("forward", "backward"):
            fn = getattr(layer, d)

            def timed(*a, _fn=fn, _key=(kind, d), **k):
                t0 = time.perf_counter()
                r = _fn(*a, **k)
                acc[_key] += time.perf_counter() - t0
                return r

            setattr(layer, d, timed)
            saved.append((layer, d))
    opt = model.optimizer
    step = opt.step

    def timed_step(*a, **k):
        t0 = time.perf_counter()
        step(*a, **k)
        acc[("optimizer", "step")] += time.perf_counter() - t0

    opt.step = timed_step
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    total = time.perf_counter() - t0
    for layer, d in saved:
        delattr(layer, d)
    del opt.step
    rows = sorted(((v / steps, k) for k, v in acc.items()), reverse=True)
    return total / steps, rows


def bench(name, ours, theirs, batch, rounds, steps, threads, profile_steps):
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    from nbcnn import optim

    m = ours()
    m.compile(optimizer=optim.SGD(0.01, momentum=0.9))
    t0 = time.perf_counter()
    m.train_on_batch(x, y)
    first = time.perf_counter() - t0
    m.train_on_batch(x, y)
    tm = theirs()
    topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    lossf = torch.nn.CrossEntropyLoss()

    def torch_step():
        topt.zero_grad(set_to_none=True)
        lossf(tm(xt), yt).backward()
        topt.step()

    torch_step()
    a, t = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            m.train_on_batch(x, y)
        a.append(batch * steps / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _ in range(steps):
            torch_step()
        t.append(batch * steps / (time.perf_counter() - t0))
    ours_ips, torch_ips = statistics.median(a), statistics.median(t)
    step_s, prof = _layer_profile(m, x, y, profile_steps)
    print(f"{name}: nbcnn {ours_ips:7.1f} img/s  torch {torch_ips:7.1f} img/s  speed ratio {ours_ips / torch_ips:4.2f}"
          f"  (first step {first:.1f} s)", flush=True)
    return dict(name=name, nbcnn_ips=ours_ips, torch_ips=torch_ips, ratio=ours_ips / torch_ips, first_step_s=first,
                rounds_nbcnn=a, rounds_torch=t, profile=prof, profile_step_s=step_s, params=m.count_params())


def _md(rows, args, load_before, load_after):
    import numba
    import torch

    out = ["# ResNet-20 and MobileNet-style training: nbcnn vs PyTorch (CPU)", "",
           f"Date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} CPUs visible; nbcnn {nbcnn.__version__}, numba {numba.__version__}, "
           f"torch {torch.__version__}, numpy {np.__version__}; {args.threads} threads each.",
           f"Load (`uptime`) before: {load_before}; after: {load_after}.", "",
           f"Method: `benchmarks/resnet_train.py --rounds {args.rounds} --steps {args.steps}`: batch {args.batch} "
           "of 3x32x32, cross-entropy + SGD momentum 0.9, the same architecture in both; alternating rounds of "
           f"{args.steps} steps in one process, median images/s. Speed ratio = nbcnn images/s / torch images/s "
           "(target >= 1.5).", "",
           "| net | parameters | nbcnn img/s | torch img/s | speed ratio | nbcnn first step (compile) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['name']} | {r['params']:,} | {r['nbcnn_ips']:.1f} | {r['torch_ips']:.1f} | "
                   f"{r['ratio']:.2f} | {r['first_step_s']:.1f} s |")
    for r in rows:
        out += ["", f"## Where nbcnn's {r['name']} step goes ({r['profile_step_s'] * 1e3:.0f} ms/step, "
                    f"{args.profile_steps} timed steps)", "",
                "| layer type | direction | ms/step | share |", "|---|---|---|---|"]
        tot = r["profile_step_s"]
        for sec, (kind, d) in r["profile"]:
            out.append(f"| {kind} | {d} | {sec * 1e3:.1f} | {sec / tot:.1%} |")
        rest = tot - sum(s for s, _ in r["profile"])
        out.append(f"| (engine, loss, rest) | | {rest * 1e3:.1f} | {rest / tot:.1%} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--profile-steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=int(os.environ["NUMBA_NUM_THREADS"]))
    ap.add_argument("--only", choices=["resnet20", "mobile"], default=None)
    ap.add_argument("--md", type=Path, default=None, help="write the Markdown table here")
    args = ap.parse_args(argv)
    import numba
    import torch

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    if args.only in (None, "resnet20"):
        rows.append(bench("ResNet-20", nbcnn_resnet20, torch_resnet20, args.batch, args.rounds, args.steps,
                          args.threads, args.profile_steps))
    if args.only in (None, "mobile"):
        rows.append(bench("MobileNet-style", nbcnn_mobile, torch_mobile, args.batch, args.rounds, args.steps,
                          args.threads, args.profile_steps))
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    text = _md(rows, args, load_before, load_after)
    print(text)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
