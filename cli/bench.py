"""``nbcnn bench``: the benchmark tables of :mod:`nbcnn.bench` from the command line (its only one)."""
from __future__ import annotations

from pathlib import Path

import click

from nbcnn.bench.runners import op_choices

from . import common


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated batch sizes like 64,256, got {text!r}") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"batch sizes must be positive, got {text!r}")
    return values


@click.command(epilog=common.examples(
    "nbcnn bench --op conv --shapes lenet",
    "nbcnn bench --op all --shapes all --compare torch --json ops.json",
    "nbcnn bench --model lenet5 --batch 64,256 --compare torch",
    "nbcnn bench --startup            # fresh-process start-up times",
    "nbcnn bench --blas-threads       # BLAS and Numba threads do not fight, whatever the import order",
    "nbcnn bench --device cuda --op conv --shapes vgg"))
@click.option("--op", type=click.Choice(op_choices()), default="all", show_default=True,
              help="Which ops to time.")
@click.option("--shapes", default="all", show_default=True, metavar="lenet|vgg|alexnet|all",
              help="Convolution shape groups (or shape names), comma-separated.")
@click.option("--model", type=click.Choice(["lenet5"]), default=None,
              help="Time whole-model training (images/s through train_on_batch) and predict instead of ops.")
@click.option("--batch", "batch_text", default="64,256", show_default=True,
              help="Batch sizes for --model, comma-separated.")
@click.option("--startup", is_flag=True, help="Time start-up (cold and warm kernel cache) in fresh processes.")
@click.option("--memory", is_flag=True, help="Peak memory of LeNet-5 training in fresh processes.")
@click.option("--blas-threads", is_flag=True,
              help="Time a GEMM-then-Numba workload under several import orders, in fresh processes.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--compare", type=click.Choice(["torch", "auto", "none"]), default="none", show_default=True,
              help="Time PyTorch side by side in the same process (needs torch installed).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="Threads for nbcnn and for PyTorch.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--quick", is_flag=True, help="Fewer, shorter rounds (noisier numbers).")
@click.option("--rounds", type=click.IntRange(min=1), default=None, help="Alternating rounds per case.")
@click.option("--passes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Ops/--model: repeat the whole run and pool the passes (each pass's ratio is shown).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full report (all timings, environment) as JSON.")
@click.option("--markdown", is_flag=True, help="Print the table as Markdown.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines (they go to stderr on a terminal).")
@common.verbose_option
def bench(op, shapes, model, batch_text, startup, memory, blas_threads, device, compare, threads, dtype, quick,
          rounds, passes, json_path, markdown, quiet):
    """Time nbcnn's convolution and pooling ops, or LeNet-5 training, optionally against PyTorch.

    Each case runs in alternating rounds (ours, torch, torch, ours, ...) in one
    process; times are medians of per-round minima and ratios are ours/torch
    time (< 1 means nbcnn is faster). With --model the table shows images/s
    and the speed-up (> 1 means nbcnn is faster).
    """
    from nbcnn import bench as nb

    if sum(bool(v) for v in (model, startup, memory, blas_threads)) > 1:
        raise common.UserError("choose one of --model, --startup, --memory and --blas-threads")
    if device == "cuda":
        import nbcnn

        ok, why = nbcnn.gpu_status()
        if not ok and not nbcnn.device.cuda_simulator_enabled():
            raise common.UserError(f"--device cuda: no usable GPU ({why})")
    if compare == "torch" and not nb.torch_available():
        raise common.UserError("--compare torch needs PyTorch, which is not installed here "
                               "(pip install torch; nbcnn itself does not need it)")
    show = (not quiet) and common.stderr_is_tty()
    progress = (lambda msg: click.echo(msg, err=True)) if show else None
    cmp = None if compare == "none" else compare
    try:
        if startup:
            report = nb.run_startup(threads=threads, progress=progress)
        elif memory:
            report = nb.run_memory(steps=10 if quick else 30, threads=threads, compare=cmp, progress=progress)
        elif blas_threads:
            report = nb.run_threads(seconds=1.0 if quick else 2.0, passes=1 if quick else 2, threads=threads,
                                    progress=progress)
        else:
            reports = []
            for i in range(passes):
                if passes > 1 and progress:
                    progress(f"pass {i + 1} of {passes}")
                if model:
                    reports.append(nb.run_train(batches=_batches(batch_text), device=device, compare=cmp,
                                                threads=threads, quick=quick, rounds=rounds, progress=progress))
                else:
                    reports.append(nb.run_ops(op, [s.strip() for s in shapes.split(",") if s.strip()], device,
                                              cmp, threads, dtype, quick, rounds, progress=progress))
            report = nb.merge_passes(reports) if passes > 1 else reports[0]
    except nb.BenchError as exc:
        raise common.UserError(str(exc)) from exc
    if json_path is not None:
        common.write_json(json_path, report)
    common.echo(nb.format_report(report, markdown))
    if json_path is not None:
        common.notice(f"report written to {json_path}")
