"""``Sequential``: a stack of layers with a Keras-like training API.

Parameters of all layers live in one flat buffer (and gradients in another),
so one optimiser pass updates everything; layers hold views into them.
Weights are allocated lazily (first forward, ``get_weights``, ``compile``),
so defining or summarising VGG-16 is instant.

Inputs: float arrays ``(N, C, H, W)`` (float32 by default); ``uint8`` images
are scaled to [0, 1] on the fly, batch by batch, so a data set can stay in
compact uint8 form; ``(N, H, W)`` is accepted for single-channel models.
Labels: integer class indices ``(N,)`` or one-hot ``(N, K)``.

Reproducibility: a model draws its seed from ``nbcnn.seed`` (or ``seed=``);
weight initialisation, the shuffle order of every epoch and dropout masks
derive from it, and the dropout stream and epoch position are saved in
checkpoints, so an interrupted CPU run resumed with
``fit(initial_epoch=m.progress["epoch"], initial_batch=m.progress["batch"])``
reproduces the uninterrupted run bit for bit.
"""
from __future__ import annotations

import time

import numpy as np

from . import callbacks as cb
from . import layers as L
from . import losses as losses_mod
from . import optim as optim_mod
from .callbacks import History
from .datasets import BatchIterator
from .device import Device, is_gpu_array, parse_device, to_numpy
from .progress import ProgressBar, format_time, is_tty

__all__ = ["Sequential", "History"]


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


class Sequential:
    """A linear stack of layers.

    >>> m = Sequential([Conv2D(6, 5, padding=2, activation="relu", input_shape=(1, 28, 28)),
    ...                 MaxPool2D(2), Flatten(), Dense(10)])
    >>> m.compile(optimizer="adam"); m.fit(x, y, epochs=2)
    """

    def __init__(self, layers=None, device="auto", name: str | None = None, dtype="float32",
                 seed: int | None = None):
        self.device: Device = parse_device(device)
        self.name = name or "sequential"
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        if seed is None:
            from .random import derive_seed

            seed = derive_seed()
        self.seed = int(seed)
        self.layers: list[L.Layer] = []
        self.input_shape: tuple | None = None
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
        self._first = 0
        self._dropout_rng = np.random.default_rng([self.seed, 1])
        self._grad_hook = None  # distributed training: bucketed gradient allreduce (nbcnn.distributed)
        for layer in layers or []:
            self.add(layer)

    # ------------------------------------------------------------------------------------------
    # structure
    # ------------------------------------------------------------------------------------------
    @property
    def xp(self):
        return self.device.xp

    def add(self, layer: L.Layer) -> None:
        """Append a layer (names are made unique Keras-style: ``conv2d_1``, ``conv2d_2``, ...)."""
        if not isinstance(layer, L.Layer):
            raise TypeError(f"Sequential.add expects an nbcnn.layers.Layer, got {type(layer).__name__}")
        if any(layer is l for l in self.layers):
            raise ValueError("this layer instance is already in the model")
        names = {l.name for l in self.layers}
        if layer.name is None:
            base = layer.base_name or L._snake(type(layer).__name__)
            k = 1 + sum(1 for l in self.layers if l.name.rsplit("_", 1)[0] == base)
            while f"{base}_{k}" in names:
                k += 1
            layer.name = f"{base}_{k}"
        elif layer.name in names:
            raise ValueError(f"duplicate layer name {layer.name!r} in model {self.name!r}")
        if not self.layers and layer._input_shape is not None:
            self.input_shape = layer._input_shape
        elif self.layers and layer._input_shape is not None and self.input_shape is None:
            raise ValueError(f"input_shape= belongs on the first layer, not on {layer.name!r}")
        if isinstance(layer, L.Dropout) and layer.seed is None:
            layer.rng = self._dropout_rng
        self.layers.append(layer)
        if self.input_shape is not None:
            self._configure()
        self._flat = None  # re-adopt on next use

    def _configure(self) -> None:
        shape = self.input_shape
        for layer in self.layers:
            try:
                shape = layer.configure(shape)
            except ValueError as exc:
                raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) cannot take input "
                                 f"{(None, *shape)}: {exc}") from None

    @property
    def output_shape(self):
        return self.layers[-1].output_shape if self.layers and self.input_shape is not None else None

    def get_layer(self, name=None, index=None) -> L.Layer:
        """A layer by name or index."""
        if index is not None:
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r}; layers are {[l.name for l in self.layers]}")

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
        key = tuple(bool(l.trainable) for l in self.layers)
        if key == self._rkey:
            return
        ranges: list = []
        first = None
        for i, (layer, (lo, hi)) in enumerate(zip(self.layers, self._spans)):
            if hi > lo and layer.trainable:
                if first is None:
                    first = i
                if ranges and ranges[-1][1] == lo:
                    ranges[-1] = (ranges[-1][0], hi)
                else:
                    ranges.append((lo, hi))
        self._ranges = ranges
        self._no_decay = _no_decay_ranges(self.layers, self._spans)
        self._first = len(self.layers) if first is None else first
        for i, layer in enumerate(self.layers):
            layer.need_gx = i > self._first
        self._rkey = key

    def count_params(self) -> int:
        """Total number of parameters, moving statistics included (from shapes; allocates nothing)."""
        if self.input_shape is not None:
            self._configure()
        return sum(l.count_params() for l in self.layers)

    def summary(self, print_fn=print) -> str:
        """The Keras-style table (``Layer (type) | Output Shape | Param #`` + totals); printed and returned."""
        if self.input_shape is None:
            raise ValueError("summary() needs the input shape: pass input_shape= to the first layer "
                             "or call model.build((C, H, W))")
        self._configure()
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
        total = self.count_params()
        trainable = sum(l.count_trainable() for l in self.layers if l.trainable)
        rows[-1:] = [] if rows[-1] == "" else rows[-1:]
        rows += ["=" * sum(w), f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                 f"Non-trainable params: {total - trainable:,}", line]
        text = "\n".join(rows)
        if print_fn is not None:
            print_fn(text)
        return text

    # ------------------------------------------------------------------------------------------
    # weights
    # ------------------------------------------------------------------------------------------
    def get_weights(self) -> list:
        """All weights as NumPy copies, layer by layer (Keras order)."""
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

    def to(self, device) -> "Sequential":
        """Move weights and optimiser state to ``device`` (``"cpu"``, ``"cuda"``); returns self."""
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
                for k in ("_ctx",):
                    if hasattr(layer, k):
                        setattr(layer, k, {})
                if hasattr(layer, "_gbuf"):
                    layer._gbuf = None
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
        if self.input_shape is not None:
            self.build()

    def _require_compiled(self, what: str):
        if self.loss is None or self.optimizer is None:
            raise RuntimeError(f"call model.compile(...) before {what}()")

    def _softmax_tail(self) -> str | None:
        last = self.layers[-1] if self.layers else None
        if isinstance(last, L.Activation) and last.activation == "softmax":
            return "layer"
        if isinstance(last, L.Dense) and last.activation == "softmax":
            return "dense"
        return None

    def _check_x(self, x, what: str, check_finite: bool = True):
        """Validate a whole input array on the host side (shape, dtype, NaN/inf); returns it (maybe reshaped)."""
        if not _is_array(x):
            try:
                x = np.asarray(x)
            except Exception:
                raise TypeError(f"{what}: x must be an array, got {type(x).__name__}") from None
        if x.dtype.kind not in "fiub":
            raise TypeError(f"{what}: x must be a numeric array, got dtype {x.dtype}")
        if self.input_shape is None:
            if x.ndim == 3:
                x = x[:, None]
            if x.ndim != 4:
                raise ValueError(f"{what}: x must be (N, C, H, W), got shape {tuple(x.shape)}")
            self.build(tuple(x.shape[1:]))
        exp = self.input_shape
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
        k = self.layers[-1]._out[0] if self.layers[-1]._out and len(self.layers[-1]._out) == 1 else None
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

    # ------------------------------------------------------------------------------------------
    # compute
    # ------------------------------------------------------------------------------------------
    def forward(self, x, training: bool = False, start: int = 0, stop: int | None = None):
        """Run ``layers[start:stop]`` on a prepared batch (device array of the model's dtype)."""
        self.build()
        with self.device.activate():
            for layer in self.layers[start:stop]:
                x = layer.forward(x, training=training)
        return x

    def _forward_stack(self, x, logits: bool, training: bool):
        """Run the layers; returns ``(output, n_layers_run)``.

        With ``logits`` a softmax tail (a Softmax layer, or a Dense with
        activation="softmax") is left out, for the fused softmax + cross-entropy.
        In training, frozen layers before the first trainable one run in
        inference mode (no backward state), except Dropout.
        """
        tail = self._softmax_tail() if logits else None
        n = len(self.layers) - (1 if tail == "layer" else 0)
        first = self._first
        for i in range(n):
            layer = self.layers[i]
            tr = training and (i >= first or isinstance(layer, L.Dropout))
            if tail == "dense" and i == n - 1:
                layer.activation = "linear"
                try:
                    x = layer.forward(x, training=tr)
                finally:
                    layer.activation = "softmax"
            else:
                x = layer.forward(x, training=tr)
        return x, n

    def _forward_train(self, x, logits_only: bool):
        return self._forward_stack(x, logits_only, training=True)

    def _forward_eval(self, x, logits: bool):
        return self._forward_stack(x, logits, training=False)[0]

    def _train_step(self, xb, yb):
        """One optimiser step on a prepared batch; returns (mean loss, number correct or -1)."""
        loss, out = self._forward_backward(xb, yb)
        if self._grad_hook is not None:  # distributed: wait for the averaged gradients
            self._grad_hook.finish()
        if self._ranges:
            self.optimizer.step(self._flat, self._gflat, self._ranges, self._no_decay)
        correct = self._correct(out, yb) if self.metrics else -1
        return loss, correct

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
        for i, layer in enumerate(self.layers):
            live = layer.trainable and i >= self._first
            grads += [to_numpy(g).copy() if live else None for g in layer.grads]
            grads += [None] * len(layer.state)
        return loss, grads

    def _forward_backward(self, xb, yb):
        self._update_trainable()
        self._ensure_grads()
        fuse = self.loss.expects_logits
        out, n = self._forward_train(xb, fuse)
        loss, g = self.loss.loss_and_grad(out, yb)
        if not np.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss} at step {self.optimizer.iterations}: "
                                     "lower the learning rate (or check the inputs)")
        tail = self._softmax_tail() if fuse else None
        for i in range(n - 1, self._first - 1, -1):
            layer = self.layers[i]
            if tail == "dense" and i == n - 1:
                layer.activation = "linear"
                try:
                    g = layer.backward(g)
                finally:
                    layer.activation = "softmax"
            else:
                g = layer.backward(g)
            if self._grad_hook is not None:  # distributed: reduce the buckets this layer completes
                self._grad_hook.layer_done(i)
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
        self.optimizer.setup(self._flat.size, self.dtype, self.xp)
        with self.device.activate():
            loss, _ = self._train_step(self._to_batch(x), self._to_labels(y))
        return loss

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
        if int(epochs) != epochs or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        if int(batch_size) != batch_size or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not 0.0 <= float(validation_split) < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
        if initial_epoch < 0 or initial_batch < 0:
            raise ValueError("initial_epoch and initial_batch must be >= 0")
        epochs, batch_size = int(epochs), int(batch_size)
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
        self.build()
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
        self.history = history
        self.stop_training = False
        show_bar = verbose == 1 and is_tty(__import__("sys").stderr)
        cbl.on_train_begin({})
        resume = self.progress if (initial_batch and self.progress.get("epoch") == initial_epoch
                                   and self.progress.get("batch") == initial_batch) else None
        for epoch in range(initial_epoch, epochs):
            start_b = initial_batch if epoch == initial_epoch else 0
            self.progress = {"epoch": epoch, "batch": start_b}
            cbl.on_epoch_begin(epoch, {})
            bar = ProgressBar(steps, prefix=f"Epoch {epoch + 1}/{epochs}", enabled=show_bar)
            t0 = time.perf_counter()
            loss_sum, correct, seen = 0.0, 0, 0
            if resume is not None and epoch == initial_epoch:
                loss_sum = float(resume.get("loss_sum", 0.0))
                correct, seen = int(resume.get("correct", 0)), int(resume.get("seen", 0))
            if isinstance(source, BatchIterator) or dist is not None:
                it = source.epoch(epoch, start=start_b)
            else:
                it = iter(source)
                for _ in range(start_b):
                    next(it, None)
            b = start_b
            start_seen = seen
            completed = True
            with self.device.activate():
                for xb, yb in it:
                    if not isinstance(source, BatchIterator) and (dist is None or dist.sharded.local):
                        xb = self._check_x(xb, "fit (batch)")
                        yb = self._check_y(yb, xb.shape[0], "fit (batch)")
                    cbl.on_batch_begin(b, {"batch": b, "size": int(xb.shape[0])})
                    nb = int(xb.shape[0])
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
            train_s = time.perf_counter() - t0
            if not completed:
                break
            self.progress = {"epoch": epoch + 1, "batch": 0}
            logs = {"loss": loss_sum / max(seen, 1)}
            if self.metrics:
                logs["accuracy"] = correct / max(seen, 1)
            if dist is not None:
                dist.average_state()
            if validation_data is not None:
                v = (self.evaluate if dist is None else dist.evaluate)(*validation_data,
                                                                        batch_size=max(batch_size, 256))
                logs["val_loss"] = v["loss"]
                if "accuracy" in v:
                    logs["val_accuracy"] = v["accuracy"]
            logs["lr"] = self.optimizer.current_lr
            logs["time"] = time.perf_counter() - t0  # the whole epoch, validation included
            logs["train_time"] = train_s
            cbl.on_epoch_end(epoch, logs)
            if verbose:
                ips = (seen - start_seen) / train_s if train_s > 0 else 0.0
                parts = [f"Epoch {epoch + 1}/{epochs}", format_time(logs["time"]), f"{ips:,.0f} img/s"]
                parts += [f"{k} {v:.4f}" for k, v in logs.items() if k not in ("lr", "time", "train_time")]
                print(" - ".join(parts), flush=True)
            if dist is not None:
                self.stop_training = dist.agree_stop(self.stop_training)
            if self.stop_training:
                break
        cbl.on_train_end({})
        return history

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

    def predict(self, x, batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``(N, classes)`` as a NumPy array (softmax of the logits).

        A model compiled with a non-classification loss (``"mse"``) returns its raw outputs.
        """
        x = self._check_x(x, "predict")
        if int(batch_size) != batch_size or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.build()
        probs = self.loss is None or self.loss.expects_logits
        apply_softmax = probs and self._softmax_tail() is None
        outs = []
        with self.device.activate():
            for s in range(0, x.shape[0], batch_size):
                out = self._forward_eval(self._to_batch(x[s:s + batch_size]), logits=False)
                if apply_softmax and out.ndim == 2:
                    out = L.softmax(out)
                outs.append(to_numpy(out))
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def predict_classes(self, x, batch_size: int = 256) -> np.ndarray:
        return self.predict(x, batch_size).argmax(axis=1)

    # ------------------------------------------------------------------------------------------
    # persistence
    # ------------------------------------------------------------------------------------------
    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype.name, "seed": self.seed,
                "input_shape": None if self.input_shape is None else list(self.input_shape),
                "layers": [L.serialize(l) for l in self.layers]}

    def save(self, path, metadata: dict | None = None, include_optimizer: bool = True) -> None:
        """Write one file (zip: JSON config + .npy arrays, no pickle), atomically. See :mod:`nbcnn.serialization`."""
        from .serialization import save_model

        save_model(self, path, metadata=metadata, include_optimizer=include_optimizer)

    def __repr__(self) -> str:
        return f"<Sequential {self.name!r}: {len(self.layers)} layers on {self.device}>"
