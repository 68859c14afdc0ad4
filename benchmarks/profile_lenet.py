"""Where a LeNet-5 training step spends its time: cProfile of train_on_batch, per function.

Numba kernels show up under their Python names (e.g. ``conv.py:_im2col``);
time in a kernel-module wrapper's own line ("tottime") is mostly BLAS
(np.matmul) and allocation. Shares are what matter: run it on a quiet machine.

    python benchmarks/profile_lenet.py --activation tanh --pooling avg --batch 256
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nbcnn  # noqa: E402,F401  (first: BLAS thread policy before numpy loads)


def main(argv=None) -> int:
    import numba
    import numpy as np

    from nbcnn.bench import lenet_data, nbcnn_lenet

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--activation", default="tanh", choices=["tanh", "relu"])
    ap.add_argument("--pooling", default="avg", choices=["avg", "max"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args(argv)
    numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
    model = nbcnn_lenet(a.activation, a.pooling)
    x, y = lenet_data(a.batch, np.random.default_rng(0))
    for _ in range(3):
        model.train_on_batch(x, y)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(a.steps):
        model.train_on_batch(x, y)
    prof.disable()
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values())  # tottime of everything
    rows = sorted(((v[2], v[0], f"{Path(k[0]).name}:{k[2]}") for k, v in st.stats.items()), reverse=True)
    print(f"LeNet-5 {a.activation}/{a.pooling}, batch {a.batch}: {total / a.steps * 1e3:.2f} ms/step "
          f"({a.batch * a.steps / total:.0f} images/s under the profiler)")
    print(f"{'share':>6}  {'ms/step':>8}  {'calls/step':>10}  function")
    for tt, calls, name in rows[:a.top]:
        print(f"{tt / total:6.1%}  {tt / a.steps * 1e3:8.3f}  {calls / a.steps:10.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
