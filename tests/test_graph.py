"""Graph models (functional API): gradients by finite differences through fan-out and merges,
shared layers, Sequential equivalence, save/load, multi-input/output, build-time errors."""
from __future__ import annotations

import numpy as np
import pytest

import nbcnn
from nbcnn import layers as L
from nbcnn.engine import GraphError


def _numeric_grads(model, x, y, eps=1e-6, per_array=6):
    """Central differences of the loss on a few entries of every weight array (NaN elsewhere)."""
    weights = model.get_weights()
    pick = np.random.default_rng(0)
    out = []
    for i, w in enumerate(weights):
        g = np.full_like(w, np.nan)
        idx = np.unique(np.r_[0, w.size - 1, pick.choice(w.size, min(w.size, per_array), replace=False)])
        for j in idx:
            g.flat[j] = 0.0
            for sgn in (1, -1):
                ws = [a.copy() for a in weights]
                ws[i].flat[j] += sgn * eps
                model.set_weights(ws)
                out_ = model._forward_eval(model._to_batch(x), logits=True)
                g.flat[j] += sgn * model.loss.loss_and_grad(out_, y, grad=False)[0] / (2 * eps)
        out.append(g)
    model.set_weights(weights)
    return out


def _check_grads(model, x, y):
    loss, grads = model.gradients(x, y)
    assert np.isfinite(loss)
    for k, (a, n) in enumerate(zip(grads, _numeric_grads(model, x, y))):
        m = ~np.isnan(n)
        np.testing.assert_allclose(a[m], n[m], rtol=1e-5, atol=1e-8, err_msg=f"weight array {k}")


def _branchy(seed=0, dtype="float64"):
    """Fan-out (h feeds four consumers), Add, Concatenate, Subtract, Multiply, Average, odd sizes."""
    x = nbcnn.Input((2, 7, 5))
    h = L.Conv2D(3, 3, padding=1, activation="tanh")(x)
    a = L.Conv2D(3, 3, padding="same", activation="relu")(h)
    s = L.Add()([h, a])
    b = L.Conv2D(2, 3, stride=2, padding=1, activation="tanh")(h)
    p = L.MaxPool2D(2, padding=1)(s)
    c = L.Concatenate(axis=1)([p, b, L.AvgPool2D(2, padding=1)(h)])
    f = L.Flatten()(c)
    d1 = L.Dense(4, activation="tanh")(f)
    d2 = L.Dense(4, activation="sigmoid")(f)
    m = L.Multiply()([d1, d2, d1])
    u = L.Subtract()([m, L.Average()([d1, d2])])
    out = L.Dense(3)(u)
    return nbcnn.Model(x, out, device="cpu", dtype=dtype, seed=seed)


def test_finite_differences_through_fanout_and_merges():
    m = _branchy()
    m.compile(loss="cross_entropy", optimizer="sgd")
    r = np.random.default_rng(1)
    _check_grads(m, r.standard_normal((3, 2, 7, 5)), r.integers(0, 3, 3))


def test_finite_differences_with_mse_and_one_sample():
    m = _branchy(seed=4)
    m.compile(loss="mse", optimizer="sgd")
    r = np.random.default_rng(2)
    _check_grads(m, r.standard_normal((1, 2, 7, 5)), r.standard_normal((1, 3)))


def test_shared_layer_sums_the_gradients_of_its_calls():
    """One conv and one Dense each applied twice (Siamese towers on two views of the input)."""
    x = nbcnn.Input((2, 6, 6))
    conv = L.Conv2D(2, 3, padding=1, activation="tanh", name="tower_conv")
    a = conv(x)
    b = conv(L.AvgPool2D(3, stride=1, padding=1)(x))
    dense = L.Dense(4, activation="tanh", name="tower")
    fa, fb = dense(L.Flatten()(a)), dense(L.Flatten()(b))
    out = L.Dense(3)(L.Concatenate(axis=1)([fa, L.Multiply()([fa, fb])]))
    m = nbcnn.Model(x, out, dtype="float64", seed=2, device="cpu")
    assert [l.name for l in m.layers].count("tower") == 1
    assert len(m.get_weights()) == 6
    m.compile(loss="cross_entropy", optimizer="sgd")
    r = np.random.default_rng(3)
    _check_grads(m, r.standard_normal((3, 2, 6, 6)), r.integers(0, 3, 3))
    assert "tower (shared)" in m.summary(print_fn=None) or "tower[1] (shared)" in m.summary(print_fn=None)


def _seq_and_graph(seed=5):
    layers_a = [L.Conv2D(3, 3, padding=1, activation="relu", input_shape=(1, 8, 8)), L.MaxPool2D(2),
                L.Flatten(), L.Dropout(0.3), L.Dense(6, activation="tanh"), L.Dense(3)]
    seq = nbcnn.Sequential(layers_a, seed=seed, device="cpu")
    x = nbcnn.Input((1, 8, 8))
    h = x
    for l in [L.Conv2D(3, 3, padding=1, activation="relu"), L.MaxPool2D(2), L.Flatten(), L.Dropout(0.3),
              L.Dense(6, activation="tanh"), L.Dense(3)]:
        h = l(h)
    return seq, nbcnn.Model(x, h, seed=seed, device="cpu")


def test_graph_and_equivalent_sequential_give_identical_results():
    seq, graph = _seq_and_graph()
    r = np.random.default_rng(0)
    x = r.random((20, 1, 8, 8), dtype=np.float32)
    y = r.integers(0, 3, 20)
    for m in (seq, graph):
        m.compile(optimizer=nbcnn.optim.SGD(0.1, momentum=0.9))
    for a, b in zip(seq.get_weights(), graph.get_weights()):
        np.testing.assert_array_equal(a, b)   # same seed, same initialisation order
    hs = seq.fit(x, y, epochs=2, batch_size=6, verbose=0).history["loss"]
    hg = graph.fit(x, y, epochs=2, batch_size=6, verbose=0).history["loss"]
    assert hs == hg
    np.testing.assert_array_equal(seq.predict(x), graph.predict(x))
    assert seq.evaluate(x, y) == graph.evaluate(x, y)
    assert seq.count_params() == graph.count_params()


def test_save_load_round_trip_predicts_bit_identically(tmp_path):
    m = _branchy(dtype="float32", seed=3)
    m.compile(optimizer="adam")
    r = np.random.default_rng(4)
    x = r.random((8, 2, 7, 5), dtype=np.float32)
    y = r.integers(0, 3, 8)
    m.fit(x, y, epochs=1, batch_size=4, verbose=0)
    m.save(tmp_path / "g.nbcnn")
    back = nbcnn.load_model(tmp_path / "g.nbcnn")
    assert type(back) is nbcnn.Model
    assert [l.name for l in back.layers] == [l.name for l in m.layers]
    np.testing.assert_array_equal(back.predict(x), m.predict(x))
    assert back.summary(print_fn=None) == m.summary(print_fn=None)
    # the optimiser state came back: one more step gives the same weights
    m.train_on_batch(x, y)
    back.train_on_batch(x, y)
    for a, b in zip(m.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_file_of_the_previous_release_still_loads():
    from pathlib import Path

    here = Path(__file__).parent / "data"
    want = np.load(here / "sequential_v1_expected.npz")
    m = nbcnn.load_model(here / "sequential_v1.nbcnn")
    assert type(m) is nbcnn.Sequential and m.metadata == {"note": "fixture"}
    np.testing.assert_array_equal(m.predict(want["x"]), want["p"])
    m.train_on_batch(want["x"], np.array([0, 1, 2, 0]))  # optimiser state restored: trains on


def test_multi_input_multi_output_predict():
    a, b = nbcnn.Input((4,), name="left"), nbcnn.Input((4,), name="right")
    d = L.Dense(3, name="shared")
    o1 = L.Add()([d(a), d(b)])
    o2 = L.Dense(2, activation="softmax")(L.Concatenate(axis=-1)([a, b]))
    m = nbcnn.Model([a, b], [o1, o2], device="cpu", seed=1)
    r = np.random.default_rng(0)
    xa, xb = r.random((5, 4), dtype=np.float32), r.random((5, 4), dtype=np.float32)
    p1, p2 = m.predict([xa, xb], batch_size=2)
    W, bias = m.get_layer("shared").get_weights()
    logits = (xa @ W + bias) + (xb @ W + bias)
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(p1, e / e.sum(1, keepdims=True), rtol=1e-5)
    W2, b2 = m.layers[-1].get_weights()
    z = np.concatenate([xa, xb], 1) @ W2 + b2
    e = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(p2, e / e.sum(1, keepdims=True), rtol=1e-5)
    m.compile()
    with pytest.raises(ValueError, match="one input and one output"):
        m.fit([xa, xb], np.zeros(5, int), verbose=0)
    with pytest.raises(ValueError, match="2 inputs"):
        m.predict(xa)


def test_frozen_layers_and_named_layer_access():
    m = _branchy(dtype="float32")
    m.compile(optimizer=nbcnn.optim.SGD(0.5))
    r = np.random.default_rng(0)
    x = r.random((4, 2, 7, 5), dtype=np.float32)
    y = r.integers(0, 3, 4)
    conv = m.get_layer("conv2d_1")
    conv.trainable = False
    before = conv.get_weights()
    head_before = m.layers[-1].get_weights()
    m.train_on_batch(x, y)
    for a, b in zip(before, conv.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(head_before[0], m.layers[-1].get_weights()[0])
    assert m.count_trainable_params() == m.count_params() - sum(w.size for w in before)
    with pytest.raises(ValueError, match="no layer named"):
        m.get_layer("nope")


def test_build_time_errors_name_the_layer():
    x = nbcnn.Input((3, 8, 8))
    a = L.Conv2D(4, 3, padding=1, name="left")(x)
    b = L.Conv2D(5, 3, padding=1, name="right")(x)
    with pytest.raises(ValueError, match=r"Add.*one shape.*\(None, 4, 8, 8\).*\(None, 5, 8, 8\)"):
        L.Add(name="sum")([a, b])
    with pytest.raises(ValueError, match="'sum'"):
        L.Add(name="sum")([a, b])
    c = L.Conv2D(4, 3, name="small")(x)
    with pytest.raises(ValueError, match=r"Concatenate 'cat'.*mismatch"):
        L.Concatenate(axis=1, name="cat")([a, c])
    with pytest.raises(ValueError, match="exactly 2"):
        L.Subtract()([a, a, a])
    with pytest.raises(TypeError, match="list"):
        L.Add()(a)
    with pytest.raises(TypeError, match="one tensor"):
        L.Dense(3)([a, a])
    # a tensor not connected to the inputs
    other = nbcnn.Input((3, 8, 8))
    s = L.Add(name="join")([a, L.Conv2D(4, 3, padding=1)(other)])
    with pytest.raises(GraphError, match="not connected to the model's inputs"):
        nbcnn.Model(x, s)
    with pytest.raises(GraphError, match="does not reach"):
        nbcnn.Model([x, other], a)
    # a layer called on tensors of two different models
    m1 = nbcnn.Model(x, L.Flatten()(a), name="first")
    y = nbcnn.Input((3, 8, 8))
    m2 = nbcnn.Model(y, L.Flatten()(L.Conv2D(4, 3, padding=1)(y)), name="second")
    with pytest.raises(ValueError, match="two different models"):
        L.Add()([m1.outputs[0], m2.outputs[0]])
    # duplicate names
    z = nbcnn.Input((4,))
    with pytest.raises(GraphError, match="duplicate layer name 'd'"):
        nbcnn.Model(z, L.Dense(2, name="d")(L.Dense(4, name="d")(z)))
    # a shared layer must see one input shape
    sh = L.Flatten()
    sh(x)
    with pytest.raises(ValueError, match="same input shape"):
        sh(nbcnn.Input((2, 2, 2)))
    # Sequential cannot hold a merge layer
    with pytest.raises(TypeError, match="Model"):
        nbcnn.Sequential([L.Add()])


def test_cycle_in_a_file_is_rejected(tmp_path):
    import json
    import zipfile

    x = nbcnn.Input((4,))
    m = nbcnn.Model(x, L.Dense(2)(L.Dense(3)(x)), seed=0)
    m.save(tmp_path / "m.nbcnn")
    with zipfile.ZipFile(tmp_path / "m.nbcnn") as zf:
        index = json.loads(zf.read("nbcnn_model.json"))
        files = {n: zf.read(n) for n in zf.namelist()}
    index["model"]["nodes"][0][1] = [2]   # the first Dense reads the second one's output
    files["nbcnn_model.json"] = json.dumps(index).encode()
    with zipfile.ZipFile(tmp_path / "cyc.nbcnn", "w") as zf:
        for n, data in files.items():
            zf.writestr(n, data)
    with pytest.raises(nbcnn.serialization.ModelFileError, match="cycle"):
        nbcnn.load_model(tmp_path / "cyc.nbcnn")


def test_engine_is_deterministic_and_reuses_accumulation_buffers():
    m = _branchy(dtype="float32", seed=9)
    m.compile(optimizer="sgd")
    r = np.random.default_rng(5)
    x = r.random((5, 2, 7, 5), dtype=np.float32)
    y = r.integers(0, 3, 5)
    l1, g1 = m.gradients(x, y)
    bufs = {k: id(v) for k, v in m._graph._accum.items()}
    assert bufs  # fan-out tensors got an accumulation buffer
    l2, g2 = m.gradients(x, y)
    assert l1 == l2
    for a, b in zip(g1, g2):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    assert {k: id(v) for k, v in m._graph._accum.items()} == bufs


def test_activations_are_released_after_backward():
    m = _branchy(dtype="float32", seed=1)
    m.compile(optimizer="sgd")
    r = np.random.default_rng(0)
    m.train_on_batch(r.random((2, 2, 7, 5), dtype=np.float32), np.array([0, 1]))
    assert all(getattr(l, "_cache", None) is None for l in m.layers)


def _train_mode_loss(model, x, y):
    g = model._graph
    g.plan()
    out = g.forward([model._to_batch(x)], True)[g.outputs[0]]
    return model.loss.loss_and_grad(out, y, grad=False)[0]


def test_finite_differences_through_batch_norm_gap_dilated_grouped_and_shortcut():
    """BN in training mode (batch statistics), global pooling, dilated, grouped, depthwise and
    separable convolutions, a parameter-free strided shortcut, fan-out and Add, in float64."""
    x = nbcnn.Input((4, 9, 8))
    h = L.Conv2D(4, 3, padding="same", dilation_rate=2, activation="tanh")(x)
    h = L.BatchNormalization(momentum=0.9)(h)
    a = L.Conv2D(8, 3, strides=2, padding=1, groups=2)(h)
    a = L.BatchNormalization(scale=False)(a)
    a = L.ReLU()(a)
    s = L.Add()([a, L.IdentityShortcut(8, strides=2)(h)])
    d = L.DepthwiseConv2D(3, padding="same", activation="tanh")(s)
    e = L.SeparableConv2D(6, 3, padding="same")(s)
    c = L.Concatenate(axis=1)([L.GlobalAveragePooling2D()(d), L.GlobalAveragePooling2D()(e)])
    out = L.Dense(3)(c)
    m = nbcnn.Model(x, out, dtype="float64", seed=7, device="cpu")
    m.compile(loss="cross_entropy", optimizer="sgd")
    r = np.random.default_rng(6)
    xs, ys = r.standard_normal((5, 4, 9, 8)), r.integers(0, 3, 5)
    loss, grads = m.gradients(xs, ys)
    weights = m.get_weights()
    eps = 1e-6
    pick = np.random.default_rng(1)
    checked = 0
    for i, (w, gr) in enumerate(zip(weights, grads)):
        if gr is None:
            continue
        for j in np.unique(np.r_[0, w.size - 1, pick.choice(w.size, min(w.size, 4), replace=False)]):
            ws = [a_.copy() for a_ in weights]
            ws[i].flat[j] += eps
            m.set_weights(ws)
            lp = _train_mode_loss(m, xs, ys)
            ws[i].flat[j] -= 2 * eps
            m.set_weights(ws)
            lm = _train_mode_loss(m, xs, ys)
            fd = (lp - lm) / (2 * eps)
            assert abs(fd - gr.flat[j]) <= 1e-5 * max(1.0, abs(fd)), (i, j, fd, gr.flat[j])
            checked += 1
    m.set_weights(weights)
    assert checked > 40
