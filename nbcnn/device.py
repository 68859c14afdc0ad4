"""Devices: where arrays live and which kernels run on them.

A :class:`Device` is ``cpu`` (NumPy arrays, Numba CPU kernels) or ``cuda:N``
(CuPy arrays, Numba CUDA kernels). Under the Numba CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) a ``cuda`` device is *simulated*: its arrays are
NumPy arrays and the ops run the CUDA kernels through the simulator, which is
how CI exercises the GPU code without a GPU.

Detection never imports CuPy or ``numba.cuda`` at ``import nbcnn`` time, and
never raises: every failure mode (no CuPy, no driver, no GPU, numba-cuda
without a CUDA runtime) becomes a reason string.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os

import numpy as np

__all__ = [
    "Device", "DeviceError", "get_device", "using_device", "to_device", "to_numpy",
    "gpu_status", "cuda_simulator_enabled", "is_gpu_array", "array_device",
]


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot provide."""


@functools.lru_cache(maxsize=None)
def cuda_simulator_enabled() -> bool:
    """True when Numba's CUDA simulator is on.

    Numba reads NUMBA_ENABLE_CUDASIM once, when it is first imported, so the
    answer cannot change within a process: cached, since every op asks.
    """
    import numba

    return bool(numba.config.ENABLE_CUDASIM)


@functools.lru_cache(maxsize=None)
def gpu_status() -> tuple[bool, str]:
    """``(usable, reason)`` for a real CUDA GPU; cached, never raises, never hangs.

    ``numba.cuda.is_available()`` alone is not enough: it is True under the
    simulator, and plain numba-cuda without a CUDA runtime crashes on import
    with a RuntimeError (not ImportError). So: simulator off, CuPy importable
    and seeing a device, then numba.cuda importable and available.
    """
    if cuda_simulator_enabled():
        return False, "the Numba CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1): no real GPU is used"
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken install
        return False, f"CuPy is not installed ({type(exc).__name__}); install nbcnn[cuda13] or nbcnn[cuda12]"
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # CUDARuntimeError without a driver
        return False, f"CuPy cannot reach a GPU: {_one_line(exc)}"
    if count < 1:
        return False, "the CUDA driver reports no GPU"
    try:
        from numba import cuda
    except Exception as exc:  # DynamicLibNotFoundError is a RuntimeError
        return False, f"numba.cuda cannot be imported: {_one_line(exc)}"
    try:
        if not cuda.is_available():
            return False, f"numba.cuda sees no GPU: {_one_line(cuda.cuda_error())}"
    except Exception as exc:
        return False, f"numba.cuda failed: {_one_line(exc)}"
    return True, f"{count} CUDA GPU(s) visible"


def _one_line(obj) -> str:
    return " ".join(str(obj).split())[:300]


def _gpu_count() -> int:
    import cupy

    return int(cupy.cuda.runtime.getDeviceCount())


class Device:
    """A compute device: ``Device("cpu")``, ``Device("cuda")``, ``Device("cuda:1")``."""

    __slots__ = ("kind", "index")

    def __init__(self, kind: str = "cpu", index: int = 0):
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device kind must be 'cpu' or 'cuda', got {kind!r}")
        self.kind = kind
        self.index = int(index) if kind == "cuda" else 0

    @property
    def simulated(self) -> bool:
        """A ``cuda`` device backed by the Numba CUDA simulator (NumPy arrays)."""
        return self.kind == "cuda" and cuda_simulator_enabled()

    @property
    def xp(self):
        """The array module of this device: numpy, or cupy on a real GPU."""
        if self.kind == "cpu" or self.simulated:
            return np
        import cupy

        return cupy

    def __repr__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        if isinstance(other, str):
            try:
                other = parse_device(other)
            except (ValueError, DeviceError):
                return False
        return isinstance(other, Device) and (self.kind, self.index) == (other.kind, other.index)

    def __hash__(self) -> int:
        return hash((self.kind, self.index))

    @contextlib.contextmanager
    def activate(self):
        """Make this device current (and, on a real GPU, CuPy's current device)."""
        token = _current.set(self)
        try:
            if self.kind == "cuda" and not self.simulated:
                import cupy

                with cupy.cuda.Device(self.index):
                    yield self
            else:
                yield self
        finally:
            _current.reset(token)


def parse_device(spec) -> Device:
    """Turn ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"gpu"``, ``"auto"`` or a Device into a usable Device.

    Raises DeviceError (with the reason) for a GPU that is not usable.
    """
    if isinstance(spec, Device):
        dev = spec
    elif spec is None:
        return get_device()
    elif isinstance(spec, str):
        s = spec.strip().lower()
        if s == "auto":
            return Device("cuda", 0) if gpu_status()[0] else Device("cpu")
        if s == "cpu":
            return Device("cpu")
        if s in ("cuda", "gpu"):
            dev = Device("cuda", 0)
        elif s.startswith(("cuda:", "gpu:")) and s.split(":", 1)[1].isdigit():
            dev = Device("cuda", int(s.split(":", 1)[1]))
        else:
            raise ValueError(f"unknown device {spec!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'")
    else:
        raise TypeError(f"device must be a string or nbcnn.Device, got {type(spec).__name__}")
    if dev.kind == "cuda" and not dev.simulated:
        ok, why = gpu_status()
        if not ok:
            raise DeviceError(f"device {dev} is not usable: {why}")
        if dev.index >= _gpu_count():
            raise DeviceError(f"device {dev} does not exist: {_gpu_count()} GPU(s) visible")
    return dev


_current: contextvars.ContextVar[Device | None] = contextvars.ContextVar("nbcnn_device", default=None)
_default: list[Device] = []


def get_device() -> Device:
    """The current device: the innermost ``using_device``, else ``$NBCNN_DEVICE``, else ``auto``."""
    dev = _current.get()
    if dev is not None:
        return dev
    if not _default:
        _default.append(parse_device(os.environ.get("NBCNN_DEVICE", "auto") or "auto"))
    return _default[0]


@contextlib.contextmanager
def using_device(name):
    """Context manager: run the ops and allocate arrays on ``name`` inside the block."""
    dev = parse_device(name)
    with dev.activate():
        yield dev


def is_gpu_array(a) -> bool:
    """True for a CuPy array (checked without importing CuPy)."""
    return type(a).__module__.split(".", 1)[0] == "cupy"


def array_device(a) -> Device:
    """The device an array lives on."""
    if is_gpu_array(a):
        return Device("cuda", int(a.device.id))
    return Device("cpu")


def to_numpy(array) -> np.ndarray:
    """A NumPy copy (GPU) or view (CPU) of ``array``."""
    if is_gpu_array(array):
        return array.get()
    return np.asarray(array)


def to_device(array, device=None):
    """Move ``array`` to ``device`` (default: the current device).

    On a simulated CUDA device the result stays a NumPy array.
    """
    dev = parse_device(device) if device is not None else get_device()
    if dev.kind == "cpu" or dev.simulated:
        return to_numpy(array)
    import cupy

    with cupy.cuda.Device(dev.index):
        return cupy.asarray(array)
