"""``nbcnn``: the Click entry point. Each command lives in its own module of this package."""
from __future__ import annotations

import click

import nbcnn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(nbcnn.__version__, prog_name="nbcnn")
def cli():
    """nbcnn: train small convolutional networks without PyTorch."""


@cli.command()
def info():
    """Versions, threads, BLAS and GPU status."""
    import numba
    import numpy

    ok, why = nbcnn.gpu_status()
    click.echo(f"nbcnn {nbcnn.__version__}  numpy {numpy.__version__}  numba {numba.__version__}")
    click.echo(f"GPU usable: {ok} ({why})")


def main(argv=None):
    """Console-script entry point."""
    return cli.main(args=argv, prog_name="nbcnn")


if __name__ == "__main__":  # pragma: no cover
    main()
