"""``export_onnx``: any nbcnn model (Sequential or graph) as an ONNX file any runtime can run.

Each layer becomes one or a few standard ONNX nodes, built with ``onnx.helper``
and checked by ``onnx.checker.check_model(full_check=True)`` before the file is
written (atomically). Batch norm stays a ``BatchNormalization`` node (not
folded into the convolution) so the file can be fine-tuned elsewhere; fused
activations become their own nodes. The batch axis is dynamic (``N``) unless
``dynamic_batch=False``.

Layers are looked up by class in :data:`_EMITTERS`; a layer without an emitter
is an :class:`OnnxError` naming it.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .onnx_common import DEFAULT_OPSET, MAX_OPSET, OnnxError, require_onnx

__all__ = ["export_onnx"]


class _Builder:
    """Collects nodes and initializers; hands out unique tensor names."""

    def __init__(self, onnx, opset, dtype):
        self.onnx, self.opset, self.dtype = onnx, opset, np.dtype(dtype)
        self.nodes, self.inits, self.used = [], [], set()

    def name(self, base):
        base = base.replace(" ", "_") or "t"
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def const(self, base, array, dtype=None):
        name = self.name(base)
        arr = np.asarray(array, dtype=dtype or self.dtype)
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def ints(self, base, values):
        return self.const(base, np.asarray(values, np.int64), np.int64)

    def node(self, op, inputs, base, n_out=1, **attrs):
        outs = [self.name(base if n_out == 1 else f"{base}_{i}") for i in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), outs, name=self.name(f"{base}_{op}"),
                                                     **attrs))
        return outs[0] if n_out == 1 else outs


# ----------------------------------------------------------------------------------------------
# activations (shared by activation layers and the fused activations of Conv2D / Dense)
# ----------------------------------------------------------------------------------------------

def _act(b: _Builder, x: str, act: str, base: str, layer=None) -> str:
    act = (act or "linear").lower()
    if act == "linear":
        return x
    if act == "relu":
        return b.node("Relu", [x], base)
    if act == "relu6":
        return b.node("Clip", [x, b.const(f"{base}_min", 0.0), b.const(f"{base}_max", 6.0)], base)
    if act == "tanh":
        return b.node("Tanh", [x], base)
    if act == "sigmoid":
        return b.node("Sigmoid", [x], base)
    if act == "softmax":
        return b.node("Softmax", [x], base, axis=1)
    if act in ("leaky_relu", "elu"):
        from .layers import _STRING_ALPHA

        alpha = getattr(layer, "alpha", None) if layer is not None else None
        alpha = _STRING_ALPHA[act] if alpha is None else alpha
        return b.node("LeakyRelu" if act == "leaky_relu" else "Elu", [x], base, alpha=float(alpha))
    if act in ("silu", "swish"):
        return b.node("Mul", [x, b.node("Sigmoid", [x], f"{base}_sig")], base)
    if act == "hard_sigmoid":
        return b.node("HardSigmoid", [x], base, alpha=1.0 / 6.0, beta=0.5)
    if act == "hard_swish":
        return b.node("HardSwish", [x], base)
    if act in ("gelu", "gelu_tanh"):
        half = b.const(f"{base}_half", 0.5)
        one = b.const(f"{base}_one", 1.0)
        if act == "gelu":
            inner = b.node("Erf", [b.node("Mul", [x, b.const(f"{base}_rsqrt2", 1 / math.sqrt(2))], f"{base}_s")],
                           f"{base}_erf")
        else:
            x3 = b.node("Mul", [b.node("Mul", [x, x], f"{base}_x2"), x], f"{base}_x3")
            poly = b.node("Add", [x, b.node("Mul", [x3, b.const(f"{base}_c", 0.044715)], f"{base}_cx3")],
                          f"{base}_poly")
            inner = b.node("Tanh", [b.node("Mul", [poly, b.const(f"{base}_k", math.sqrt(2 / math.pi))],
                                           f"{base}_kp")], f"{base}_tanh")
        return b.node("Mul", [b.node("Mul", [x, half], f"{base}_hx"), b.node("Add", [inner, one], f"{base}_1p")],
                      base)
    raise OnnxError(f"activation {act!r} has no ONNX form in nbcnn's exporter")


# ----------------------------------------------------------------------------------------------
# emitters: (builder, layer, [input names]) -> output name
# ----------------------------------------------------------------------------------------------

def _conv_pads(layer):
    pt, pb, pl, pr = layer.pads
    return [int(pt), int(pl), int(pb), int(pr)]


def _emit_conv(b, layer, ins):
    w = layer.get_weights()
    attrs = dict(kernel_shape=list(layer.kernel_size), strides=list(layer.strides), pads=_conv_pads(layer),
                 dilations=list(getattr(layer, "dilation_rate", (1, 1))), group=int(getattr(layer, "groups", 1)))
    inputs = [ins[0], b.const(f"{layer.name}_W", w[0])]
    if getattr(layer, "use_bias", False):
        inputs.append(b.const(f"{layer.name}_B", w[1]))
    y = b.node("Conv", inputs, layer.name, **attrs)
    return _act(b, y, getattr(layer, "activation", "linear"), f"{layer.name}_act", layer)


def _emit_dense(b, layer, ins):
    w = layer.get_weights()
    inputs = [ins[0], b.const(f"{layer.name}_W", w[0])]
    if layer.use_bias:
        inputs.append(b.const(f"{layer.name}_B", w[1]))
    y = b.node("Gemm", inputs, layer.name)
    act = layer.activation
    return _act(b, y, act, f"{layer.name}_act", layer)


def _emit_bn(b, layer, ins):
    gamma, beta, mean, var = _bn_arrays(layer)
    return b.node("BatchNormalization", [ins[0], b.const(f"{layer.name}_scale", gamma),
                                         b.const(f"{layer.name}_bias", beta), b.const(f"{layer.name}_mean", mean),
                                         b.const(f"{layer.name}_var", var)],
                  layer.name, epsilon=float(layer.epsilon), momentum=float(layer.momentum))


def _bn_arrays(layer):
    """gamma, beta, moving mean, moving variance (ones / zeros where the layer has no scale / center)."""
    named = dict(zip(layer.weight_names, layer.get_weights()))
    C = named["moving_mean"].shape[0]
    return (named.get("gamma", np.ones(C, np.float32)), named.get("beta", np.zeros(C, np.float32)),
            named["moving_mean"], named["moving_variance"])


def _pool_attrs(layer):
    pads = getattr(layer, "pads", None)
    if pads is None:
        ph, pw = getattr(layer, "padding", (0, 0)) if not isinstance(layer.padding, str) else (0, 0)
        pads = (ph, ph, pw, pw)
    pt, pb, pl, pr = (int(v) for v in pads)
    return dict(kernel_shape=list(layer.size), strides=list(layer.strides if hasattr(layer, "strides")
                                                             else layer.stride),
                pads=[pt, pl, pb, pr], ceil_mode=int(bool(getattr(layer, "ceil_mode", False))))


def _emit_maxpool(b, layer, ins):
    return b.node("MaxPool", [ins[0]], layer.name, **_pool_attrs(layer))


def _emit_avgpool(b, layer, ins):
    return b.node("AveragePool", [ins[0]], layer.name,
                  count_include_pad=int(bool(getattr(layer, "count_include_pad", True))), **_pool_attrs(layer))


def _emit_gap(op):
    def emit(b, layer, ins):
        y = b.node(op, [ins[0]], layer.name)
        return b.node("Flatten", [y], f"{layer.name}_flat", axis=1)
    return emit


def _emit_flatten(b, layer, ins):
    return b.node("Flatten", [ins[0]], layer.name, axis=1)


def _emit_identity(b, layer, ins):
    return ins[0]


def _emit_activation(b, layer, ins):
    act = getattr(layer, "activation", None) or getattr(layer, "base_name", "linear")
    if getattr(layer, "max_value", None) is not None:
        lo = b.const(f"{layer.name}_min", 0.0)
        return b.node("Clip", [ins[0], lo, b.const(f"{layer.name}_max", float(layer.max_value))], layer.name)
    return _act(b, ins[0], act, layer.name, layer)


def _emit_lrn(b, layer, ins):
    return b.node("LRN", [ins[0]], layer.name, size=int(layer.size), alpha=float(layer.alpha),
                  beta=float(layer.beta), bias=float(layer.k))


def _emit_merge(op):
    def emit(b, layer, ins):
        if op == "Sub":
            return b.node("Sub", ins[:2], layer.name)
        return b.node(op, list(ins), layer.name)
    return emit


def _emit_concat(b, layer, ins):
    return b.node("Concat", list(ins), layer.name, axis=int(getattr(layer, "axis", 1)))


def _emit_zeropad(b, layer, ins):
    pt, pb, pl, pr = (int(v) for v in layer.pads)
    return b.node("Pad", [ins[0], b.ints(f"{layer.name}_pads", [0, 0, pt, pl, 0, 0, pb, pr])], layer.name,
                  mode="constant")


def _emit_shuffle(b, layer, ins):
    C, H, W = layer.input_shape
    g = layer.groups
    a = b.node("Reshape", [ins[0], b.ints(f"{layer.name}_s5", [0, g, C // g, H, W])], f"{layer.name}_5d")
    t = b.node("Transpose", [a], f"{layer.name}_t", perm=[0, 2, 1, 3, 4])
    return b.node("Reshape", [t, b.ints(f"{layer.name}_s4", [-1, C, H, W])], layer.name)


def _emit_reshape(b, layer, ins):
    return b.node("Reshape", [ins[0], b.ints(f"{layer.name}_shape", [0, *layer.target_shape])], layer.name)


def _channel_affine(b, x, scale, offset, base):
    """``x * scale + offset`` with per-channel (or scalar) constants broadcast over H, W."""
    def shaped(v):
        v = np.asarray(v, np.float64)
        return v.reshape(-1, 1, 1) if v.ndim and v.size > 1 else v.reshape(())
    y = b.node("Mul", [x, b.const(f"{base}_scale", shaped(scale))], f"{base}_mul")
    return b.node("Add", [y, b.const(f"{base}_offset", shaped(offset))], base)


def _emit_rescaling(b, layer, ins):
    return _channel_affine(b, ins[0], layer.scale, layer.offset, layer.name)


def _emit_normalization(b, layer, ins):
    scale, offset = layer._scale_offset(None)
    return _channel_affine(b, ins[0], scale, offset, layer.name)


def _emit_center_crop(b, layer, ins):
    pt, pb, pl, pr = layer._pads(*layer.input_shape[1:])
    H, W = layer.input_shape[1:]
    return b.node("Slice", [ins[0], b.ints(f"{layer.name}_starts", [pt, pl]), b.ints(f"{layer.name}_ends", [H - pb, W - pr]),
                            b.ints(f"{layer.name}_axes", [2, 3])], layer.name)


def _emit_separable(b, layer, ins):
    return _emit_conv(b, layer.pointwise, [_emit_conv(b, layer.depthwise, ins)])


def _emit_shortcut(b, layer, ins):
    """ResNet option-A shortcut: every ``strides``-th pixel, then zero channels up to ``filters``."""
    s = int(layer.strides)
    C = layer.input_shape[0]
    x = ins[0]
    if s > 1:
        big = np.iinfo(np.int64).max
        x = b.node("Slice", [x, b.ints(f"{layer.name}_st", [0, 0]), b.ints(f"{layer.name}_en", [big, big]),
                             b.ints(f"{layer.name}_ax", [2, 3]), b.ints(f"{layer.name}_sp", [s, s])], f"{layer.name}_sub")
    extra = layer.filters - C
    if extra:
        lo = extra // 2
        x = b.node("Pad", [x, b.ints(f"{layer.name}_pads", [0, lo, 0, 0, 0, extra - lo, 0, 0])], layer.name,
                   mode="constant")
    return x


_EMITTERS: dict = {}


def _register_defaults():
    from . import layers as L

    table = {
        "Conv2D": _emit_conv, "Dense": _emit_dense, "BatchNormalization": _emit_bn,
        "MaxPool2D": _emit_maxpool, "AvgPool2D": _emit_avgpool,
        "GlobalAveragePooling2D": _emit_gap("GlobalAveragePool"), "GlobalMaxPooling2D": _emit_gap("GlobalMaxPool"),
        "Flatten": _emit_flatten, "Dropout": _emit_identity, "LocalResponseNormalization": _emit_lrn,
        "Add": _emit_merge("Sum"), "Multiply": _emit_merge("Mul"), "Subtract": _emit_merge("Sub"),
        "Average": _emit_merge("Mean"), "Concatenate": _emit_concat, "ZeroPadding2D": _emit_zeropad,
        "Reshape": _emit_reshape, "Rescaling": _emit_rescaling, "Normalization": _emit_normalization,
        "CenterCrop": _emit_center_crop, "SeparableConv2D": _emit_separable, "IdentityShortcut": _emit_shortcut,
        "ChannelShuffle": None, "LogSoftmax": None, "Clip": None,
    }
    table["ChannelShuffle"] = _emit_shuffle
    table["LogSoftmax"] = lambda b, layer, ins: b.node("LogSoftmax", [ins[0]], layer.name, axis=1)
    table["Clip"] = lambda b, layer, ins: b.node("Clip", [ins[0], b.const(f"{layer.name}_min", layer.low),
                                                          b.const(f"{layer.name}_max", layer.high)], layer.name)
    for name, fn in table.items():
        cls = getattr(L, name, None)
        if cls is not None:
            _EMITTERS[cls] = fn
    for cls in (getattr(L, n, None) for n in ("Activation", "ReLU", "Tanh", "Sigmoid", "Softmax", "ReLU6",
                                              "LeakyReLU", "ELU", "GELU", "SiLU", "HardSwish")):
        if cls is not None:
            _EMITTERS.setdefault(cls, _emit_activation)


def _emitter(layer):
    if not _EMITTERS:
        _register_defaults()
    for cls in type(layer).__mro__:
        fn = _EMITTERS.get(cls)
        if fn is not None:
            return fn
    fn = getattr(layer, "to_onnx", None)  # a layer may carry its own export
    if fn is not None:
        return lambda b, layer, ins: layer.to_onnx(b, ins)
    raise OnnxError(f"layer {layer.name!r} ({type(layer).__name__}) has no ONNX export")


# ----------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------

def export_onnx(model, path, *, opset=DEFAULT_OPSET, dynamic_batch=True):
    """Write ``model`` to ``path`` as ONNX (checked with the full ONNX checker first)."""
    onnx = require_onnx()
    if not isinstance(opset, int) or not 13 <= opset <= MAX_OPSET:
        raise OnnxError(f"opset must be an int from 13 to {MAX_OPSET}, got {opset!r}")
    model.build()
    b = _Builder(onnx, opset, model.dtype)
    graph_inputs, graph_outputs = [], []
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(model.dtype))
    batch = "N" if dynamic_batch else 1
    g = model._require_graph()
    shapes = {}
    names = {}
    in_names = [getattr(t, "name", None) for t in getattr(model, "inputs", [])] if g.n_inputs > 1 else []
    for i, shape in enumerate(model._input_shapes()):
        base = (in_names[i] if i < len(in_names) and in_names[i] else None) or ("input" if i == 0 else f"input_{i}")
        names[i] = b.name(base)
        shapes[i] = tuple(shape)
        graph_inputs.append(onnx.helper.make_tensor_value_info(names[i], elem, [batch, *shape]))
    for layer, ins, out, _multi in g.steps:
        names[out] = _emitter(layer)(b, layer, [names[t] for t in ins])
        shapes[out] = tuple(layer._out)
    probs = model.loss is None or model.loss.expects_logits
    for j, t in enumerate(g.outputs):
        src = names[t]
        if probs and len(shapes[t]) == 1 and not model._ends_in_softmax(t):
            src = b.node("Softmax", [src], "probabilities", axis=1)  # predict() returns probabilities too
        name = b.name("output" if j == 0 else f"output_{j}")
        b.nodes.append(onnx.helper.make_node("Identity", [src], [name], name=b.name(f"{name}_Identity")))
        graph_outputs.append(onnx.helper.make_tensor_value_info(name, elem, [batch, *shapes[t]]))
    graph = onnx.helper.make_graph(b.nodes, model.name or "nbcnn_model", graph_inputs, graph_outputs,
                                   initializer=b.inits)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name="nbcnn")
    proto.ir_version = min(proto.ir_version, 8 if opset <= 17 else proto.ir_version)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise OnnxError(f"the exported graph fails the ONNX checker: {str(exc).splitlines()[0][:300]}") from None
    from ._atomic import atomic_open

    path = os.fspath(path)
    with atomic_open(path, "wb") as f:
        f.write(proto.SerializeToString())
    return path
