"""nbcnn: train small convolutional networks without PyTorch.

Numba kernels (CPU ``@njit(parallel=True)``, GPU ``@cuda.jit``) over NumPy or
CuPy arrays, a Keras-like Sequential API, a model zoo and a Click CLI.
``import nbcnn`` stays cheap: CuPy, ``numba.cuda`` and the model stack load on
first use.
"""
from __future__ import annotations

from . import _memory, _threads

_threads.configure_before_numpy()  # must run before numpy is imported
_memory.tune_malloc()

import importlib  # noqa: E402

from .device import (  # noqa: E402
    Device, DeviceError, get_device, gpu_status, to_device, to_numpy, using_device,
)

_threads.configure_after_numpy()

__version__ = "0.1.0"

# Public names that live in heavier modules, imported on first access.
_LAZY = {
    "ops": ("nbcnn.ops", None),
    "layers": ("nbcnn.layers", None),
    "optim": ("nbcnn.optim", None),
    "losses": ("nbcnn.losses", None),
    "zoo": ("nbcnn.zoo", None),
    "datasets": ("nbcnn.datasets", None),
    "callbacks": ("nbcnn.callbacks", None),
    "initializers": ("nbcnn.initializers", None),
    "transfer": ("nbcnn.transfer", None),
    "augment": ("nbcnn.augment", None),
    "visualize": ("nbcnn.visualize", None),
    "Sequential": ("nbcnn.models", "Sequential"),
    "History": ("nbcnn.models", "History"),
    "Model": ("nbcnn.models", "Model"),
    "Input": ("nbcnn.symbolic", "Input"),
    "load_model": ("nbcnn.models", "load_model"),
    "load_onnx": ("nbcnn.onnx_import", "load_onnx"),
    "export_onnx": ("nbcnn.onnx_export", "export_onnx"),
    "seed": ("nbcnn.random", "seed"),
}

__all__ = [
    "Device", "DeviceError", "get_device", "gpu_status", "to_device", "to_numpy", "using_device",
    "__version__", *_LAZY,
]


def __getattr__(name):
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'nbcnn' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
