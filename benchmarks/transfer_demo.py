"""Transfer-learning demo: a LeNet-5 trained on MNIST digits -> 3 Fashion-MNIST classes.

For each training-set size and seed, on the SAME class-balanced subset:
  * transfer, head only: new Dense(3) on the frozen MNIST features, trained on cached features;
  * transfer, last 3 layers: the three dense layers retrained, the conv part frozen and cached;
  * from scratch: a fresh LeNet-5 (3 classes) trained on the images.
Accuracy is measured on all test images of the three classes. Then the speed-up of training
the head on cached features vs running the frozen layers in every epoch (same epochs, batch).

    nbcnn train --epochs 8 --seed 1 --activation tanh --pooling avg --lr 0.001 --schedule constant \
        --out lenet5-mnist.nbcnn      # the base model of the README numbers
    NBCNN_DATA=/work/shared/data python benchmarks/transfer_demo.py --base lenet5-mnist.nbcnn
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--classes", default="0,1,2")
    ap.add_argument("--sizes", default="300")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=40, help="epochs from scratch (and for the speed-up timing)")
    ap.add_argument("--head-epochs", type=int, default=200,
                    help="epochs for the transfer variants (cheap on cached features)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    import numpy as np

    import nbcnn
    from nbcnn import datasets, zoo
    from nbcnn import transfer as T
    from nbcnn.cli.transfer import select

    classes = [int(c) for c in a.classes.split(",")]
    base = nbcnn.load_model(a.base)
    (x, y), (xt, yt) = datasets.load_fashion_mnist()
    xt3, yt3 = select(xt, yt, classes)
    act = base.layers[0].activation
    pool = "avg" if type(base.layers[1]).__name__ == "AvgPool2D" else "max"
    cache_dir = tempfile.mkdtemp(prefix="nbcnn-features-")
    rows = []
    for n in [int(s) for s in a.sizes.split(",")]:
        for seed in [int(s) for s in a.seeds.split(",")]:
            xs, ys = select(x, y, classes, n, seed)
            res = {"train_size": n, "seed": seed}
            for name, last in (("transfer_head", 1), ("transfer_last3", 3)):
                m = T.replace_head(base, len(classes), seed=seed)
                T.train_last(m, last)
                start = T.frozen_prefix(m)
                cache = T.FeatureCache(cache_dir)
                t0 = time.perf_counter()
                f = cache.get(m, xs, start - 1)
                t_feat = time.perf_counter() - t0
                t0 = time.perf_counter()
                T.fit_head(m, f, ys, start=start, epochs=a.head_epochs, batch_size=a.batch_size,
                           optimizer="adam", seed=seed)
                t_train = time.perf_counter() - t0
                res[name] = {"accuracy": m.evaluate(xt3, yt3)["accuracy"], "train_s": t_train, "features_s": t_feat}
            s = zoo.lenet5(num_classes=len(classes), activation=act, pooling=pool, seed=seed)
            s.compile(optimizer="adam")
            t0 = time.perf_counter()
            s.fit(xs, ys, epochs=a.epochs, batch_size=a.batch_size, verbose=0)
            t_train = time.perf_counter() - t0
            res["scratch"] = {"accuracy": s.evaluate(xt3, yt3)["accuracy"], "train_s": t_train}
            rows.append(res)
            print(json.dumps(res), flush=True)

    # speed-up: head on cached features vs the frozen layers run in every epoch
    n = int(a.sizes.split(",")[0])
    xs, ys = select(x, y, classes, n, 0)
    timing = {"frozen_layers_every_epoch_s": [], "features_once_s": [], "head_on_cached_features_s": []}
    for r in range(3):  # best of 3 (the machine is shared)
        m = T.replace_head(base, len(classes), seed=0)
        T.train_last(m, 1)
        m.compile(optimizer="adam")
        t0 = time.perf_counter()
        m.fit(xs, ys, epochs=a.epochs, batch_size=a.batch_size, verbose=0)
        timing["frozen_layers_every_epoch_s"].append(time.perf_counter() - t0)
        m = T.replace_head(base, len(classes), seed=0)
        T.train_last(m, 1)
        t0 = time.perf_counter()
        f = T.FeatureCache(tempfile.mkdtemp(prefix="nbcnn-features-")).get(m, xs, T.frozen_prefix(m) - 1)
        timing["features_once_s"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        T.fit_head(m, f, ys, epochs=a.epochs, batch_size=a.batch_size, optimizer="adam", seed=0)
        timing["head_on_cached_features_s"].append(time.perf_counter() - t0)
    timing = {k: min(v) for k, v in timing.items()}
    timing["speedup_head_only"] = timing["frozen_layers_every_epoch_s"] / timing["head_on_cached_features_s"]
    timing["speedup_incl_features"] = timing["frozen_layers_every_epoch_s"] / (
        timing["head_on_cached_features_s"] + timing["features_once_s"])
    timing.update(train_size=n, epochs=a.epochs, batch_size=a.batch_size)
    print(json.dumps(timing), flush=True)

    summary = {}
    for key in ("transfer_head", "transfer_last3", "scratch"):
        for n in sorted({r["train_size"] for r in rows}):
            accs = [r[key]["accuracy"] for r in rows if r["train_size"] == n]
            summary[f"{key}@{n}"] = {"mean": float(np.mean(accs)), "min": float(np.min(accs)),
                                     "max": float(np.max(accs)), "runs": len(accs)}
    print(json.dumps(summary, indent=1))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"rows": rows, "timing": timing, "summary": summary, "classes": classes,
                       "base": a.base, "test_images": int(len(yt3))}, fh, indent=1)


if __name__ == "__main__":
    main()
