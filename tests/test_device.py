"""Device layer: selection, NBCNN_DEVICE, moves, and GPU detection that never crashes."""
from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

import nbcnn
from nbcnn import device as dev_mod
from nbcnn.device import Device, DeviceError


@pytest.fixture
def fresh(monkeypatch):
    """Forget the cached default device and GPU status (and restore them afterwards)."""
    monkeypatch.setattr(dev_mod, "_default", [])
    dev_mod.gpu_status.cache_clear()
    yield monkeypatch
    dev_mod.gpu_status.cache_clear()


@pytest.fixture
def no_sim(monkeypatch):
    import numba

    if numba.config.ENABLE_CUDASIM:
        pytest.skip("the CUDA simulator is on in this process")


def _fake_cupy(count=None, exc=None):
    rt = types.SimpleNamespace()

    def get_count():
        if exc is not None:
            raise exc
        return count

    rt.getDeviceCount = get_count
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=rt))


def test_no_gpu_here_means_auto_is_cpu(fresh, no_sim):
    fresh.delenv("NBCNN_DEVICE", raising=False)
    ok, why = nbcnn.gpu_status()
    if ok:
        pytest.skip("a GPU is usable on this machine")
    assert isinstance(why, str) and why
    assert nbcnn.get_device() == Device("cpu") == "cpu"
    assert nbcnn.get_device().xp is np


@pytest.mark.parametrize("env,expected", [("cpu", "cpu"), ("CPU", "cpu"), ("auto", "cpu"), ("", "cpu")])
def test_nbcnn_device_env(fresh, no_sim, env, expected):
    fresh.setenv("NBCNN_DEVICE", env)
    fresh.setitem(sys.modules, "cupy", None)  # no CuPy: auto must fall back, never crash
    assert str(nbcnn.get_device()) == expected


def test_nbcnn_device_env_invalid(fresh):
    fresh.setenv("NBCNN_DEVICE", "tpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        nbcnn.get_device()


def test_cuda_without_gpu_raises_device_error_with_reason(fresh, no_sim):
    fresh.setitem(sys.modules, "cupy", None)
    with pytest.raises(DeviceError, match=r"device cuda:0 is not usable: CuPy is not installed"):
        with nbcnn.using_device("cuda"):
            pass
    with pytest.raises(DeviceError, match="cuda:1 is not usable"):
        nbcnn.to_device(np.zeros(3), "cuda:1")


@pytest.mark.parametrize("fake,reason", [
    (None, "CuPy is not installed"),
    (_fake_cupy(exc=RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")),
     "CuPy cannot reach a GPU: cudaErrorInsufficientDriver"),
    (_fake_cupy(count=0), "no GPU"),
])
def test_gpu_status_never_raises(fresh, no_sim, fake, reason):
    fresh.setitem(sys.modules, "cupy", fake)
    ok, why = dev_mod.gpu_status()
    assert ok is False and reason in why
    fresh.setenv("NBCNN_DEVICE", "auto")
    assert nbcnn.get_device() == "cpu"


def test_gpu_status_when_numba_cuda_import_fails(fresh, no_sim):
    """numba-cuda without a CUDA runtime raises RuntimeError (not ImportError) at import."""
    fresh.setitem(sys.modules, "cupy", _fake_cupy(count=1))
    import numba

    class Boom(types.ModuleType):
        def __getattr__(self, name):
            raise RuntimeError("DynamicLibNotFoundError: libcudart.so not found")

    fresh.setitem(sys.modules, "numba.cuda", Boom("numba.cuda"))
    fresh.delattr(numba, "cuda", raising=False)
    ok, why = dev_mod.gpu_status()
    assert ok is False and "numba.cuda" in why


def test_using_device_nests_and_restores(fresh):
    fresh.setenv("NBCNN_DEVICE", "cpu")
    with nbcnn.using_device("cpu") as d:
        assert d == nbcnn.get_device() == "cpu"
        with nbcnn.using_device(Device("cpu")):
            assert nbcnn.get_device() == "cpu"
    assert nbcnn.get_device() == "cpu"


def test_device_parsing_errors():
    with pytest.raises(ValueError, match="unknown device 'cuda:x'"):
        dev_mod.parse_device("cuda:x")
    with pytest.raises(TypeError, match="device must be a string"):
        dev_mod.parse_device(3)
    with pytest.raises(ValueError, match="device kind"):
        Device("tpu")
    assert repr(Device("cuda", 2)) == "cuda:2" and Device("cuda", 2) != "cuda:3"
    assert Device("cpu") != "not a device"


def test_to_device_and_to_numpy_on_cpu(fresh):
    a = np.arange(6.0).reshape(2, 3)
    b = nbcnn.to_device(a, "cpu")
    assert isinstance(b, np.ndarray)
    np.testing.assert_array_equal(b, a)
    assert nbcnn.to_numpy(b) is b
    np.testing.assert_array_equal(nbcnn.to_numpy([1, 2]), [1, 2])
    assert not dev_mod.is_gpu_array(a)
    assert dev_mod.array_device(a) == "cpu"


def test_import_is_cheap_and_lazy():
    code = ("import sys, nbcnn; bad = [m for m in ('cupy', 'numba.cuda', 'matplotlib', 'nbcnn.kernels.cpu') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
