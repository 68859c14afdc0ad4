"""``nbcnn augment``: write an augmented copy of a data set (IDX files) for `nbcnn train --data-dir`."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from . import common, loading

DEFAULT_SPEC = "rotate=10,crop=2,noise=0.05"


def _spec_help() -> str:
    from nbcnn.augment import SPEC_KEYS
    return "; ".join(f"{k}: {v}" for k, v in SPEC_KEYS.items())


@click.command(epilog=common.examples(
    "nbcnn augment --dataset mnist --copies 2 --out aug/",
    "nbcnn train --data-dir aug/ --dataset mnist",
    "nbcnn augment --dataset fashion-mnist --ops mirror,crop=2,color=0.05 --copies 1 --out faug/",
    "nbcnn augment --ops rotate=15,scale=0.1 --limit 1000 --copies 4 --preview aug.png --out small/"))
@click.option("--dataset", type=click.Choice(loading.DATASETS, case_sensitive=False), default="mnist",
              show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to read the data set from (default: NBCNN_DATA, the cache, a download).")
@click.option("--ops", "spec", default=DEFAULT_SPEC, show_default=True, metavar="SPEC",
              help="Distortions, comma-separated key=value (see below).")
@click.option("--copies", type=click.IntRange(min=1), default=1, show_default=True,
              help="Distorted copies of each training image.")
@click.option("--no-original", is_flag=True, help="Leave the original training images out.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N training images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder; the files go to OUT/<dataset>/ (the layout --data-dir reads).")
@click.option("--preview", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a PNG: 8 originals (first column) and their distorted copies.")
@common.verbose_option
def augment(dataset, data_dir, spec, copies, no_original, limit, seed, out_dir, preview):
    """Write an augmented training set (originals + COPIES distorted copies; the test set
    unchanged) as gzipped IDX files that `nbcnn train --data-dir OUT` reads.

    SPEC keys: rotate, scale, shear, translate, crop, mirror, vflip, color, jitter, cutout, noise.
    """
    from nbcnn import augment as A

    pipeline = A.parse_spec(spec)  # a bad spec fails before any work
    if len(pipeline) == 0:
        raise common.UserError(f"--ops {spec!r} has no distortion: nothing to do")
    (x_tr, y_tr), (x_te, y_te), info = loading.load_dataset(dataset, data_dir)
    x_tr, x_te = loading.as_nchw_uint8(x_tr), loading.as_nchw_uint8(x_te)
    if limit is not None:
        x_tr, y_tr = x_tr[:limit], y_tr[:limit]
    from .transfer import counting_bar
    with counting_bar(len(x_tr) * copies, "augment") as bar:
        xa, ya = A.augment_dataset(x_tr, y_tr, pipeline, copies, seed=seed, include_original=not no_original,
                                   progress=bar.update)
    # Keep each source image next to its copies: `nbcnn train --val-split` holds out the tail, and
    # with the copies in separate blocks that tail would be distorted twins of training images.
    group = copies + (0 if no_original else 1)
    order = np.arange(group * len(x_tr)).reshape(group, len(x_tr)).T.ravel()
    xa, ya = xa[order], ya[order]
    files = A.write_dataset(out_dir, dataset, (xa, ya), (x_te, y_te))
    loading.write_augment_info(files[0].parent, group_size=group, source_images=len(x_tr),
                               spec=pipeline.spec(), seed=seed)
    common.echo(f"{dataset}: {len(ya)} training images ({'' if no_original else 'originals + '}"
                f"{copies} cop{'y' if copies == 1 else 'ies'} with {pipeline.spec()}), {len(y_te)} test images")
    common.echo(f"wrote {files[0].parent}/ ({sum(f.stat().st_size for f in files) / 1e6:.1f} MB)")
    common.echo(f"train on it: nbcnn train --dataset {dataset} --data-dir {out_dir}")
    if preview is not None:
        from nbcnn.visualize import _grid, _write_png
        k = min(8, len(x_tr))
        aug = A.augment_dataset(x_tr[:k], y_tr[:k], pipeline, copies, seed=seed, include_original=False)[0]
        rows = [x_tr[:k].astype(np.float64)] + [aug[c * k:(c + 1) * k].astype(np.float64) for c in range(copies)]
        tiles = np.stack(rows, axis=1)  # (k, 1 + copies, C, H, W)
        _write_png(_grid(tiles, 2, 2, (0.0, 255.0)), preview)
        common.echo(f"preview: {preview}")
