"""``nbcnn visualize``: top-activating patches per unit, first-layer filters, feature maps."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from . import common, loading


@click.command(epilog=common.examples(
    "nbcnn visualize lenet5-mnist.nbcnn --layer 0 --out vis/",
    "nbcnn visualize lenet5-mnist.nbcnn --layer conv2d_2 --units 16 --dataset mnist --out vis/",
    "nbcnn visualize fashion.nbcnn --layer -3 --limit 5000 --image 7 --out vis/"))
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False, path_type=str))
@click.option("--layer", required=True, metavar="NAME_OR_INDEX",
              help="Layer to look at: its name (see `nbcnn summary MODEL`) or index (negative from the end).")
@click.option("--units", type=click.IntRange(min=1), default=9, show_default=True,
              help="How many units (channels) to show, from the first.")
@click.option("--top", "k", type=click.IntRange(min=1), default=9, show_default=True,
              help="Patches per unit.")
@click.option("--dataset", type=click.Choice(loading.DATASETS, case_sensitive=False), default=None,
              help="Images to scan [default: the model's data set, else mnist].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Scan only the first N images.")
@click.option("--image", type=click.IntRange(min=0), default=0, show_default=True,
              help="Index of the image whose feature maps are drawn.")
@click.option("--scale", type=click.IntRange(min=1, max=32), default=4, show_default=True,
              help="Pixels per input pixel in the PNGs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--device", default=None, metavar="auto|cpu|cuda")
@common.verbose_option
def visualize(model_path, layer, units, k, dataset, data_dir, split, limit, image, scale, batch_size, out_dir,
              device):
    """What a layer of MODEL responds to: for each of the first --units units, the --top
    image patches (cropped by the unit's receptive field) that activate it most, as in
    Zeiler & Fergus (2013); plus the first layer's filters and the feature maps of one image.
    """
    from nbcnn import transfer as T
    from nbcnn import visualize as V

    model = loading.load_model_file(model_path, device)
    meta = loading.model_metadata(model)
    dataset = (dataset or meta.get("dataset") or "mnist").lower()
    (x_tr, y_tr), (x_te, y_te), info = loading.load_dataset(dataset, data_dir)
    x = loading.as_nchw_uint8(x_te if split == "test" else x_tr)
    if limit is not None:
        x = x[:limit]
    shape = loading.model_input_shape(model)
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise common.UserError(f"the model expects inputs of shape {tuple(shape)} but {dataset} images "
                               f"are {tuple(x.shape[1:])}")
    if image >= len(x):
        raise common.UserError(f"--image {image}: only {len(x)} images")
    li = T.layer_index(model, layer)
    lname = model.layers[li].name
    n_units = int(np.prod(model.layers[li].output_shape[1:2]))
    units = min(units, n_units)
    if len(x) < k:
        raise common.UserError(f"--top {k} needs at least {k} images, got {len(x)}")
    rf = V.receptive_field(model, li)
    if rf.spatial:
        common.echo(f"layer {li} {lname!r}: {n_units} units; receptive field {rf.size[0]}x{rf.size[1]}, "
                    f"stride {rf.jump[0]}x{rf.jump[1]}, offset {rf.start[0]},{rf.start[1]}")
    else:
        common.echo(f"layer {li} {lname!r}: {n_units} units; not spatial (each unit sees the whole image)")
    from .transfer import counting_bar
    with counting_bar(len(x), f"scanning {dataset} {split}") as bar:
        res = V.visualize_layer(model, x, li, out_dir, units=units, k=k, scale=scale, batch_size=batch_size,
                                progress=bar.update)
    # the feature maps of the requested image (visualize_layer draws image 0)
    res["paths"]["feature_maps"] = V.save_feature_maps(model, x[image], li,
                                                       Path(out_dir) / f"{lname}_feature_maps.png", scale=scale)
    for u, (vals, idx) in enumerate(zip(res["values"], res["images"])):
        if u < 3:
            common.echo(f"  unit {int(res['units'][u])}: top activations {', '.join(f'{v:.3g}' for v in vals[:3])}"
                        f" ... (images {', '.join(str(int(i)) for i in idx[:3])} ...)")
    for what, p in res["paths"].items():
        common.echo(f"{what}: {p}")
