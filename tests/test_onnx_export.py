"""ONNX export: every model kind nbcnn builds, checked by onnxruntime and by the round trip back."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import nbcnn  # noqa: E402
from nbcnn import layers as L  # noqa: E402
from nbcnn import zoo  # noqa: E402
from nbcnn.onnx_common import OnnxError  # noqa: E402


def _ort(path, x):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _modern_graph():
    """Residual + concatenation graph with batch norm, grouped, dilated and depthwise convolution."""
    x = nbcnn.Input((3, 12, 12), name="image")
    h = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)
    h = L.BatchNormalization(name="stem_bn")(h)
    h = L.ReLU(name="stem_relu")(h)
    a = L.Conv2D(8, 3, padding="same", groups=2, activation="relu", name="grouped")(h)
    b = L.Conv2D(8, 3, padding="same", dilation_rate=2, name="dilated")(h)
    r = L.Add(name="add")([a, b])
    d = L.DepthwiseConv2D(3, padding="same", name="dw")(r)
    d = L.BatchNormalization(name="dw_bn")(d)
    d = L.ReLU6(name="dw_relu6")(d)
    c = L.Concatenate(axis=1, name="cat")([d, L.IdentityShortcut(8, name="sc")(h)])
    c = L.LocalResponseNormalization(3, name="lrn")(c)
    c = L.MaxPool2D(2, name="pool")(c)
    c = L.AvgPool2D(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False, name="apool")(c)
    g = L.GlobalAveragePooling2D(name="gap")(c)
    y = L.Dense(5, name="head")(g)
    return nbcnn.Model(x, y, name="modern", device="cpu", seed=3)


def _models():
    out = [("lenet5", lambda: zoo.lenet5(device="cpu", seed=1)),
           ("lenet5_relu_max", lambda: zoo.lenet5(activation="relu", pooling="max", device="cpu", seed=1)),
           ("small_vgg", lambda: zoo.small_vgg(device="cpu", seed=1)),
           ("modern_graph", _modern_graph)]
    for name, kw in (("resnet20", {"input_shape": (3, 32, 32)}), ("mobilenet", {"input_shape": (3, 32, 32)})):
        if hasattr(zoo, name):
            out.append((name, lambda n=name, k=kw: getattr(zoo, n)(num_classes=10, device="cpu", seed=1, **k)))
    return out


def _randomize_bn(model, rng):
    """Non-trivial moving statistics, so the exported BatchNormalization is really exercised."""
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            ws = layer.get_weights()
            ws[-2] = rng.normal(0, 0.2, ws[-2].shape).astype(ws[-2].dtype)
            ws[-1] = rng.uniform(0.5, 1.5, ws[-1].shape).astype(ws[-1].dtype)
            layer.set_weights(ws)


@pytest.mark.parametrize("name,make", _models(), ids=[m[0] for m in _models()])
def test_export_matches_onnxruntime_and_round_trips(name, make, tmp_path):
    rng = np.random.default_rng(0)
    model = make()
    model.build()
    _randomize_bn(model, rng)
    shape = model._input_shapes()[0]
    x = rng.random((3, *shape), dtype=np.float32)
    path = tmp_path / f"{name}.onnx"
    nbcnn.export_onnx(model, path)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    want = model.predict(x)
    got = _ort(path, x)
    assert got.shape == want.shape
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4
    # the batch axis is dynamic
    assert _ort(path, x[:1]).shape[0] == 1
    back = nbcnn.load_onnx(path, device="cpu")
    assert np.abs(back.predict(x) - want).max() / np.abs(want).max() <= 1e-4
    # ... and it trains the same: one step from the same weights gives the same weights
    # (the file has no dropout, ONNX's Dropout being the identity at inference: switch it off here)
    for layer in model.layers:
        if isinstance(layer, L.Dropout):
            layer.rate = 0.0
    # (batch 16: batch norm over 3 images of a 1x1 map would amplify rounding differences)
    xt = rng.random((16, *shape), dtype=np.float32)
    y = np.arange(16) % 3
    model.compile(loss="cross_entropy", optimizer="sgd")
    back.compile(loss="cross_entropy", optimizer="sgd")
    model.train_on_batch(xt, y)
    back.train_on_batch(xt, y)
    a = np.concatenate([w.ravel() for w in model.get_weights()])
    b = np.concatenate([w.ravel() for w in back.get_weights()])
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1e-4 * max(np.abs(a).max(), 1.0)


def test_model_method_static_batch_and_opset(tmp_path):
    model = zoo.lenet5(device="cpu", seed=2)
    path = tmp_path / "l.onnx"
    nbcnn.export_onnx(model, path, opset=13, dynamic_batch=False)
    proto = onnx.load(path)
    assert proto.opset_import[0].version == 13
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    with pytest.raises(OnnxError, match="opset"):
        nbcnn.export_onnx(model, path, opset=5)


def test_fine_tune_imported_model_end_to_end(tmp_path):
    """load_onnx -> new head -> freeze -> fit -> export again."""
    from nbcnn import transfer as T

    src = tmp_path / "src.onnx"
    nbcnn.export_onnx(zoo.small_vgg(device="cpu", seed=4), src)
    model = nbcnn.load_onnx(src, device="cpu")
    tl = T.replace_head(model, 3)
    T.train_last(tl, 1)
    rng = np.random.default_rng(1)
    x = rng.random((24, 1, 28, 28), dtype=np.float32)
    y = np.arange(24) % 3
    x[y == 1] += 0.5
    tl.compile(loss="cross_entropy", optimizer="adam")
    hist = tl.fit(x, y, epochs=5, batch_size=8, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    out = tmp_path / "tuned.onnx"
    nbcnn.export_onnx(tl, out)
    assert np.abs(_ort(out, x) - tl.predict(x)).max() <= 1e-4
