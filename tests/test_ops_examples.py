"""The worked examples of the course notes, exactly."""
import numpy as np
import pytest

from nbcnn import ops

VERT = [[1, 0, -1], [1, 0, -1], [1, 0, -1]]


def _img(a, dtype=np.float64):
    return np.asarray(a, dtype=dtype)[None, None]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_correlation_example(dtype):
    x = _img([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], dtype)
    w = _img([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype)
    y = ops.conv2d(x, w)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y[0, 0], [[4, 3, 4], [2, 4, 3], [2, 3, 4]])


def test_vertical_edge_on_step():
    x = _img([[10, 10, 10, 0, 0, 0]] * 6)
    np.testing.assert_array_equal(ops.conv2d(x, _img(VERT))[0, 0], [[0, 30, 30, 0]] * 4)


def test_vertical_edge_example_and_padding_modes():
    x = _img([[3, 0, 1, 2, 7, 4], [1, 5, 8, 9, 3, 1], [2, 7, 2, 5, 1, 3],
              [0, 1, 3, 1, 7, 8], [4, 2, 1, 6, 2, 8], [2, 4, 5, 2, 3, 9]])
    w = _img(VERT)
    np.testing.assert_array_equal(
        ops.conv2d(x, w)[0, 0], [[-5, -4, 0, 8], [-10, -2, 2, 3], [0, -2, -4, -7], [-3, -2, -3, -16]])
    assert ops.conv2d(x, w, padding="same").shape == (1, 1, 6, 6)
    assert ops.conv2d(x, w, padding="full").shape == (1, 1, 8, 8)


def test_strided_example():
    x = _img([[2, 3, 7, 4, 6, 2, 9], [6, 6, 9, 8, 7, 4, 3], [3, 4, 8, 3, 8, 9, 7], [7, 8, 3, 6, 6, 3, 4],
              [4, 2, 1, 8, 3, 4, 6], [3, 2, 4, 1, 9, 8, 3], [0, 1, 3, 9, 2, 1, 4]])
    w = _img([[3, 4, 4], [1, 0, 2], [-1, 0, 3]])
    np.testing.assert_array_equal(ops.conv2d(x, w, stride=2)[0, 0], [[91, 100, 88], [69, 91, 117], [44, 72, 74]])


def test_pooling_example():
    x = _img([[2, 3, 1, 9], [4, 7, 3, 5], [8, 2, 2, 2], [1, 3, 4, 5]])
    np.testing.assert_array_equal(ops.max_pool2d(x, 2, 2)[0, 0], [[7, 9], [8, 5]])
    np.testing.assert_array_equal(ops.avg_pool2d(x, 2, 2)[0, 0], [[4, 4.5], [3.5, 3.25]])


def test_sizes():
    assert ops.conv_output_size(6, 3) == 4
    assert ops.conv_output_size(7, 3, stride=2) == 3
    assert ops.conv_output_size(13, 5, "same") == 13
    x = np.zeros((1, 3, 32, 32), np.float32)
    assert ops.conv2d(x, np.zeros((6, 3, 5, 5), np.float32)).shape == (1, 6, 28, 28)
    # a layer of ten 3x3x3 filters: 10 * 27 weights + 10 biases
    w, b = np.zeros((10, 3, 3, 3)), np.zeros(10)
    assert w.size + b.size == 280


HORIZONTAL = [[1, 1, 1], [0, 0, 0], [-1, -1, -1]]
SOBEL = [[1, 0, -1], [2, 0, -2], [1, 0, -1]]
SCHARR = [[3, 0, -3], [10, 0, -10], [3, 0, -3]]
STEP_V = [[10, 10, 10, 0, 0, 0]] * 6             # bright left half: a vertical edge
STEP_H = [[10] * 6] * 3 + [[0] * 6] * 3          # bright top half: a horizontal edge


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hand_picked_filters(dtype):
    # by hand: each output is (sum of the filter's left column) * (left - right), i.e. 3, 4, 16 times 10
    fb = np.asarray([VERT, SOBEL, SCHARR, HORIZONTAL], dtype)[:, None]  # (4, 1, 3, 3) filter bank
    y = ops.conv2d(_img(STEP_V, dtype), fb)
    np.testing.assert_array_equal(y[0, 0], [[0, 30, 30, 0]] * 4)
    np.testing.assert_array_equal(y[0, 1], [[0, 40, 40, 0]] * 4)
    np.testing.assert_array_equal(y[0, 2], [[0, 160, 160, 0]] * 4)
    np.testing.assert_array_equal(y[0, 3], np.zeros((4, 4)))     # no horizontal edge here
    y = ops.conv2d(_img(STEP_H, dtype), fb)
    np.testing.assert_array_equal(y[0, 3], [[0] * 4, [30] * 4, [30] * 4, [0] * 4])
    np.testing.assert_array_equal(y[0, :3], np.zeros((3, 4, 4)))  # vertical-edge filters see nothing


def test_sobel_same_padding_keeps_size_and_sees_the_border():
    y = ops.conv2d(_img(STEP_V), _img(SOBEL), padding="same")
    assert y.shape == (1, 1, 6, 6)
    # zero padding makes the left border look like an edge from 0 up to 10: -30 at the corners, -40 inside
    np.testing.assert_array_equal(y[0, 0, :, 0], [-30, -40, -40, -40, -40, -30])
    np.testing.assert_array_equal(y[0, 0, 1:5, 1:5], [[0, 40, 40, 0]] * 4)
