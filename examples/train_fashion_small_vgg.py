"""Train the zoo's small VGG-style net on Fashion-MNIST and report the test accuracy.

    python examples/train_fashion_small_vgg.py --epochs 12

Fixed recipe (no selection on the test set): Adam with cosine decay over all
steps, batch 64, seed 0; the test set is evaluated once, at the end.
"""
import argparse
import json
import time

import nbcnn
from nbcnn import datasets, optim, zoo

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=12)
p.add_argument("--batch-size", type=int, default=64)
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--out", default=None)
a = p.parse_args()

(xtr, ytr), (xte, yte) = datasets.load_fashion_mnist(download=False)
print("data:", datasets.last_source, xtr.shape, xte.shape, flush=True)
nbcnn.seed(a.seed)
model = zoo.small_vgg()
model.summary()
steps = a.epochs * -(-len(xtr) // a.batch_size)
model.compile(optimizer=optim.Adam(optim.CosineDecay(a.lr, steps)))
t0 = time.time()
class Every(nbcnn.callbacks.Callback):
    """A log line every 200 batches (the run goes to a log file, where no progress bar is drawn)."""

    def on_batch_end(self, batch, logs=None):
        if batch % 200 == 0:
            print(f"  batch {batch} loss {logs['loss']:.4f} acc {logs['accuracy']:.4f} "
                  f"{time.time() - t0:.0f}s", flush=True)


hist = model.fit(xtr, ytr, epochs=a.epochs, batch_size=a.batch_size, verbose=2, callbacks=[Every()])
wall = time.time() - t0
res = model.evaluate(xte, yte)
out = {"model": "small_vgg (16,16 | 32,32 | dense 128)", "params": model.count_params(), "epochs": a.epochs,
       "batch_size": a.batch_size, "optimizer": f"Adam, cosine decay from {a.lr}", "seed": a.seed,
       "wall_s": round(wall, 1), "test_accuracy": res["accuracy"], "test_loss": res["loss"],
       "train_images_per_s": round(a.epochs * len(xtr) / sum(hist.history["time"]), 1)}
print(json.dumps(out, indent=1), flush=True)
if a.out:
    model.save(a.out, metadata=out)
