"""``nbcnn``: the Click entry point. Each command lives in its own module of this package.

Every subcommand runs under :class:`cli.common.Group`, so a user error ends
with one ``Error: ...`` line and exit code 1 (``--verbose`` shows the
traceback), whichever module the command comes from.
"""
from __future__ import annotations

import click

import nbcnn

from . import common


@click.group(name="nbcnn", cls=common.Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=common.examples(
                 "nbcnn train                      # LeNet-5 on MNIST",
                 "nbcnn train --dataset fashion-mnist --epochs 5 --out fashion.nbcnn",
                 "nbcnn evaluate lenet5.nbcnn",
                 "nbcnn predict lenet5.nbcnn digit.png --top-k 3",
                 "nbcnn summary vgg16",
                 "nbcnn bench --op conv --shapes lenet",
                 "nbcnn info"))
@click.version_option(nbcnn.__version__, prog_name="nbcnn")
@common.verbose_option
def cli():
    """nbcnn: train small convolutional networks without PyTorch.

    Run `nbcnn COMMAND --help` for a command's options and examples.
    """


def _register() -> None:
    from .bench import bench
    from .evaluate import evaluate
    from .info import info
    from .predict import predict
    from .summary import summary
    from .train import train

    for command in (train, evaluate, predict, summary, bench, info):
        cli.add_command(command)
    from . import augment, transfer, visualize
    for command in (transfer.transfer, augment.augment, visualize.visualize):
        cli.add_command(command)
    from . import onnx_commands
    for command in (onnx_commands.export, onnx_commands.import_):
        cli.add_command(command)


_register()


def main(argv=None):
    """Console-script entry point."""
    return cli.main(args=argv, prog_name="nbcnn")


if __name__ == "__main__":  # pragma: no cover
    main()
