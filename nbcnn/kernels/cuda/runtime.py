"""How the CUDA kernels are launched, on a real GPU and under the Numba CUDA simulator.

Every kernel in this package loops grid-stride over its output in all grid
dimensions (threads along x over pixels, blocks along y/z over channels or
images), so one kernel works for any grid size. That lets the two worlds
differ only in the grid:

* **GPU**: CuPy arrays, ``TPB`` threads per block and enough blocks to cover
  the work (capped; the loop does the rest). Kernels run on CuPy's current
  stream, so they are ordered with CuPy's GEMMs without any host sync. CuPy
  arrays reach Numba as light device-array stand-ins (:class:`_FastRef`), or,
  with another numba-cuda, through their ``__cuda_array_interface__`` with the
  stream removed (:class:`_Ref`): when the interface names a stream, Numba
  synchronises the host with it on every launch, which would serialise the
  whole training step.
* **Simulator** (``NUMBA_ENABLE_CUDASIM=1``): NumPy arrays and a tiny grid
  (at most ``SIM_BLOCKS`` blocks per dimension of ``SIM_TPB`` threads), because
  the simulator spends ~1 ms per simulated thread; two blocks per dimension so
  that the block-index arithmetic and every grid-stride loop are exercised.

:data:`launches` counts launches per kernel (tests use it to prove the CUDA
path ran); :data:`KERNELS` lists every kernel with a signature builder so the
PTX compile check can compile each one for float32 and float64.
"""
from __future__ import annotations

import collections
import os
import warnings

import numba
import numpy as np
from numba import cuda, types

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)

TPB = 256            # threads per block on a GPU (a multiple of the warp size)
MAX_BLOCKS = 8192    # grid-stride loops cover the rest; ~4 waves on an H100
MAX_GRID_YZ = 65535  # CUDA's limit on gridDim.y and gridDim.z
SIM_TPB = 8          # simulator: <= 2 blocks per grid dimension of 8 threads each
SIM_BLOCKS = 2

launches: collections.Counter = collections.Counter()
KERNELS: list["Kernel"] = []


def is_gpu_array(a) -> bool:
    return type(a).__module__.split(".", 1)[0] == "cupy"


def xp_of(a):
    """The array module of ``a``: cupy for CuPy arrays, else numpy (also under the simulator)."""
    if is_gpu_array(a):
        import cupy

        return cupy
    return np


# -- signature helpers for the PTX compile check ------------------------------------------
I64 = types.int64


def arr(dtype, ndim: int):
    """The Numba type of a C-contiguous array, as CuPy/NumPy contiguous arrays are typed."""
    return types.Array(dtype, ndim, "C")


class _Ref:
    """A CuPy array as seen by Numba: its interface with ``stream`` = None (no per-launch sync)."""

    __slots__ = ("__cuda_array_interface__", "owner")

    def __init__(self, a):
        cai = dict(a.__cuda_array_interface__)
        cai["stream"] = None
        self.__cuda_array_interface__ = cai
        self.owner = a  # keeps the memory alive until the launch is queued


class _FastRef:
    """A CuPy array presented to Numba the way its own device arrays are (numba-cuda >= 0.30).

    Numba types a device array from ``_numba_type_`` and builds the kernel parameters from
    ``_strided_memory_view_shim`` (pointer, shape, strides, size): no interface dict, no
    DLPack capsule, no memory-view object per argument and launch. The fields are exactly
    those of Numba's DeviceNDArray shim. If this Numba lacks that protocol, or a launch
    through it raises, :class:`_Ref` takes over for the rest of the process.
    """

    __slots__ = ("_numba_type_", "_strided_memory_view_shim", "owner")
    __cuda_memory__ = True

    def __init__(self, a):
        c = a.flags.c_contiguous
        f = a.flags.f_contiguous
        self._numba_type_ = _array_type(a.dtype, a.ndim, "C" if c else "A")
        self._strided_memory_view_shim = _SMVShim(
            ptr=a.data.ptr, shape=a.shape, dtype=a.dtype, size=a.size,
            _layout=_LayoutShim(strides_in_bytes=a.strides, is_contiguous_c=c, is_contiguous_f=f,
                                is_contiguous_any=c or f))
        self.owner = a


_array_types: dict = {}


def _array_type(dtype, ndim, layout):
    key = (dtype, ndim, layout)
    t = _array_types.get(key)
    if t is None:
        from numba.np import numpy_support

        t = _array_types[key] = types.Array(numpy_support.from_dtype(dtype), ndim, layout)
    return t


try:  # the device-array protocol of numba-cuda 0.30 (numba.cuda.cudadrv.devicearray)
    from numba.cuda.cudadrv.devicearray import _StridedLayoutShim as _LayoutShim
    from numba.cuda.cudadrv.devicearray import _StridedMemoryViewShim as _SMVShim

    _HAVE_SHIMS = True
except Exception:  # another numba-cuda: the array-interface path
    _HAVE_SHIMS = False
_fast_args = [_HAVE_SHIMS and os.environ.get("NBCNN_CUDA_FAST_ARGS", "1") != "0"]


_streams: dict = {}
_configs: dict = {}


def _current_stream():
    """CuPy's current stream as something Numba launches on (0 = the legacy default stream)."""
    import cupy

    ptr = cupy.cuda.get_current_stream().ptr
    if ptr == 0:
        return 0, 0
    st = _streams.get(ptr)
    if st is None:
        st = _streams[ptr] = cuda.external_stream(ptr)
    return ptr, st


class Kernel:
    """A ``@cuda.jit`` kernel, its launch policy and its signature builder.

    ``signature(f)`` returns the argument types for float type ``f`` (float32 or
    float64), used only by the PTX compile check (kernels compile lazily).
    """

    def __init__(self, fn, signature):
        self.name = fn.__name__
        self.py_func = fn
        self.signature = signature
        self.jit = cuda.jit(cache=True)(fn)
        KERNELS.append(self)

    def grid3(self, nx: int, ny: int, nz: int, *args):
        """Launch a 3-D grid: threads along x cover ``nx`` items, blocks along y and z cover ``ny``, ``nz``.

        For kernels that loop over y and z by block index (grid-stride in all three), so the
        per-element index arithmetic is one division instead of five. Blocks are as narrow as
        ``nx`` allows (a multiple of the warp size, at most TPB).
        """
        tpb = min(TPB, max(32, -(-nx // 32) * 32))
        bx = min(max(-(-nx // tpb), 1), MAX_BLOCKS)
        self.launch((bx, min(max(ny, 1), MAX_GRID_YZ), min(max(nz, 1), MAX_GRID_YZ)), tpb, *args)

    def launch(self, blocks, tpb: int, *args):
        """Launch with an explicit grid (an int or a 3-tuple; shrunk to a tiny grid under the simulator)."""
        launches[self.name] += 1
        if SIMULATOR:
            sim = (min(blocks, SIM_BLOCKS) if isinstance(blocks, int)
                   else tuple(min(b, SIM_BLOCKS) for b in blocks))
            self.jit[sim, min(tpb, SIM_TPB)](*args)
            return
        dev = None
        for a in args:
            if is_gpu_array(a):
                dev = a.device.id
                break
        fast = _fast_args[0]
        conv = [(_FastRef(a) if fast else _Ref(a)) if is_gpu_array(a) else a for a in args]
        ptr, stream = _current_stream()
        key = (blocks, tpb, ptr)
        cfg = _configs.get((self.name, key))
        if cfg is None:
            with warnings.catch_warnings():  # small grids on purpose (tiny layers): no occupancy warning
                warnings.simplefilter("ignore")
                cfg = self.jit[blocks, tpb, stream]
            if len(_configs) > 4096:  # many distinct shapes (e.g. variable image sizes): start over
                _configs.clear()
            _configs[(self.name, key)] = cfg
        try:
            if dev:  # arrays on a GPU other than 0: launch in that device's context
                with cuda.gpus[dev]:
                    cfg(*conv)
            else:
                cfg(*conv)
        except (AttributeError, TypeError, NotImplementedError, KeyError) as exc:
            if not fast:
                raise
            # this numba-cuda does not take the device-array protocol: fall back for good
            # (such a failure happens while preparing arguments, before anything is launched)
            _fast_args[0] = False
            warnings.warn(f"nbcnn: passing CuPy arrays as Numba device arrays failed ({type(exc).__name__}: "
                          f"{exc}); using the CUDA array interface from now on", RuntimeWarning, stacklevel=2)
            launches[self.name] -= 1
            self.launch(blocks, tpb, *args)


def fast_args(enabled: bool | None = None) -> bool:
    """Query or set whether CuPy arrays go to Numba through the device-array protocol (see _FastRef).

    ``NBCNN_CUDA_FAST_ARGS=0`` turns it off at start-up; it is always off when this numba-cuda
    lacks the protocol.
    """
    if enabled is not None:
        _fast_args[0] = bool(enabled) and _HAVE_SHIMS
    return _fast_args[0]


def kernel(signature):
    """Decorator: compile ``fn`` with ``@cuda.jit(cache=True)`` and register it (see :class:`Kernel`)."""
    def wrap(fn):
        return Kernel(fn, signature)

    return wrap
