"""``nbcnn predict``: classify images or arrays with a saved model."""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from . import common, loading


@click.command(epilog=common.examples(
    "nbcnn predict lenet5-mnist.nbcnn digit.png",
    "nbcnn predict lenet5-mnist.nbcnn a.png b.jpg --top-k 3",
    "nbcnn predict fashion.nbcnn batch.npy --json predictions.json",
    "nbcnn predict lenet5-mnist.nbcnn digit.png --json -     # JSON on stdout",
    "nbcnn predict lenet5-mnist.nbcnn scan.png --invert no",
    "nbcnn predict lenet5-mnist.nbcnn photos/          # every image in the folder"))
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False, path_type=str))
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True)
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many classes to show per input.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the predictions as JSON to this file ('-' = stdout, instead of the text).")
@click.option("--invert", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True,
              help="Invert grey images: 'auto' inverts dark-on-light images to match MNIST-style data.")
@click.option("--device", default=None, metavar="auto|cpu|cuda",
              help="Where to run the model [default: $NBCNN_DEVICE or auto].")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@common.verbose_option
def predict(model_path, inputs, top_k, json_path, invert, device, batch_size):
    """Top-k classes with probabilities for each INPUT.

    INPUT is an image (PNG, JPEG, ...; converted to the model's channels and
    resized to its input size), a folder of them, or a .npy array of one sample (C,H,W or H,W)
    or a batch (N,C,H,W). Integer arrays are read as 0-255 pixels and scaled
    to [0, 1] like the training data; float arrays are used as model inputs unchanged.
    """
    to_stdout = json_path is not None and str(json_path) == "-"
    model = loading.load_model_file(model_path, device)
    shape = loading.model_input_shape(model)
    if invert == "auto" and loading.model_metadata(model).get("dataset") not in (None, "mnist", "fashion-mnist"):
        invert = "no"  # photos and CIFAR: images are used as they are
    chunks = loading.read_inputs(inputs, shape, invert=invert)
    if all(is_px for _, _, is_px in chunks):
        x = np.concatenate([a for _, a, _ in chunks])  # uint8: the model scales it like in training
    else:
        x = np.concatenate([a.astype(np.float32) * np.float32(1 / 255) if is_px else a
                            for _, a, is_px in chunks])
    names = [n for n, _, _ in chunks]
    probs = np.asarray(_to_numpy(model.predict(x, batch_size=batch_size)), dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != len(names):
        raise RuntimeError(f"model.predict returned shape {probs.shape} for {len(names)} inputs")
    labels = loading.class_names_for(model, probs.shape[1])
    k = min(top_k, probs.shape[1])
    results = []
    for name, p in zip(names, probs):
        order = np.argsort(-p, kind="stable")[:k]
        results.append({"input": name,
                        "top": [{"class": int(i), "label": labels[i], "probability": float(p[i])}
                                for i in order]})
    if to_stdout:
        click.echo(json.dumps(results, indent=2))
        return
    if json_path is not None:
        common.write_json(json_path, results)
    width = max(len(r["input"]) for r in results)
    for r in results:
        best, *rest = r["top"]
        head = common.style(f"{best['label']} ({best['probability']:.1%})", bold=True)
        tail = "   ".join(f"{t['label']} ({t['probability']:.1%})" for t in rest)
        common.echo(f"{r['input']:<{width}}  {head}" + (f"   {tail}" if tail else ""))


def _to_numpy(a):
    import nbcnn

    return nbcnn.to_numpy(a)
