"""predict's inference plan: batch norm folded into the convolution before it, ReLU fused,
Add + ReLU fused; exact up to rounding against the unfused graph; and the batch-norm
train/eval and frozen rules through the engine."""
from __future__ import annotations

import numpy as np
import pytest

import nbcnn
from nbcnn import layers as L


def _resnet_block(dtype, seed=0, shortcut_reads_conv=False):
    x = nbcnn.Input((3, 9, 7))
    h = L.Conv2D(4, 3, padding=1, use_bias=False)(x)
    h = L.BatchNormalization(momentum=0.5)(h)
    h = L.ReLU()(h)
    r = L.Conv2D(4, 3, padding=1, dilation_rate=2 if shortcut_reads_conv else 1)(h)
    r2 = L.BatchNormalization(momentum=0.5, scale=False)(r)
    s = L.Add()([h, r2] if not shortcut_reads_conv else [r, r2])   # r read twice: no folding of r
    s = L.ReLU()(s)
    g = L.DepthwiseConv2D(3, padding="same")(s)
    g = L.BatchNormalization(momentum=0.5, center=False)(g)
    out = L.Dense(5)(L.GlobalAveragePooling2D()(g))
    return nbcnn.Model(x, out, dtype=dtype, seed=seed, device="cpu")


def _randomise_bn(m, rng):
    for l in m.layers:
        if isinstance(l, L.BatchNormalization):
            ws = l.get_weights()
            new = []
            for name, w in zip(l.weight_names, ws):
                if name == "moving_variance":
                    new.append(rng.uniform(0.3, 2.0, w.shape).astype(w.dtype))
                else:
                    new.append(rng.standard_normal(w.shape).astype(w.dtype))
            l.set_weights(new)


def _unfused(m, x):
    g = m._graph
    out = g.forward([m._to_batch(x)], False)[g.outputs[0]]
    return L.softmax(out.copy())


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("shared_conv", [False, True])
def test_folded_predict_matches_the_unfused_graph(dtype, tol, shared_conv):
    rng = np.random.default_rng(0)
    m = _resnet_block(dtype, shortcut_reads_conv=shared_conv)
    m.build()
    _randomise_bn(m, rng)
    x = rng.standard_normal((6, 3, 9, 7)).astype(dtype)
    plan = m.inference_plan()
    assert plan.n_fused == (4 if shared_conv else 5)  # BNs folded, ReLUs fused
    np.testing.assert_allclose(m.predict(x, batch_size=4), _unfused(m, x), rtol=tol, atol=tol)


def test_plan_sees_weights_changed_by_training():
    rng = np.random.default_rng(1)
    m = _resnet_block("float32", seed=3)
    m.compile(optimizer=nbcnn.optim.SGD(0.1))
    x = rng.standard_normal((8, 3, 9, 7)).astype(np.float32)
    y = rng.integers(0, 5, 8)
    p0 = m.predict(x)
    m.fit(x, y, epochs=2, batch_size=4, verbose=0)
    p1 = m.predict(x)
    assert not np.allclose(p0, p1)
    np.testing.assert_allclose(p1, _unfused(m, x), rtol=2e-5, atol=2e-6)


def test_batch_norm_batch_statistics_in_fit_moving_in_predict_and_the_frozen_rule():
    rng = np.random.default_rng(2)
    x = nbcnn.Input((2, 4, 4))
    bn = L.BatchNormalization(momentum=0.5, name="bn")
    out = L.Dense(3)(L.Flatten()(bn(L.Conv2D(2, 3, padding=1, name="conv")(x))))
    m = nbcnn.Model(x, out, seed=0, device="cpu")
    m.compile(optimizer=nbcnn.optim.SGD(0.05))
    xs = (rng.standard_normal((8, 2, 4, 4)) * 3 + 2).astype(np.float32)
    ys = rng.integers(0, 3, 8)
    before = [w.copy() for w in bn.get_weights()]
    conv_out = m.tensor_values(xs, ["conv"])["conv"]
    m.train_on_batch(xs, ys)
    mean, var = bn.state
    # the moving statistics moved half way to the batch statistics of the conv's output
    bm = conv_out.mean(axis=(0, 2, 3))
    np.testing.assert_allclose(mean, 0.5 * before[2] + 0.5 * bm, rtol=1e-4, atol=1e-5)
    # predict normalises with the moving statistics, so it does not depend on the batch
    np.testing.assert_allclose(m.predict(xs[:1]), m.predict(xs)[:1], rtol=1e-5, atol=1e-6)
    # frozen: inference mode inside fit, statistics and gamma/beta untouched
    bn.trainable = False
    frozen = [w.copy() for w in bn.get_weights()]
    conv_w = m.get_layer("conv").get_weights()[0].copy()
    m.fit(xs, ys, epochs=1, batch_size=4, verbose=0)
    for a, b in zip(frozen, bn.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(conv_w, m.get_layer("conv").get_weights()[0])  # the layers around it train
