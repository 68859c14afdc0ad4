"""How the CUDA kernels are launched, on a real GPU and under the Numba CUDA simulator.

Every kernel in this package loops grid-stride over its output in all grid
dimensions (threads along x over pixels, blocks along y/z over channels or
images), so one kernel works for any grid size. That lets the two worlds
differ only in the grid:

* **GPU**: CuPy arrays, ``TPB`` threads per block and enough blocks to cover
  the work (capped; the loop does the rest). Kernels run on CuPy's current
  stream, and CuPy arrays are handed to Numba through a view of their
  ``__cuda_array_interface__`` *without* a stream: when the interface names a
  stream Numba synchronises the host with it on every launch, which would
  serialise the whole training step. Ordering is already guaranteed because
  CuPy's GEMMs and our kernels share one stream.
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
        conv = []
        for a in args:
            if is_gpu_array(a):
                if dev is None:
                    dev = a.device.id
                conv.append(_Ref(a))
            else:
                conv.append(a)
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
        if dev:  # arrays on a GPU other than 0: launch in that device's context
            with cuda.gpus[dev]:
                cfg(*conv)
        else:
            cfg(*conv)


def kernel(signature):
    """Decorator: compile ``fn`` with ``@cuda.jit(cache=True)`` and register it (see :class:`Kernel`)."""
    def wrap(fn):
        return Kernel(fn, signature)

    return wrap
