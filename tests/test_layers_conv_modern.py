"""Conv2D(dilation_rate, groups), DepthwiseConv2D, SeparableConv2D and ZeroPadding2D: the layers
against the ops they are made of, config and model-file round trips, and bad arguments."""
from __future__ import annotations

import numpy as np
import pytest

import nbcnn
from nbcnn import layers as L
from nbcnn import ops

RNG = np.random.default_rng(0)


def _fwd_bwd(layer, x):
    y = layer.forward(x, training=True)
    gy = np.random.default_rng(1).standard_normal(y.shape)
    return y, gy, layer.backward(gy)


def test_depthwise_layer_is_grouped_conv():
    x = RNG.standard_normal((2, 3, 9, 8))
    layer = L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, dilation_rate=2)
    layer.build((3, 9, 8), dtype=np.float64)
    assert layer.params[0].shape == (6, 1, 3, 3) and layer.output_shape == (None, 6, 5, 4)
    y, gy, gx = _fwd_bwd(layer, x)
    w, b = layer.params
    np.testing.assert_array_equal(y, ops.conv2d(x, w, b, 2, "same", 2, 3))
    gx2, gw2, gb2 = ops.conv2d_backward(gy, x, w, 2, "same", 2, 3)
    np.testing.assert_array_equal(gx, gx2)
    np.testing.assert_array_equal(layer.grads[0], gw2)
    np.testing.assert_array_equal(layer.grads[1], gb2)


def test_separable_layer_is_depthwise_then_pointwise():
    x = RNG.standard_normal((2, 4, 10, 10))
    layer = L.SeparableConv2D(5, 3, padding=1, depth_multiplier=2, activation="relu")
    layer.build((4, 10, 10), dtype=np.float64)
    dk, pk, b = layer.params
    assert dk.shape == (8, 1, 3, 3) and pk.shape == (5, 8, 1, 1) and b.shape == (5,)
    assert layer.count_params() == 8 * 9 + 5 * 8 + 5
    y, gy, gx = _fwd_bwd(layer, x)
    t = ops.conv2d(x, dk, None, 1, 1, groups=4)
    z = ops.conv2d(t, pk, b)
    np.testing.assert_allclose(y, np.maximum(z, 0), rtol=1e-13, atol=1e-13)
    gz = gy * (z > 0)
    gt, gpk, gb = ops.conv2d_backward(gz, t, pk)
    gx2, gdk, _ = ops.conv2d_backward(gt, x, dk, 1, 1, groups=4)
    for got, want in zip([gx, *layer.grads], [gx2, gdk, gpk, gb]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_conv2d_groups_and_dilation_shapes():
    layer = L.Conv2D(8, 3, padding="same", dilation_rate=(2, 3), groups=4, use_bias=False)
    layer.build((12, 7, 9))
    assert layer.params[0].shape == (8, 3, 3, 3) and layer.output_shape == (None, 8, 7, 9)
    assert layer.pads == (2, 2, 3, 3)
    assert L.Conv2D(4, 3, padding="full", dilation_rate=2).configure((1, 5, 5)) == (4, 9, 9)


def test_zero_padding_layer():
    x = RNG.standard_normal((2, 3, 4, 5))
    layer = L.ZeroPadding2D(((1, 2), (0, 3)))
    y, gy, gx = _fwd_bwd(layer, x)
    assert y.shape == (2, 3, 7, 8)
    np.testing.assert_array_equal(y[:, :, 1:5, 0:5], x)
    assert np.count_nonzero(y) == x.size
    np.testing.assert_array_equal(gx, gy[:, :, 1:5, 0:5])
    assert L.ZeroPadding2D(2).configure((1, 3, 3)) == (1, 7, 7)
    assert L.ZeroPadding2D((1, 2)).configure((1, 3, 3)) == (1, 5, 7)


def test_model_file_round_trip(tmp_path):
    nbcnn.seed(3)
    m = nbcnn.Sequential([
        L.Conv2D(8, 3, padding="same", dilation_rate=2, input_shape=(2, 10, 10), activation="relu"),
        L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, use_bias=False),
        L.Conv2D(8, 3, padding=1, groups=4, activation="relu"),
        L.ZeroPadding2D(((1, 0), (0, 1))),
        L.SeparableConv2D(4, 3, activation="relu", dilation_rate=(1, 2)),
        L.Flatten(), L.Dense(3)])
    m.compile(loss="cross_entropy", optimizer="adam")
    x = RNG.standard_normal((12, 2, 10, 10)).astype(np.float32)
    m.fit(x, np.arange(12) % 3, epochs=1, batch_size=4, verbose=0)
    m.save(tmp_path / "m.nbcnn")
    m2 = nbcnn.load_model(tmp_path / "m.nbcnn")
    for a, b in zip(m.layers, m2.layers):
        assert type(a) is type(b) and a.get_config() == b.get_config()
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)
    np.testing.assert_array_equal(m.predict(x), m2.predict(x))


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="divisible by groups=3"):
        L.Conv2D(6, 3, groups=3).configure((4, 8, 8))
    with pytest.raises(ValueError, match="divisible by groups=4"):
        L.Conv2D(6, 3, groups=4).configure((4, 8, 8))
    with pytest.raises(ValueError, match="groups must be a positive int"):
        L.Conv2D(6, 3, groups=0)
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        L.DepthwiseConv2D(3, dilation_rate=0)
    with pytest.raises(ValueError, match="depth_multiplier must be a positive int"):
        L.DepthwiseConv2D(3, depth_multiplier=0)
    with pytest.raises(ValueError, match="does not fit"):
        L.Conv2D(2, 3, dilation_rate=4).configure((1, 8, 8))
    with pytest.raises(ValueError, match="ZeroPadding2D takes ints"):
        L.ZeroPadding2D("same")
