"""One-command GPU check of nbcnn's CUDA kernels: correct, fast, trains. A few minutes on an H100.

    python benchmarks/gpu_check.py                 # on a machine with an NVIDIA GPU, CuPy, numba-cuda
    python benchmarks/gpu_check.py --json out.json # also write every number as JSON
    python benchmarks/gpu_check.py --simulate      # rehearse the script under the CUDA simulator (no GPU)

Sections (each guarded: a failure is reported, the rest still runs):
  0. versions: driver/runtime, CuPy, numba-cuda, the PTX ISA its NVVM emits, nbcnn's GPU status;
     first-call time of every kernel (float32 + float64: NVVM compile + load).      gpucheck/kernels.py
  1. launch overhead of one small kernel: nbcnn's launcher vs plain Numba launches.  gpucheck/kernels.py
  2. correctness: every op and backward on fresh random shapes/data, CUDA vs the CPU kernels,
     outputs allocated poisoned (NaN); determinism.                                  gpucheck/correctness.py
  3. speed: every op of nbcnn.bench.OPS on its shapes, side by side with PyTorch/cuDNN when
     importable (TF32 off: fp32 vs fp32).                           nbcnn.bench.run_ops(device="cuda")
  4. LeNet-5 training and predict images/s, vs the same net in PyTorch; losses of --steps
     training steps must stay finite.                             nbcnn.bench.run_train(device="cuda")
  4b. data-parallel training's NCCL path on a one-rank communicator: allReduce on device
     buffers, fit(distributed=) equal to a plain fit.                                 gpucheck/nccl.py
  5. with --pytest: tests/cuda on the GPU (CuPy arrays, NUMBA_ENABLE_CUDASIM=0), in a subprocess.
  6. one short table (Markdown).                                                     gpucheck/summary.py

On a GPU machine use its preinstalled numba, numba-cuda and cupy (run from the checkout; this
script puts the checkout first on sys.path, nothing to install); newer NVVM wheels may emit a
PTX ISA the driver cannot load (section 0 prints both). One call does it all:

    python benchmarks/gpu_check.py --pytest --json $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]


def _args():
    ap = argparse.ArgumentParser(description="nbcnn GPU check: CUDA kernels correct, fast, training")
    ap.add_argument("--simulate", action="store_true",
                    help="run under the Numba CUDA simulator on tiny shapes (rehearsal without a GPU)")
    ap.add_argument("--steps", type=int, default=300, help="LeNet-5 training steps of the loss check (default 300)")
    ap.add_argument("--batch", type=int, default=64, help="LeNet-5 batch size (default 64)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    ap.add_argument("--budget", type=float, default=170.0, help="seconds; later sections are cut short past it")
    ap.add_argument("--json", type=Path, help="write all results to this JSON file")
    ap.add_argument("--pytest", action="store_true",
                    help="finally run tests/cuda on the GPU (NUMBA_ENABLE_CUDASIM=0) in a subprocess")
    return ap.parse_args()


ARGS = _args()
os.environ["NUMBA_ENABLE_CUDASIM"] = "1" if ARGS.simulate else "0"  # before numba loads

import nbcnn  # noqa: E402  (first: it sets the BLAS thread policy before numpy loads)
import numpy as np  # noqa: E402
from nbcnn import bench  # noqa: E402

from gpucheck import correctness, kernels, nccl, summary  # noqa: E402
from gpucheck.context import Check, StopCheck  # noqa: E402


def _compare(ck):
    if ARGS.no_torch or ck.sim or not bench.torch_available():
        return None
    import torch

    if not torch.cuda.is_available():
        print("torch is importable but sees no GPU: nbcnn times only")
        return None
    return "torch"


def speed(ck):
    """Section 3: the CPU harness's op table, on the GPU."""
    kw = dict(shapes=[bench.TINY_CONV], op_shapes={n: (1, 2, 4, 4) for n, s in bench.OPS.items() if not s.conv_shapes}, rounds=1,
              round_s=0.0) if ck.sim else dict(shapes="all", quick=True)
    rep = bench.run_ops("all", device="cuda", compare=_compare(ck), progress=print, **kw)
    ck.results["speed"] = rep
    return rep


def train_lenet(ck):
    """Section 4: LeNet-5 images/s through the public model API, then a finite-loss run."""
    batch = 4 if ck.sim else ARGS.batch
    kw = dict(variants=(("relu", "max"),), rounds=1, round_s=0.0) if ck.sim else dict(quick=True)
    ck.results["lenet"] = bench.run_train(batches=(batch,), predict_batch=batch, device="cuda",
                                          compare=_compare(ck), progress=print, **kw)
    rng = np.random.default_rng(2)
    with nbcnn.using_device("cuda"):
        model = bench.nbcnn_lenet("tanh", "avg", device="cuda")
        x, y = (ck.to_dev(a) for a in bench.lenet_data(8 * batch, rng))
        steps = 3 if ck.sim else ARGS.steps
        losses = [float(model.train_on_batch(x[(i % 8) * batch:(i % 8 + 1) * batch],
                                             y[(i % 8) * batch:(i % 8 + 1) * batch])) for i in range(steps)]
    ck.results["lenet_losses"] = losses[:: max(1, steps // 20)]
    ck.results["lenet_losses_finite"] = bool(np.all(np.isfinite(losses)))
    print(f"{steps} steps: loss {losses[0]:.3f} -> {losses[-1]:.3f} (random labels: ~2.30 expected), "
          f"finite {ck.results['lenet_losses_finite']}")
    if not ck.results["lenet_losses_finite"]:
        raise RuntimeError("LeNet-5 training on the GPU produced a non-finite loss")


def pytest_on_gpu(ck):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    left = max(ARGS.budget + 60 - ck.elapsed(), 30)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "tests/cuda"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=left)
    tail = (res.stdout + res.stderr).strip().splitlines()[-15:]
    print("\n".join(tail))
    ck.results["pytest_gpu"] = {"rc": res.returncode, "tail": tail[-1] if tail else ""}
    if res.returncode != 0:
        raise RuntimeError(f"tests/cuda failed on the GPU: {tail[-1] if tail else res.returncode}")


def finish(ck, code: int) -> None:
    summary.summary(ck)
    if ARGS.json:
        bench.write_json(str(ARGS.json), ck.results)
    sys.exit(code)


def main() -> None:
    try:
        ck = Check(ARGS.simulate, ARGS.budget)
    except ImportError as exc:
        print(f"CuPy is not importable ({type(exc).__name__}: {exc}); install nbcnn[cuda13] or run --simulate")
        sys.exit(2)
    try:
        ck.section("0 versions", kernels.versions)
        ck.section("1 launch overhead", kernels.launch_overhead)
        ck.section("2 correctness", correctness.correctness)
        if not ck.over_budget(0.5):
            ck.section("3 speed", speed)
        if not ck.over_budget(0.85):
            ck.section("4 LeNet-5 training", train_lenet)
        if not ck.over_budget(0.9):
            ck.section("4b data-parallel NCCL path (K = 1)", nccl.nccl_check)
        if ARGS.pytest and not ck.sim:
            ck.section("5 pytest tests/cuda on the GPU", pytest_on_gpu)
    except StopCheck as exc:
        print(exc)
        finish(ck, 2)
    failed = any(not s["ok"] for s in ck.results["sections"].values()) or \
        any(not c["ok"] for c in ck.results.get("correctness", []))
    finish(ck, 1 if failed else 0)


if __name__ == "__main__":
    main()
