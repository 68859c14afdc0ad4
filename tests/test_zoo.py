"""Model zoo: exact parameter counts, instant construction, a VGG-16 forward pass on the CPU."""
from __future__ import annotations

import time

import numpy as np
import pytest

from nbcnn import layers as L
from nbcnn import zoo


@pytest.mark.parametrize("name,count", [("lenet5", 61_706), ("alexnet", 62_378_344), ("vgg16", 138_357_544),
                                        ("vgg19", 143_667_240)])
def test_parameter_counts(name, count):
    t = time.perf_counter()
    m = zoo.get(name)
    assert m.count_params() == count
    assert f"Total params: {count:,}" in m.summary(print_fn=None)
    assert time.perf_counter() - t < 2.0  # shapes only, no weights drawn


def test_lenet5_layout_and_variants():
    m = zoo.lenet5()
    assert [type(l).__name__ for l in m.layers] == ["Conv2D", "AvgPool2D", "Conv2D", "AvgPool2D", "Flatten",
                                                      "Dense", "Dense", "Dense"]
    assert m.layers[0].pads == (2, 2, 2, 2) and m.layers[0].activation == "tanh"
    r = zoo.lenet5(activation="relu", pooling="max")
    assert isinstance(r.layers[1], L.MaxPool2D) and r.layers[0].activation == "relu"
    assert r.count_params() == 61_706
    assert "60,000" in zoo.lenet5.__doc__
    with pytest.raises(ValueError):
        zoo.lenet5(pooling="sum")


def test_alexnet_and_vgg_shapes():
    a = zoo.alexnet()
    assert a.layers[0].output_shape == (None, 96, 55, 55) and a.output_shape == (None, 1000)
    v = zoo.vgg16(num_classes=10)
    assert v.get_layer("flatten_1").output_shape == (None, 512 * 7 * 7) and v.output_shape == (None, 10)
    assert sum(isinstance(l, L.Conv2D) for l in zoo.vgg19().layers) == 16


def test_small_vgg_forward():
    m = zoo.small_vgg()
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    p = m.predict(x)
    assert p.shape == (4, 10)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)


@pytest.mark.slow
def test_vgg16_builds_fast_and_runs_one_224_image():
    t = time.perf_counter()
    m = zoo.vgg16(device="cpu", seed=0)
    m.build()  # draws 138 M float32 weights
    build_s = time.perf_counter() - t
    assert m.get_layer("dense_1").params[0].dtype == np.float32
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    p = m.predict(x)
    assert p.shape == (1, 1000) and np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(), 1, rtol=1e-5)
    assert build_s < 20, build_s
