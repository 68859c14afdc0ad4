"""Models: ``Model`` (a graph of layer calls, the functional API) and ``Sequential`` (a stack).

Both are run by one executor, :class:`nbcnn.engine.Graph`: a ``Sequential`` is
a linear graph. Parameters of all layers live in one flat buffer (and
gradients in another), so one optimiser pass updates everything; layers hold
views into them. Weights are allocated lazily (first forward, ``get_weights``,
``compile``), so defining or summarising VGG-16 is instant. Non-trainable
state (batch-norm moving statistics) stays in each layer's ``state``: the
optimiser never sees it; weights, files and ``to(device)`` carry it.

Inputs: float arrays ``(N, C, H, W)`` (float32 by default); ``uint8`` images
are scaled to [0, 1] on the fly, batch by batch, so a data set can stay in
compact uint8 form; ``(N, H, W)`` is accepted for single-channel models.
A model with several inputs takes a list of arrays. Labels: integer class
indices ``(N,)`` or one-hot ``(N, K)``.

Reproducibility: a model draws its seed from ``nbcnn.seed`` (or ``seed=``);
weight initialisation, the shuffle order of every epoch and dropout masks
derive from it, and the dropout stream and epoch position are saved in
checkpoints, so an interrupted CPU run resumed with
``fit(initial_epoch=m.progress["epoch"], initial_batch=m.progress["batch"])``
reproduces the uninterrupted run bit for bit.

``fit`` is a loop over small methods so that a distributed trainer can hook in:
:meth:`Model._epoch_batches` (which batches this process sees),
:meth:`Model._train_step` = :meth:`Model._forward_backward` then
:meth:`Model._apply_gradients` (the optimiser step on the flat gradient buffer
``self._gflat``), and :meth:`Model._epoch_totals` (the epoch's loss / accuracy sums).
"""
from __future__ import annotations

import sys
import time

import numpy as np

from . import callbacks as cb
from . import layers as L
from . import losses as losses_mod
from . import optim as optim_mod
from . import serialization
from .callbacks import History
from .datasets import BatchIterator
from .device import Device, is_gpu_array, parse_device, to_numpy
from .engine import Graph, GraphError
from .inference import InferencePlan
from .progress import ProgressBar, format_time, is_tty
from .symbolic import Input, SymbolicTensor

__all__ = ["Model", "Sequential", "History", "Input", "load_model", "GraphError"]


def _no_decay_ranges(layers, spans) -> list:
    """Flat ``[lo, hi)`` ranges of every 1-D parameter (biases, normalisation scales and shifts):
    the ones an optimiser with ``decay_biases=False`` leaves out of weight decay."""
    out: list = []
    for layer, (off, _) in zip(layers, spans):
        for p in layer.params:
            if p.ndim <= 1 and p.size:
                if out and out[-1][1] == off:
                    out[-1] = (out[-1][0], off + p.size)
                else:
                    out.append((off, off + p.size))
            off += p.size
    return out


def _is_array(a) -> bool:
    return isinstance(a, np.ndarray) or is_gpu_array(a)


def _unique_name(layer, taken: set) -> str:
    base = layer.base_name or L._snake(type(layer).__name__)
    k = 1 + sum(1 for n in taken if n.rsplit("_", 1)[0] == base)
    while f"{base}_{k}" in taken:
        k += 1
    return f"{base}_{k}"


class Model:
    """A graph of layer calls from ``inputs`` to ``outputs`` (Keras' functional API).

    >>> x = Input((3, 32, 32))
    >>> h = Conv2D(16, 3, padding="same", activation="relu")(x)
    >>> y = Add()([h, Conv2D(16, 3, padding="same")(h)])
    >>> m = Model(x, Dense(10)(Flatten()(y)))
    >>> m.compile(optimizer="adam"); m.fit(x_train, y_train, epochs=2)

    A layer called twice shares its weights (the gradients of both calls are summed).
    """

    _kind = "Model"

    def __init__(self, inputs, outputs, name: str | None = None, device=None, dtype=None,
                 seed: int | None = None):
        self._init_common(device, name or "model", dtype, seed)
        ins = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        outs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        self._multi_in = isinstance(inputs, (list, tuple))
        self._multi_out = isinstance(outputs, (list, tuple))
        for t in (*ins, *outs):
            if not isinstance(t, SymbolicTensor):
                raise TypeError(f"Model inputs and outputs must be symbolic tensors (nbcnn.Input(...) and "
                                f"layer calls on it), got {type(t).__name__}")
        if not ins or not outs:
            raise ValueError("a Model needs at least one input and one output")
        for t in ins:
            if not t.is_input:
                raise ValueError(f"model inputs must come from nbcnn.Input(...), got the output of "
                                 f"layer {t.layer.name!r}")
        if len({id(t) for t in ins}) != len(ins):
            raise ValueError("the same Input appears twice in the model's inputs")
        self.inputs, self.outputs = ins, outs
        self._build_graph()

    def _init_common(self, device, name, dtype, seed) -> None:
        self.device: Device = parse_device("auto" if device is None else device)
        if not isinstance(name, str) or not name:
            raise ValueError(f"model name must be a non-empty string, got {name!r}")
        self.name = name
        self.dtype = np.dtype("float32" if dtype is None else dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        if seed is None:
            from .random import derive_seed

            seed = derive_seed()
        self.seed = int(seed)
        self.stop_training = False
        self.optimizer: optim_mod.Optimizer | None = None
        self.loss: losses_mod.Loss | None = None
        self.metrics: list[str] = []
        self.progress = {"epoch": 0, "batch": 0}
        self.metadata: dict = {}
        self._flat = None
        self._gflat = None
        self._rkey = None
        self._ranges: list = []
        self._no_decay: list = []
        self._graph: Graph | None = None
        self._grad_hook = None  # distributed training: bucketed gradient allreduce (nbcnn.distributed)
        self._dist = None       # the distributed session of a running fit
        self._dropout_rng = np.random.default_rng([self.seed, 1])

    # ------------------------------------------------------------------------------------------
    # structure
    # ------------------------------------------------------------------------------------------
    def _build_graph(self) -> None:
        """Topological order of the layer calls (once), names, checks; see :mod:`nbcnn.engine`."""
        pos = {id(t): i for i, t in enumerate(self.inputs)}
        order, state = [], {}

        def check_source(t, consumer):
            if t.node is None and id(t) not in pos:
                raise GraphError(f"layer {consumer.layer.name or type(consumer.layer).__name__!r} "
                                 f"({type(consumer.layer).__name__}) is called on a tensor {(None, *t.shape)} "
                                 f"that is not connected to the model's inputs (an Input not listed in inputs=)")

        for out in self.outputs:
            if out.node is None:
                if id(out) not in pos:
                    raise GraphError("an output of the model is an Input not listed in inputs=")
                continue
            if state.get(out.node.id) == 2:
                continue
            state[out.node.id] = 1
            stack = [(out.node, iter(out.node.inputs))]
            while stack:
                node, it = stack[-1]
                for t in it:
                    if t.node is None:
                        check_source(t, node)
                        continue
                    st = state.get(t.node.id)
                    if st == 1:
                        raise GraphError(f"the graph has a cycle through layer {t.node.layer.name!r}")
                    if st is None:
                        state[t.node.id] = 1
                        stack.append((t.node, iter(t.node.inputs)))
                        break
                else:
                    stack.pop()
                    state[node.id] = 2
                    order.append(node)
        tid = {id(t): i for i, t in enumerate(self.inputs)}
        for k, node in enumerate(order):
            tid[id(node.output)] = len(self.inputs) + k
        used = {id(t) for node in order for t in node.inputs} | {id(t) for t in self.outputs}
        for i, t in enumerate(self.inputs):
            if id(t) not in used:
                raise GraphError(f"input {i} ({t.name or (None, *t.shape)}) does not reach any output")
        tensors = [*self.inputs, *(n.output for n in order)]
        owners = {id(t.model): t.model for t in tensors if t.model is not None and t.model is not self}
        if len(owners) > 1:
            names = " and ".join(repr(m.name) for m in owners.values())
            raise GraphError(f"the graph mixes tensors of two different models ({names})")
        for t in tensors:
            if t.model is None:
                t.model = self
        # names: unique, Keras style, in topological order
        layers, seen = [], set()
        for node in order:
            if id(node.layer) not in seen:
                seen.add(id(node.layer))
                layers.append(node.layer)
        taken = {l.name for l in layers if l.name is not None}
        by_name: dict = {}
        for l in layers:
            if l.name is None:
                l.name = _unique_name(l, taken)
                taken.add(l.name)
            if l.name in by_name:
                raise GraphError(f"duplicate layer name {l.name!r} in model {self.name!r}")
            by_name[l.name] = l
            if isinstance(l, L.Dropout) and l.seed is None:
                l.rng = self._dropout_rng
        in_taken = {t.name for t in self.inputs if t.name}
        for i, t in enumerate(self.inputs):
            if t.name is None:
                k = i + 1
                while f"input_{k}" in in_taken or f"input_{k}" in by_name:
                    k += 1
                t.name = f"input_{k}"
                in_taken.add(t.name)
        self._nodes = order
        self._graph = Graph(len(self.inputs),
                            [(n.layer, tuple(tid[id(t)] for t in n.inputs), n.multi) for n in order],
                            [tid[id(t)] for t in self.outputs])
        self.layers = list(self._graph.layers)

    @property
    def xp(self):
        return self.device.xp

    @property
    def input_shape(self):
        """Per-sample input shape (a list of shapes for several inputs)."""
        shapes = [t.shape for t in self.inputs]
        return shapes if self._multi_in else shapes[0]

    @property
    def output_shape(self):
        shapes = [(None, *t.shape) for t in self.outputs]
        return shapes if self._multi_out else shapes[0]

    def _shape_known(self) -> bool:
        return True

    def _input_shapes(self) -> list:
        return [t.shape for t in self.inputs]

    def _configure(self) -> None:
        """Shapes were worked out when the layers were called; nothing to redo."""

    def get_layer(self, name=None, index=None) -> L.Layer:
        """A layer by name or index."""
        if index is not None:
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r}; layers are {[l.name for l in self.layers]}")

    def _require_graph(self) -> Graph:
        if self._graph is None:
            self._configure()
        if self._graph is None:
            raise ValueError("the model's input shape is unknown: pass input_shape= to the first layer "
                             "or call model.build((C, H, W))")
        return self._graph

    def build(self, input_shape=None) -> None:
        """Allocate all weights (once); a Sequential may be given its input shape here."""
        if input_shape is None and self._flat is not None:
            return  # the hot path: called at every train_on_batch / predict
        if input_shape is not None:
            shape = L.Layer._check_shape(input_shape)
            if tuple(shape) != tuple(self._input_shapes()[0]) or len(self.inputs) != 1:
                raise ValueError(f"model {self.name!r} was built for input {self.input_shape}, got {shape}")
        self._configure()
        self._require_graph()
        if self._flat is not None:
            return
        self._allocate()

    def _allocate(self) -> None:
        if all(l.params for l in self.layers if l._param_shapes):
            self._adopt()  # layers built on their own (or re-adopting after add): keep their weights
            return
        # fresh model: draw every weight straight into one flat host buffer (no copies)
        init_rng = np.random.default_rng([self.seed, 0])
        total = sum(int(np.prod(s)) for l in self.layers for s in l._param_shapes)
        host = np.empty(total, dtype=self.dtype)
        off = 0
        for layer in self.layers:
            views = []
            for s in layer._param_shapes:
                n = int(np.prod(s))
                views.append(host[off:off + n].reshape(s))
                off += n
            if layer.params:  # built earlier (e.g. set_weights on the layer): keep its values
                for v, p in zip(views, layer.params):
                    v[...] = to_numpy(p)
                layer.params = views
            else:
                layer._init_into(views, init_rng)
        self._adopt(host)

    def _adopt(self, host=None) -> None:
        """Move every layer's parameters into one flat buffer (layers keep views).

        ``host``: a NumPy buffer the layers' params are already views of (used as is on the CPU).
        """
        xp = self.xp
        total = sum(int(p.size) for l in self.layers for p in l.params)
        if host is not None and xp is np:
            flat = host
        elif host is not None:
            flat = xp.asarray(host)
        else:
            flat = xp.empty(total, dtype=self.dtype)
        off = 0
        self._spans = []
        for layer in self.layers:
            start = off
            views = []
            for p in layer.params:
                v = flat[off:off + p.size].reshape(p.shape)
                if host is None:
                    v[...] = xp.asarray(p) if xp is not np else p
                views.append(v)
                off += p.size
            layer.params = views
            layer.grads = []
            self._spans.append((start, off))
            # non-trainable state stays per layer (the optimiser never sees it), on the model's device
            layer.state = [to_numpy(s) if xp is np else xp.asarray(s) for s in layer.state]
            layer.ensure_state(self.dtype, xp)
        self._flat = flat
        self._gflat = None
        self._rkey = None
        if self._graph is not None:
            self._graph._key = None  # re-plan: another model may have changed the layers' need_gx

    def _ensure_grads(self) -> None:
        if self._gflat is None:
            xp = self.xp
            self._gflat = xp.zeros(self._flat.size, dtype=self.dtype)
            for layer, (lo, hi) in zip(self.layers, self._spans):
                off = lo
                layer.grads = []
                for p in layer.params:
                    layer.grads.append(self._gflat[off:off + p.size].reshape(p.shape))
                    off += p.size

    def _update_trainable(self) -> None:
        key = tuple([l.trainable for l in self.layers])
        self._graph.plan(key)
        if key == self._rkey:
            return
        ranges: list = []
        for layer, (lo, hi) in zip(self.layers, self._spans):
            if hi > lo and layer.trainable:
                if ranges and ranges[-1][1] == lo:
                    ranges[-1] = (ranges[-1][0], hi)
                else:
                    ranges.append((lo, hi))
        self._ranges = ranges
        self._no_decay = _no_decay_ranges(self.layers, self._spans)
        self._rkey = key

    def count_params(self) -> int:
        """Total number of parameters, moving statistics included (from shapes; allocates nothing)."""
        self._configure()
        return sum(l.count_params() for l in self.layers)

    def count_trainable_params(self) -> int:
        """Parameters of the trainable layers (what the optimiser updates)."""
        self._configure()
        return sum(l.count_trainable() for l in self.layers if l.trainable)

    def summary(self, print_fn=print, explain: bool = False, batch_size: int = 1) -> str:
        """The Keras-style table (printed and returned); ``explain=True`` adds the arithmetic
        of every layer (see :mod:`nbcnn.explain`)."""
        self._configure()
        self._require_graph()
        text = self._summary_table()
        if explain:
            from .explain import explain as _explain

            text += "\n" + _explain(self, batch_size=batch_size)
        if print_fn is not None:
            print_fn(text)
        return text

    def _summary_totals(self, width: int) -> list:
        total = self.count_params()
        trainable = self.count_trainable_params()
        return ["=" * width, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                f"Non-trainable params: {total - trainable:,}", "_" * width]

    def _summary_table(self) -> str:
        w = (32, 22, 11, 40)
        width = sum(w)
        g = self._graph
        names = [t.name for t in self.inputs] + [f"{l.name}" for l, *_ in g.steps]
        calls: dict = {}
        refs = []
        for t in range(g.n_inputs):
            refs.append(names[t])
        for layer, _, _, _ in g.steps:
            k = calls.get(id(layer), 0)
            calls[id(layer)] = k + 1
            refs.append(layer.name if k == 0 else f"{layer.name}[{k}]")
        rows = [f'Model: "{self.name}"', "_" * width,
                f"{' Layer (type)':<{w[0]}}{'Output Shape':<{w[1]}}{'Param #':<{w[2]}}Connected to", "=" * width]
        for i, t in enumerate(self.inputs):
            rows += [f"{' ' + t.name + ' (InputLayer)':<{w[0]}}{str((None, *t.shape)):<{w[1]}}0", ""]
        shown = set()
        for i, (layer, ins, out, _) in enumerate(g.steps):
            first = id(layer) not in shown
            shown.add(id(layer))
            label = f" {refs[out]} ({type(layer).__name__})" if first else f" {refs[out]} (shared)"
            params = f"{layer.count_params():,}" if first else "-"
            src = [refs[t] for t in ins]
            rows.append(f"{label:<{w[0]}}{str((None, *layer._out)):<{w[1]}}{params:<{w[2]}}{src[0]}".rstrip())
            rows += [f"{'':<{w[0] + w[1] + w[2]}}{s}" for s in src[1:]]
            rows.append("")
        rows.pop()
        rows += self._summary_totals(width)
        return "\n".join(rows)

    # ------------------------------------------------------------------------------------------
    # weights
    # ------------------------------------------------------------------------------------------
    def get_weights(self) -> list:
        """All weights as NumPy copies, layer by layer (Keras order; moving statistics after a layer's params)."""
        self.build()
        return [w for l in self.layers for w in l.get_weights()]

    def set_weights(self, weights) -> None:
        self.build()
        weights = list(weights)
        need = sum(len(l.params) + len(l.state) for l in self.layers)
        if len(weights) != need:
            raise ValueError(f"model {self.name!r} has {need} weight arrays, got {len(weights)}")
        i = 0
        for layer in self.layers:
            k = len(layer.params) + len(layer.state)
            layer.set_weights(weights[i:i + k])
            i += k

    def to(self, device) -> "Model":
        """Move weights, non-trainable state and optimiser state to ``device`` (``"cpu"``, ``"cuda"``); returns self."""
        dev = parse_device(device)
        if dev == self.device:
            return self
        weights = self.get_weights() if self._flat is not None else None
        state = self.optimizer.get_state() if self.optimizer is not None else None
        self.device = dev
        if weights is not None:
            self._flat = None
            for layer in self.layers:
                layer.params, layer.grads, layer.state = [], [], []
                if hasattr(layer, "_ctx"):
                    layer._ctx = {}
                if hasattr(layer, "_gbuf"):
                    layer._gbuf = None
            if self._graph is not None:
                self._graph.reset_calls()
            self.build()
            self.set_weights(weights)
        if state is not None:
            self.optimizer.set_state(*state, xp=self.xp)
        return self

    # ------------------------------------------------------------------------------------------
    # compile / inputs
    # ------------------------------------------------------------------------------------------
    def compile(self, loss="cross_entropy", optimizer="sgd", metrics=("accuracy",)) -> None:
        """Choose the loss (``"cross_entropy"`` on logits, ``"mse"``), optimiser and metrics."""
        self.loss = losses_mod.get(loss)
        self.optimizer = optim_mod.get(optimizer)
        metrics = [metrics] if isinstance(metrics, str) else list(metrics or [])
        for m in metrics:
            if m not in ("accuracy", "acc"):
                raise ValueError(f"unknown metric {m!r}: only 'accuracy' is supported")
        self.metrics = ["accuracy"] if metrics else []
        if self._shape_known():
            self.build()

    def _require_compiled(self, what: str):
        if self.loss is None or self.optimizer is None:
            raise RuntimeError(f"call model.compile(...) before {what}()")
        g = self._graph
        if g is not None and (len(g.outputs) != 1 or g.n_inputs != 1):
            raise ValueError(f"{what}() needs a model with one input and one output; model {self.name!r} has "
                             f"{g.n_inputs} inputs and {len(g.outputs)} outputs (predict() takes any number)")

    def _softmax_tail(self) -> str | None:
        g = self._graph
        if g is None or not g.steps or len(g.outputs) != 1 or g.outputs[0] != g.steps[-1][2]:
            return None
        last = g.steps[-1][0]
        if isinstance(last, L.Activation) and last.activation == "softmax":
            return "layer"
        if isinstance(last, L.Dense) and last.activation == "softmax":
            return "dense"
        return None

    @property
    def _out_features(self):
        out = self._graph.steps[-1][0]._out if self._graph is not None and self._graph.steps else None
        return out[0] if out and len(out) == 1 else None

    def _check_x(self, x, what: str, check_finite: bool = True, index: int = 0):
        """Validate a whole input array on the host side (shape, dtype, NaN/inf); returns it (maybe reshaped)."""
        if not _is_array(x):
            try:
                x = np.asarray(x)
            except Exception:
                raise TypeError(f"{what}: x must be an array, got {type(x).__name__}") from None
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{what}: x must be a numeric array, got dtype {x.dtype}")
        if not self._shape_known():
            if x.ndim == 3:
                x = x[:, None]
            if x.ndim != 4:
                raise ValueError(f"{what}: x must be (N, C, H, W), got shape {tuple(x.shape)}")
            self.build(tuple(x.shape[1:]))
        exp = tuple(self._input_shapes()[index])
        if x.ndim == len(exp) and len(exp) == 3 and exp[0] == 1 and tuple(x.shape[1:]) == exp[1:]:
            x = x.reshape(x.shape[0], *exp)
        if x.ndim != len(exp) + 1 or tuple(x.shape[1:]) != exp:
            raise ValueError(f"{what}: the model expects input of shape (N, {', '.join(map(str, exp))}), "
                             f"got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"{what}: x is empty (shape {tuple(x.shape)})")
        if check_finite and x.dtype.kind == "f":
            xp = np if isinstance(x, np.ndarray) else self.xp
            if not bool(xp.isfinite(x).all()):
                raise ValueError(f"{what}: x contains NaN or infinite values")
        return x

    def _check_y(self, y, n: int, what: str):
        if not _is_array(y):
            y = np.asarray(y)
        k = self._out_features
        if y.shape[0] != n:
            raise ValueError(f"{what}: x has {n} samples but y has {y.shape[0]}")
        if y.ndim == 1:
            if y.dtype.kind not in "iu":
                if y.dtype.kind == "f" and bool((y == np.round(y)).all()):
                    y = y.astype(np.int64)
                else:
                    raise TypeError(f"{what}: labels must be integer class indices, got dtype {y.dtype}")
            if isinstance(self.loss, losses_mod.CrossEntropy) or self.loss is None:
                lo, hi = int(y.min()), int(y.max())
                if lo < 0 or (k is not None and hi >= k):
                    raise ValueError(f"{what}: labels must be in [0, {k}), got values in [{lo}, {hi}]")
        elif y.dtype.kind == "f":
            xp = np if isinstance(y, np.ndarray) else self.xp
            if not bool(xp.isfinite(y).all()):
                raise ValueError(f"{what}: y contains NaN or infinite values")
        return y

    def _to_batch(self, xb):
        """A batch on the model's device in the model's dtype (uint8 scaled to [0, 1])."""
        xp = self.xp
        if xp is not np and not is_gpu_array(xb):
            xb = xp.asarray(xb)
        elif xp is np and is_gpu_array(xb):
            xb = to_numpy(xb)
        if xb.dtype == np.uint8:
            return xp.multiply(xb, self.dtype.type(1.0 / 255.0), dtype=self.dtype)
        if xb.dtype != self.dtype:
            xb = xb.astype(self.dtype)
        if not xb.flags.c_contiguous:
            xb = xp.ascontiguousarray(xb)
        return xb

    def _to_labels(self, yb):
        xp = self.xp
        if xp is not np and not is_gpu_array(yb):
            return xp.asarray(yb)
        if xp is np and is_gpu_array(yb):
            return to_numpy(yb)
        return yb

    def _check_inputs(self, x, what: str) -> list:
        """A list of validated input arrays (one per model input, same number of samples)."""
        if not self._multi_in:
            return [self._check_x(x, what)]
        if not isinstance(x, (list, tuple)) or len(x) != len(self.inputs):
            raise ValueError(f"{what}: model {self.name!r} has {len(self.inputs)} inputs; pass a list of "
                             f"{len(self.inputs)} arrays")
        xs = [self._check_x(a, f"{what} (input {i})", index=i) for i, a in enumerate(x)]
        if len({a.shape[0] for a in xs}) != 1:
            raise ValueError(f"{what}: the inputs have different numbers of samples "
                             f"{[int(a.shape[0]) for a in xs]}")
        return xs

    # ------------------------------------------------------------------------------------------
    # compute (all through the engine)
    # ------------------------------------------------------------------------------------------
    def forward(self, x, training: bool = False, start: int = 0, stop: int | None = None):
        """Run steps ``[start, stop)`` of the graph on a prepared batch (device array(s) of the model's
        dtype) and return the output of the last step run (the model's output(s) by default)."""
        self.build()
        g = self._graph
        if training:
            g.plan()
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        n = len(g.steps) if stop is None else (stop if stop >= 0 else len(g.steps) + stop)
        with self.device.activate():
            if n <= start:
                return xs[0]
            if stop is None:
                vals = g.forward(xs, training, start=start)
                outs = [vals[t] for t in g.outputs]
                return outs if self._multi_out else outs[0]
            t = g.steps[n - 1][2]
            return g.forward(xs, training, stop=n, keep=(t,), start=start)[t]

    def tensor_values(self, x, names, training: bool = False):
        """The values of the named layers' outputs (their last call) on a prepared batch: a dict."""
        self.build()
        g = self._graph
        want = {}
        for name in names:
            want[name] = g.steps[g.step_of_layer(self.get_layer(name))][2]
        stop = max(t - g.n_inputs for t in want.values()) + 1
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        if training:
            g.plan()
        with self.device.activate():
            vals = g.forward(xs, training, stop=stop, keep=tuple(want.values()))
        return {k: vals[t] for k, t in want.items()}

    def _run(self, xs, training: bool, logits: bool):
        """Forward the whole graph; returns ``(outputs, tail)``. With ``logits`` a softmax tail is
        left out (a Softmax layer, or the softmax of a Dense), for the fused softmax + cross-entropy."""
        g = self._graph
        tail = self._softmax_tail() if logits else None
        if tail == "layer":
            stop = len(g.steps) - 1
            t_out = g.steps[-1][1][0]
            vals = g.forward(xs, training, stop=stop, keep=(t_out,))
            return [vals[t_out]], (tail, t_out)
        vals = g.forward(xs, training, linear_last=tail == "dense")
        return [vals[t] for t in g.outputs], (tail, g.outputs[0])

    def _forward_eval(self, x, logits: bool):
        return self._run([x], False, logits)[0][0]

    def _train_step(self, xb, yb):
        """One optimiser step on a prepared batch; returns (mean loss, number correct or -1)."""
        loss, out = self._forward_backward(xb, yb)
        if self._grad_hook is not None:  # distributed: wait for the averaged gradients
            self._grad_hook.finish()
        self._apply_gradients()
        correct = self._correct(out, yb) if self.metrics else -1
        return loss, correct

    def _apply_gradients(self) -> None:
        """The optimiser step on the flat buffers (gradients in ``self._gflat``, ranges of trainable weights)."""
        if self._ranges:
            self.optimizer.step(self._flat, self._gflat, self._ranges, self._no_decay)

    def gradients(self, x, y) -> tuple[float, list]:
        """``(loss, grads)`` for one batch without updating anything; ``grads`` follows
        ``get_weights()`` order (None for frozen layers' weights and for non-trainable state). For checks and research code."""
        if self.loss is None:
            raise RuntimeError("call model.compile(...) before gradients()")
        x = self._check_x(x, "gradients")
        y = self._check_y(y, x.shape[0], "gradients")
        self.build()
        with self.device.activate():
            loss, _ = self._forward_backward(self._to_batch(x), self._to_labels(y))
        grads = []
        for layer in self.layers:
            grads += [to_numpy(g).copy() if layer.trainable else None for g in layer.grads]
            grads += [None] * len(layer.state)
        return loss, grads

    def _forward_backward(self, xb, yb):
        self._update_trainable()
        self._ensure_grads()
        g = self._graph
        (out,), (tail, t_out) = self._run([xb], True, self.loss.expects_logits)
        loss, grad = self.loss.loss_and_grad(out, yb)
        if not np.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss} at step {self.optimizer.iterations}: "
                                     "lower the learning rate (or check the inputs)")
        g.backward(grad, t_out, linear_last_step=len(g.steps) - 1 if tail == "dense" else -1,
                   hook=self._grad_hook)
        return loss, out

    def _correct(self, out, yb) -> int:
        if out.ndim != 2:
            return -1
        xp = self.xp
        pred = out.argmax(axis=1)
        labels = yb if yb.ndim == 1 else yb.argmax(axis=1)
        return int(xp.count_nonzero(pred == labels))

    def train_on_batch(self, x, y) -> float:
        """One optimiser step on one batch; returns the batch's mean loss."""
        self._require_compiled("train_on_batch")
        x = self._check_x(x, "train_on_batch")
        y = self._check_y(y, x.shape[0], "train_on_batch")
        self.build()
        self._require_compiled("train_on_batch")
        self.optimizer.setup(self._flat.size, self.dtype, self.xp)
        with self.device.activate():
            loss, _ = self._train_step(self._to_batch(x), self._to_labels(y))
        return loss

    # -- fit, in small steps ------------------------------------------------------------------
    def fit(self, x, y=None, epochs: int = 1, batch_size: int = 32, validation_data=None,
            validation_split: float = 0.0, shuffle: bool = True, callbacks=None, verbose: int = 1,
            initial_epoch: int = 0, initial_batch: int = 0, distributed=None) -> History:
        """Train for ``epochs`` epochs; returns a :class:`History`.

        ``x`` is an array (with labels ``y``), or a re-iterable object yielding ``(xb, yb)``
        batches with ``y=None`` (``len()`` of it, if defined, gives the steps per epoch).
        ``verbose``: 0 silent, 1 a progress bar on a terminal plus a line per epoch, 2 a line per
        epoch. ``initial_epoch``/``initial_batch`` resume a run (see ``model.progress``); an epoch
        cut short by ``model.stop_training`` does not call ``on_epoch_end``.
        ``distributed``: an :func:`nbcnn.distributed.init` communicator (or an mpi4py one) for
        data-parallel training: ``batch_size`` is per rank, callbacks and output run on rank 0.
        """
        self._require_compiled("fit")
        epochs, batch_size = self._check_fit_args(epochs, batch_size, validation_split, initial_epoch,
                                                  initial_batch)
        source, steps, validation_data, (x, y) = self._fit_data(x, y, batch_size, validation_data,
                                                                validation_split, shuffle)
        self.build()
        self._require_compiled("fit")
        self.optimizer.setup(self._flat.size, self.dtype, self.xp)
        dist = None
        if distributed is not None:  # data parallel: shard the global batches, rank 0 does the I/O
            from . import distributed as dist_mod

            dist = dist_mod.attach(self, distributed, batch_size, epochs,
                                   x.shape[0] if _is_array(x) else steps)
            if isinstance(source, BatchIterator):
                source = BatchIterator(x, y, batch_size=batch_size * dist.comm.size, shuffle=shuffle,
                                       seed=[self.seed, 2])
            source = dist.shard(source)
            steps = len(source)
            if not dist.is_root:
                callbacks, verbose = [], 0
        history = History()
        cbl = cb.CallbackList([history, cb._ThreadShare(), *(callbacks or [])], model=self)
        if dist is not None:
            dist.guard(cbl)  # an exception in a callback aborts the job instead of stranding the others
        self._dist = dist
        try:
            return self._fit_epochs(source, steps, validation_data, epochs, batch_size, initial_epoch,
                                    initial_batch, cbl, history, verbose)
        finally:
            self._dist = None

    def _fit_epochs(self, source, steps, validation_data, epochs, batch_size, initial_epoch, initial_batch,
                    cbl, history, verbose) -> History:
        """The epoch loop of :meth:`fit`."""
        dist = self._dist
        self.history = history
        self.stop_training = False
        show_bar = verbose == 1 and is_tty(sys.stderr)
        cbl.on_train_begin({})
        resume = self.progress if (initial_batch and self.progress.get("epoch") == initial_epoch
                                   and self.progress.get("batch") == initial_batch) else None
        for epoch in range(initial_epoch, epochs):
            start_b = initial_batch if epoch == initial_epoch else 0
            self.progress = {"epoch": epoch, "batch": start_b}
            cbl.on_epoch_begin(epoch, {})
            t0 = time.perf_counter()
            totals, completed = self._run_epoch(source, steps, epoch, epochs, start_b,
                                                resume if epoch == initial_epoch else None, cbl, show_bar)
            train_s = time.perf_counter() - t0
            if not completed:
                break
            self.progress = {"epoch": epoch + 1, "batch": 0}
            logs = self._epoch_logs(totals, validation_data, batch_size)
            logs["time"] = time.perf_counter() - t0  # the whole epoch, validation included
            logs["train_time"] = train_s
            cbl.on_epoch_end(epoch, logs)
            if verbose:
                self._print_epoch(epoch, epochs, logs, totals, train_s)
            if dist is not None:
                self.stop_training = dist.agree_stop(self.stop_training)
            if self.stop_training:
                break
        cbl.on_train_end({})
        return history

    @staticmethod
    def _check_fit_args(epochs, batch_size, validation_split, initial_epoch, initial_batch):
        if int(epochs) != epochs or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        if int(batch_size) != batch_size or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not 0.0 <= float(validation_split) < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
        if initial_epoch < 0 or initial_batch < 0:
            raise ValueError("initial_epoch and initial_batch must be >= 0")
        return int(epochs), int(batch_size)

    def _fit_data(self, x, y, batch_size, validation_data, validation_split, shuffle):
        """``(batch source, steps per epoch or None, validated validation data)``."""
        if y is None and not _is_array(x):
            if not hasattr(x, "__iter__"):
                raise TypeError(f"fit: x must be an array (with y) or an iterable of (x, y) batches, "
                                f"got {type(x).__name__}")
            if validation_split:
                raise ValueError("validation_split needs array inputs; pass validation_data= instead")
            source, steps = x, (len(x) if hasattr(x, "__len__") else None)
        else:
            if y is None:
                raise ValueError("fit: y (labels) is required with array inputs")
            x = self._check_x(x, "fit")
            y = self._check_y(y, x.shape[0], "fit")
            if validation_split:
                n_val = int(round(x.shape[0] * validation_split))
                if n_val < 1 or n_val >= x.shape[0]:
                    raise ValueError(f"validation_split={validation_split} leaves no training or validation "
                                     f"samples of {x.shape[0]}")
                validation_data = (x[-n_val:], y[-n_val:])
                x, y = x[:-n_val], y[:-n_val]
            source = BatchIterator(x, y, batch_size=batch_size, shuffle=shuffle, seed=[self.seed, 2])
            steps = len(source)
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (x_val, y_val)")
            xv = self._check_x(validation_data[0], "fit (validation_data)")
            yv = self._check_y(validation_data[1], xv.shape[0], "fit (validation_data)")
            validation_data = (xv, yv)
        return source, steps, validation_data, (x, y)

    def _epoch_batches(self, source, epoch: int, start_b: int):
        """The ``(xb, yb)`` batches of one epoch from batch ``start_b`` on (host arrays, validated)."""
        dist = self._dist
        if isinstance(source, BatchIterator):
            yield from source.epoch(epoch, start=start_b)
            return
        if dist is not None:  # sharded batches: this rank's slices (none on a rank without samples)
            for xb, yb in source.epoch(epoch, start=start_b):
                if dist.sharded.local:
                    xb = self._check_x(xb, "fit (batch)")
                    yb = self._check_y(yb, xb.shape[0], "fit (batch)")
                yield xb, yb
            return
        it = iter(source)
        for _ in range(start_b):
            next(it, None)
        for xb, yb in it:
            xb = self._check_x(xb, "fit (batch)")
            yb = self._check_y(yb, xb.shape[0], "fit (batch)")
            yield xb, yb

    def _run_epoch(self, source, steps, epoch, epochs, start_b, resume, cbl, show_bar):
        """Train one epoch; returns ``(totals, completed)`` with totals ``[loss_sum, correct, seen, seen_at_start]``."""
        dist = self._dist
        bar = ProgressBar(steps, prefix=f"Epoch {epoch + 1}/{epochs}", enabled=show_bar)
        loss_sum, correct, seen = 0.0, 0, 0
        if resume is not None:
            loss_sum = float(resume.get("loss_sum", 0.0))
            correct, seen = int(resume.get("correct", 0)), int(resume.get("seen", 0))
        start_seen = seen
        b = start_b
        completed = True
        with self.device.activate():
            for xb, yb in self._epoch_batches(source, epoch, start_b):
                nb = int(xb.shape[0])
                cbl.on_batch_begin(b, {"batch": b, "size": nb})
                if dist is None:
                    loss, corr = self._train_step(self._to_batch(xb), self._to_labels(yb))
                else:
                    try:
                        loss, corr, nb = dist.step(self, xb, yb)  # global loss, correct, size
                    except BaseException as exc:
                        dist.fail(exc)
                        raise
                loss_sum += loss * nb
                seen += nb
                correct += max(corr, 0)
                logs = {"batch": b, "size": nb, "loss": loss_sum / seen}
                if self.metrics:
                    logs["accuracy"] = correct / seen
                b += 1
                self.progress = {"epoch": epoch, "batch": b, "loss_sum": loss_sum, "correct": correct,
                                 "seen": seen}
                cbl.on_batch_end(b - 1, logs)
                bar.update(b, items=nb, **{k: v for k, v in logs.items() if k in ("loss", "accuracy")})
                if dist is not None:
                    self.stop_training = dist.agree_stop(self.stop_training)
                if self.stop_training:
                    completed = steps is not None and b >= steps
                    break
        bar.close()
        return [loss_sum, correct, seen, start_seen], completed

    def _epoch_totals(self, totals):
        """``(loss_sum, correct, seen)`` of the epoch (a distributed trainer sums them over processes)."""
        return totals[0], totals[1], totals[2]

    def _epoch_logs(self, totals, validation_data, batch_size) -> dict:
        loss_sum, correct, seen = self._epoch_totals(totals)
        logs = {"loss": loss_sum / max(seen, 1)}
        if self.metrics:
            logs["accuracy"] = correct / max(seen, 1)
        dist = self._dist
        if dist is not None:
            dist.average_state()
        if validation_data is not None:
            v = (self.evaluate if dist is None else dist.evaluate)(*validation_data,
                                                                    batch_size=max(batch_size, 256))
            logs["val_loss"] = v["loss"]
            if "accuracy" in v:
                logs["val_accuracy"] = v["accuracy"]
        logs["lr"] = self.optimizer.current_lr
        return logs

    def _print_epoch(self, epoch, epochs, logs, totals, train_s) -> None:
        ips = (totals[2] - totals[3]) / train_s if train_s > 0 else 0.0
        parts = [f"Epoch {epoch + 1}/{epochs}", format_time(logs["time"]), f"{ips:,.0f} img/s"]
        parts += [f"{k} {v:.4f}" for k, v in logs.items() if k not in ("lr", "time", "train_time")]
        print(" - ".join(parts), flush=True)

    def evaluate(self, x, y, batch_size: int = 256, verbose: int = 0, distributed=None) -> dict:
        """``{"loss": ..., "accuracy": ...}`` over the whole data set (inference mode).

        ``distributed``: a communicator; each rank evaluates its slice and the results are reduced."""
        self._require_compiled("evaluate")
        x = self._check_x(x, "evaluate")
        y = self._check_y(y, x.shape[0], "evaluate")
        if distributed is not None:
            from . import distributed as dist_mod

            self.build()
            return dist_mod.FitSession(dist_mod.init(distributed), self, None).evaluate(x, y, batch_size)
        if int(batch_size) != batch_size or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.build()
        self._require_compiled("evaluate")
        n = x.shape[0]
        loss_sum, correct = 0.0, 0
        fuse = self.loss.expects_logits
        with self.device.activate():
            for s in range(0, n, batch_size):
                xb = self._to_batch(x[s:s + batch_size])
                yb = self._to_labels(y[s:s + batch_size])
                out = self._forward_eval(xb, logits=fuse)
                loss_sum += self.loss.loss_and_grad(out, yb, grad=False)[0] * xb.shape[0]
                if self.metrics:
                    correct += max(self._correct(out, yb), 0)
        res = {"loss": loss_sum / n}
        if self.metrics:
            res["accuracy"] = correct / n
        if verbose:
            print(" - ".join(f"{k} {v:.4f}" for k, v in res.items()))
        return res

    def predict(self, x, batch_size: int = 256):
        """Class probabilities ``(N, classes)`` as a NumPy array (softmax of the logits); a list of
        arrays for a model with several outputs (``x`` a list of arrays for several inputs).

        A model compiled with a non-classification loss (``"mse"``) returns its raw outputs.
        """
        xs = self._check_inputs(x, "predict")
        if int(batch_size) != batch_size or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.build()
        g = self._graph
        probs = self.loss is None or self.loss.expects_logits
        soft = [probs and not self._ends_in_softmax(t) for t in g.outputs]
        outs = [[] for _ in g.outputs]
        n = xs[0].shape[0]
        plan = self.inference_plan()
        with self.device.activate():
            plan.prepare()
            for s in range(0, n, batch_size):
                vals = plan.run([self._to_batch(a[s:s + batch_size]) for a in xs])
                for k, out in enumerate(vals):
                    if soft[k] and out.ndim == 2:
                        out = L.softmax(out)
                    outs[k].append(to_numpy(out))
        res = [o[0] if len(o) == 1 else np.concatenate(o) for o in outs]
        return res if self._multi_out else res[0]

    def export_onnx(self, path, **kwargs):
        """Write this model as ONNX: :func:`nbcnn.export_onnx` (the ``onnx`` extra)."""
        from .onnx_export import export_onnx

        return export_onnx(self, path, **kwargs)

    def inference_plan(self) -> InferencePlan:
        """The graph rewritten for ``predict`` (BN folded into convolutions, ReLUs fused), made once."""
        self.build()
        plan = getattr(self, "_plan", None)
        if plan is None or plan.graph is not self._graph:
            plan = self._plan = InferencePlan(self._graph)
        return plan

    def _ends_in_softmax(self, t: int) -> bool:
        i = self._graph.producer(t)
        if i is None:
            return False
        layer = self._graph.steps[i][0]
        return isinstance(layer, (L.Activation, L.Dense)) and layer.activation == "softmax"

    def predict_classes(self, x, batch_size: int = 256) -> np.ndarray:
        return self.predict(x, batch_size).argmax(axis=1)

    # ------------------------------------------------------------------------------------------
    # persistence
    # ------------------------------------------------------------------------------------------
    def get_config(self) -> dict:
        g = self._graph
        return {"class_name": "Model", "name": self.name, "dtype": self.dtype.name, "seed": self.seed,
                "inputs": [{"name": t.name, "shape": list(t.shape)} for t in self.inputs],
                "multi_inputs": self._multi_in, "multi_outputs": self._multi_out,
                "layers": [L.serialize(l) for l in self.layers],
                "nodes": [[layer.name, list(ins)] for layer, ins, _, _ in g.steps],
                "outputs": list(g.outputs)}

    @classmethod
    def from_config(cls, cfg: dict, device="auto") -> "Model":
        """The model described by ``get_config()`` (fresh weights)."""
        inputs = [Input(tuple(i["shape"]), name=i.get("name")) for i in cfg["inputs"]]
        layers = {}
        for lc in cfg["layers"]:
            layer = L.deserialize(lc)
            if layer.name in layers:
                raise ValueError(f"duplicate layer name {layer.name!r}")
            layers[layer.name] = layer
        tensors = list(inputs)
        for name, ins in cfg["nodes"]:
            if name not in layers:
                raise ValueError(f"node calls unknown layer {name!r}")
            for t in ins:
                if not isinstance(t, int) or not 0 <= t < len(tensors):
                    raise ValueError(f"layer {name!r} reads tensor {t!r}, which is not computed before it "
                                     "(a cycle or a broken graph)")
            layer = layers[name]
            arg = [tensors[t] for t in ins] if layer.takes_list else tensors[ins[0]]
            if not layer.takes_list and len(ins) != 1:
                raise ValueError(f"layer {name!r} takes one input, the file gives {len(ins)}")
            tensors.append(layer(arg))
        for t in cfg["outputs"]:
            if not isinstance(t, int) or not 0 <= t < len(tensors):
                raise ValueError(f"output tensor {t!r} does not exist")
        outs = [tensors[t] for t in cfg["outputs"]]
        return cls(inputs if cfg.get("multi_inputs") else inputs[0],
                   outs if cfg.get("multi_outputs") else outs[0],
                   name=cfg.get("name"), device=device, dtype=cfg.get("dtype", "float32"), seed=cfg.get("seed"))

    def save(self, path, metadata: dict | None = None, include_optimizer: bool = True) -> None:
        """Write one file (zip: JSON config + .npy arrays, no pickle), atomically. See :mod:`nbcnn.serialization`."""
        serialization.save_model(self, path, metadata=metadata, include_optimizer=include_optimizer)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {len(self.layers)} layers on {self.device}>"


class Sequential(Model):
    """A linear stack of layers (run by the same engine as :class:`Model`, as a chain).

    >>> m = Sequential([Conv2D(6, 5, padding=2, activation="relu", input_shape=(1, 28, 28)),
    ...                 MaxPool2D(2), Flatten(), Dense(10)])
    >>> m.compile(optimizer="adam"); m.fit(x, y, epochs=2)
    """

    input_shape = None  # per-sample input shape (a plain attribute here, None until known)
    _multi_in = _multi_out = False

    def __init__(self, layers=None, device="auto", name: str | None = None, dtype="float32",
                 seed: int | None = None):
        self._init_common(device, name or "sequential", dtype, seed)
        self.layers: list[L.Layer] = []
        self.input_shape: tuple | None = None
        for layer in layers or []:
            self.add(layer)

    @property
    def inputs(self):
        return [Input(self.input_shape, name="input")] if self.input_shape is not None else []

    def _shape_known(self) -> bool:
        return self.input_shape is not None

    def _input_shapes(self) -> list:
        return [self.input_shape]

    def add(self, layer: L.Layer) -> None:
        """Append a layer (names are made unique Keras-style: ``conv2d_1``, ``conv2d_2``, ...)."""
        if not isinstance(layer, L.Layer):
            raise TypeError(f"Sequential.add expects an nbcnn.layers.Layer, got {type(layer).__name__}")
        if layer.takes_list:
            raise TypeError(f"{type(layer).__name__} merges several tensors and cannot be part of a Sequential; "
                            "build a Model from nbcnn.Input(...) instead")
        if any(layer is l for l in self.layers):
            raise ValueError("this layer instance is already in the model")
        names = {l.name for l in self.layers}
        if layer.name is None:
            layer.name = _unique_name(layer, names)
        elif layer.name in names:
            raise ValueError(f"duplicate layer name {layer.name!r} in model {self.name!r}")
        if not self.layers and layer._input_shape is not None:
            self.input_shape = layer._input_shape
        elif self.layers and layer._input_shape is not None and self.input_shape is None:
            raise ValueError(f"input_shape= belongs on the first layer, not on {layer.name!r}")
        if isinstance(layer, L.Dropout) and layer.seed is None:
            layer.rng = self._dropout_rng
        self.layers.append(layer)
        self._graph = None
        if self.input_shape is not None:
            self._configure()
        self._flat = None  # re-adopt on next use

    def _configure(self) -> None:
        if self.input_shape is None:
            return
        shape = self.input_shape
        for layer in self.layers:
            try:
                shape = layer.configure(shape)
            except ValueError as exc:
                raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) cannot take input "
                                 f"{(None, *shape)}: {exc}") from None
        if self._graph is None or len(self._graph.steps) != len(self.layers):
            self._graph = Graph(1, [(l, (i,), False) for i, l in enumerate(self.layers)], [len(self.layers)])

    @property
    def output_shape(self):
        return self.layers[-1].output_shape if self.layers and self.input_shape is not None else None

    def build(self, input_shape=None) -> None:
        """Fix the input shape (per sample) and allocate all weights."""
        if input_shape is None and self._flat is not None:
            return  # the hot path: called at every train_on_batch / predict
        if input_shape is not None:
            input_shape = L.Layer._check_shape(input_shape)
            if self.input_shape is not None and input_shape != self.input_shape:
                raise ValueError(f"model {self.name!r} was built for input {self.input_shape}, got {input_shape}")
            self.input_shape = input_shape
        if not self.layers:
            raise ValueError("the model has no layers")
        if self.input_shape is None:
            raise ValueError("the model's input shape is unknown: pass input_shape= to the first layer "
                             "or call model.build((C, H, W))")
        self._configure()
        if self._flat is not None:
            return
        self._allocate()

    def count_params(self) -> int:
        """Total number of parameters, moving statistics included (from shapes; allocates nothing)."""
        self._configure()
        return sum(l.count_params() for l in self.layers)

    def _summary_table(self) -> str:
        w = (29, 26, 12)
        line = "_" * sum(w)
        rows = [f'Model: "{self.name}"', line,
                f"{' Layer (type)':<{w[0]}}{'Output Shape':<{w[1]}}Param #", "=" * sum(w)]
        for i, layer in enumerate(self.layers):
            shape = str(layer.output_shape)
            rows.append(f"{' ' + layer.name + ' (' + type(layer).__name__ + ')':<{w[0]}}"
                        f"{shape:<{w[1]}}{layer.count_params():<{w[2]},}".rstrip())
            if i < len(self.layers) - 1:
                rows.append("")
        rows += self._summary_totals(sum(w))
        return "\n".join(rows)

    def summary(self, print_fn=print, explain: bool = False, batch_size: int = 1) -> str:
        """The Keras-style table (``Layer (type) | Output Shape | Param #`` + totals); printed and returned."""
        if self.input_shape is None:
            raise ValueError("summary() needs the input shape: pass input_shape= to the first layer "
                             "or call model.build((C, H, W))")
        return super().summary(print_fn=print_fn, explain=explain, batch_size=batch_size)

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype.name, "seed": self.seed,
                "input_shape": None if self.input_shape is None else list(self.input_shape),
                "layers": [L.serialize(l) for l in self.layers]}

    @classmethod
    def from_config(cls, cfg: dict, device="auto") -> "Sequential":
        model = cls(device=device, name=cfg.get("name"), dtype=cfg.get("dtype", "float32"), seed=cfg.get("seed"))
        for lc in cfg["layers"]:
            model.add(L.deserialize(lc))
        if cfg.get("input_shape") is not None and model.input_shape is None:
            model.input_shape = tuple(cfg["input_shape"])
        return model


serialization.register_model_class("Sequential", Sequential.from_config)
serialization.register_model_class("Model", Model.from_config)
load_model = serialization.load_model
