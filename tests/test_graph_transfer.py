"""Transfer learning and patch visualisation on graph models: freeze by name, a new head on
a graph, features cached at a named layer, a head trained on them, receptive fields where
branches meet."""
from __future__ import annotations

import numpy as np
import pytest

import nbcnn
from nbcnn import layers as L
from nbcnn import transfer as T
from nbcnn import visualize as V


def _residual(seed=0):
    x = nbcnn.Input((1, 8, 8))
    a = L.Conv2D(3, 3, padding=1, activation="relu", name="c1")(x)
    b = L.Conv2D(3, 3, padding=1, name="c2")(a)
    s = L.Add(name="sum")([a, b])
    p = L.MaxPool2D(2, name="pool")(s)
    f = L.Flatten(name="flat")(p)
    h = L.Dense(6, activation="tanh", name="fc")(f)
    return nbcnn.Model(x, L.Dense(4, name="out")(h), seed=seed, device="cpu")


def _chain(seed=0):
    x = nbcnn.Input((1, 8, 8))
    h = x
    for l in [L.Conv2D(3, 3, activation="relu", name="conv"), L.MaxPool2D(2, name="pool"), L.Flatten(name="flat"),
              L.Dense(6, activation="tanh", name="fc"), L.Dense(4, name="out")]:
        h = l(h)
    return nbcnn.Model(x, h, seed=seed, device="cpu")


@pytest.fixture
def data(rng):
    x = rng.integers(0, 256, (30, 1, 8, 8), dtype=np.uint8)
    return x, (x[:, 0, 2:6, 2:6].astype(int).sum((1, 2)) // 500 % 3)


def test_features_of_a_graph_equal_the_sequential_ones(data):
    x, _ = data
    g = _chain(4)
    s = nbcnn.Sequential([L.Conv2D(3, 3, activation="relu", input_shape=(1, 8, 8), name="conv"),
                          L.MaxPool2D(2, name="pool"), L.Flatten(name="flat"),
                          L.Dense(6, activation="tanh", name="fc"), L.Dense(4, name="out")], seed=4, device="cpu")
    for name in ("conv", "flat", "fc", "out"):
        np.testing.assert_array_equal(T.extract_features(g, x, name, batch_size=7),
                                      T.extract_features(s, x, name, batch_size=7))


def test_freeze_by_name_and_replace_head_of_a_graph(data):
    x, y = data
    m = _residual(1)
    assert T.freeze(m, "sum") == 2          # c1, c2, sum (topological order)
    new = T.replace_head(m, 3, seed=2)
    assert type(new) is nbcnn.Model and new.output_shape == (None, 3)
    assert [l.name for l in new.layers] == ["c1", "c2", "sum", "pool", "flat", "fc", "out_new"]
    for name in ("c1", "c2", "fc"):
        for a, b in zip(m.get_layer(name).get_weights(), new.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
        assert new.get_layer(name).trainable == m.get_layer(name).trainable
    frozen = [w.copy() for n in ("c1", "c2") for w in new.get_layer(n).get_weights()]
    new.compile(optimizer=nbcnn.optim.SGD(0.2))
    fc0 = new.get_layer("fc").get_weights()[0].copy()
    new.fit(x, y, epochs=1, batch_size=10, verbose=0)
    for a, b in zip(frozen, [w for n in ("c1", "c2") for w in new.get_layer(n).get_weights()]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(fc0, new.get_layer("fc").get_weights()[0])
    assert new.predict(x).shape == (30, 3)


def test_head_on_cached_graph_features_equals_training_with_frozen_layers(tmp_path, data):
    x, y = data
    a, b = T.replace_head(_residual(3), 3, seed=5), T.replace_head(_residual(3), 3, seed=5)
    for m in (a, b):
        T.train_last(m, 2)                  # fc and the new head train; the convs are frozen
    a.compile(optimizer="sgd")
    a.seed = 11
    a.fit(x, y, epochs=2, batch_size=8, verbose=0)
    start = T.frozen_prefix(b)
    assert b.layers[start].name == "fc"
    cache = T.FeatureCache(tmp_path)
    feats = cache.get(b, x, start - 1)
    assert cache.status == "miss" and feats.shape == (30, 48)
    T.fit_head(b, feats, y, epochs=2, batch_size=8, optimizer="sgd", seed=11)
    for name in ("fc", "out_new"):
        for wa, wb in zip(a.get_layer(name).get_weights(), b.get_layer(name).get_weights()):
            np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.predict(x), b.predict(x), rtol=1e-5, atol=1e-6)
    cache.get(b, x, start - 1)
    assert cache.status == "hit"            # only the frozen layers up to 'flat' count in the key
    b.get_layer("c1").set_weights([w * 2 for w in b.get_layer("c1").get_weights()])
    cache.get(b, x, start - 1)
    assert cache.status == "stale"


def test_receptive_field_where_branches_meet_by_hand():
    m = _residual()
    # c1: 3x3 pad 1 -> size 3, start -1; c2 on c1 -> size 5, start -2; the sum sees both: union = 5, start -2
    assert V.receptive_field(m, "c1") == V.ReceptiveField((3, 3), (1, 1), (-1, -1))
    assert V.receptive_field(m, "sum") == V.ReceptiveField((5, 5), (1, 1), (-2, -2))
    assert V.receptive_field(m, "pool") == V.ReceptiveField((6, 6), (2, 2), (-2, -2))
    assert not V.receptive_field(m, "fc").spatial


def test_top_patches_of_a_graph_layer(rng):
    m = _residual(2)
    x = rng.random((12, 1, 8, 8)).astype(np.float32)
    patches, vals, idx = V.top_patches(m, x, "sum", k=3)
    assert patches.shape == (3, 3, 1, 5, 5)
    feats = T.extract_features(m, x, "sum")
    for u in range(3):
        best = feats[:, u].reshape(12, -1).max(1)
        np.testing.assert_allclose(vals[u], np.sort(best)[::-1][:3], rtol=1e-6)
