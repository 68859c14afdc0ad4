"""The GPU branch of the launcher (runtime.Kernel.launch) with stand-ins for CuPy and Numba.

The simulator never takes this branch, so these tests drive it with fake CuPy arrays and a
fake compiled kernel: which objects reach Numba, the one-time fallback from device-array
stand-ins to the array interface, and that real errors are not swallowed.
"""
from __future__ import annotations

import sys
import types
from types import SimpleNamespace as NS

import numpy as np
import pytest

from nbcnn.kernels.cuda import runtime


class FakeCupyArray:
    """The attributes of a CuPy array that the launcher reads."""

    def __init__(self, shape, dtype=np.float32):
        a = np.zeros(shape, dtype)
        self.shape, self.dtype, self.ndim, self.size, self.strides = a.shape, a.dtype, a.ndim, a.size, a.strides
        self.flags = NS(c_contiguous=True, f_contiguous=a.ndim <= 1)
        self.data = NS(ptr=0x7000)
        self.device = NS(id=0)
        self.__cuda_array_interface__ = {"shape": a.shape, "typestr": a.dtype.str, "data": (0x7000, False),
                                         "version": 3, "strides": None, "stream": 1}


FakeCupyArray.__module__ = "cupy._core.core"  # what runtime.is_gpu_array looks at


class FakeJit:
    """``jit[grid, block, stream](*args)`` records the arguments, optionally failing on stand-ins."""

    def __init__(self, fail_on_fast=None):
        self.calls = []
        self.fail_on_fast = fail_on_fast

    def __getitem__(self, config):
        def run(*args):
            if self.fail_on_fast and any(isinstance(a, runtime._FastRef) for a in args):
                raise self.fail_on_fast("no such device-array protocol")
            self.calls.append((config, args))
        return run


@pytest.fixture
def gpu_branch(monkeypatch):
    """Pretend to be on a GPU: no simulator, a fake cupy with the null stream, shim classes."""
    monkeypatch.setattr(runtime, "SIMULATOR", False)
    fake_cupy = types.ModuleType("cupy")
    fake_cupy.cuda = NS(get_current_stream=lambda: NS(ptr=0))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(runtime, "_HAVE_SHIMS", True)
    monkeypatch.setattr(runtime, "_SMVShim", lambda **kw: NS(**kw), raising=False)
    monkeypatch.setattr(runtime, "_LayoutShim", lambda **kw: NS(**kw), raising=False)
    monkeypatch.setattr(runtime, "_fast_args", [True])
    monkeypatch.setattr(runtime, "_configs", {})


def _kernel(jit, name):
    k = runtime.Kernel.__new__(runtime.Kernel)
    k.name, k.jit = name, jit
    return k


def test_cupy_arrays_reach_numba_as_device_array_stand_ins(gpu_branch):
    jit = FakeJit()
    k = _kernel(jit, "_fake_fast")
    x, y = FakeCupyArray((2, 3, 4)), FakeCupyArray((2, 3, 4))
    before = runtime.launches["_fake_fast"]
    k.grid3(12, 2, 1, x, 5, np.float32(0.5), y)
    (config, args), = jit.calls
    assert config == ((1, 2, 1), 32, 0)  # 12 pixels -> one warp-wide block; null stream
    assert isinstance(args[0], runtime._FastRef) and isinstance(args[3], runtime._FastRef)
    assert args[1] == 5 and args[2] == np.float32(0.5)
    shim = args[0]._strided_memory_view_shim
    assert (shim.ptr, shim.shape, shim.size, shim._layout.strides_in_bytes) == (0x7000, (2, 3, 4), 24, (48, 16, 4))
    assert str(args[0]._numba_type_) == "array(float32, 3d, C)"
    assert runtime.launches["_fake_fast"] == before + 1


def test_protocol_failure_falls_back_once_to_the_stream_less_interface(gpu_branch):
    jit = FakeJit(fail_on_fast=AttributeError)
    k = _kernel(jit, "_fake_fallback")
    x = FakeCupyArray((4,))
    before = runtime.launches["_fake_fallback"]
    with pytest.warns(RuntimeWarning, match="array interface"):
        k.launch(3, 64, x)
    (config, args), = jit.calls
    assert isinstance(args[0], runtime._Ref)
    assert args[0].__cuda_array_interface__["stream"] is None  # no per-launch host sync in Numba
    assert x.__cuda_array_interface__["stream"] == 1  # the caller's array is untouched
    assert runtime.fast_args() is False
    assert runtime.launches["_fake_fallback"] == before + 1  # counted once
    k.launch(3, 64, x)  # from now on straight to the interface path
    assert len(jit.calls) == 2 and isinstance(jit.calls[1][1][0], runtime._Ref)


def test_other_errors_are_not_swallowed(gpu_branch):
    jit = FakeJit(fail_on_fast=RuntimeError)
    with pytest.raises(RuntimeError, match="no such"):
        _kernel(jit, "_fake_error").launch(1, 32, FakeCupyArray((2,)))
    assert runtime.fast_args() is True


def test_grid_sizes_stay_within_cuda_limits(gpu_branch):
    jit = FakeJit()
    k = _kernel(jit, "_fake_grid")
    k.grid3(10**9, 10**6, 3, FakeCupyArray((1,)))
    (config, _), = jit.calls
    (bx, by, bz), tpb, _ = config
    assert tpb == runtime.TPB and bx == runtime.MAX_BLOCKS and by == 65535 and bz == 3
