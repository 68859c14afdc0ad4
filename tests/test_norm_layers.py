"""BatchNormalization, LocalResponseNormalization and global / ceil-mode pooling layers in models:
Keras momentum, the frozen-BN rule in fit, counts, summary, save/load with running statistics."""
from __future__ import annotations

import numpy as np
import pytest

import nbcnn
from nbcnn import layers as L


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, 2, 8, 8)) * 3 + 2).astype(np.float32)
    y = rng.integers(0, 3, n)
    return x, y


def _model(bn_trainable=True):
    bn = L.BatchNormalization(name="bn", trainable=bn_trainable)
    m = nbcnn.Sequential([L.Conv2D(4, 3, padding="same", input_shape=(2, 8, 8), name="conv"), bn,
                          L.ReLU(), L.MaxPool2D(3, 2, 1, ceil_mode=True), L.LocalResponseNormalization(3),
                          L.BatchNormalization(name="bn2"), L.GlobalAveragePooling2D(), L.Dense(3)],
                         device="cpu", seed=1)
    m.compile(optimizer="sgd")
    return m


def test_counts_summary_and_shapes():
    m = _model()
    assert m.get_layer("bn").output_shape == (None, 4, 8, 8)
    assert m.layers[3].output_shape == (None, 4, 5, 5)      # ceil mode: 8 + 2 - 3 = 7 / 2 -> 4 + 1
    assert m.layers[6].output_shape == (None, 4)
    n_conv, n_bn, n_dense = 2 * 9 * 4 + 4, 4 * 4, 4 * 3 + 3
    assert m.count_params() == n_conv + 2 * n_bn + n_dense
    text = m.summary(print_fn=None)
    assert f"Trainable params: {n_conv + 2 * 8 + n_dense:,}" in text and "Non-trainable params: 16" in text
    assert m.get_layer("bn").weight_names == ("gamma", "beta", "moving_mean", "moving_variance")
    ws = m.get_layer("bn").get_weights()
    np.testing.assert_array_equal(ws[0], 1)
    np.testing.assert_array_equal(ws[1], 0)
    np.testing.assert_array_equal(ws[2], 0)
    np.testing.assert_array_equal(ws[3], 1)


def test_training_uses_batch_stats_and_keras_momentum():
    bn = L.BatchNormalization(momentum=0.9, epsilon=1e-3, input_shape=(3, 4, 4))
    x = (np.random.default_rng(0).standard_normal((5, 3, 4, 4)) * 2 + 1).astype(np.float32)
    y = bn(x, training=True)
    m = x.mean(axis=(0, 2, 3))
    v = x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(y, (x - m[None, :, None, None]) / np.sqrt(v[None, :, None, None] + 1e-3),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.state[0], 0.1 * m, rtol=1e-5, atol=1e-6)         # 0.9 * 0 + 0.1 * batch
    np.testing.assert_allclose(bn.state[1], 0.9 + 0.1 * v * 80 / 79, rtol=1e-5)      # unbiased batch variance
    before = [s.copy() for s in bn.state]
    ye = bn(x, training=False)
    np.testing.assert_allclose(ye, (x - before[0][None, :, None, None])
                               / np.sqrt(before[1][None, :, None, None] + 1e-3), rtol=1e-5, atol=1e-5)
    for a, b in zip(before, bn.state):
        np.testing.assert_array_equal(a, b)


def test_dense_input_and_no_center_scale():
    bn = L.BatchNormalization(axis=-1, center=False, scale=False, input_shape=(5,))
    assert bn.count_params() == 10 and bn.count_trainable() == 0
    x = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    np.testing.assert_allclose(bn(x, training=True), (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3), rtol=1e-4,
                               atol=1e-5)
    gx = bn.backward(np.ones_like(x))
    np.testing.assert_allclose(gx, 0, atol=1e-5)   # a constant gradient is normalised away
    with pytest.raises(ValueError, match="channel axis only"):
        L.BatchNormalization(axis=2)


def test_frozen_bn_in_fit_keeps_stats_and_uses_them():
    """trainable = False: fit normalises with the moving statistics and leaves them alone."""
    x, y = _data()
    m = _model(bn_trainable=False)
    bn = m.get_layer("bn")
    m.build()
    bn.state[0][...] = [0.5, -1.0, 2.0, 0.0]
    bn.state[1][...] = [2.0, 0.5, 1.0, 3.0]
    before = [s.copy() for s in bn.state] + [p.copy() for p in bn.params]
    bn2_before = [s.copy() for s in m.get_layer("bn2").state]
    m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for a, b in zip(before, bn.state + bn.params):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(bn2_before[0], m.get_layer("bn2").state[0])   # the trainable one did update
    # in training mode the frozen layer's output is the inference formula
    conv_out = m.get_layer("conv")(x, training=True)
    got = bn(conv_out, training=True)
    want = ((conv_out - before[0][None, :, None, None]) / np.sqrt(before[1][None, :, None, None] + 1e-3))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # its backward is the inference-mode one: gx = gamma * gy / sqrt(var + eps)
    gy = np.ones_like(got)
    np.testing.assert_allclose(bn.backward(gy), gy / np.sqrt(before[1][None, :, None, None] + 1e-3), rtol=1e-6)


def test_gradients_match_finite_differences_in_a_model():
    x, y = _data(6)
    m = _model()
    m.compile(optimizer="sgd")
    loss, grads = m.gradients(x, y)
    names = [n for l in m.layers for n in l.weight_names]
    assert grads[names.index("moving_mean")] is None
    gi = names.index("gamma")
    w = m.get_weights()
    d = np.random.default_rng(3).standard_normal(w[gi].shape).astype(np.float32)
    e = 1e-2

    def loss_at(delta):
        ws = [a.copy() for a in w]
        ws[gi] = ws[gi] + delta
        m.set_weights(ws)
        return m.gradients(x, y)[0]   # train-mode forward; running stats move but do not enter the loss

    fd = (loss_at(e * d) - loss_at(-e * d)) / (2 * e)
    m.set_weights(w)
    assert abs(fd - float((grads[gi] * d).sum())) < 2e-3 * (1 + abs(fd)), (fd, (grads[gi] * d).sum())


def test_save_load_round_trip_with_running_stats(tmp_path):
    x, y = _data()
    m = _model()
    m.fit(x, y, epochs=1, batch_size=8, verbose=0)
    p = tmp_path / "bn.nbcnn"
    m.save(p)
    m2 = nbcnn.load_model(p, device="cpu")
    for a, b in zip(m.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(m.predict(x), m2.predict(x))
    cfg = {type(l).__name__: l.get_config() for l in m2.layers}
    assert cfg["MaxPool2D"]["ceil_mode"] is True and cfg["LocalResponseNormalization"]["size"] == 3
    assert cfg["BatchNormalization"]["momentum"] == 0.99


def test_pool_layer_options_round_trip():
    for layer in (L.AvgPool2D(3, 2, 1, ceil_mode=True, count_include_pad=False), L.GlobalMaxPooling2D(),
                  L.MaxPool2D(2, ceil_mode=True)):
        cfg = L.serialize(layer)
        back = L.deserialize(cfg)
        assert L.serialize(back) == cfg
    a = L.AvgPool2D(3, 2, 1, ceil_mode=True, count_include_pad=False, input_shape=(1, 6, 6))
    x = np.ones((1, 1, 6, 6), np.float32)
    np.testing.assert_allclose(a(x), 1.0)        # real cells only: ones everywhere
    b = L.AvgPool2D(3, 2, 1, ceil_mode=True, input_shape=(1, 6, 6))
    assert b(x)[0, 0, 0, 0] == pytest.approx(4 / 9)
