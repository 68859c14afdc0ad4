"""Epoch time of LeNet-5 with online augmentation vs without (target: <= 1.2x the time without).

Variants, interleaved round by round (A B C, then C B A, ...) so machine noise hits all alike:
  plain    : model.fit(x, y)                       (no augmentation, in-process batches)
  workers  : online_batches(..., workers=W)        (augmentation in W spawned processes)
  inproc   : online_batches(..., workers=0)        (augmentation in the training process)
Worker start-up is paid once per source (outside the timed epochs: the sources are reused).
Also times the augmentation alone (pipeline over the same images, one process, one thread).

    NBCNN_DATA=/work/shared/data python benchmarks/augment_overhead.py --n 10000 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--augment", default="rotate=10,scale=0.1,translate=2")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    import numpy as np

    from nbcnn import augment, datasets, loader, zoo

    (x, y), _ = datasets.load_mnist()
    x, y = x[:a.n], y[:a.n]
    model = zoo.lenet5(activation="relu", pooling="max", seed=0)
    model.compile(optimizer="adam")
    model.fit(x[:256], y[:256], epochs=1, verbose=0)  # compile kernels outside the timings
    src_w = loader.online_batches(x, y, a.batch_size, a.augment, seed=0, workers=a.workers, to_float=False)
    src_0 = loader.online_batches(x, y, a.batch_size, a.augment, seed=0, workers=0, to_float=False)
    runs = {"plain": lambda: model.fit(x, y, epochs=1, batch_size=a.batch_size, verbose=0),
            "workers": lambda: model.fit(src_w, epochs=1, verbose=0),
            "inproc": lambda: model.fit(src_0, epochs=1, verbose=0)}
    # start the worker pool (spawn + imports) with one untimed epoch; it stays up
    model.fit(src_w, epochs=1, verbose=0)
    times = {k: [] for k in runs}
    order = list(runs)
    for r in range(a.rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t0)
        print(json.dumps({k: round(v[-1], 2) for k, v in times.items()}), flush=True)
    src_w.close()
    pipe = augment.parse_spec(a.augment)
    t0 = time.perf_counter()
    for s in range(0, a.n, a.batch_size):
        pipe(x[s:s + a.batch_size], augment.batch_rng(0, 0, s))
    t_aug = time.perf_counter() - t0
    res = {"n": a.n, "batch_size": a.batch_size, "augment": a.augment, "workers": a.workers,
           "epoch_s": {k: {"min": min(v), "median": float(np.median(v))} for k, v in times.items()},
           "ratio_workers_vs_plain_min": min(times["workers"]) / min(times["plain"]),
           "ratio_workers_vs_plain_median": float(np.median(times["workers"]) / np.median(times["plain"])),
           "ratio_inproc_vs_plain_min": min(times["inproc"]) / min(times["plain"]),
           "augmentation_alone_s": t_aug}
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
