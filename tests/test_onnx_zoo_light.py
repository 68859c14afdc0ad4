"""The classic model-zoo CNNs that the onnx package ships as "light" test models, imported and run.

Their weights are ConstantOfShape placeholders (one constant value): each is replaced by a random
initializer of its shape (He-scaled filters, positive batch-norm variances), then onnxruntime and
``load_onnx(...).predict`` run the same file on the same image and must agree.
"""
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

import nbcnn  # noqa: E402

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
MODELS = ["bvlc_alexnet", "zfnet512", "vgg19", "resnet50", "squeezenet", "inception_v2", "densenet121",
          "shufflenet"]


def randomized(proto, seed=0):
    """``proto`` with every ConstantOfShape placeholder replaced by a random initializer."""
    rng = np.random.default_rng(seed)
    g = proto.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    role = {}
    for node in g.node:
        if node.op_type == "BatchNormalization":
            for name, r in zip(node.input[1:5], ("scale", "shift", "shift", "var")):
                role[name] = r
        elif node.op_type in ("Conv", "Gemm"):
            role[node.input[1]] = "weight"
            if len(node.input) > 2:
                role[node.input[2]] = "shift"
        elif node.op_type == "Unsqueeze":
            role[node.input[0]] = "unsq"
        elif node.op_type in ("Mul", "Add"):
            for name in node.input:
                if role.get(name) == "unsq_src":
                    pass
    # Unsqueeze-d constants feed Mul (a scale) or Add (a shift)
    unsq_out = {node.output[0]: node.input[0] for node in g.node if node.op_type == "Unsqueeze"}
    for node in g.node:
        if node.op_type in ("Mul", "Add"):
            for name in node.input:
                if name in unsq_out:
                    role[unsq_out[name]] = "scale" if node.op_type == "Mul" else "shift"
    keep = []
    new_inits = []
    for node in g.node:
        if node.op_type != "ConstantOfShape":
            keep.append(node)
            continue
        shape = tuple(int(v) for v in consts[node.input[0]])
        name = node.output[0]
        r = role.get(name, "shift")
        if r == "weight":
            fan_in = int(np.prod(shape[1:]))
            a = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
        elif r == "scale":
            a = rng.uniform(0.5, 1.5, shape)
        elif r == "var":
            a = rng.uniform(0.5, 1.5, shape)
        else:
            a = rng.normal(0, 0.1, shape)
        new_inits.append(numpy_helper.from_array(a.astype(np.float32), name))
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new_inits)
    last = g.node[-1]
    if last.op_type == "Softmax" and last.output[0] == g.output[0].name:
        # compare logits: a random net's softmax saturates to one-hot and would hide errors
        logits = last.input[0]
        del g.node[len(g.node) - 1]
        g.output[0].name = logits
        del g.output[0].type.tensor_type.shape.dim[:]
    if proto.ir_version < 4:  # IR 3: every initializer must also be a graph input
        for t in new_inits:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, onnx.TensorProto.FLOAT, list(t.dims)))
    return proto


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_light_model_matches_onnxruntime(name, tmp_path):
    proto = randomized(onnx.load(os.path.join(LIGHT, f"light_{name}.onnx")))
    path = tmp_path / f"{name}.onnx"
    onnx.save(proto, path)
    inp = proto.graph.input[0]
    init_names = {i.name for i in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in init_names)
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    x = np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    want = sess.run(None, {inp.name: x})[0]
    model = nbcnn.load_onnx(path, device="cpu")
    model.compile(loss="mse", optimizer="sgd")  # raw outputs: predict adds no softmax
    got = model.predict(x)
    assert got.shape == want.shape
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= 1e-3, f"{name}: relative error {err:.2e}"


def test_inception_v1_pooling_pads_named(tmp_path):
    """Its last AveragePool pads only the bottom/right of a 7x7 map without counting the padding: a
    form nbcnn's symmetric pooling cannot express, so the import stops there, naming the node."""
    from nbcnn.onnx_common import OnnxError

    proto = randomized(onnx.load(os.path.join(LIGHT, "light_inception_v1.onnx")))
    path = tmp_path / "inception_v1.onnx"
    onnx.save(proto, path)
    with pytest.raises(OnnxError, match=r"AveragePool node '\w+' \(opset 9\): pads \[0, 1, 0, 1\]"):
        nbcnn.load_onnx(path)
