"""Bad input -> ValueError/TypeError whose message names the argument and the shapes."""
from __future__ import annotations

import numpy as np
import pytest

from nbcnn import ops

X = np.zeros((2, 3, 8, 8), np.float32)
W = np.zeros((4, 3, 3, 3), np.float32)


def test_channel_mismatch():
    with pytest.raises(ValueError, match=r"channel mismatch.*C=3.*\(2, 3, 8, 8\).*C=2.*\(4, 2, 3, 3\)"):
        ops.conv2d(X, np.zeros((4, 2, 3, 3), np.float32))


def test_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match=r"kernel 9x3.*larger than the padded input 8x8"):
        ops.conv2d(X, np.zeros((4, 3, 9, 3), np.float32))
    with pytest.raises(ValueError, match=r"larger than the padded input 10x10"):
        ops.conv2d(X, np.zeros((4, 3, 11, 11), np.float32), padding=1)
    ops.conv2d(X, np.zeros((4, 3, 10, 10), np.float32), padding=1)  # fits exactly
    with pytest.raises(ValueError, match="larger than the padded input size 5"):
        ops.conv_output_size(5, 6)


@pytest.mark.parametrize("stride", [0, -1, (1, 0), (-2, 1)])
def test_stride_must_be_positive(stride):
    with pytest.raises(ValueError, match="stride must be positive"):
        ops.conv2d(X, W, stride=stride)
    with pytest.raises(ValueError, match="stride must be positive"):
        ops.max_pool2d(X, 2, stride=stride)
    with pytest.raises(ValueError, match="stride must be positive"):
        ops.avg_pool2d(X, 2, stride=stride)


@pytest.mark.parametrize("stride", [1.5, "2", True, (1, 2, 3)])
def test_stride_must_be_int(stride):
    with pytest.raises(TypeError, match="stride"):
        ops.conv2d(X, W, stride=stride)


@pytest.mark.parametrize("padding", ["SAMEISH", "", "causal"])
def test_unknown_padding_string(padding):
    with pytest.raises(ValueError, match=f"unknown padding '{padding}'"):
        ops.conv2d(X, W, padding=padding)
    with pytest.raises(ValueError, match="unknown padding"):
        ops.conv_output_size(8, 3, padding)
    with pytest.raises(ValueError, match="unknown padding"):
        ops.pad2d(X, padding, kernel_size=3)


def test_padding_strings_are_case_insensitive():
    assert ops.conv2d(X, W, padding="SAME").shape == (2, 4, 8, 8)


@pytest.mark.parametrize("padding", [-1, (1, -1), (0, 0, -2, 0)])
def test_negative_padding(padding):
    with pytest.raises(ValueError, match="padding must be >= 0"):
        ops.conv2d(X, W, padding=padding)


@pytest.mark.parametrize("padding", [1.0, (1, 2, 3), None, [1, "a"]])
def test_padding_wrong_type(padding):
    with pytest.raises(TypeError, match="padding"):
        ops.conv2d(X, W, padding=padding)


@pytest.mark.parametrize("op", ["conv_x", "conv_w", "max", "avg", "pad"])
def test_ndim_must_be_4(op):
    x3 = np.zeros((3, 8, 8), np.float32)
    name = "w" if op == "conv_w" else "x"
    with pytest.raises(ValueError, match=rf"{name} must be 4-D.*got shape \(3, (8, 8|3, 3)\)"):
        if op == "conv_x":
            ops.conv2d(x3, W)
        elif op == "conv_w":
            ops.conv2d(X, np.zeros((3, 3, 3), np.float32))
        elif op == "max":
            ops.max_pool2d(x3)
        elif op == "avg":
            ops.avg_pool2d(x3)
        else:
            ops.pad2d(x3, 1)


def test_bias_shape():
    with pytest.raises(ValueError, match=r"bias b has shape \(3,\).*K=4"):
        ops.conv2d(X, W, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="b must be 1-D"):
        ops.conv2d(X, W, np.zeros((4, 1), np.float32))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.complex64, np.complex128, np.bool_,
                                   np.float16, object])
def test_dtypes_rejected(dtype):
    bad = np.zeros((2, 3, 8, 8), dtype=dtype)
    with pytest.raises(TypeError, match=r"x must be float32 or float64, got dtype .*\(2, 3, 8, 8\)"):
        ops.conv2d(bad, W)
    with pytest.raises(TypeError, match="w must be float32 or float64"):
        ops.conv2d(X, W.astype(dtype))
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        ops.max_pool2d(bad)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        ops.avg_pool2d(bad)


def test_not_an_array():
    with pytest.raises(TypeError, match="x must be an array, got str"):
        ops.conv2d("image", W)


def test_gy_shape_checked():
    y = ops.conv2d(X, W)
    with pytest.raises(ValueError, match=r"gy has shape \(2, 4, 5, 5\).*\(2, 4, 6, 6\)"):
        ops.conv2d_backward(np.zeros((2, 4, 5, 5), np.float32), X, W)
    with pytest.raises(ValueError, match="gy has shape"):
        ops.max_pool2d_backward(y, X, 2)
    with pytest.raises(ValueError, match="gy has shape"):
        ops.avg_pool2d_backward(y, X, 2)


@pytest.mark.parametrize("size,padding", [(2, 2), (3, 2), ((2, 4), (1, 3)), (4, (0, 3))])
def test_pool_padding_at_most_half_the_window(size, padding):
    with pytest.raises(ValueError, match=r"pooling padding must be between 0 and size // 2"):
        ops.max_pool2d(X, size, padding=padding)
    with pytest.raises(ValueError, match=r"pooling padding must be between 0 and size // 2"):
        ops.avg_pool2d(X, size, padding=padding)


def test_pool_window_larger_than_input():
    with pytest.raises(ValueError, match=r"pool window 9x9 is larger than the padded input 8x8"):
        ops.max_pool2d(X, 9)


@pytest.mark.parametrize("size", [0, -2, (2, 0)])
def test_pool_size_positive(size):
    with pytest.raises(ValueError, match="pool size must be positive"):
        ops.max_pool2d(X, size)


def test_pool_padding_strings():
    assert ops.max_pool2d(X, 2, padding="valid").shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match="pooling padding"):
        ops.max_pool2d(X, 2, padding="same")


def test_pad_same_needs_kernel_size():
    with pytest.raises(ValueError, match="needs kernel_size"):
        ops.pad2d(X, "same")


def test_empty_channels_rejected():
    with pytest.raises(ValueError, match="empty array"):
        ops.conv2d(np.zeros((1, 0, 4, 4)), np.zeros((2, 0, 3, 3)))


class _FakeCupyArray:
    """Looks like a CuPy array to nbcnn (module name 'cupy...'), without CuPy."""

    __module__ = "cupy._core.core"

    def __init__(self, a, dev=0):
        self._a = np.asarray(a)
        self.dtype, self.shape, self.ndim, self.size = self._a.dtype, self._a.shape, self._a.ndim, self._a.size
        self.flags = self._a.flags
        self.device = type("D", (), {"id": dev})()

    def astype(self, dt):
        return _FakeCupyArray(self._a.astype(dt), self.device.id)


def test_mixed_devices():
    g = _FakeCupyArray(W)
    with pytest.raises(ValueError, match=r"mixed devices.*numpy\(2, 3, 8, 8\).*cupy\(4, 3, 3, 3\)"):
        ops.conv2d(X, g)
    with pytest.raises(ValueError, match="mixed devices"):
        ops.conv2d_backward(np.zeros((2, 4, 6, 6), np.float32), X, g)
    y = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="mixed devices"):
        ops.max_pool2d_backward(_FakeCupyArray(y), X, 2)
    with pytest.raises(ValueError, match=r"mixed devices: arrays on GPUs \[0, 1\]"):
        ops.conv2d(_FakeCupyArray(X, 0), _FakeCupyArray(W, 1))


def test_output_shape_helpers():
    assert ops.conv2d_output_shape((2, 3, 32, 32), (6, 3, 5, 5)) == (2, 6, 28, 28)
    assert ops.conv2d_output_shape((1, 1, 7, 7), (1, 1, 3, 3), 2, "same") == (1, 1, 4, 4)
    assert ops.pool2d_output_shape((1, 1, 7, 7), 2) == (1, 1, 3, 3)
    assert ops.conv_output_size(6, 3, "full") == 8
    assert ops.conv_output_size(6, 3, (1, 0)) == 5
