"""``nbcnn summary``: the Keras-style layer table of a saved model or a zoo model."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import click

from . import common, loading


def _parse_shape(text):
    if text is None:
        return None
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(f"expected C,H,W like 1,28,28, got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise click.BadParameter(f"expected three positive numbers C,H,W, got {text!r}")
    return shape


def summary_text(model, explain: bool = False, batch_size: int = 1) -> str:
    """``model.summary()`` as text, whether it returns the table or prints it."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = model.summary(explain=True, batch_size=batch_size) if explain else model.summary()
    return out if isinstance(out, str) and out.strip() else buf.getvalue()


@click.command(epilog=common.examples(
    "nbcnn summary lenet5",
    "nbcnn summary vgg16 --classes 10",
    "nbcnn summary lenet5-mnist.nbcnn",
    "nbcnn summary lenet5 --explain --batch 64"))
@click.argument("model")
@click.option("--classes", "num_classes", type=click.IntRange(min=1), default=None,
              help="Number of output classes for a zoo model (default: the zoo's).")
@click.option("--input-shape", default=None, metavar="C,H,W",
              help="Input shape for a zoo model that accepts one, e.g. 1,28,28.")
@click.option("--explain", is_flag=True, default=False,
              help="Work out each layer's arithmetic: output size, receptive field, multiply-adds, memory.")
@click.option("--batch", "batch_size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batch size for the totals of --explain (training FLOPs, activation memory).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, metavar="PNG",
              help="Also draw the graph of layers to this PNG (needs matplotlib).")
@common.verbose_option
def summary(model, num_classes, input_shape, explain, batch_size, plot_path):
    """Print the layer table of MODEL: a model file or a zoo name (lenet5, alexnet, vgg16, ...).

    Shows each layer's output shape and parameter count, then the total,
    trainable and non-trainable parameters.
    """
    shape = _parse_shape(input_shape)
    path = Path(model)
    if path.exists() or path.suffix:
        net = loading.load_model_file(path)
        if num_classes is not None or shape is not None:
            raise common.UserError("--classes and --input-shape apply to zoo models, not model files")
    else:
        net = loading.build_zoo_model(model, num_classes=num_classes, input_shape=shape)
    common.echo(summary_text(net, explain=explain, batch_size=batch_size).rstrip("\n"))
    if plot_path is not None:
        from nbcnn.graph_plot import plot_graph
        from nbcnn.plots import PlotUnavailable

        try:
            plot_graph(net, plot_path)
        except PlotUnavailable as exc:
            raise common.UserError(str(exc)) from None
        except OSError as exc:
            raise common.UserError(f"cannot write {plot_path}: {exc.strerror or exc}") from None
        common.echo(f"graph written to {plot_path}")
