"""The sections of ``benchmarks/gpu_check.py`` that are about the CUDA kernels themselves.

* :mod:`context` -- the run's state (simulator or GPU, array module, results, time budget).
* :mod:`kernels` -- versions, first-call (compile) time of every kernel, launch overhead.
* :mod:`correctness` -- every op and backward on the GPU against the CPU kernels, outputs poisoned.
* :mod:`summary` -- the closing table.

Speed and LeNet-5 training are not here: they are :func:`nbcnn.bench.run_ops` and
:func:`nbcnn.bench.run_train` with ``device="cuda"``, the same harness as on the CPU.
"""
