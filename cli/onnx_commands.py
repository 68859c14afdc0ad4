"""``nbcnn export`` and ``nbcnn import``: ONNX files in and out (the ``onnx`` extra)."""
from __future__ import annotations

from pathlib import Path

import click

from . import common, loading


def _check_folder(path: Path) -> None:
    """Refuse before any work when the output cannot be written."""
    import os

    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise common.UserError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise common.UserError(f"output folder is not writable: {folder}")


@click.command(name="export", epilog=common.examples(
    "nbcnn export lenet5-mnist.nbcnn lenet5.onnx",
    "nbcnn export resnet.nbcnn resnet.onnx --opset 13 --static-batch"))
@click.argument("model")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True, help="ONNX opset to write.")
@click.option("--static-batch", is_flag=True, help="Fix the batch axis at 1 instead of leaving it dynamic.")
@common.verbose_option
def export(model, out, opset, static_batch):
    """Write MODEL (an nbcnn model file) as an ONNX file OUT that onnxruntime and other runtimes run."""
    import nbcnn

    out_path = Path(out)
    _check_folder(out_path)
    net = loading.load_model_file(model, device="cpu")
    nbcnn.export_onnx(net, out_path, opset=opset, dynamic_batch=not static_batch)
    common.echo(f"wrote {out_path} (opset {opset}, {len(net.layers)} layers, "
                f"{net.count_params():,} parameters, batch axis {'1' if static_batch else 'dynamic'})")


@click.command(name="import", epilog=common.examples(
    "nbcnn import resnet50.onnx resnet50.nbcnn",
    "nbcnn import mobilenet.onnx mobilenet.nbcnn --quiet"))
@click.argument("onnx_file", metavar="IN.onnx")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("-q", "--quiet", is_flag=True, help="Do not print the summary.")
@common.verbose_option
def import_(onnx_file, out, quiet):
    """Read IN.onnx as a trainable nbcnn model and save it as OUT (.nbcnn).

    Prints the model summary and what the import folded, fused and removed.
    """
    from .summary import summary_text

    _check_folder(Path(out))
    net = loading.load_model_file(onnx_file, device="cpu")
    net.save(out)
    if not quiet:
        common.echo(summary_text(net).rstrip("\n"))
        notes = getattr(net, "onnx_import_notes", [])
        folded = sum(n.startswith("folded") for n in notes)
        fused = sum(n.startswith("fused") for n in notes)
        removed = sum(n.startswith("removed") for n in notes)
        common.echo(f"import: {folded} constant scales folded, {fused} activations fused, "
                    f"{removed} Dropout/Identity nodes removed")
    common.echo(f"wrote {out}")
