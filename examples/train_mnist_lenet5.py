"""Train LeNet-5 on the full MNIST and report the test error (the README's accuracy result).

    python examples/train_mnist_lenet5.py --epochs 15 --activation relu --pooling max

Fixed recipe (no selection on the test set): Adam, cosine learning-rate decay
over all steps, batch 64, seed 0; the test set is only evaluated, once per
epoch, for the learning curve.
"""
import argparse
import json
import time

import nbcnn
from nbcnn import datasets, optim, zoo

p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=15)
p.add_argument("--batch-size", type=int, default=64)
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--activation", default="relu")
p.add_argument("--pooling", default="max")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--out", default=None)
a = p.parse_args()

(xtr, ytr), (xte, yte) = datasets.load_mnist(download=False, allow_sample=False)
print("data:", datasets.last_source, xtr.shape, xte.shape, flush=True)
nbcnn.seed(a.seed)
model = zoo.lenet5(activation=a.activation, pooling=a.pooling)
steps = a.epochs * -(-len(xtr) // a.batch_size)
model.compile(optimizer=optim.Adam(optim.CosineDecay(a.lr, steps)))
t0 = time.time()
hist = model.fit(xtr, ytr, epochs=a.epochs, batch_size=a.batch_size, validation_data=(xte, yte), verbose=2)
wall = time.time() - t0
res = model.evaluate(xte, yte)
out = {"model": f"lenet5 {a.activation}/{a.pooling}", "epochs": a.epochs, "batch_size": a.batch_size,
       "optimizer": f"Adam, cosine decay from {a.lr}", "seed": a.seed, "wall_s": round(wall, 1),
       "test_accuracy": res["accuracy"], "test_error_pct": round(100 * (1 - res["accuracy"]), 3),
       "train_images_per_s": round(a.epochs * len(xtr) / sum(hist.history["time"]), 1),
       "val_accuracy_per_epoch": hist.history["val_accuracy"]}
print(json.dumps(out, indent=1), flush=True)
if a.out:
    model.save(a.out, metadata=out)
