"""Transfer learning: features of any layer, new head, freezing, the on-disk feature cache."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nbcnn import layers as L
from nbcnn import transfer as T
from nbcnn.models import Sequential


def _model(seed=0):
    m = Sequential([L.Conv2D(3, 3, activation="relu", input_shape=(1, 8, 8), name="conv"),
                    L.MaxPool2D(2, name="pool"), L.Flatten(name="flat"),
                    L.Dense(6, activation="tanh", name="fc"), L.Dense(4, name="out")], seed=seed)
    m.build()
    return m


def _manual(m, x, upto):
    z = x.astype(np.float32) / 255 if x.dtype == np.uint8 else x
    for l in m.layers[:upto + 1]:
        z = l.forward(z, training=False)
    return z


@pytest.fixture
def data(rng):
    x = rng.integers(0, 256, (37, 1, 8, 8), dtype=np.uint8)
    return x, (x[:, 0, 2:6, 2:6].astype(int).sum((1, 2)) // 500 % 4)


def test_extract_features_any_layer(data):
    m, (x, _) = _model(), data
    for layer, i in [("conv", 0), (1, 1), ("fc", 3), (-1, 4)]:
        f = T.extract_features(m, x, layer, batch_size=10)
        np.testing.assert_allclose(f, _manual(m, x, i), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="no layer named"):
        T.extract_features(m, x, "nope")
    with pytest.raises(ValueError, match="out of range"):
        T.extract_features(m, x, 5)


def test_replace_head_keeps_base_and_copies_weights(data):
    m, (x, _) = _model(), data
    before = [w.copy() for w in m.get_weights()]
    t = T.replace_head(m, 3, seed=1)
    assert [l.name for l in t.layers] == ["conv", "pool", "flat", "fc", "out_new"]
    assert t.layers[-1].units == 3 and t.output_shape == (None, 3)
    for a, b in zip(m.layers[:4], t.layers[:4]):
        assert a is not b
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)
    np.testing.assert_array_equal(T.extract_features(t, x, "fc"), T.extract_features(m, x, "fc"))
    for wa, wb in zip(before, m.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    with pytest.raises(ValueError, match="num_classes"):
        T.replace_head(m, 0)


def test_freeze_unfreeze_train_last_prefix():
    m = _model()
    assert T.freeze(m, "flat") == 2
    assert [l.trainable for l in m.layers] == [False, False, False, True, True]
    assert T.frozen_prefix(m) == 3
    T.unfreeze(m)
    assert T.frozen_prefix(m) == 0
    assert T.train_last(m, 1) == 4 and T.frozen_prefix(m) == 4
    assert T.train_last(m, 2) == 3 and [l.trainable for l in m.layers] == [False, False, False, True, True]
    with pytest.raises(ValueError, match="only 3 layers with weights"):
        T.train_last(m, 4)


def test_feature_cache_hit_miss_stale_corrupt(tmp_path, data):
    m, (x, _) = _model(), data
    cache = T.FeatureCache(tmp_path)
    f1 = cache.get(m, x, "fc")
    assert cache.status == "miss" and isinstance(f1, np.memmap)
    np.testing.assert_allclose(f1, _manual(m, x, 3), rtol=1e-6, atol=1e-6)
    f2 = cache.get(m, x, "fc")
    assert cache.status == "hit"
    np.testing.assert_array_equal(f1, f2)
    # a weight AFTER the cached layer does not matter
    w = m.layers[4].get_weights()
    m.layers[4].set_weights([w[0] + 1, w[1]])
    cache.get(m, x, "fc")
    assert cache.status == "hit"
    # different data: another entry, a miss
    cache.get(m, x[:20], "fc")
    assert cache.status == "miss"
    # a weight before it does: stale, rebuilt with the new values
    w = m.layers[0].get_weights()
    m.layers[0].set_weights([w[0] * 2, w[1]])
    f3 = np.array(cache.get(m, x, "fc"))  # a copy: the test below scribbles on the file in place
    assert cache.status == "stale"
    np.testing.assert_allclose(f3, _manual(m, x, 3), rtol=1e-6, atol=1e-6)
    assert cache.get(m, x, "fc") is not None and cache.status == "hit"
    npy, meta = cache.last_path, cache.last_path.with_suffix(".json")
    # corrupt: altered data (checksum), truncated file, garbage sidecar, missing array
    raw = bytearray(npy.read_bytes())
    raw[-3] ^= 0xFF
    npy.write_bytes(bytes(raw))
    cache.get(m, x, "fc")
    assert cache.status == "corrupt"
    npy.write_bytes(npy.read_bytes()[:-40])
    np.testing.assert_allclose(cache.get(m, x, "fc"), f3)
    assert cache.status == "corrupt"
    meta.write_text("{not json")
    cache.get(m, x, "fc")
    assert cache.status == "corrupt"
    npy.unlink()
    cache.get(m, x, "fc")
    assert cache.status == "corrupt" and cache.get(m, x, "fc") is not None and cache.status == "hit"
    info = json.loads(meta.read_text())
    assert info["layer"] == "fc" and info["shape"] == [37, 6]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_head_on_cached_features_equals_training_with_frozen_layers(tmp_path, data):
    x, y = data
    base = _model(3)
    a = T.replace_head(base, 3, seed=5)
    b = T.replace_head(base, 3, seed=5)
    y3 = y % 3
    T.train_last(a, 1)
    T.train_last(b, 1)
    frozen = [w.copy() for l in a.layers[:4] for w in l.get_weights()]
    # (1) the frozen layers run every step
    a.compile(optimizer="sgd")
    a.seed = 11
    a.fit(x, y3, epochs=2, batch_size=8, verbose=0)
    # (2) the head alone on cached features, same batches (same seed)
    feats = T.FeatureCache(tmp_path).get(b, x, T.frozen_prefix(b) - 1)
    T.fit_head(b, feats, y3, epochs=2, batch_size=8, optimizer="sgd", seed=11)
    for wa, wb in zip(a.layers[-1].get_weights(), b.layers[-1].get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    for w0, w1 in zip(frozen, [w for l in a.layers[:4] for w in l.get_weights()]):
        np.testing.assert_array_equal(w0, w1)
    np.testing.assert_allclose(a.predict(x), b.predict(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="do not fit layer"):
        T.fit_head(b, feats[:, :3], y3, start=4)
