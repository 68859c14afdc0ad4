"""``nbcnn transfer``: a trained model, a new head for k classes, trained on cached features."""
from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from . import common, loading


def parse_classes(text):
    """``"0,1,2"`` -> [0, 1, 2] (order kept: class i of the new model is the i-th listed)."""
    if text is None:
        return None
    try:
        vals = [int(v) for v in str(text).replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise common.UserError(f"--classes must be comma-separated class indices, got {text!r}") from None
    if len(vals) < 2:
        raise common.UserError(f"--classes needs at least two classes, got {text!r}")
    if len(set(vals)) != len(vals):
        raise common.UserError(f"--classes lists a class twice: {text!r}")
    return vals


def select(x, y, classes, n=None, seed=0):
    """Images of ``classes`` with labels remapped to 0..k-1; ``n`` drawn class-balanced at random."""
    y = np.asarray(y).astype(np.int64)
    bad = [c for c in classes if not (y == c).any()]
    if bad:
        raise common.UserError(f"class(es) {bad} do not occur in the data (labels {int(y.min())}..{int(y.max())})")
    rng = np.random.default_rng(seed)
    k = len(classes)
    picks = []
    for j, c in enumerate(classes):
        idx = np.flatnonzero(y == c)
        if n is not None:
            want = n // k + (1 if j < n % k else 0)
            if want > idx.size:
                raise common.UserError(f"--train-size {n}: class {c} has only {idx.size} images")
            idx = rng.choice(idx, want, replace=False)
        picks.append(idx)
    idx = np.sort(np.concatenate(picks))
    remap = np.full(int(y.max()) + 1, -1, np.int64)
    remap[classes] = np.arange(k)
    return x[idx], remap[y[idx]]


class counting_bar:
    """A progress bar fed with counts (``update(n)`` = n more images), drawn only on a
    terminal: ``nbcnn.progress.ProgressBar`` underneath, as in the other commands."""

    def __init__(self, total, label=""):
        from nbcnn.progress import ProgressBar
        self.bar = ProgressBar(int(total), prefix=label)
        self.done = 0

    def update(self, n):
        self.done += int(n)
        self.bar.update(self.done, items=int(n))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()
        return False


def _epoch_printer(epochs):
    """A callback printing about ten epoch lines, whatever the number of epochs."""
    from nbcnn.callbacks import Callback
    every = max(1, epochs // 10)

    class EpochLines(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if (epoch + 1) % every and epoch + 1 != epochs:
                return
            logs = logs or {}
            parts = [f"epoch {epoch + 1}/{epochs}"]
            parts += [f"{k} {logs[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs]
            common.echo("  ".join(parts))

    return EpochLines()


def _default_cache_dir() -> Path:
    from nbcnn import datasets
    return datasets.cache_dir() / "features"


@click.command(epilog=common.examples(
    "nbcnn transfer lenet5-mnist.nbcnn --dataset fashion-mnist --classes 0,1,7 --train-size 300 --out tf.nbcnn",
    "nbcnn transfer lenet5-mnist.nbcnn --dataset fashion-mnist --train-last 2 --epochs 30 --out tf.nbcnn",
    "nbcnn transfer base.nbcnn --dataset mnist --classes 3,5,8 --no-cache --out 358.nbcnn"))
@click.argument("base_path", metavar="BASE_MODEL", type=click.Path(dir_okay=False, path_type=str))
@click.option("--dataset", type=click.Choice(loading.DATASETS, case_sensitive=False), default="fashion-mnist",
              show_default=True, help="The new task's data set.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with the IDX files (default: NBCNN_DATA, the cache, a download).")
@click.option("--classes", default=None, metavar="I,J,...",
              help="Keep only these classes (relabelled 0..k-1 in this order) [default: all].")
@click.option("--train-size", type=click.IntRange(min=1), default=None,
              help="Train on N images drawn class-balanced at random [default: all].")
@click.option("--train-last", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train the last N layers with weights (1 = the new head only); the rest stay frozen.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--lr", type=float, default=None, help="Learning rate [default: the optimizer's].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the subset, the new head and the batches.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where frozen-layer features are cached [default: ~/.cache/nbcnn/features].")
@click.option("--no-cache", is_flag=True, help="Keep the features in memory only.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the new model.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the results to this JSON file.")
@click.option("--device", default=None, metavar="auto|cpu|cuda",
              help="Where to run the model [default: $NBCNN_DEVICE or auto].")
@common.verbose_option
def transfer(base_path, dataset, data_dir, classes, train_size, train_last, epochs, batch_size, optimizer, lr,
             seed, cache_dir, no_cache, out_path, json_path, device):
    """Transfer BASE_MODEL to a new task: replace its classifier by one for the new classes,
    freeze the other layers, compute their features once (cached on disk), train the head
    on them, and save the whole model.

    With --train-last N > 1 the frozen part is shorter and the cache holds its output.
    """
    from nbcnn import transfer as T

    base = loading.load_model_file(base_path, device)
    (x_tr, y_tr), (x_te, y_te), info = loading.load_dataset(dataset, data_dir)
    x_tr, x_te = loading.as_nchw_uint8(x_tr), loading.as_nchw_uint8(x_te)
    shape = loading.model_input_shape(base)
    if shape is not None and tuple(x_tr.shape[1:]) != tuple(shape):
        raise common.UserError(f"the base model takes inputs of shape {tuple(shape)} but {dataset} images "
                               f"are {tuple(x_tr.shape[1:])}")
    all_classes = sorted(int(c) for c in np.unique(y_tr))
    cls = parse_classes(classes) or all_classes
    x_tr, y_tr = select(x_tr, y_tr, cls, train_size, seed)
    x_te, y_te = select(x_te, y_te, cls, None, seed)
    names_all = loading.dataset_classes(dataset) or [str(c) for c in all_classes]
    names = [names_all[c] if c < len(names_all) else str(c) for c in cls]
    common.echo(f"{dataset}: classes {', '.join(f'{c} ({n})' for c, n in zip(cls, names))}; "
                f"{len(y_tr)} training / {len(y_te)} test images")

    model = T.replace_head(base, len(cls), seed=seed)
    first = T.train_last(model, train_last)
    start = T.frozen_prefix(model)
    frozen = [l.name for l in model.layers[:start]]
    common.echo(f"new head {model.layers[-1].name!r} ({len(cls)} classes); training "
                f"{', '.join(l.name for l in model.layers[first:] if T._has_params(l))}; frozen: "
                f"{', '.join(frozen) or 'nothing'}")

    t0 = time.perf_counter()
    status = "none"
    if start > 0:
        label = f"features of {model.layers[start - 1].name}"
        with counting_bar(len(x_tr) + len(x_te), label) as bar:
            if no_cache:
                f_tr = T.extract_features(model, x_tr, start - 1, progress=bar.update)
                f_te = T.extract_features(model, x_te, start - 1, progress=bar.update)
                status = "in memory"
            else:
                cache = T.FeatureCache(cache_dir or _default_cache_dir())
                f_tr = cache.get(model, x_tr, start - 1, progress=bar.update)
                s1 = cache.status
                f_te = cache.get(model, x_te, start - 1, progress=bar.update)
                status = s1 if s1 == cache.status else f"{s1}/{cache.status}"
        t_feat = time.perf_counter() - t0
        where = "" if no_cache else f" in {cache.dir}"
        common.echo(f"{label}: {tuple(f_tr.shape[1:])} per image, cache {status}{where} ({t_feat:.2f} s)")
        t1 = time.perf_counter()
        hist = T.fit_head(model, f_tr, y_tr, start=start, validation_data=(np.asarray(f_te), y_te),
                          epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, seed=seed, verbose=0,
                          callbacks=[_epoch_printer(epochs)])
    else:
        t_feat = 0.0
        t1 = time.perf_counter()
        opt = optimizer
        if lr is not None:
            from nbcnn import optim
            opt = {"sgd": optim.SGD, "adam": optim.Adam}[optimizer](lr=lr)
        model.compile(optimizer=opt)
        model.seed = seed
        hist = model.fit(x_tr, y_tr, epochs=epochs, batch_size=batch_size, validation_data=(x_te, y_te),
                         verbose=0, callbacks=[_epoch_printer(epochs)])
    t_train = time.perf_counter() - t1
    ev = model.evaluate(x_te, y_te)
    acc = float(ev["accuracy"])
    common.echo("test accuracy " + common.style(f"{acc:.2%}", bold=True)
                + f" on {len(y_te)} images ({len(cls)} classes); head training {t_train:.2f} s")
    meta = {"dataset": dataset, "class_names": names, "classes": cls, "transfer_from": str(base_path),
            "train_size": int(len(y_tr)), "train_last": int(train_last), "seed": seed}
    model.save(out_path, metadata=meta)
    common.echo(f"saved {out_path}")
    if json_path is not None:
        common.write_json(json_path, {
            **meta, "test_images": int(len(y_te)), "test_accuracy": acc, "test_loss": float(ev["loss"]),
            "feature_seconds": t_feat, "train_seconds": t_train, "cache": status,
            "history": {k: [float(v) for v in vs] for k, vs in hist.history.items()}, "model": str(out_path)})
