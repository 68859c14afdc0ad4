"""``nbcnn evaluate``: loss, accuracy, a per-class table and a confusion-matrix PNG."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from . import common, loading


def evaluate_arrays(model, x_pixels, y, batch_size=256, label="evaluate"):
    """Predict in batches (with a progress bar on a terminal) -> (probabilities, loss, accuracy).

    The loss is the mean cross-entropy of the predicted probabilities, the
    quantity training minimises for classifiers.
    """
    import nbcnn
    from nbcnn.progress import ProgressBar

    n = len(x_pixels)
    probs = []
    bar = ProgressBar(-(-n // batch_size), prefix=label)
    try:
        for i, start in enumerate(range(0, n, batch_size)):
            xb = x_pixels[start:start + batch_size]  # uint8: the model scales it like in training
            pb = np.asarray(nbcnn.to_numpy(model.predict(xb, batch_size=batch_size)), dtype=np.float64)
            probs.append(pb)
            bar.update(i + 1, items=len(xb))
    finally:
        bar.close()
    probs = np.concatenate(probs) if probs else np.zeros((0, 0))
    y = np.asarray(y).astype(np.int64)
    if n == 0:
        return probs, float("nan"), float("nan")
    picked = probs[np.arange(n), y]
    loss = float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))
    acc = float(np.mean(probs.argmax(axis=1) == y))
    return probs, loss, acc


def per_class(cm: np.ndarray, names) -> list[dict]:
    rows = []
    for i, name in enumerate(names):
        support = int(cm[i].sum())
        predicted = int(cm[:, i].sum())
        tp = int(cm[i, i])
        rows.append({"class": i, "label": name, "support": support,
                     "recall": tp / support if support else None,
                     "precision": tp / predicted if predicted else None,
                     "errors": support - tp})
    return rows


def format_table(rows) -> str:
    w = max(5, max(len(r["label"]) for r in rows))
    lines = [f"{'class':<{w}}  {'support':>7}  {'recall':>7}  {'precision':>9}  {'errors':>6}"]
    for r in rows:
        rec = f"{r['recall']:.2%}" if r["recall"] is not None else "-"
        pre = f"{r['precision']:.2%}" if r["precision"] is not None else "-"
        lines.append(f"{r['label']:<{w}}  {r['support']:>7}  {rec:>7}  {pre:>9}  {r['errors']:>6}")
    return "\n".join(lines)


@click.command(epilog=common.examples(
    "nbcnn evaluate lenet5-mnist.nbcnn",
    "nbcnn evaluate fashion.nbcnn --dataset fashion-mnist --plot cm.png",
    "nbcnn evaluate lenet5-mnist.nbcnn --limit 1000 --json metrics.json --no-plot",
    "nbcnn evaluate small_cnn-photos.nbcnn --data-dir photos/   # per-class table of a folder of images"))
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False, path_type=str))
@click.option("--dataset", type=click.Choice(loading.DATASETS, case_sensitive=False), default=None,
              help="Data set to evaluate on (default: the one the model was trained on, else mnist).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with the IDX files or CIFAR batches (default: NBCNN_DATA, the cache, a download, the "
                   "bundled sample), or with images in class sub-folders (its test/ or val/ split, else all).")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Confusion-matrix PNG (default: MODEL's name + .confusion.png).")
@click.option("--no-plot", is_flag=True, help="Do not write the confusion-matrix PNG.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the metrics to this JSON file ('-' = stdout).")
@click.option("--device", default=None, metavar="auto|cpu|cuda",
              help="Where to run the model [default: $NBCNN_DEVICE or auto].")
@common.verbose_option
def evaluate(model_path, dataset, data_dir, split, limit, batch_size, plot_path, no_plot, json_path, device):
    """Loss, accuracy and per-class recall/precision of MODEL on a data set, plus a confusion matrix."""
    from nbcnn import plots

    model = loading.load_model_file(model_path, device)
    meta = loading.model_metadata(model)
    dataset = (dataset or meta.get("dataset") or "mnist").lower()
    if loading.data_kind(dataset, data_dir) == "folder":
        # users' images: decoded to the model's input, labelled by the model's class names
        if data_dir is None:
            raise common.UserError(f"{model_path} was trained on a folder of images: pass --data-dir DIR "
                                   "(class sub-folders, or a train/ + test/ tree)")
        shape = loading.model_input_shape(model)
        dataset = "folder"
        (x_tr, y_tr), (x_te, y_te), info = loading.load_folder(
            data_dir, image_size=list(shape[1:]) if shape else None,
            color="grayscale" if shape and shape[0] == 1 else "rgb",
            class_names=meta.get("class_names") or None, whole=True)
        x_te = loading.in_memory(x_te)
    else:
        (x_tr, y_tr), (x_te, y_te), info = loading.load_dataset(dataset, data_dir)
    x, y = (x_te, y_te) if split == "test" else (x_tr, y_tr)
    x = loading.as_nchw_uint8(x)
    y = np.asarray(y).astype(np.int64)
    subset = meta.get("classes")
    if subset and dataset == meta.get("dataset"):
        # A model trained on some classes only (e.g. by `nbcnn transfer`): keep those, relabelled 0..k-1.
        remap = np.full(max(int(y.max(initial=0)), max(subset)) + 1, -1, np.int64)
        remap[np.asarray(subset, np.int64)] = np.arange(len(subset))
        keep = remap[y] >= 0
        x, y = x[keep], remap[y[keep]]
    if limit is not None:
        x, y = x[:limit], y[:limit]
    if len(y) == 0:
        raise common.UserError(f"no {dataset} {split} images to evaluate")
    shape = loading.model_input_shape(model)
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise common.UserError(f"the model expects inputs of shape {tuple(shape)} but {dataset} images "
                               f"are {tuple(x.shape[1:])}")
    n_out = loading.model_num_classes(model)
    if n_out is not None and len(y) and int(y.max()) >= n_out:
        raise common.UserError(f"{dataset} has labels up to {int(y.max())} but the model has {n_out} outputs; "
                               "evaluate it on the data set it was trained for (--dataset)")
    names = loading.class_names_for(model, dataset=dataset)
    probs, loss, acc = evaluate_arrays(model, x, y, batch_size)
    if probs.shape[1] != len(names):
        names = [str(i) for i in range(probs.shape[1])]
    cm = plots.confusion_matrix(y, probs.argmax(axis=1), probs.shape[1])
    rows = per_class(cm, names)
    to_stdout_json = json_path is not None and str(json_path) == "-"
    if not to_stdout_json:
        what = f" (classes {', '.join(map(str, subset))})" if subset and dataset == meta.get("dataset") else ""
        common.echo(f"{dataset} {split}{what}: {len(y)} images"
                    + ("  (bundled sample)" if info["bundled_sample"] else ""))
        common.echo(f"loss      {loss:.4f}")
        common.echo("accuracy  " + common.style(f"{acc:.2%}", bold=True) + f"  (error {1 - acc:.2%})")
        common.echo()
        common.echo(format_table(rows))
    written = None
    if not no_plot:
        target = plot_path or Path(str(Path(model_path).with_suffix("")) + ".confusion.png")
        try:
            written = plots.plot_confusion_matrix(cm, target, names,
                                                  title=f"{Path(model_path).name} on {dataset} {split}")
            if not to_stdout_json:
                common.echo(f"\nconfusion matrix: {written}")
        except plots.PlotUnavailable as exc:
            common.notice(f"Notice: no confusion-matrix PNG: {exc}")
    if json_path is not None:
        result = {"model": str(model_path), "dataset": dataset, "split": split, "images": int(len(y)),
                  "bundled_sample": info["bundled_sample"], "loss": loss, "accuracy": acc,
                  "per_class": rows, "confusion_matrix": cm.tolist(),
                  "confusion_png": str(written) if written else None}
        if to_stdout_json:
            import json

            click.echo(json.dumps(result, indent=2))
        else:
            common.write_json(json_path, result)
