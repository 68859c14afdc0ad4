"""Input checks shared by every op, and the choice of kernel backend."""
from __future__ import annotations

import numpy as np

from ..device import cuda_simulator_enabled, get_device, is_gpu_array


def check_float(a, name: str):
    """Accept NumPy/CuPy float32/float64 arrays (lists become NumPy); reject other dtypes."""
    if not (isinstance(a, np.ndarray) or is_gpu_array(a)):
        if hasattr(a, "__array__") or isinstance(a, (list, tuple)):
            a = np.asarray(a)
        else:
            raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    dt = a.dtype
    if dt.kind != "f" or dt.itemsize not in (4, 8):
        raise TypeError(f"{name} must be float32 or float64, got dtype {dt} (shape {tuple(a.shape)})")
    return a


def check_ndim(a, ndim: int, name: str, layout: str):
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(a.shape)}")
    return a


def array_module(a):
    """numpy or cupy, whichever ``a`` belongs to."""
    if is_gpu_array(a):
        import cupy

        return cupy
    return np


def contiguous(a):
    if a.flags.c_contiguous:
        return a
    if is_gpu_array(a):
        import cupy

        return cupy.ascontiguousarray(a)
    return np.ascontiguousarray(a)


def backend_for(*arrays):
    """The kernel module for these arrays: all CuPy -> CUDA, all NumPy -> CPU (or CUDA on a simulated GPU)."""
    present = [a for a in arrays if a is not None]
    on_gpu = [is_gpu_array(a) for a in present]
    if any(on_gpu) and not all(on_gpu):
        kinds = ", ".join(f"{type(a).__module__.split('.')[0]}{tuple(a.shape)}" for a in present)
        raise ValueError(f"mixed devices: all arrays of one op must live on the same device, got {kinds}; "
                         "use nbcnn.to_device() first")
    if any(on_gpu):
        devs = {int(a.device.id) for a in present}
        if len(devs) > 1:
            raise ValueError(f"mixed devices: arrays on GPUs {sorted(devs)}")
        from ..kernels import cuda as backend

        return backend
    if cuda_simulator_enabled() and get_device().kind == "cuda":
        from ..kernels import cuda as backend

        return backend
    from ..kernels import cpu as backend

    return backend
