"""Benchmark harness: nbcnn's ops and LeNet-5 training, side by side with PyTorch.

Used by ``nbcnn bench`` (the only command line) and by the scripts in
``benchmarks/``; ``import nbcnn`` never imports it. PyTorch is optional and
imported only when a comparison is asked for.

Modules:

* :mod:`~nbcnn.bench.shapes` -- the benchmark shapes (conv layers of LeNet-5, VGG,
  AlexNet; the NCHW input of other ops) and the model speed targets.
* :mod:`~nbcnn.bench.timing` -- :func:`interleave`, the one timing loop.
* :mod:`~nbcnn.bench.runners` -- the op table :data:`OPS` and its case builders,
  :func:`run_ops`, LeNet-5 training/predict (:func:`run_train`), :func:`merge_passes`.
* :mod:`~nbcnn.bench.peers` -- PyTorch: availability, threads, the same LeNet-5.
* :mod:`~nbcnn.bench.processes` -- fresh-process benchmarks: start-up, memory, BLAS threads.
* :mod:`~nbcnn.bench.environment` -- versions, CPU model, load (recorded with every report).
* :mod:`~nbcnn.bench.report` -- tables as text or Markdown, the JSON file.

How the numbers are made: both libraries run in one process, in alternating
rounds (ours then torch, then torch then ours, ...); times are medians over
rounds of per-round minima and a ratio nbcnn/torch is the median of the
per-round ratios (see :mod:`~nbcnn.bench.timing`). Thread counts are pinned on
both sides (``torch.set_num_threads(n)``, ``numba.set_num_threads(n)``; default
2). ``device="cuda"`` times CuPy arrays and torch CUDA tensors with a device
synchronisation after every call (TF32 off in torch: fp32 against fp32).

Adding an op benchmark (it then appears in ``nbcnn bench --op NAME`` and in
``--op all``, with PyTorch side by side and an accuracy check):

1. In :mod:`~nbcnn.bench.runners`, write a builder
   ``build(shape, mode, dev, torch, dtype, rng) -> Case``: make the inputs with
   ``rng`` as NumPy arrays, put them on the device with ``_pair(dev, torch, ...)``,
   return ``Case({"nbcnn": dev.bind(ours)}, None, label, flops)`` and, when
   ``torch`` is not None, add ``variants["torch"]`` (``_torch_fwd_fn`` /
   ``_torch_grad_fn`` do the usual forward and forward+backward) and
   ``check = _make_check(dev, ours, torch_fn, output_names)``.
2. Add one entry to :data:`OPS`:
   ``"batch_norm": OpBench(batch_norm_case, shape=(32, 64, 32, 32), target={"fwd+bwd": 1.0})``.

``tests/test_bench.py`` runs every entry of :data:`OPS` on a tiny shape.
"""
from __future__ import annotations

from .environment import busy_fraction, environment, wait_for_quiet
from .peers import BenchError, torch_available
from .processes import THREAD_CONFIGS, run_memory, run_startup, run_threads
from .report import format_report, format_table, write_json
from .runners import (LENET_VARIANTS, MODES, OPS, Case, Device, OpBench, lenet_data, merge_passes,
                      nbcnn_lenet, op_choices, rel_err, run_ops, run_train)
from .shapes import CONV_SHAPES, POOL_SHAPE, SHAPE_GROUPS, TINY_CONV, ConvShape, select_shapes
from .timing import interleave, median

__all__ = [
    "BenchError", "Case", "ConvShape", "CONV_SHAPES", "Device", "LENET_VARIANTS", "MODES", "OPS", "OpBench",
    "POOL_SHAPE", "SHAPE_GROUPS", "THREAD_CONFIGS", "TINY_CONV", "busy_fraction", "environment",
    "format_report", "format_table", "interleave", "lenet_data", "median", "merge_passes", "nbcnn_lenet",
    "op_choices", "rel_err", "run_memory", "run_ops", "run_startup", "run_threads", "run_train",
    "select_shapes", "torch_available", "wait_for_quiet", "write_json",
]
