"""PyTorch, the library nbcnn is compared with: found, imported and configured here only.

PyTorch is optional and imported lazily, only when a comparison is asked for,
so the harness works on an install without it. This module imports nothing
but the standard library at the top, so a fresh process can load it by path
(``runpy``/``importlib``) without importing nbcnn (the memory benchmark's
PyTorch child must not pay for Numba).
"""
from __future__ import annotations

import importlib.util


class BenchError(RuntimeError):
    """A benchmark cannot run as asked (no PyTorch for --compare torch, no GPU, no model zoo)."""


def torch_available() -> bool:
    """True when PyTorch can be imported (checked without importing it)."""
    return importlib.util.find_spec("torch") is not None


def resolve_compare(compare) -> str | None:
    """``"torch"`` or None from a user's ``compare`` (``torch``, ``auto``, ``none``/None)."""
    if compare in (None, False, "none", ""):
        return None
    if compare == "auto":
        return "torch" if torch_available() else None
    if compare in ("torch", True):
        if not torch_available():
            raise BenchError("--compare torch needs PyTorch, which is not importable here "
                             "(pip install torch; it is not an nbcnn dependency)")
        return "torch"
    raise ValueError(f"compare must be 'torch', 'auto' or None, got {compare!r}")


def import_torch(threads: int, device: str = "cpu"):
    """torch with ``threads`` intra-op threads; on CUDA cuDNN autotuning on and TF32 off (fp32 vs fp32)."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set or inter-op work already started
        pass
    if device == "cuda":
        if not torch.cuda.is_available():
            raise BenchError("torch has no CUDA here: cannot compare on the GPU (run without --compare)")
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False  # CuPy's cuBLAS does not use TF32 either
        torch.backends.cuda.matmul.allow_tf32 = False
    return torch


def torch_lenet(torch, activation: str = "relu", pooling: str = "max"):
    """nbcnn's zoo LeNet-5 in PyTorch: conv 6@5x5 p2, pool, conv 16@5x5, pool, 120, 84, 10."""
    nn = torch.nn
    act = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}[activation]
    pool = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}[pooling]
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), act(), pool(2),
        nn.Conv2d(6, 16, 5), act(), pool(2),
        nn.Flatten(),
        nn.Linear(400, 120), act(),
        nn.Linear(120, 84), act(),
        nn.Linear(84, 10),
    )


def torch_sgd_step(torch, model, x, y, lr: float = 0.01, momentum: float = 0.9):
    """A zero-argument training step (forward, cross-entropy, backward, SGD) of ``model`` on one batch."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    F = torch.nn.functional

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step
