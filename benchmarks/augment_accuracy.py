"""LeNet-5 on full MNIST with online augmentation (target: <= 0.8% test error).

Distortions in the spirit of LeCun et al. 1998 (small affine warps): rotation,
scaling and sub-pixel translation, drawn per image by worker processes while
the model trains. Adam with a cosine learning-rate decay. Writes one JSON
line per epoch (test error after each epoch, so a cut-short run still
reports its best-so-far) and saves the model at the end.

    NBCNN_DATA=/work/shared/data python benchmarks/augment_accuracy.py --epochs 20 --out runs/aug.nbcnn
"""
from __future__ import annotations

import argparse
import json
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--augment", default="rotate=10,scale=0.1,translate=2")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--activation", default="relu")
    ap.add_argument("--pooling", default="max")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="lenet5-mnist-aug.nbcnn")
    ap.add_argument("--log", default=None, help="JSON lines file (default: OUT + .jsonl)")
    a = ap.parse_args()

    import numpy as np

    from nbcnn import callbacks, datasets, loader, optim, zoo

    (x, y), (xt, yt) = datasets.load_mnist()
    model = zoo.lenet5(activation=a.activation, pooling=a.pooling, seed=a.seed)
    src = loader.online_batches(x, y, a.batch_size, a.augment, seed=a.seed, workers=a.workers, to_float=False)
    steps = len(src) * a.epochs
    model.compile(optimizer=optim.Adam(lr=optim.CosineDecay(a.lr, steps, final=a.lr * 0.01)))
    log = open(a.log or a.out + ".jsonl", "a")
    best = [1.0]
    t_start = time.perf_counter()

    class Report(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ev = model.evaluate(xt, yt, batch_size=1000)
            err = 1.0 - ev["accuracy"]
            best[0] = min(best[0], err)
            rec = {"epoch": epoch + 1, "train_loss": logs.get("loss"), "train_acc": logs.get("accuracy"),
                   "test_error": err, "test_loss": ev["loss"], "epoch_s": logs.get("time"),
                   "elapsed_s": time.perf_counter() - t_start, "augment": a.augment, "workers": a.workers,
                   "activation": a.activation, "pooling": a.pooling, "batch": a.batch_size, "lr": a.lr}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(f"epoch {epoch + 1}: test error {err:.2%} (best {best[0]:.2%}), "
                  f"epoch {logs.get('time', 0):.0f} s", flush=True)
            model.save(a.out)

    try:
        model.fit(src, epochs=a.epochs, callbacks=[Report()], verbose=2)
    finally:
        src.close()
    print(f"best test error {best[0]:.2%}; total {time.perf_counter() - t_start:.0f} s")
    return 0 if np.isfinite(best[0]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
