"""``load_onnx``: an ONNX file becomes a trainable nbcnn graph model.

The file is parsed by the ``onnx`` package (never by hand) and checked by its
checker; nbcnn then walks the nodes in their (topological) order:

* nodes whose inputs are all constants (initializers, ``Constant``,
  ``ConstantOfShape``, ``Shape`` of a tensor whose per-sample shape is known)
  are evaluated with NumPy right away: constant folding, so the Shape / Gather
  / Concat / Reshape chains of exported PyTorch models disappear;
* every other node becomes an nbcnn layer called on the symbolic tensors of
  its inputs (:func:`nbcnn.Input` / :class:`nbcnn.Model`), its weights taken
  from the initializers. ``Dropout`` and ``Identity`` vanish; a ``Relu`` whose
  input is a convolution used only by it becomes the convolution's fused
  activation; per-channel constant ``Mul`` / ``Add`` after a batch norm or a
  convolution fold into its weights.

The batch axis is always dynamic. A shape value that depends on the batch size
is carried through folding as :data:`_BATCH` (a sentinel that no real size
takes) and becomes "keep the batch axis" where a ``Reshape`` uses it.

Anything nbcnn cannot express gives one :class:`OnnxError` naming the op type,
the node and the opset, with the list of supported ops; no half-built model is
returned.
"""
from __future__ import annotations

import os

import numpy as np

from .onnx_common import MAX_OPSET, MIN_OPSET, OnnxError, require_onnx

__all__ = ["load_onnx", "SUPPORTED_OPS"]

_BATCH = -987654321  # the batch size inside folded shape values (never a real size)
_MAX_FILE = 4 << 30  # protobuf cannot hold more than 2 GiB per message; refuse absurd files early

SUPPORTED_OPS = (
    "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "LRN",
    "Relu", "LeakyRelu", "Elu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish", "Gemm", "MatMul",
    "Add", "Sum", "Mul", "Sub", "Div", "Concat", "Flatten", "Reshape", "Transpose", "Dropout", "Softmax",
    "LogSoftmax", "Identity", "Pad", "Squeeze", "Unsqueeze", "Constant", "ConstantOfShape", "Shape",
    "Gather", "Cast", "Slice",
)


# ----------------------------------------------------------------------------------------------
# values flowing through the walk
# ----------------------------------------------------------------------------------------------

class _Sym:
    """A symbolic nbcnn tensor with the per-sample shape ONNX sees (``squeezed``: nbcnn holds (C,)
    where ONNX holds (C, 1, 1), after a global pooling)."""

    __slots__ = ("t", "shape", "squeezed", "layer")

    def __init__(self, t, shape, squeezed=False, layer=None):
        self.t, self.shape, self.squeezed, self.layer = t, tuple(int(s) for s in shape), squeezed, layer


def _tail(t) -> tuple:
    shape = tuple(t.shape)
    if shape and shape[0] is None:
        shape = shape[1:]
    return tuple(int(s) for s in shape)


# ----------------------------------------------------------------------------------------------
# the walk
# ----------------------------------------------------------------------------------------------

class _Importer:
    def __init__(self, onnx, model_proto, path, dtype, device=None):
        self.device = device
        self.onnx = onnx
        self.proto = model_proto
        self.path = path
        self.dtype = np.dtype(dtype)
        self.graph = model_proto.graph
        self.opset = _opset(model_proto, path)
        self.env: dict = {}
        self.weights: list = []     # (layer, [arrays]) set after the model is built
        self.consumers: dict = {}
        self.names: set = set()
        self.notes: list = []       # what was folded / fused / removed, for the CLI
        self.layer_of: dict = {}    # output name -> layer that produced it (for fusing)
        for node in self.graph.node:
            for name in node.input:
                if name:
                    self.consumers[name] = self.consumers.get(name, 0) + 1
        for out in self.graph.output:
            self.consumers[out.name] = self.consumers.get(out.name, 0) + 1

    # -- helpers ------------------------------------------------------------------------------
    def fail(self, node, why: str):
        raise OnnxError(f"{self.path}: {node.op_type} node {node.name or '(unnamed)'!r} (opset {self.opset}): "
                        f"{why}")

    def const(self, name, node=None, what="input"):
        v = self.env.get(name)
        if isinstance(v, np.ndarray):
            return v
        if node is not None:
            self.fail(node, f"{what} {name!r} must be a constant (an initializer), it is computed at run time")
        return None

    def sym(self, name, node):
        v = self.env.get(name)
        if isinstance(v, _Sym):
            return v
        if v is None:
            self.fail(node, f"input {name!r} is not produced by any earlier node or graph input")
        self.fail(node, f"input {name!r} is a constant; nbcnn needs a data tensor here")

    def attrs(self, node) -> dict:
        out = {}
        for a in node.attribute:
            v = self.onnx.helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            elif isinstance(v, self.onnx.TensorProto):
                v = self.onnx.numpy_helper.to_array(v)
            out[a.name] = v
        return out

    def layer_name(self, node, suffix=""):
        base = (node.name or f"{node.op_type.lower()}_{len(self.names) + 1}") + suffix
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def call(self, layer, inputs, onnx_shape=None, squeezed=False, arrays=None):
        t = layer(inputs)
        if arrays is not None:
            self.weights.append((layer, [np.asarray(a, self.dtype) for a in arrays]))
        shape = _tail(t) if onnx_shape is None else onnx_shape
        return _Sym(t, shape, squeezed, layer)

    def dense4(self, v: _Sym, node):
        """``v`` as the 4-D tensor ONNX sees (undo a global pooling's squeeze with a Reshape)."""
        if not v.squeezed:
            return v
        from . import layers as L

        layer = L.Reshape(v.shape, name=self.layer_name(node, "_unsqueeze"))
        return self.call(layer, v.t, v.shape)

    # -- the walk -----------------------------------------------------------------------------
    def run(self):
        onnx = self.onnx
        import nbcnn

        for init in self.graph.initializer:
            self.env[init.name] = self._array(init)
        inputs = []
        for inp in self.graph.input:
            if inp.name in self.env:
                continue  # an initializer listed as an input (IR < 4)
            dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
            et = inp.type.tensor_type.elem_type
            if et not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
                raise OnnxError(f"{self.path}: input {inp.name!r} has element type "
                                f"{onnx.TensorProto.DataType.Name(et)}; nbcnn models take float images")
            if len(dims) < 2 or any(d is None or d <= 0 for d in dims[1:]):
                raise OnnxError(f"{self.path}: input {inp.name!r} has shape {dims}: nbcnn needs every axis but "
                                f"the batch fixed (e.g. [N, 3, 224, 224])")
            t = nbcnn.Input(tuple(dims[1:]), name=_clean(inp.name))
            inputs.append(t)
            self.env[inp.name] = _Sym(t, dims[1:])
        if not inputs:
            raise OnnxError(f"{self.path}: the graph has no data input")
        for node in self.graph.node:
            if node.domain not in ("", "ai.onnx"):
                self.fail(node, f"custom domain {node.domain!r} is not supported")
            handler = _HANDLERS.get(node.op_type)
            if handler is None:
                self.fail(node, f"op {node.op_type!r} is not supported; supported ops: {', '.join(SUPPORTED_OPS)}")
            if node.op_type in _FOLDABLE and all(not n or isinstance(self.env.get(n), np.ndarray)
                                                  or (node.op_type == "Shape" and isinstance(self.env.get(n), _Sym))
                                                  for n in node.input):
                outs = _fold(self, node)
                outs = [None if o is None else np.asarray(o) for o in (outs if isinstance(outs, list) else [outs])]
            else:
                outs = handler(self, node, self.attrs(node))
            if not isinstance(outs, (list, tuple)):
                outs = [outs]
            for name, val in zip(node.output, outs):
                if name:
                    self.env[name] = val
        outputs = []
        for out in self.graph.output:
            v = self.env.get(out.name)
            if not isinstance(v, _Sym):
                raise OnnxError(f"{self.path}: output {out.name!r} is a constant or is never computed")
            outputs.append(self.dense4(v, _Named(out.name)).t)
        model = nbcnn.Model(inputs if len(inputs) > 1 else inputs[0],
                            outputs if len(outputs) > 1 else outputs[0],
                            name=_clean(self.graph.name) or "onnx_model", dtype=self.dtype.name,
                            device=self.device)
        return model

    def _array(self, tensor):
        try:
            a = self.onnx.numpy_helper.to_array(tensor)
        except Exception as exc:  # external data missing, bad raw data size
            raise OnnxError(f"{self.path}: cannot read initializer {tensor.name!r}: {exc}") from None
        return a


class _Named:
    """Stands in for a node where a graph output needs a layer name."""

    op_type = "Output"

    def __init__(self, name):
        self.name = name


def _clean(name: str) -> str:
    return name.strip() or ""


def _opset(proto, path) -> int:
    versions = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise OnnxError(f"{path}: the model declares no ai.onnx opset")
    v = int(versions[0])
    if not MIN_OPSET <= v <= MAX_OPSET:
        raise OnnxError(f"{path}: opset {v} is not supported (nbcnn reads opsets {MIN_OPSET}-{MAX_OPSET})")
    return v


# ----------------------------------------------------------------------------------------------
# constant folding (NumPy)
# ----------------------------------------------------------------------------------------------

_FOLDABLE = {"Constant", "ConstantOfShape", "Shape", "Gather", "Concat", "Unsqueeze", "Squeeze", "Reshape",
             "Cast", "Add", "Sub", "Mul", "Div", "Identity", "Slice", "Transpose", "Flatten", "Sum", "Dropout"}


def _axes_arg(imp, node, a, idx=1):
    if "axes" in a:
        return [int(v) for v in a["axes"]]
    if len(node.input) > idx and node.input[idx]:
        return [int(v) for v in np.atleast_1d(imp.const(node.input[idx], node, "axes"))]
    return None


def _fold(imp, node):
    a = imp.attrs(node)
    ins = [imp.env.get(n) if n else None for n in node.input]
    op = node.op_type
    if op == "Constant":
        if "value" in a:
            return np.asarray(a["value"])
        for k in ("value_float", "value_int"):
            if k in a:
                return np.asarray(a[k], np.float32 if k == "value_float" else np.int64)
        for k in ("value_floats", "value_ints"):
            if k in a:
                return np.asarray(a[k], np.float32 if k == "value_floats" else np.int64)
        imp.fail(node, "only tensor, float(s) and int(s) constants are supported")
    if op == "ConstantOfShape":
        shape = [int(v) for v in ins[0]]
        if any(s == _BATCH for s in shape):
            imp.fail(node, "a constant whose shape depends on the batch size is a dynamic shape")
        val = a.get("value", np.zeros(1, np.float32))
        return np.full(shape, np.asarray(val).reshape(-1)[0], dtype=np.asarray(val).dtype)
    if op == "Shape":
        v = ins[0]
        shape = [_BATCH, *v.shape] if isinstance(v, _Sym) else list(np.shape(v))
        s = np.asarray(shape, np.int64)
        start, end = int(a.get("start", 0)), a.get("end")
        return s[start:None if end is None else int(end)]
    if op == "Gather":
        return np.take(ins[0], ins[1].astype(np.int64), axis=int(a.get("axis", 0)))
    if op == "Concat":
        return np.concatenate([np.atleast_1d(v) for v in ins if v is not None], axis=int(a.get("axis", 0)))
    if op == "Unsqueeze":
        out = ins[0]
        axes = sorted(_axes_arg(imp, node, a) or [])
        for ax in axes:
            out = np.expand_dims(out, ax if ax >= 0 else ax + out.ndim + 1)
        return out
    if op == "Squeeze":
        axes = _axes_arg(imp, node, a)
        return np.squeeze(ins[0], axis=None if axes is None else tuple(axes))
    if op == "Reshape":
        target = [int(v) for v in ins[1]]
        src = ins[0]
        shape = [src.shape[i] if t == 0 and not a.get("allowzero", 0) else t for i, t in enumerate(target)]
        return src.reshape(shape)
    if op == "Cast":
        onnx = imp.onnx
        to = int(a["to"])
        return ins[0].astype(onnx.helper.tensor_dtype_to_np_dtype(to))
    if op in ("Add", "Sub", "Mul", "Div", "Sum"):
        vals = [v for v in ins if v is not None]
        if op in ("Mul", "Div") and any(np.any(np.asarray(v) == _BATCH) for v in vals):
            imp.fail(node, "arithmetic on the batch size is a dynamic shape")
        out = vals[0]
        for v in vals[1:]:
            if op in ("Add", "Sum"):
                out = out + v
            elif op == "Sub":
                out = out - v
            elif op == "Mul":
                out = out * v
            else:
                out = out // v if np.issubdtype(np.asarray(out).dtype, np.integer) else out / v
        return np.asarray(out)
    if op in ("Identity", "Dropout"):
        return ins[0] if op == "Identity" else [ins[0], np.ones(np.shape(ins[0]), bool)]
    if op == "Slice":
        data = ins[0]
        if imp.opset < 10:
            starts, ends = a["starts"], a["ends"]
            axes = a.get("axes", list(range(len(starts))))
            steps = [1] * len(starts)
        else:
            starts, ends = [int(v) for v in ins[1]], [int(v) for v in ins[2]]
            axes = [int(v) for v in ins[3]] if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
            steps = [int(v) for v in ins[4]] if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
        sl = [slice(None)] * data.ndim
        for s, e, ax, st in zip(starts, ends, axes, steps):
            sl[ax] = slice(s, e, st)
        return data[tuple(sl)]
    if op == "Transpose":
        return np.transpose(ins[0], a.get("perm"))
    if op == "Flatten":
        ax = int(a.get("axis", 1))
        d = ins[0]
        return d.reshape(int(np.prod(d.shape[:ax])), -1)
    imp.fail(node, "cannot fold")  # pragma: no cover


# ----------------------------------------------------------------------------------------------
# layer handlers
# ----------------------------------------------------------------------------------------------

def _pads_2d(imp, node, a, x_shape, kernel, strides, dilations=(1, 1)):
    """ONNX pads/auto_pad -> nbcnn (top, bottom, left, right)."""
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        p = [int(v) for v in a.get("pads", [0, 0, 0, 0])]
        if len(p) != 4:
            imp.fail(node, f"pads {p} are not 2-D (nbcnn handles 2-D images)")
        return (p[0], p[2], p[1], p[3])
    if auto == "VALID":
        return (0, 0, 0, 0)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for n, k, s, d in zip(x_shape[-2:], kernel, strides, dilations):
            eff = (k - 1) * d + 1
            o = -(-n // s)
            total = max((o - 1) * s + eff - n, 0)
            small, big = total // 2, total - total // 2
            out.append((small, big) if auto == "SAME_UPPER" else (big, small))
        return (out[0][0], out[0][1], out[1][0], out[1][1])
    imp.fail(node, f"auto_pad {auto!r} is not supported (NOTSET, SAME_UPPER, SAME_LOWER, VALID are)")


def _conv(imp, node, a):
    from . import layers as L

    x = imp.dense4(imp.sym(node.input[0], node), node)
    w = imp.const(node.input[1], node, "weight")
    b = imp.const(node.input[2], node, "bias") if len(node.input) > 2 and node.input[2] else None
    if w.ndim != 4 or len(x.shape) != 3:
        imp.fail(node, f"only 2-D convolutions are supported (weight shape {w.shape}, input (N, {x.shape}))")
    K, Cg, kh, kw = w.shape
    groups = int(a.get("group", 1))
    ks = tuple(int(v) for v in a.get("kernel_shape", (kh, kw)))
    if ks != (kh, kw):
        imp.fail(node, f"kernel_shape {ks} disagrees with the weight shape {w.shape}")
    strides = tuple(int(v) for v in a.get("strides", (1, 1)))
    dil = tuple(int(v) for v in a.get("dilations", (1, 1)))
    if Cg * groups != x.shape[0]:
        imp.fail(node, f"weight {w.shape} with group={groups} does not fit {x.shape[0]} input channels")
    pads = _pads_2d(imp, node, a, x.shape, (kh, kw), strides, dil)
    layer = L.Conv2D(K, (kh, kw), stride=strides, padding=pads, dilation_rate=dil, groups=groups,
                     use_bias=b is not None, name=imp.layer_name(node))
    arrays = [w] if b is None else [w, b]
    return imp.call(layer, x.t, arrays=arrays)


def _batchnorm(imp, node, a):
    from . import layers as L

    if int(a.get("training_mode", 0)):
        imp.fail(node, "training_mode=1 is not supported (export the model in inference mode)")
    extra = [o for o in node.output[1:] if o and imp.consumers.get(o)]
    if extra:
        imp.fail(node, f"the training outputs {extra} are used; only the inference form is supported")
    x = imp.dense4(imp.sym(node.input[0], node), node)
    scale, bias, mean, var = (imp.const(n, node, what) for n, what in
                              zip(node.input[1:5], ("scale", "bias", "mean", "var")))
    C = x.shape[0]
    for arr, what in ((scale, "scale"), (bias, "bias"), (mean, "mean"), (var, "var")):
        if arr.shape != (C,):
            imp.fail(node, f"{what} has shape {arr.shape}, expected ({C},)")
    layer = L.BatchNormalization(momentum=float(a.get("momentum", 0.9)), epsilon=float(a.get("epsilon", 1e-5)),
                                 name=imp.layer_name(node))
    v = imp.call(layer, x.t, x.shape, arrays=[scale, bias, mean, var])
    return [v] + [None] * (len(node.output) - 1)


def _activation(kind):
    def handler(imp, node, a):
        from . import layers as L

        x = imp.sym(node.input[0], node)
        if kind == "relu" and isinstance(x.layer, L.Conv2D) and x.layer.activation == "linear" \
                and imp.consumers.get(node.input[0]) == 1 and not x.squeezed:
            x.layer.activation = "relu"  # fused: the convolution's output had no other consumer
            imp.notes.append(f"fused {node.op_type} {node.name!r} into {x.layer.name!r}")
            return _Sym(x.t, x.shape, False, x.layer)
        name = imp.layer_name(node)
        if kind == "relu":
            layer = L.ReLU(name=name)
        elif kind == "leaky_relu":
            layer = L.LeakyReLU(negative_slope=float(a.get("alpha", 0.01)), name=name)
        elif kind == "elu":
            layer = L.ELU(float(a.get("alpha", 1.0)), name=name)
        elif kind == "hard_swish":
            layer = L.HardSwish(name=name)
        else:
            layer = L.Activation(kind, name=name)
        return imp.call(layer, x.t, x.shape, x.squeezed)
    return handler


def _hard_sigmoid(imp, node, a):
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    from . import layers as L

    if not (np.isclose(alpha, 1 / 6, rtol=1e-4) and np.isclose(beta, 0.5)):
        imp.fail(node, f"HardSigmoid with alpha={alpha}, beta={beta}: nbcnn's hard_sigmoid is "
                       "max(0, min(1, x / 6 + 0.5)) (alpha=1/6, beta=0.5)")
    x = imp.sym(node.input[0], node)
    return imp.call(L.HardSigmoid(name=imp.layer_name(node)), x.t, x.shape, x.squeezed)


def _clip(imp, node, a):
    from . import layers as L

    if imp.opset < 11:
        lo, hi = a.get("min", -np.inf), a.get("max", np.inf)
    else:
        lo = imp.const(node.input[1], node, "min") if len(node.input) > 1 and node.input[1] else -np.inf
        hi = imp.const(node.input[2], node, "max") if len(node.input) > 2 and node.input[2] else np.inf
    lo, hi = float(np.asarray(lo)), float(np.asarray(hi))
    x = imp.sym(node.input[0], node)
    name = imp.layer_name(node)
    if lo == 0 and hi == np.inf:
        layer = L.ReLU(name=name)
    elif lo == 0 and hi == 6:
        layer = L.ReLU6(name=name)
    else:
        layer = L.Clip(lo, hi, name=name)
    return imp.call(layer, x.t, x.shape, x.squeezed)


def _pool(kind):
    def handler(imp, node, a):
        from . import layers as L

        if len(node.output) > 1 and node.output[1] and imp.consumers.get(node.output[1]):
            imp.fail(node, "the Indices output is not supported")
        x = imp.dense4(imp.sym(node.input[0], node), node)
        ks = tuple(int(v) for v in a["kernel_shape"])
        if len(ks) != 2:
            imp.fail(node, f"kernel_shape {ks}: only 2-D pooling is supported")
        strides = tuple(int(v) for v in a.get("strides", (1, 1)))
        if tuple(a.get("dilations", (1, 1))) != (1, 1):
            imp.fail(node, f"dilations {a['dilations']} are not supported for pooling")
        pads = _pads_2d(imp, node, a, x.shape, ks, strides)
        ceil = bool(a.get("ceil_mode", 0))
        cip = kind == "avg" and bool(a.get("count_include_pad", 0))
        x, padding, ceil = _pool_padding(imp, node, x, ks, strides, pads, ceil, kind, cip)
        kw = dict(size=ks, stride=strides, padding=padding, ceil_mode=ceil, name=imp.layer_name(node))
        if kind == "avg":
            layer = L.AvgPool2D(count_include_pad=cip, **kw)
        else:
            layer = L.MaxPool2D(**kw)
        return [imp.call(layer, x.t)] + [None] * (len(node.output) - 1)
    return handler


def _onnx_pool_size(n, k, s, before, after, ceil):
    """ONNX's output length (with the rule that a last window may not start in the end padding)."""
    span = n + before + after - k
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= n + before:
        out -= 1
    return out


def _pool_padding(imp, node, x, ks, strides, pads, ceil, kind, cip):
    """nbcnn pooling pads are symmetric; express ONNX's (top, bottom, left, right) exactly or refuse.

    Extra padding at the bottom/right only is ceil mode with the smaller padding when the output
    sizes agree (padded cells never count for max, nor for average without count_include_pad);
    with count_include_pad the padding is made explicit with zeros, which then count.
    """
    from . import layers as L

    pt, pb, pl, pr = pads
    if pt == pb and pl == pr and pt <= ks[0] // 2 and pl <= ks[1] // 2:
        return x, (pt, pl), ceil
    H, W = x.shape[1:]
    want = (_onnx_pool_size(H, ks[0], strides[0], pt, pb, ceil), _onnx_pool_size(W, ks[1], strides[1], pl, pr, ceil))
    if kind == "avg" and cip:
        zp = L.ZeroPadding2D((pt, pb, pl, pr), name=imp.layer_name(node, "_pad"))
        xp_ = imp.call(zp, x.t)
        from .kernels.geometry import pool_output_size
        got = (pool_output_size(H + pt + pb, ks[0], 0, strides[0], ceil),
               pool_output_size(W + pl + pr, ks[1], 0, strides[1], ceil))
        if got == want:
            return xp_, (0, 0), ceil
    elif pb >= pt and pr >= pl and pt <= ks[0] // 2 and pl <= ks[1] // 2:
        from .kernels.geometry import pool_output_size
        got = (pool_output_size(H, ks[0], pt, strides[0], True), pool_output_size(W, ks[1], pl, strides[1], True))
        if got == want:
            return x, (pt, pl), True
    imp.fail(node, f"pads {list(pads)} (top, bottom, left, right) with kernel {list(ks)} and strides "
                   f"{list(strides)} cannot be expressed exactly by nbcnn's symmetric pooling padding")


def _global_pool(kind):
    def handler(imp, node, a):
        from . import layers as L

        x = imp.dense4(imp.sym(node.input[0], node), node)
        cls = L.GlobalAveragePooling2D if kind == "avg" else L.GlobalMaxPooling2D
        v = imp.call(cls(name=imp.layer_name(node)), x.t)
        return _Sym(v.t, (x.shape[0], 1, 1), True, v.layer)
    return handler


def _lrn(imp, node, a):
    from . import layers as L

    x = imp.dense4(imp.sym(node.input[0], node), node)
    layer = L.LocalResponseNormalization(size=int(a["size"]), alpha=float(a.get("alpha", 1e-4)),
                                         beta=float(a.get("beta", 0.75)), k=float(a.get("bias", 1.0)),
                                         name=imp.layer_name(node))
    return imp.call(layer, x.t)


def _flat_input(imp, node, x):
    """A 2-D (N, features) view of ``x`` for Gemm / MatMul."""
    from . import layers as L

    if len(x.shape) == 1:
        return x
    if x.squeezed:
        return _Sym(x.t, (x.shape[0],), False, x.layer)
    return imp.call(L.Flatten(name=imp.layer_name(node, "_flatten")), x.t)


def _gemm(imp, node, a):
    from . import layers as L

    x = imp.sym(node.input[0], node)
    if int(a.get("transA", 0)):
        imp.fail(node, "transA=1 on the data input is not supported")
    w = imp.const(node.input[1], node, "B")
    c = imp.const(node.input[2], node, "C") if len(node.input) > 2 and node.input[2] else None
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    if len(x.shape) != 1 and not x.squeezed:
        imp.fail(node, f"Gemm needs a 2-D input, got (N, {x.shape})")
    x = _flat_input(imp, node, x)
    kernel = (w.T if int(a.get("transB", 0)) else w) * alpha
    if kernel.shape[0] != x.shape[0]:
        imp.fail(node, f"B of shape {w.shape} does not fit {x.shape[0]} input features")
    units = kernel.shape[1]
    arrays = [kernel]
    if c is not None:
        c = np.broadcast_to(np.asarray(c, np.float64).reshape(-1) if c.size == units else c, (units,)) * beta
        arrays.append(c)
    layer = L.Dense(units, use_bias=c is not None, name=imp.layer_name(node))
    return imp.call(layer, x.t, arrays=arrays)


def _matmul(imp, node, a):
    from . import layers as L

    x = imp.sym(node.input[0], node)
    w = imp.const(node.input[1], node, "B")
    if w.ndim != 2 or (len(x.shape) != 1 and not x.squeezed):
        imp.fail(node, f"only (N, K) x (K, M) products with a constant right side are supported "
                       f"(got (N, {x.shape}) x {w.shape})")
    x = _flat_input(imp, node, x)
    layer = L.Dense(w.shape[1], use_bias=False, name=imp.layer_name(node))
    return imp.call(layer, x.t, arrays=[w])


def _channel_const(imp, node, c, x: _Sym):
    """A constant operand as one value per channel (shape (C,)), or None if it is not of that form."""
    c = np.asarray(c)
    C = x.shape[0]
    if c.size == 1:
        return np.full(C, float(c.reshape(-1)[0]))
    shape = [s for s in c.shape]
    while shape and shape[0] == 1 and len(shape) > len(x.shape):
        shape = shape[1:]
    want = (C,) + (1,) * (len(x.shape) - 1)
    if tuple(shape) == want or (x.squeezed and tuple(shape) == (C, 1, 1)):
        return c.reshape(C)
    return None


def _elementwise(kind):
    def handler(imp, node, a):
        from . import layers as L

        vals = [imp.env.get(n) for n in node.input]
        syms = [v for v in vals if isinstance(v, _Sym)]
        consts = [v for v in vals if isinstance(v, np.ndarray)]
        if len(syms) + len(consts) != len(vals):
            imp.fail(node, "an input is never computed")
        if not consts:
            shapes = {(v.shape, v.squeezed) for v in syms}
            if len(shapes) != 1:
                imp.fail(node, f"broadcasting between data tensors of shapes {[v.shape for v in syms]} "
                               "is not supported (equal shapes are)")
            cls = {"add": L.Add, "mul": L.Multiply, "sub": L.Subtract}.get(kind)
            if cls is None:
                imp.fail(node, "division of two data tensors is not supported")
            return imp.call(cls(name=imp.layer_name(node)), [v.t for v in syms], syms[0].shape, syms[0].squeezed)
        if len(syms) != 1 or len(consts) != 1:
            imp.fail(node, "only one data tensor and one constant are supported here")
        x, c = syms[0], consts[0]
        per = _channel_const(imp, node, c, x)
        if per is None:
            imp.fail(node, f"a constant of shape {c.shape} against data (N, {x.shape}): only scalars and "
                           "per-channel constants are supported")
        if kind == "sub" and isinstance(vals[0], np.ndarray):
            imp.fail(node, "constant - tensor is not supported")
        scale, shift = np.ones_like(per, dtype=np.float64), np.zeros_like(per, dtype=np.float64)
        if kind == "add":
            shift = per
        elif kind == "sub":
            shift = -per
        elif kind == "mul":
            scale = per
        else:
            scale = 1.0 / per
        return _affine(imp, node, x, scale, shift)
    return handler


def _affine(imp, node, x: _Sym, scale, shift):
    """``x * scale + shift`` per channel: folded into the producing batch norm / convolution when
    ``x`` has no other consumer, else a frozen batch norm that computes exactly that."""
    from . import layers as L

    prod = x.layer
    sole = imp.consumers.get(node.input[0] if isinstance(imp.env.get(node.input[0]), _Sym) else node.input[1]) == 1
    for entry in imp.weights:
        if entry[0] is prod and sole and not x.squeezed and isinstance(prod, (L.BatchNormalization, L.Conv2D)) \
                and getattr(prod, "activation", "linear") == "linear":
            arrays = entry[1]
            if isinstance(prod, L.BatchNormalization):
                arrays[0] = (arrays[0] * scale).astype(imp.dtype)
                arrays[1] = (arrays[1] * scale + shift).astype(imp.dtype)
            else:
                arrays[0] = (arrays[0] * scale.reshape(-1, 1, 1, 1)).astype(imp.dtype)
                if len(arrays) > 1:
                    arrays[1] = (arrays[1] * scale + shift).astype(imp.dtype)
                elif np.any(shift != 0):
                    break  # no bias to fold the shift into
            imp.notes.append(f"folded {node.op_type} {node.name!r} into {prod.name!r}")
            return _Sym(x.t, x.shape, x.squeezed, prod)
    xs = imp.dense4(x, node) if len(x.shape) != 1 else x
    eps = 1e-3
    layer = L.BatchNormalization(epsilon=eps, name=imp.layer_name(node))
    layer.trainable = False  # a constant affine map: inference-mode batch norm, never trained
    C = xs.shape[0]
    var = np.full(C, 1.0 - eps)
    return imp.call(layer, xs.t, xs.shape, arrays=[scale, shift, np.zeros(C), var])


def _concat(imp, node, a):
    from . import layers as L

    vals = [imp.sym(n, node) for n in node.input]
    axis = int(a.get("axis", 1))
    rank = len(vals[0].shape) + 1
    if axis < 0:
        axis += rank
    if axis != 1:
        imp.fail(node, f"concatenation along axis {axis} is not supported (channels, axis 1, is)")
    vals = [imp.dense4(v, node) for v in vals]
    return imp.call(L.Concatenate(axis=1, name=imp.layer_name(node)), [v.t for v in vals])


def _flatten(imp, node, a):
    from . import layers as L

    x = imp.sym(node.input[0], node)
    if int(a.get("axis", 1)) != 1:
        imp.fail(node, f"axis {a['axis']} is not supported (1 is)")
    if len(x.shape) == 1 or x.squeezed:
        return _Sym(x.t, (int(np.prod(x.shape)),), False, x.layer)
    return imp.call(L.Flatten(name=imp.layer_name(node)), x.t)


def _reshape(imp, node, a):
    from . import layers as L

    x = imp.sym(node.input[0], node)
    target = [int(v) for v in imp.const(node.input[1], node, "shape")]
    if target and target[0] not in (0, _BATCH, -1, 1):  # 1: a file exported with batch 1
        imp.fail(node, f"shape {target} changes the batch axis")
    rest = target[1:]
    n = int(np.prod(x.shape))
    rest = [x.shape[i] if (v == 0 and i < len(x.shape)) else v for i, v in enumerate(rest)]
    if rest.count(-1) > 1:
        imp.fail(node, f"shape {target} has more than one -1")
    if -1 in rest:
        known = int(np.prod([v for v in rest if v != -1]))
        rest[rest.index(-1)] = n // max(known, 1)
    if int(np.prod(rest)) != n:
        imp.fail(node, f"cannot reshape (N, {x.shape}) to {target}")
    rest = tuple(rest)
    if len(rest) == 1:
        return _flatten(imp, node, {"axis": 1}) if not x.squeezed else _Sym(x.t, rest, False, x.layer)
    shuffle = _channel_shuffle(imp, node, x, rest)
    if shuffle is not None:
        return shuffle
    layer = L.Reshape(rest, name=imp.layer_name(node))
    return imp.call(layer, x.t, rest)


def _channel_shuffle(imp, node, x, rest):
    """Reshape (N,C,H,W)->(N,g,C/g,H,W), Transpose(0,2,1,3,4), Reshape back: a ChannelShuffle(g)."""
    if len(rest) != 4 or len(x.shape) != 3 or rest[0] * rest[1] != x.shape[0] or rest[2:] != x.shape[1:]:
        return None
    return _Pending5(x, rest)


class _Pending5:
    """The 5-D middle of a channel shuffle, waiting for its Transpose and Reshape."""

    def __init__(self, x, rest, transposed=False):
        self.x, self.rest, self.transposed = x, rest, transposed


def _transpose(imp, node, a):
    v = imp.env.get(node.input[0])
    perm = [int(p) for p in a.get("perm", [])]
    if isinstance(v, _Pending5) and perm == [0, 2, 1, 3, 4] and not v.transposed:
        return _Pending5(v.x, v.rest, True)
    if not isinstance(v, _Pending5):
        imp.sym(node.input[0], node)  # a constant or missing input gets its own message
    imp.fail(node, f"Transpose with perm {perm} is not supported (only the channel shuffle "
                   "Reshape-Transpose(0,2,1,3,4)-Reshape is)")


def _reshape_or_shuffle(imp, node, a):
    from . import layers as L

    v = imp.env.get(node.input[0])
    if isinstance(v, _Pending5):
        if not v.transposed:
            imp.fail(node, "a 5-D tensor is only supported inside a channel shuffle")
        target = [int(t) for t in imp.const(node.input[1], node, "shape")]
        shape = tuple(v.x.shape)
        if [t for t in target[1:]] not in ([*shape], [-1, *shape[1:]]) and \
                int(np.prod([t for t in target[1:] if t > 0])) != int(np.prod(shape)):
            imp.fail(node, f"shape {target} does not close the channel shuffle")
        layer = L.ChannelShuffle(v.rest[0], name=imp.layer_name(node))
        return imp.call(layer, v.x.t, shape)
    return _reshape(imp, node, a)


def _softmax(log):
    def handler(imp, node, a):
        from . import layers as L

        x = imp.sym(node.input[0], node)
        axis = int(a.get("axis", 1 if imp.opset < 13 else -1))
        ok = (len(x.shape) == 1 and axis in (1, -1)) or (imp.opset < 13 and axis == 1)
        if not ok:
            imp.fail(node, f"softmax over axis {axis} of (N, {x.shape}) is not supported (over the classes "
                           "of an (N, classes) tensor is)")
        if len(x.shape) != 1:
            x = _flat_input(imp, node, x)  # opset < 13: flattened to 2-D from axis 1
        layer = L.LogSoftmax(name=imp.layer_name(node)) if log else L.Softmax(name=imp.layer_name(node))
        return imp.call(layer, x.t)
    return handler


def _passthrough(imp, node, a):
    v = imp.env.get(node.input[0])
    if not isinstance(v, (_Sym, np.ndarray)):
        imp.sym(node.input[0], node)
    if node.op_type == "Dropout" and imp.opset >= 12 and len(node.input) > 2 and node.input[2]:
        tm = imp.const(node.input[2], node, "training_mode")
        if bool(np.asarray(tm).reshape(-1)[0]):
            imp.fail(node, "training_mode=True is not supported")
    imp.notes.append(f"removed {node.op_type} {node.name!r}")
    return [v] + [None] * (len(node.output) - 1)


def _pad(imp, node, a):
    from . import layers as L

    x = imp.dense4(imp.sym(node.input[0], node), node)
    mode = a.get("mode", "constant")
    if mode != "constant":
        imp.fail(node, f"mode {mode!r} is not supported (constant zero padding is)")
    if imp.opset < 11:
        pads, value = list(a.get("pads", [])), float(a.get("value", 0.0))
    else:
        pads = [int(v) for v in imp.const(node.input[1], node, "pads")]
        value = float(np.asarray(imp.const(node.input[2], node, "constant_value")).reshape(-1)[0]) \
            if len(node.input) > 2 and node.input[2] else 0.0
        if len(node.input) > 3 and node.input[3]:
            imp.fail(node, "the axes input is not supported")
    if value != 0.0:
        imp.fail(node, f"constant value {value} is not supported (zero padding is)")
    if len(pads) == 8 and not any(pads[i] for i in (0, 2, 3, 4, 6, 7)) and (pads[1] or pads[5]):
        lo, hi = int(pads[1]), int(pads[5])
        if lo == (lo + hi) // 2:  # zero channels around the input: the shortcut's channel padding
            layer = L.IdentityShortcut(x.shape[0] + lo + hi, strides=1, name=imp.layer_name(node))
            return imp.call(layer, x.t)
    if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)):
        imp.fail(node, f"pads {pads}: only padding of H and W (or zero channels split evenly) is supported")
    top, left, bottom, right = pads[2], pads[3], pads[6], pads[7]
    layer = L.ZeroPadding2D(((top, bottom), (left, right)), name=imp.layer_name(node))
    return imp.call(layer, x.t)


def _squeeze(imp, node, a):
    x = imp.sym(node.input[0], node)
    axes = _axes_arg(imp, node, a)
    if x.squeezed and (axes is None or sorted(a % 4 for a in axes) == [2, 3]):
        return _Sym(x.t, (x.shape[0],), False, x.layer)
    if axes is not None and all(x.shape[ax - 1] == 1 for ax in axes if ax > 0):
        from . import layers as L

        rest = tuple(s for i, s in enumerate(x.shape) if (i + 1) not in axes)
        return imp.call(L.Reshape(rest, name=imp.layer_name(node)), x.t, rest)
    imp.fail(node, f"squeezing axes {axes} of (N, {x.shape}) is not supported")


def _unsqueeze(imp, node, a):
    from . import layers as L

    x = imp.sym(node.input[0], node)
    axes = sorted(_axes_arg(imp, node, a) or [])
    shape = [None, *x.shape]
    for ax in axes:
        shape.insert(ax if ax >= 0 else ax + len(shape) + 1, 1)
    if shape[0] is not None:
        imp.fail(node, "unsqueezing axis 0 (the batch axis) is not supported")
    rest = tuple(shape[1:])
    if x.squeezed and rest == (x.shape[0], 1, 1):
        return x
    return imp.call(L.Reshape(rest, name=imp.layer_name(node)), x.t, rest)


def _slice(imp, node, a):
    """A strided subsample of H and W (``x[:, :, ::s, ::s]``, ResNet option-A shortcuts)."""
    from . import layers as L

    x = imp.dense4(imp.sym(node.input[0], node), node)
    if imp.opset < 10:
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = (list(np.atleast_1d(imp.const(n, node, w))) for n, w in zip(node.input[1:3], ("starts", "ends")))
        axes = list(np.atleast_1d(imp.const(node.input[3], node, "axes"))) if len(node.input) > 3 and node.input[3] else None
        steps = list(np.atleast_1d(imp.const(node.input[4], node, "steps"))) if len(node.input) > 4 and node.input[4] else None
    axes = [int(v) % 4 for v in (axes if axes is not None else range(len(starts)))]
    steps = [int(v) for v in (steps if steps is not None else [1] * len(starts))]
    spec = {ax: (int(st), int(en), sp) for ax, st, en, sp in zip(axes, starts, ends, steps)}
    H, W = x.shape[1:]
    full = all(spec.get(ax, (0, n, 1))[0] == 0 and spec.get(ax, (0, n, 1))[1] >= n for ax, n in ((2, H), (3, W)))
    s2, s3 = spec.get(2, (0, H, 1))[2], spec.get(3, (0, W, 1))[2]
    if set(spec) <= {2, 3} and full and s2 == s3 and s2 >= 1:
        layer = L.IdentityShortcut(x.shape[0], strides=s2, name=imp.layer_name(node))
        return imp.call(layer, x.t)
    imp.fail(node, f"slicing {spec} is not supported (a strided subsample of H and W from 0 is)")


def _not_constant(imp, node, a):
    imp.fail(node, "its inputs must be constants (or, for Shape, a tensor of known shape): this is a "
                   "dynamic shape computation")


_HANDLERS = {
    "Conv": _conv, "BatchNormalization": _batchnorm,
    "Relu": _activation("relu"), "LeakyRelu": _activation("leaky_relu"), "Elu": _activation("elu"),
    "Sigmoid": _activation("sigmoid"), "Tanh": _activation("tanh"), "HardSwish": _activation("hard_swish"),
    "HardSigmoid": _hard_sigmoid, "Clip": _clip,
    "MaxPool": _pool("max"), "AveragePool": _pool("avg"),
    "GlobalAveragePool": _global_pool("avg"), "GlobalMaxPool": _global_pool("max"), "LRN": _lrn,
    "Gemm": _gemm, "MatMul": _matmul,
    "Add": _elementwise("add"), "Sum": _elementwise("add"), "Mul": _elementwise("mul"),
    "Sub": _elementwise("sub"), "Div": _elementwise("div"),
    "Concat": _concat, "Flatten": _flatten, "Reshape": _reshape_or_shuffle, "Transpose": _transpose,
    "Dropout": _passthrough, "Identity": _passthrough, "Softmax": _softmax(False), "LogSoftmax": _softmax(True),
    "Pad": _pad, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "Constant": _not_constant, "ConstantOfShape": _not_constant, "Shape": _not_constant,
    "Gather": _not_constant, "Cast": _not_constant, "Slice": _slice,
}


# ----------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------

def load_onnx(path, *, device=None, dtype=None):
    """Read an ONNX file as a trainable :class:`nbcnn.Model` (see the module docstring).

    ``dtype`` float32 (default) or float64; ``device`` as for any model. The returned model's
    ``onnx_import_notes`` lists what was folded, fused and removed.
    """
    onnx = require_onnx()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise OnnxError(f"{path}: no such ONNX file")
    size = os.path.getsize(path)
    if size > _MAX_FILE:
        raise OnnxError(f"{path}: {size / 2**30:.1f} GiB is larger than an ONNX protobuf can be")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise OnnxError(f"{path}: not a valid ONNX file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not proto.graph.node:
        raise OnnxError(f"{path}: not a valid ONNX model (its graph has no nodes)")
    for init in proto.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            base = os.path.dirname(os.path.abspath(path))
            try:
                onnx.load_external_data_for_model(proto, base)
            except Exception as exc:
                raise OnnxError(f"{path}: cannot load its external weight files: {exc}") from None
            break
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise OnnxError(f"{path}: the ONNX checker rejects the file: {str(exc).splitlines()[0][:300]}") from None
    dt = np.dtype(dtype or "float32")
    if dt not in (np.float32, np.float64):
        raise OnnxError(f"dtype must be float32 or float64, got {dtype!r}")
    imp = _Importer(onnx, proto, path, dt, device)
    model = imp.run()
    model.build()
    for layer, arrays in imp.weights:
        try:
            layer.set_weights(arrays)
        except ValueError as exc:
            raise OnnxError(f"{path}: weights of {layer.name!r} do not fit: {exc}") from None
    model.onnx_import_notes = list(imp.notes)
    return model
