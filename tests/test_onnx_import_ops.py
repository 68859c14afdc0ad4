"""ONNX import, op by op: small graphs built with onnx.helper, run by onnxruntime and by nbcnn."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import nbcnn  # noqa: E402
from nbcnn.onnx_common import OnnxError  # noqa: E402

RNG = np.random.default_rng(0)


def _w(*shape, scale=0.5):
    return RNG.normal(0, scale, shape).astype(np.float32)


def make(nodes, x_shape, inits=(), opset=17, out="y", out_shape=None, name="g"):
    """A model with one float input ``x`` of shape (N, ...) and one output ``out``."""
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()])
    ir = 3 if opset < 8 else (7 if opset <= 15 else 8)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
    if out_shape is None:  # the checker wants a shape on graph outputs: take the inferred one
        inferred = onnx.shape_inference.infer_shapes(m)
        dims = next((vi.type.tensor_type.shape for vi in inferred.graph.value_info if vi.name == out), None)
        out_vi = m.graph.output[0]
        if dims is not None:
            out_vi.type.tensor_type.shape.CopyFrom(dims)
        else:
            out_vi.type.tensor_type.shape.SetInParent()
    if ir < 4:
        for k, v in dict(inits).items():
            arr = np.asarray(v)
            m.graph.input.append(helper.make_tensor_value_info(
                k, helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape)))
    return m


def check(model, x, tmp_path, rtol=1e-4, dtype="float32"):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    m = nbcnn.load_onnx(path, device="cpu", dtype=dtype)
    got = _raw(m, x)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(np.abs(want).max(), 1e-6)
    err = np.abs(got - want).max() / scale
    assert err <= rtol, f"relative error {err:.2e}"
    return m


def _raw(m, x):
    """The model's output as computed (predict adds a softmax to models without one)."""
    m.compile(loss="mse", optimizer="sgd")
    return m.predict(x)


X4 = lambda *s: RNG.normal(0, 1, s).astype(np.float32)  # noqa: E731


# ----------------------------------------------------------------------------------------------
# convolution
# ----------------------------------------------------------------------------------------------

CONV_CASES = [
    dict(),
    dict(strides=[2, 2]),
    dict(pads=[1, 2, 0, 1]),                       # asymmetric: top 1, left 2, bottom 0, right 1
    dict(dilations=[2, 2], pads=[2, 2, 2, 2]),
    dict(dilations=[2, 1], strides=[2, 1]),
    dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(auto_pad="SAME_LOWER", strides=[2, 2]),
    dict(auto_pad="VALID"),
]


@pytest.mark.parametrize("attrs", CONV_CASES, ids=[str(c) for c in CONV_CASES])
@pytest.mark.parametrize("bias", [True, False])
def test_conv(attrs, bias, tmp_path):
    w = _w(4, 3, 3, 3)
    inits = {"w": w}
    ins = ["x", "w"]
    if bias:
        inits["b"] = _w(4)
        ins.append("b")
    node = helper.make_node("Conv", ins, ["y"], name="conv", kernel_shape=[3, 3], **attrs)
    check(make([node], (3, 9, 8), inits), X4(2, 3, 9, 8), tmp_path)


@pytest.mark.parametrize("group,K", [(2, 4), (4, 4), (4, 8)])
def test_grouped_and_depthwise_conv(group, K, tmp_path):
    w = _w(K, 4 // group, 3, 3)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="gconv", group=group, pads=[1, 1, 1, 1])
    check(make([node], (4, 7, 7), {"w": w}), X4(2, 4, 7, 7), tmp_path)


def test_conv_relu_fused(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    m = check(make(nodes, (3, 6, 6), {"w": _w(2, 3, 3, 3), "b": _w(2)}), X4(2, 3, 6, 6), tmp_path)
    assert any("fused" in n for n in m.onnx_import_notes)


# ----------------------------------------------------------------------------------------------
# pooling and normalisation
# ----------------------------------------------------------------------------------------------

POOL_CASES = [
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[1, 1], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 0], ceil_mode=1),
]


def test_pool_pads_without_exact_form_refused(tmp_path):
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[3, 2], strides=[2, 1],
                            pads=[1, 0, 1, 1])
    path = tmp_path / "p.onnx"
    onnx.save(make([node], (2, 9, 10)), path)
    with pytest.raises(OnnxError, match="MaxPool node 'pool'.*cannot be expressed"):
        nbcnn.load_onnx(path)


@pytest.mark.parametrize("attrs", POOL_CASES, ids=[str(c) for c in POOL_CASES])
def test_maxpool(attrs, tmp_path):
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", **attrs)
    check(make([node], (2, 9, 10)), X4(2, 2, 9, 10), tmp_path)


@pytest.mark.parametrize("attrs", POOL_CASES, ids=[str(c) for c in POOL_CASES])
@pytest.mark.parametrize("cip", [0, 1])
def test_avgpool(attrs, cip, tmp_path):
    node = helper.make_node("AveragePool", ["x"], ["y"], name="pool", count_include_pad=cip, **attrs)
    check(make([node], (2, 9, 10)), X4(2, 2, 9, 10), tmp_path)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool_keeps_onnx_shape(op, tmp_path):
    node = helper.make_node(op, ["x"], ["y"], name="gp")
    check(make([node], (3, 5, 4)), X4(2, 3, 5, 4), tmp_path)


def test_batchnorm_and_following_scale_folded(tmp_path):
    C = 3
    inits = {"s": np.abs(_w(C)) + 0.5, "b": _w(C), "m": _w(C), "v": np.abs(_w(C)) + 0.5,
             "sc": np.abs(_w(C)) + 0.5, "sh": _w(C)}
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"], name="bn", epsilon=1e-5),
             helper.make_node("Unsqueeze", ["sc"], ["sc4"], name="u1", axes=[1, 2]),
             helper.make_node("Mul", ["n", "sc4"], ["n2"], name="mul"),
             helper.make_node("Unsqueeze", ["sh"], ["sh4"], name="u2", axes=[1, 2]),
             helper.make_node("Add", ["n2", "sh4"], ["y"], name="add")]
    m = check(make(nodes, (C, 4, 4), inits, opset=9), X4(2, C, 4, 4), tmp_path)
    assert sum("folded" in n for n in m.onnx_import_notes) == 2


def test_lrn(tmp_path):
    node = helper.make_node("LRN", ["x"], ["y"], name="lrn", size=5, alpha=1e-2, beta=0.75, bias=2.0)
    check(make([node], (7, 4, 4)), X4(2, 7, 4, 4), tmp_path)


# ----------------------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------------------

ACTS = [("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Elu", {"alpha": 0.7}), ("Sigmoid", {}), ("Tanh", {}),
        ("HardSwish", {}), ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5})]


@pytest.mark.parametrize("op,attrs", ACTS, ids=[a[0] for a in ACTS])
def test_activation(op, attrs, tmp_path):
    node = helper.make_node(op, ["x"], ["y"], name="act", **attrs)
    check(make([node], (2, 3, 3)), X4(2, 2, 3, 3) * 3, tmp_path)


@pytest.mark.parametrize("opset", [9, 13])
def test_clip_as_relu6(opset, tmp_path):
    if opset < 11:
        node = helper.make_node("Clip", ["x"], ["y"], name="clip", min=0.0, max=6.0)
        inits = {}
    else:
        node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")
        inits = {"lo": np.float32(0), "hi": np.float32(6)}
    check(make([node], (2, 3, 3), inits, opset=opset), X4(2, 2, 3, 3) * 5, tmp_path)


# ----------------------------------------------------------------------------------------------
# dense, shape ops, merges, softmax
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("transB,alpha,beta", [(1, 1.0, 1.0), (0, 0.5, 2.0)])
def test_flatten_gemm(transB, alpha, beta, tmp_path):
    W = _w(5, 12) if transB else _w(12, 5)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "W", "c"], ["y"], name="fc", transB=transB, alpha=alpha, beta=beta)]
    check(make(nodes, (3, 2, 2), {"W": W, "c": _w(5)}), X4(2, 3, 2, 2), tmp_path)


def test_pytorch_style_flatten_chain(tmp_path):
    """Shape -> Gather(0) -> Unsqueeze -> Concat([N, -1]) -> Reshape: folded to a Flatten."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Constant", [], ["i0"], name="c0", value=numpy_helper.from_array(np.int64(0))),
             helper.make_node("Gather", ["s", "i0"], ["n"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["n", "ax"], ["n1"], name="unsq"),
             helper.make_node("Constant", [], ["m1"], name="c1",
                              value=numpy_helper.from_array(np.array([-1], np.int64))),
             helper.make_node("Concat", ["n1", "m1"], ["shape2"], name="cat", axis=0),
             helper.make_node("Reshape", ["x", "shape2"], ["r"], name="reshape"),
             helper.make_node("MatMul", ["r", "W"], ["y"], name="mm")]
    check(make(nodes, (2, 3, 3), {"ax": np.array([0], np.int64), "W": _w(18, 4)}), X4(3, 2, 3, 3), tmp_path)


def test_reshape_zero_minus_one(tmp_path):
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
             helper.make_node("Gemm", ["r", "W"], ["y"], name="fc")]
    check(make(nodes, (2, 2, 2), {"shape": np.array([0, -1], np.int64), "W": _w(8, 3)}), X4(2, 2, 2, 2), tmp_path)


def test_channel_shuffle(tmp_path):
    g, C = 2, 6
    nodes = [helper.make_node("Reshape", ["x", "s5"], ["a"], name="r1"),
             helper.make_node("Transpose", ["a"], ["b"], name="t", perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["b", "s4"], ["y"], name="r2")]
    inits = {"s5": np.array([1, g, C // g, 3, 3], np.int64), "s4": np.array([1, C, 3, 3], np.int64)}
    check(make(nodes, (C, 3, 3), inits), X4(1, C, 3, 3), tmp_path)


@pytest.mark.parametrize("op", ["Add", "Sum", "Mul", "Sub"])
def test_merge_two_branches(op, tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w2"], ["b"], name="c2"),
             helper.make_node(op, ["a", "b"], ["y"], name="merge")]
    check(make(nodes, (3, 5, 5), {"w1": _w(2, 3, 3, 3), "w2": _w(2, 3, 1, 1)}), X4(2, 3, 5, 5), tmp_path)


@pytest.mark.parametrize("op", ["Add", "Mul", "Sub", "Div"])
def test_per_channel_constant(op, tmp_path):
    c = (np.abs(_w(1, 3, 1, 1)) + 0.5).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node(op, ["r", "c"], ["y"], name="op")]
    check(make(nodes, (3, 4, 4), {"c": c}), X4(2, 3, 4, 4), tmp_path)


def test_concat_branches(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
             helper.make_node("MaxPool", ["x"], ["b"], name="p", kernel_shape=[3, 3], strides=[1, 1]),
             helper.make_node("Concat", ["a", "b"], ["y"], name="cat", axis=1)]
    check(make(nodes, (3, 5, 5), {"w1": _w(2, 3, 3, 3)}), X4(2, 3, 5, 5), tmp_path)


def test_pad(tmp_path):
    nodes = [helper.make_node("Pad", ["x", "pads"], ["y"], name="pad", mode="constant")]
    check(make(nodes, (2, 3, 3), {"pads": np.array([0, 0, 1, 2, 0, 0, 0, 1], np.int64)}), X4(2, 2, 3, 3), tmp_path)


@pytest.mark.parametrize("opset", [7, 12, 13, 21])
def test_dropout_softmax_opsets(opset, tmp_path):
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "W", "c"], ["g"], name="fc", transB=1),
             helper.make_node("Dropout", ["g"], ["d"], name="drop"),
             helper.make_node("Softmax", ["d"], ["y"], name="sm", axis=1)]
    check(make(nodes, (2, 2, 2), {"W": _w(4, 8), "c": _w(4)}, opset=opset), X4(3, 2, 2, 2), tmp_path)


def test_logsoftmax(tmp_path):
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("LogSoftmax", ["f"], ["y"], name="lsm", axis=-1)]
    check(make(nodes, (2, 2, 2)), X4(3, 2, 2, 2), tmp_path)


def test_global_pool_squeeze_gemm(tmp_path):
    """GlobalAveragePool -> Squeeze(2, 3) -> Gemm, as in many exported classifiers."""
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"], name="gap"),
             helper.make_node("Squeeze", ["g", "axes"], ["s"], name="sq"),
             helper.make_node("Gemm", ["s", "W"], ["y"], name="fc", transB=1)]
    check(make(nodes, (4, 3, 3), {"axes": np.array([2, 3], np.int64), "W": _w(3, 4)}), X4(2, 4, 3, 3), tmp_path)


def test_float64_import(tmp_path):
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    m = check(make([node], (3, 5, 5), {"w": _w(2, 3, 3, 3)}), X4(2, 3, 5, 5), tmp_path, dtype="float64")
    assert m.dtype == np.float64


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------

def test_unsupported_op_named(tmp_path):
    node = helper.make_node("Einsum", ["x", "x"], ["y"], name="weird", equation="nchw,nchw->nchw")
    path = tmp_path / "bad.onnx"
    onnx.save(make([node], (2, 3, 3), opset=17), path)
    with pytest.raises(OnnxError, match=r"Einsum node 'weird' \(opset 17\).*not supported.*Conv"):
        nbcnn.load_onnx(path)


def test_unsupported_attribute_value(tmp_path):
    node = helper.make_node("Pad", ["x", "pads"], ["y"], name="p", mode="reflect")
    path = tmp_path / "bad.onnx"
    onnx.save(make([node], (2, 3, 3), {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}), path)
    with pytest.raises(OnnxError, match="Pad node 'p'.*reflect"):
        nbcnn.load_onnx(path)


def test_not_onnx_and_truncated(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"this is not a protobuf at all \x00\xff" * 10)
    with pytest.raises(OnnxError, match="not a valid ONNX"):
        nbcnn.load_onnx(bad)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    good = make([node], (3, 5, 5), {"w": _w(2, 3, 3, 3)}).SerializeToString()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(OnnxError):
        nbcnn.load_onnx(cut)
    with pytest.raises(OnnxError, match="no such"):
        nbcnn.load_onnx(tmp_path / "missing.onnx")


def test_dynamic_spatial_shape_refused(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])])
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(OnnxError, match="fixed"):
        nbcnn.load_onnx(path)
