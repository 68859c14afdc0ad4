"""The inference plan of a model: its graph rewritten once for ``predict``.

* **BN folding**: a ``BatchNormalization`` whose only input is a linear convolution (no
  activation of its own) that nothing else reads is folded into that convolution:
  with ``s = gamma / sqrt(moving_variance + epsilon)``, the kernel becomes ``W · s`` (per
  output channel) and the bias ``(b − moving_mean) · s + beta``. Exact up to rounding.
* **fusion**: a ReLU that is the only reader of a (folded) convolution runs in place on the
  convolution's output; ``Add`` of two tensors followed by its only reader, a ReLU, is one
  element-wise kernel (``add_relu``).
* everything else runs its layer's ``forward`` in inference mode.

The plan (which steps fuse, which values can be dropped after which step) is worked out
once per graph; :meth:`InferencePlan.prepare` recomputes the folded weights from the
current weights at every ``predict`` call (cheap: one pass over the folded kernels), so
training between two calls is always seen.
"""
from __future__ import annotations

from . import layers as L
from . import ops

__all__ = ["InferencePlan"]

_LAYER, _CONV, _ADD_RELU = 0, 1, 2


def _is_relu(layer) -> bool:
    return isinstance(layer, L.Activation) and layer.activation == "relu"


def _plain_conv(layer) -> bool:
    return isinstance(layer, L.Conv2D) and type(layer).forward is L.Conv2D.forward


class InferencePlan:
    """See the module docstring. ``run(xs)`` returns the values of the graph's outputs."""

    def __init__(self, graph):
        self.graph = g = graph
        outputs = set(g.outputs)
        calls: dict = {}
        for layer, *_ in g.steps:
            calls[id(layer)] = calls.get(id(layer), 0) + 1

        def only_reader(t):
            """The step that is the only reader of tensor t (None if several, none, or t is an output)."""
            c = g.consumers[t]
            return c[0] if len(c) == 1 and t not in outputs else None

        plan, skip = [], set()
        self.folded = []  # (conv layer, bn layer or None): weights recomputed by prepare()
        for i, (layer, ins, out, multi) in enumerate(g.steps):
            if i in skip:
                continue
            if _plain_conv(layer) and layer.activation in ("linear", "relu"):
                bn = relu = None
                end = out
                j = only_reader(out) if layer.activation == "linear" else None
                if j is not None and isinstance(g.steps[j][0], L.BatchNormalization) \
                        and calls[id(g.steps[j][0])] == 1 and len(layer._out) == 3:
                    bn = g.steps[j][0]
                    skip.add(j)
                    end = g.steps[j][2]
                    j = only_reader(end)
                if layer.activation == "relu":
                    relu = True
                elif j is not None and _is_relu(g.steps[j][0]):
                    relu = True
                    skip.add(j)
                    end = g.steps[j][2]
                if bn is not None or relu:
                    k = len(self.folded)
                    self.folded.append((layer, bn))
                    plan.append((_CONV, (layer, k, bool(relu)), ins, end))
                    continue
            if isinstance(layer, L.Add) and len(ins) == 2:
                j = only_reader(out)
                if j is not None and _is_relu(g.steps[j][0]):
                    skip.add(j)
                    plan.append((_ADD_RELU, layer, ins, g.steps[j][2]))
                    continue
            plan.append((_LAYER, layer, ins, out))
        last = {}
        for p, (_, _, ins, _) in enumerate(plan):
            for t in ins:
                last[t] = p
        self.steps = [(kind, arg, ins, out, tuple(t for t in set(ins) if last[t] == p and t not in outputs),
                       len(ins) > 1 or (kind == _LAYER and arg.takes_list))
                      for p, (kind, arg, ins, out) in enumerate(plan)]
        self.weights: list = [None] * len(self.folded)

    @property
    def n_fused(self) -> int:
        """How many graph steps the plan saves (folded BNs, fused ReLUs)."""
        return len(self.graph.steps) - len(self.steps)

    def prepare(self) -> None:
        """(Re)compute the folded kernels and biases from the layers' current weights."""
        for k, (conv, bn) in enumerate(self.folded):
            w = conv.params[0]
            b = conv.params[1] if conv.use_bias else None
            if bn is None:
                self.weights[k] = (w, b)
                continue
            xp = ops.array_module(w)
            gamma, beta = bn._gamma_beta()
            mean, var = bn.state
            s = 1.0 / xp.sqrt(var + w.dtype.type(bn.epsilon))
            if gamma is not None:
                s = s * gamma
            s = s.astype(w.dtype, copy=False)
            wf = w * s.reshape(-1, *([1] * (w.ndim - 1)))
            bf = (-mean if b is None else b - mean) * s
            if beta is not None:
                bf = bf + beta
            self.weights[k] = (xp.ascontiguousarray(wf), xp.ascontiguousarray(bf.astype(w.dtype, copy=False)))

    def run(self, xs) -> list:
        g = self.graph
        vals = [None] * g.n_tensors
        vals[:g.n_inputs] = xs
        weights = self.weights
        for kind, arg, ins, out, free, multi in self.steps:
            if kind == _LAYER:
                vals[out] = arg.forward(tuple([vals[t] for t in ins]) if multi else vals[ins[0]], training=False)
            elif kind == _CONV:
                layer, k, relu = arg
                w, b = weights[k]
                y = ops.conv2d(vals[ins[0]], w, b, layer.strides, layer.pads, layer.dilation_rate, layer.groups)
                if relu:
                    L.act_forward_inplace(y, "relu")
                vals[out] = y
            else:
                vals[out] = ops.ew(vals[ins[0]], vals[ins[1]], "add_relu")
            for t in free:
                vals[t] = None
        return [vals[t] for t in g.outputs]
