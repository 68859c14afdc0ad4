"""Layers: Conv2D, pooling (windowed and global), BatchNormalization, LocalResponseNormalization,
Flatten, Dense, Dropout, activations, and preprocessing (Rescaling, Normalization, Resizing,
CenterCrop) that travels inside the model file.

Layout NCHW. Shapes given to and reported by layers are per sample
(``input_shape=(1, 28, 28)``); ``output_shape`` is Keras-style with ``None``
for the batch axis. A layer knows its parameter shapes as soon as its input
shape is known (``configure``), but allocates weights only when first needed
(``build``): counting or summarising VGG-16 costs nothing.

Every layer computes on whatever device its arrays live on: convolution,
pooling, normalisation and activations (with a Dense layer's bias fused in)
go through :mod:`nbcnn.ops` (CPU or CUDA kernels), matrix products through
``xp.matmul`` (NumPy/BLAS or CuPy).

``backward(gy)`` returns the input gradient and writes parameter gradients
into ``layer.grads`` (which a model points into one flat buffer, so the
optimiser updates everything in one pass). ``trainable`` is a plain
attribute read by the model at every step.

Non-trainable state (batch norm's moving mean and variance) lives in
``layer.state``, arrays the optimiser never sees: ``_shapes`` may return a
third list with their shapes, ``_init_state`` fills them. They count in
``count_params()`` and follow the parameters in ``get_weights()`` /
``set_weights()`` (Keras order: gamma, beta, moving_mean, moving_variance),
so model files and ``to(device)`` carry them like weights.
"""
from __future__ import annotations

import re

import numpy as np

from . import initializers, ops
from .device import is_gpu_array
from .kernels.act_codes import FROM_OUTPUT
from .kernels.geometry import (as_dilation, as_pair, as_stride, check_pool_padding, conv2d_output_hw,
                               pool_output_size, resolve_padding)
from .ops import shortcut as _shortcut_ops
from .symbolic import call_layer, is_symbolic

__all__ = [
    "Layer", "Conv2D", "MaxPool2D", "AvgPool2D", "Flatten", "Dense", "Dropout", "Activation",
    "ReLU", "Tanh", "Sigmoid", "Softmax", "Add", "Subtract", "Multiply", "Average", "Concatenate", "get", "deserialize", "ACTIVATIONS",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "BatchNormalization", "LocalResponseNormalization",
    "IdentityShortcut",
]

ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "softmax", "leaky_relu", "elu", "gelu", "gelu_tanh", "silu",
               "swish", "relu6", "hard_sigmoid", "hard_swish")
# activation= strings take Keras's parameters (leaky_relu's negative slope 0.2, elu's alpha 1)
_STRING_ALPHA = {"leaky_relu": 0.2, "elu": 1.0}


def _xp(a):
    if is_gpu_array(a):
        import cupy

        return cupy
    return np


def _check_activation(activation):
    if activation is None:
        return "linear"
    if not isinstance(activation, str) or activation.lower() not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS} or None, got {activation!r}")
    a = activation.lower()
    return "silu" if a == "swish" else a


# ----------------------------------------------------------------------------------------------
# element-wise helpers (through nbcnn.ops: CPU or CUDA kernels)
# ----------------------------------------------------------------------------------------------

def act_forward_inplace(y, act: str, alpha=None):
    """``y = act(y)`` in place (``y`` is a fresh array owned by the caller). Not for softmax.
    For activations whose backward needs the input (gelu, ...) use :func:`act_forward`."""
    if act == "linear":
        return y
    return ops.activation(y, act, alpha=alpha, out=y)


def act_forward(z, act: str, alpha=None):
    """``(act(z), kept)``: in place when the backward can work from the output (``kept`` None),
    otherwise into a new array with ``kept = z``, the input the backward needs."""
    if act in FROM_OUTPUT:
        return act_forward_inplace(z, act), None
    return ops.activation(z, act, alpha=alpha), z


def act_backward(gy, y, act: str, out=None, x=None, alpha=None):
    """``gy * act'`` from the forward output ``y`` (and its input ``x`` where the activation needs
    it: see :func:`act_forward`), into ``out`` when given."""
    if act == "linear":
        return gy
    return ops.activation_backward(gy, x, act, y=y, alpha=alpha, out=out)


def softmax(z):
    """Row-wise softmax over axis 1, numerically stable."""
    xp = _xp(z)
    e = z - z.max(axis=1, keepdims=True)
    xp.exp(e, out=e)
    e /= e.sum(axis=1, keepdims=True)
    return e


def _snake(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    return s.lower()


# ----------------------------------------------------------------------------------------------
# base class
# ----------------------------------------------------------------------------------------------

class Layer:
    """Base class. Subclasses set ``param_names`` and implement the shape and compute hooks."""

    param_names: tuple = ()
    state_names: tuple = ()      # non-trainable arrays (moving statistics), after the params
    base_name: str | None = None
    takes_list = False           # merge layers: forward takes a tuple of arrays, backward returns a tuple
    call_state: tuple = ("_cache",)  # what forward leaves for backward: a graph keeps one per call

    def __init__(self, name: str | None = None, trainable: bool = True, input_shape=None):
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"layer name must be a non-empty string, got {name!r}")
        self.name = name
        self.trainable = bool(trainable)
        self._input_shape = None if input_shape is None else self._check_shape(input_shape)
        self.input_shape = None      # per-sample shape, set by configure()
        self._out = None             # per-sample output shape
        self.params: list = []       # arrays (after build)
        self.grads: list = []
        self._param_shapes: list = []
        self.state: list = []        # non-trainable arrays (after build)
        self._state_shapes: list = []
        self.need_gx = True          # a model sets False on the first layer it back-propagates to
        self._cache = None

    # -- shapes ---------------------------------------------------------------------------
    @staticmethod
    def _check_shape(shape) -> tuple:
        try:
            shape = tuple(int(s) for s in shape)
        except TypeError:
            raise TypeError(f"input_shape must be a tuple of ints (per sample, e.g. (1, 28, 28)), "
                            f"got {shape!r}") from None
        if not shape or min(shape) <= 0:
            raise ValueError(f"input_shape must be non-empty with positive sizes, got {shape!r}")
        return shape

    def configure(self, input_shape) -> tuple:
        """Set the per-sample input shape, compute the output and parameter shapes (no allocation)."""
        input_shape = self._check_shape(input_shape)
        if self.params and self.input_shape is not None and input_shape != self.input_shape:
            raise ValueError(f"layer {self.name!r} was built for input shape {self.input_shape}, got {input_shape}")
        out, pshapes, *sshapes = self._shapes(input_shape)
        self.input_shape = input_shape
        self._out = tuple(out)
        self._param_shapes = [tuple(s) for s in pshapes]
        self._state_shapes = [tuple(s) for s in (sshapes[0] if sshapes else [])]
        return self._out

    def _shapes(self, input_shape):  # -> (output_shape, [param shapes][, [state shapes]])
        return input_shape, []

    @property
    def output_shape(self):
        """Keras-style ``(None, ...)``; None before the input shape is known."""
        return None if self._out is None else (None, *self._out)

    @property
    def built(self) -> bool:
        """True once the weights exist (always True for layers without weights and a known shape)."""
        return (self._out is not None and len(self.params) == len(self._param_shapes)
                and len(self.state) == len(self._state_shapes))

    def count_params(self) -> int:
        """Parameters plus non-trainable state (Keras convention)."""
        return self.count_trainable() + self.count_state()

    def count_trainable(self) -> int:
        """Number of parameters the optimiser may update (whether or not the layer is frozen)."""
        self._known_shapes()
        return sum(int(np.prod(s)) for s in self._param_shapes)

    def count_state(self) -> int:
        """Number of non-trainable state values (moving statistics)."""
        self._known_shapes()
        return sum(int(np.prod(s)) for s in self._state_shapes)

    def _known_shapes(self) -> None:
        if self._out is None:
            if self._input_shape is not None:
                self.configure(self._input_shape)
            elif self.param_names or self.state_names:
                raise ValueError(f"layer {self.name!r}: input shape unknown, cannot count parameters")

    # -- weights --------------------------------------------------------------------------
    def build(self, input_shape=None, dtype=np.float32, rng=None, xp=np):
        """Allocate and initialise the weights (once)."""
        if input_shape is None:
            input_shape = self.input_shape or self._input_shape
            if input_shape is None:
                raise ValueError(f"layer {self.name!r}: input shape unknown; pass input_shape=")
        self.configure(input_shape)
        self.ensure_state(dtype, xp)
        if self.params:
            return
        if rng is None:
            from .random import default_rng

            rng = default_rng()
        arrays = self._init_params(np.dtype(dtype), rng)
        self.params = [a if xp is np else xp.asarray(a) for a in arrays]
        self.grads = [xp.zeros_like(p) for p in self.params]

    def _init_params(self, dtype, rng, outs=None) -> list:
        return []

    def ensure_state(self, dtype, xp=np) -> None:
        """Allocate and initialise the non-trainable state if it is missing (after ``configure``)."""
        if len(self.state) == len(self._state_shapes):
            return
        self.state = [a if xp is np else xp.asarray(a) for a in self._init_state(np.dtype(dtype))]

    def _init_state(self, dtype) -> list:
        """Initial state arrays (NumPy, shapes ``self._state_shapes``); layers with state override it."""
        return [np.zeros(s, dtype) for s in self._state_shapes]

    def _init_into(self, views, rng) -> None:
        """Initialise the weights straight into ``views`` (slices of a model's flat buffer)."""
        self._init_params(views[0].dtype if views else np.float32, rng, outs=views)
        self.params = list(views)
        self.grads = []

    def get_weights(self) -> list:
        """Copies of the weights as NumPy arrays (Keras order: kernel, bias; then any state)."""
        if (self.param_names or self.state_names) and not self.built:
            self.build()
        from .device import to_numpy

        return [np.array(to_numpy(p), copy=True) for p in (*self.params, *self.state)]

    @property
    def weight_names(self) -> tuple:
        """Names of the arrays of ``get_weights()``, in order."""
        return (*self.param_names, *self.state_names)

    def set_weights(self, weights) -> None:
        """Copy ``weights`` (a list of arrays, same shapes as ``get_weights()``) into the layer."""
        weights = list(weights)
        if (self.param_names or self.state_names) and not self.built:
            self.build()
        targets = [*self.params, *self.state]
        if len(weights) != len(targets):
            raise ValueError(f"layer {self.name!r} has {len(targets)} weight arrays, got {len(weights)}")
        names = self.weight_names
        for i, (p, w) in enumerate(zip(targets, weights)):
            w_shape = tuple(np.shape(w))
            if w_shape != tuple(p.shape):
                raise ValueError(f"layer {self.name!r}: weight {i} ({names[i]}) has shape "
                                 f"{tuple(p.shape)}, got {w_shape}")
            src = np.asarray(w) if not is_gpu_array(w) else w
            if not is_gpu_array(src) and not np.all(np.isfinite(src)):
                raise ValueError(f"layer {self.name!r}: weight {i} contains NaN or inf")
            if is_gpu_array(p) and not is_gpu_array(src):
                import cupy

                src = cupy.asarray(src)
            p[...] = src

    # -- compute --------------------------------------------------------------------------
    def __call__(self, x, training: bool = False):
        """On arrays: ``forward``. On symbolic tensors (``nbcnn.Input``): a symbolic tensor (graph building)."""
        if is_symbolic(x):
            return call_layer(self, x)
        return self.forward(x, training=training)

    def forward(self, x, training: bool = False):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, gy):  # pragma: no cover - abstract
        raise NotImplementedError

    def _ensure_built(self, x):
        if (self.param_names or self.state_names) and not self.built:
            xp = _xp(x)
            self.build(tuple(x.shape[1:]), dtype=x.dtype, xp=xp)
        elif self._out is None:
            self.configure(tuple(x.shape[1:]))

    # -- config ---------------------------------------------------------------------------
    def get_config(self) -> dict:
        cfg = {"name": self.name, "trainable": self.trainable}
        if self._input_shape is not None:
            cfg["input_shape"] = list(self._input_shape)
        return cfg

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} output_shape={self.output_shape}>"


# ----------------------------------------------------------------------------------------------
# convolution and pooling
# ----------------------------------------------------------------------------------------------

class Conv2D(Layer):
    """2-D convolution (cross-correlation) with optional fused activation.

    ``padding``: ``"valid"``, ``"same"``, an int, a pair or ``(top, bottom, left, right)``;
    the resolved form is ``self.pads`` once the input shape is known ('same' and
    'full' pad for the dilated kernel extent). ``dilation_rate`` spaces the taps;
    ``groups`` splits the channels into independent groups (C and filters must
    be multiples of it). Weights: kernel ``(filters, C // groups, kh, kw)``, bias ``(filters,)``.
    """

    param_names = ("kernel", "bias")
    base_name = "conv2d"

    def __init__(self, filters: int, kernel_size, stride=1, padding="valid", activation=None,
                 use_bias: bool = True, input_shape=None, kernel_initializer="he_normal",
                 bias_initializer="zeros", name=None, trainable=True, strides=None,
                 dilation_rate=1, groups: int = 1):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        self.dilation_rate = as_dilation(dilation_rate)
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups <= 0:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        self.groups = int(groups)
        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters <= 0:
            raise ValueError(f"filters must be a positive int, got {filters!r}")
        self.filters = int(filters)
        self.kernel_size = as_pair(kernel_size, "kernel_size")
        if min(self.kernel_size) <= 0:
            raise ValueError(f"kernel_size must be positive, got {kernel_size!r}")
        self.strides = as_stride(stride if strides is None else strides)
        if isinstance(padding, str) and padding.lower() not in ("valid", "same", "full"):
            raise ValueError(f"padding must be 'valid', 'same', 'full' or ints, got {padding!r}")
        resolve_padding(padding, self.kernel_size, (1, 1), self.kernel_size)  # validates the form
        self.padding = padding.lower() if isinstance(padding, str) else padding
        self.activation = _check_activation(activation)
        if self.activation == "softmax":
            raise ValueError("Conv2D does not take activation='softmax'; add a Softmax layer after Flatten/Dense")
        self.use_bias = bool(use_bias)
        if not self.use_bias:
            self.param_names = ("kernel",)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.pads = None
        self._ctx: dict = {}
        self._gbuf = None

    def _shapes(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"Conv2D {self.name!r} expects per-sample input (C, H, W), got shape {input_shape}")
        C, H, W = input_shape
        kh, kw = self.kernel_size
        if C % self.groups or self.filters % self.groups:
            raise ValueError(f"{type(self).__name__} {self.name!r}: input channels ({C}) and filters "
                             f"({self.filters}) must both be divisible by groups={self.groups}")
        self.pads = resolve_padding(self.padding, self.kernel_size, self.strides, (H, W), self.dilation_rate)
        Ho, Wo = conv2d_output_hw(H, W, self.kernel_size, self.strides, self.pads, self.dilation_rate)
        if Ho <= 0 or Wo <= 0:
            raise ValueError(f"{type(self).__name__} {self.name!r}: kernel {kh}x{kw} (dilation "
                             f"{self.dilation_rate}) does not fit the input {input_shape} with padding {self.pads}")
        shapes = [(self.filters, C // self.groups, kh, kw)]
        if self.use_bias:
            shapes.append((self.filters,))
        return (self.filters, Ho, Wo), shapes

    def _init_params(self, dtype, rng, outs=None):
        K, C, kh, kw = self._param_shapes[0]
        fan_in, fan_out = C * kh * kw, K * kh * kw
        outs = outs or [None, None]
        out = [self.kernel_initializer((K, C, kh, kw), fan_in, fan_out, dtype, rng, out=outs[0])]
        if self.use_bias:
            out.append(self.bias_initializer((K,), fan_in, fan_out, dtype, rng, out=outs[1]))
        return out

    def forward(self, x, training=False):
        self._ensure_built(x)
        b = self.params[1] if self.use_bias else None
        y = ops.conv2d(x, self.params[0], b, self.strides, self.pads, self.dilation_rate, self.groups,
                       ctx=self._ctx if training else None)
        y, z = act_forward(y, self.activation, _STRING_ALPHA.get(self.activation))
        self._cache = (x, y, z) if training else None
        return y

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        x, y, z = self._cache
        if self.activation != "linear":
            if self._gbuf is None or self._gbuf.shape != y.shape or self._gbuf.dtype != y.dtype \
                    or type(self._gbuf) is not type(y):
                self._gbuf = _xp(y).empty_like(y)
            gy = act_backward(gy, y, self.activation, out=self._gbuf, x=z, alpha=_STRING_ALPHA.get(self.activation))
        gx, gw, gb = ops.conv2d_backward(gy, x, self.params[0], self.strides, self.pads, self.dilation_rate,
                                         self.groups, need_gx=self.need_gx, ctx=self._ctx)
        if self.trainable:
            self.grads[0][...] = gw
            if self.use_bias:
                self.grads[1][...] = gb
        self._cache = None
        return gx

    def get_config(self):
        pad = [int(v) for v in self.padding] if isinstance(self.padding, (tuple, list)) else self.padding
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "stride": list(self.strides), "padding": pad, "activation": self.activation,
                "use_bias": self.use_bias, "kernel_initializer": self.kernel_initializer.get_config(),
                "bias_initializer": self.bias_initializer.get_config(),
                "dilation_rate": list(self.dilation_rate), "groups": self.groups}


class DepthwiseConv2D(Conv2D):
    """Depthwise convolution: each input channel convolved with its own ``depth_multiplier`` filters.

    A :class:`Conv2D` with ``groups = C`` and ``filters = C * depth_multiplier``
    (known once the input shape is); output channel ``c * depth_multiplier + m``
    comes from input channel c. Weights: depthwise_kernel ``(C * depth_multiplier, 1, kh, kw)``
    (PyTorch's layout), bias ``(C * depth_multiplier,)``.
    """

    param_names = ("depthwise_kernel", "bias")
    base_name = "depthwise_conv2d"

    def __init__(self, kernel_size, strides=1, padding="valid", depth_multiplier: int = 1, dilation_rate=1,
                 use_bias: bool = True, activation=None, input_shape=None, depthwise_initializer="he_normal",
                 bias_initializer="zeros", name=None, trainable=True):
        if isinstance(depth_multiplier, bool) or not isinstance(depth_multiplier, (int, np.integer)) \
                or depth_multiplier <= 0:
            raise ValueError(f"depth_multiplier must be a positive int, got {depth_multiplier!r}")
        super().__init__(1, kernel_size, strides, padding, activation, use_bias, input_shape,
                         depthwise_initializer, bias_initializer, name, trainable, dilation_rate=dilation_rate)
        self.depth_multiplier = int(depth_multiplier)
        if not self.use_bias:
            self.param_names = ("depthwise_kernel",)

    def _shapes(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"DepthwiseConv2D {self.name!r} expects per-sample input (C, H, W), "
                             f"got shape {input_shape}")
        self.groups = input_shape[0]
        self.filters = input_shape[0] * self.depth_multiplier
        return super()._shapes(input_shape)

    def get_config(self):
        cfg = super().get_config()
        for k in ("filters", "groups"):
            cfg.pop(k)
        cfg["strides"] = cfg.pop("stride")
        cfg["depthwise_initializer"] = cfg.pop("kernel_initializer")
        cfg["depth_multiplier"] = self.depth_multiplier
        return cfg


class SeparableConv2D(Layer):
    """Depthwise convolution (no bias) followed by a pointwise 1x1 convolution with bias and activation.

    Weights: depthwise_kernel ``(C * depth_multiplier, 1, kh, kw)``, pointwise_kernel
    ``(filters, C * depth_multiplier, 1, 1)``, bias ``(filters,)`` (Keras's order).
    """

    param_names = ("depthwise_kernel", "pointwise_kernel", "bias")
    base_name = "separable_conv2d"

    def __init__(self, filters: int, kernel_size, strides=1, padding="valid", depth_multiplier: int = 1,
                 dilation_rate=1, activation=None, use_bias: bool = True, input_shape=None,
                 depthwise_initializer="he_normal", pointwise_initializer="he_normal", bias_initializer="zeros",
                 name=None, trainable=True):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        self.depthwise = DepthwiseConv2D(kernel_size, strides, padding, depth_multiplier, dilation_rate,
                                         use_bias=False, depthwise_initializer=depthwise_initializer)
        self.pointwise = Conv2D(filters, 1, activation=activation, use_bias=use_bias,
                                kernel_initializer=pointwise_initializer, bias_initializer=bias_initializer)
        self.filters = self.pointwise.filters
        self.activation = self.pointwise.activation
        self.use_bias = self.pointwise.use_bias
        if not self.use_bias:
            self.param_names = ("depthwise_kernel", "pointwise_kernel")

    def _shapes(self, input_shape):
        mid = self.depthwise.configure(input_shape)
        out = self.pointwise.configure(mid)
        return out, self.depthwise._param_shapes + self.pointwise._param_shapes

    def _init_params(self, dtype, rng, outs=None):
        outs = outs or [None] * len(self._param_shapes)
        return (self.depthwise._init_params(dtype, rng, outs[:1])
                + self.pointwise._init_params(dtype, rng, list(outs[1:]) + [None]))

    def _link(self):
        self.depthwise.params = self.params[:1]
        self.pointwise.params = self.params[1:]
        self.depthwise.trainable = self.pointwise.trainable = self.trainable

    def forward(self, x, training=False):
        self._ensure_built(x)
        self._link()
        return self.pointwise.forward(self.depthwise.forward(x, training), training)

    def backward(self, gy):
        if self.pointwise._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        self._link()
        self.depthwise.grads = self.grads[:1]
        self.pointwise.grads = self.grads[1:]
        self.depthwise.need_gx = self.need_gx
        return self.depthwise.backward(self.pointwise.backward(gy))

    def get_config(self):
        d, p = self.depthwise, self.pointwise
        pad = [int(v) for v in d.padding] if isinstance(d.padding, (tuple, list)) else d.padding
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(d.kernel_size),
                "strides": list(d.strides), "padding": pad, "depth_multiplier": d.depth_multiplier,
                "dilation_rate": list(d.dilation_rate), "activation": self.activation, "use_bias": self.use_bias,
                "depthwise_initializer": d.kernel_initializer.get_config(),
                "pointwise_initializer": p.kernel_initializer.get_config(),
                "bias_initializer": p.bias_initializer.get_config()}


class ZeroPadding2D(Layer):
    """Zero rows/columns around each plane: ``padding`` an int, ``(ph, pw)``, ``(top, bottom, left, right)``
    or Keras's ``((top, bottom), (left, right))``."""

    base_name = "zero_padding2d"

    def __init__(self, padding=1, input_shape=None, name=None, trainable=True):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
                isinstance(v, (tuple, list)) for v in padding):
            padding = tuple(padding[0]) + tuple(padding[1])
        pads = resolve_padding(padding, (1, 1))
        if isinstance(padding, str):
            raise ValueError(f"ZeroPadding2D takes ints, got padding={padding!r}")
        self.pads = pads

    def _shapes(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"ZeroPadding2D {self.name!r} expects per-sample input (C, H, W), got shape "
                             f"{input_shape}")
        C, H, W = input_shape
        pt, pb, pl, pr = self.pads
        return (C, H + pt + pb, W + pl + pr), []

    def forward(self, x, training=False):
        self._ensure_built(x)
        self._cache = True if training else None
        return ops.pad2d(x, self.pads)

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        self._cache = None
        return ops.pad2d_backward(gy, self.pads)

    def get_config(self):
        return {**super().get_config(), "padding": list(self.pads)}


class _Pool2D(Layer):
    def __init__(self, size=2, stride=None, padding=0, name=None, input_shape=None, pool_size=None,
                 strides=None, trainable=True, ceil_mode=False):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        self.size = as_pair(size if pool_size is None else pool_size, "size")
        if min(self.size) <= 0:
            raise ValueError(f"pool size must be positive, got {size!r}")
        st = stride if strides is None else strides
        self.strides = as_stride(self.size if st is None else st)
        ph, pw = as_pair(padding, "padding")
        check_pool_padding(self.size, (ph, pw))
        self.padding = (ph, pw)
        self.pads = (ph, ph, pw, pw)
        self.ceil_mode = bool(ceil_mode)
        self._ctx: dict = {}

    def _shapes(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{type(self).__name__} {self.name!r} expects per-sample input (C, H, W), "
                             f"got shape {input_shape}")
        C, H, W = input_shape
        (kh, kw), (sh, sw), (ph, pw) = self.size, self.strides, self.padding
        Ho = pool_output_size(H, kh, ph, sh, self.ceil_mode)
        Wo = pool_output_size(W, kw, pw, sw, self.ceil_mode)
        if Ho <= 0 or Wo <= 0:
            raise ValueError(f"{type(self).__name__} {self.name!r}: window {kh}x{kw} does not fit input {input_shape}")
        return (C, Ho, Wo), []

    def get_config(self):
        return {**super().get_config(), "size": list(self.size), "stride": list(self.strides),
                "padding": list(self.padding), "ceil_mode": self.ceil_mode}


class MaxPool2D(_Pool2D):
    """Max pooling (stride defaults to size)."""

    base_name = "max_pool2d"

    def forward(self, x, training=False):
        self._ensure_built(x)
        y = ops.max_pool2d(x, self.size, self.strides, self.padding, ceil_mode=self.ceil_mode,
                           ctx=self._ctx if training else None)
        self._cache = x if training else None
        return y

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        gx = ops.max_pool2d_backward(gy, self._cache, self.size, self.strides, self.padding,
                                     ceil_mode=self.ceil_mode, ctx=self._ctx)
        self._cache = None
        return gx


class AvgPool2D(_Pool2D):
    """Average pooling; ``count_include_pad`` (default True): padded zeros count in the divisor."""

    base_name = "avg_pool2d"

    def __init__(self, size=2, stride=None, padding=0, name=None, input_shape=None, pool_size=None,
                 strides=None, trainable=True, ceil_mode=False, count_include_pad=True):
        super().__init__(size, stride, padding, name=name, input_shape=input_shape, pool_size=pool_size,
                         strides=strides, trainable=trainable, ceil_mode=ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x, training=False):
        self._ensure_built(x)
        y = ops.avg_pool2d(x, self.size, self.strides, self.padding, ceil_mode=self.ceil_mode,
                           count_include_pad=self.count_include_pad)
        self._cache = x if training else None
        return y

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        gx = ops.avg_pool2d_backward(gy, self._cache, self.size, self.strides, self.padding,
                                     ceil_mode=self.ceil_mode, count_include_pad=self.count_include_pad)
        self._cache = None
        return gx

    def get_config(self):
        return {**super().get_config(), "count_include_pad": self.count_include_pad}


class _GlobalPool2D(Layer):
    def _shapes(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{type(self).__name__} {self.name!r} expects per-sample input (C, H, W), "
                             f"got shape {input_shape}")
        return (input_shape[0],), []


class GlobalAveragePooling2D(_GlobalPool2D):
    """Mean over H and W: ``(N, C, H, W) -> (N, C)`` (flattens; no Flatten needed before Dense)."""

    base_name = "global_average_pooling2d"

    def forward(self, x, training=False):
        self._ensure_built(x)
        self._cache = x if training else None
        return ops.global_avg_pool2d(x)

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        x, self._cache = self._cache, None
        return ops.global_avg_pool2d_backward(gy, x)


class GlobalMaxPooling2D(_GlobalPool2D):
    """Max over H and W: ``(N, C, H, W) -> (N, C)``."""

    base_name = "global_max_pooling2d"

    def __init__(self, name=None, input_shape=None, trainable=True):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        self._ctx: dict = {}

    def forward(self, x, training=False):
        self._ensure_built(x)
        self._cache = x if training else None
        return ops.global_max_pool2d(x, ctx=self._ctx if training else None)

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        x, self._cache = self._cache, None
        return ops.global_max_pool2d_backward(gy, x, ctx=self._ctx)


MaxPooling2D = MaxPool2D
AveragePooling2D = AvgPool2D
GlobalAvgPool2D = GlobalAveragePooling2D
GlobalMaxPool2D = GlobalMaxPooling2D


# ----------------------------------------------------------------------------------------------
# normalisation
# ----------------------------------------------------------------------------------------------

class BatchNormalization(Layer):
    """Batch normalisation over the channel axis (axis 1: ``(N, C, H, W)`` or ``(N, C)``), Keras conventions.

    ``momentum`` is the weight of the *old* value: ``moving = momentum * moving + (1 - momentum) * batch``
    (PyTorch's ``momentum`` is ``1 -`` this). The moving variance takes the unbiased batch variance.
    Weights: gamma (``scale``), beta (``center``) - trainable; moving_mean, moving_variance -
    non-trainable state, counted in ``count_params()``, saved and loaded with the model.

    Batch statistics are used only when ``training and self.trainable``: a frozen layer
    (``trainable = False``) normalises with its moving statistics in ``fit`` too and leaves them
    alone (Keras >= 2.1.3), so fine-tuning with frozen batch norm behaves; its backward is the
    inference-mode one.
    """

    state_names = ("moving_mean", "moving_variance")
    base_name = "batch_normalization"
    # distributed fit with synchronised batch norm sets this to the communicator: the batch
    # statistics are then the global batch's (nbcnn.distributed.sync_batch_norm_forward)
    sync_stats = None

    call_state = ("_cache", "_batch_stats")  # per call of a shared layer (see nbcnn.engine)

    def __init__(self, axis=1, momentum=0.99, epsilon=1e-3, center=True, scale=True, name=None,
                 trainable=True, input_shape=None):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or int(axis) not in (1, -1):
            raise ValueError(f"BatchNormalization supports the channel axis only (axis=1, or -1 for "
                             f"(N, features) input), got axis={axis!r}")
        momentum, epsilon = float(momentum), float(epsilon)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
        self.axis = int(axis)
        self.momentum = momentum
        self.epsilon = epsilon
        self.center = bool(center)
        self.scale = bool(scale)
        self.param_names = (("gamma",) if self.scale else ()) + (("beta",) if self.center else ())
        self._ctx: dict = {}
        self._batch_stats = False

    def _shapes(self, input_shape):
        if self.axis == -1 and len(input_shape) != 1:
            raise ValueError(f"BatchNormalization {self.name!r}: axis=-1 is the channel axis only for "
                             f"(N, features) input; use axis=1 for (C, H, W) input {input_shape}")
        if len(input_shape) not in (1, 3):
            raise ValueError(f"BatchNormalization {self.name!r} expects per-sample input (C, H, W) or "
                             f"(features,), got shape {input_shape}")
        C = input_shape[0]
        return input_shape, [(C,)] * len(self.param_names), [(C,), (C,)]

    def _init_params(self, dtype, rng, outs=None):
        outs = outs or [None] * len(self.param_names)
        arrays = []
        for name, out in zip(self.param_names, outs):
            a = out if out is not None else np.empty(self._param_shapes[0], dtype)
            a[...] = 1.0 if name == "gamma" else 0.0
            arrays.append(a)
        return arrays

    def _init_state(self, dtype):
        C = self._state_shapes[0]
        return [np.zeros(C, dtype), np.ones(C, dtype)]

    def _gamma_beta(self):
        g = self.params[0] if self.scale else None
        b = self.params[-1] if self.center else None
        return g, b

    def forward(self, x, training=False):
        self._ensure_built(x)
        g, b = self._gamma_beta()
        mean, var = self.state
        if mean.dtype != x.dtype:
            raise TypeError(f"layer {self.name!r}: input dtype {x.dtype} differs from its moving statistics' "
                            f"{mean.dtype}")
        self._batch_stats = bool(training and self.trainable)
        if self._batch_stats and self.sync_stats is not None:
            from .distributed import sync_batch_norm_forward

            y = sync_batch_norm_forward(self, x, self.sync_stats)
        else:
            y = ops.batch_norm(x, g, b, mean, var, training=self._batch_stats, momentum=1.0 - self.momentum,
                               eps=self.epsilon, ctx=self._ctx if training else None)
        self._cache = x if training else None
        return y

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        x, self._cache = self._cache, None
        g, _ = self._gamma_beta()
        if "sync" in self._ctx:
            from .distributed import sync_batch_norm_backward

            gx, gg, gb = sync_batch_norm_backward(self, gy, x)
        else:
            gx, gg, gb = ops.batch_norm_backward(gy, x, g, eps=self.epsilon, training=self._batch_stats,
                                                 running_mean=self.state[0], running_var=self.state[1],
                                                 ctx=self._ctx)
        if self.trainable:
            i = 0
            if self.scale:
                self.grads[0][...] = gg
                i = 1
            if self.center:
                self.grads[i][...] = gb
        return gx

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale}


class LocalResponseNormalization(Layer):
    """Local response normalisation across channels (AlexNet):
    ``y = x / (k + alpha / size * sum of x^2 over `size` neighbouring channels) ** beta``
    (ONNX's window: ``(size - 1) // 2`` channels before, the rest after)."""

    base_name = "local_response_normalization"

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=1.0, name=None, trainable=True, input_shape=None):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)
        if self.k <= 0 or self.alpha < 0:
            raise ValueError(f"LocalResponseNormalization needs k > 0 and alpha >= 0, got k={k!r}, alpha={alpha!r}")
        self._ctx: dict = {}

    def _shapes(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"LocalResponseNormalization {self.name!r} expects per-sample input (C, H, W), "
                             f"got shape {input_shape}")
        return input_shape, []

    def _kw(self):
        return {"alpha": self.alpha, "beta": self.beta, "k": self.k}

    def forward(self, x, training=False):
        self._ensure_built(x)
        self._cache = x if training else None
        return ops.lrn(x, self.size, **self._kw(), ctx=self._ctx if training else None)

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        x, self._cache = self._cache, None
        return ops.lrn_backward(gy, x, self.size, **self._kw(), ctx=self._ctx)

    def get_config(self):
        return {**super().get_config(), "size": self.size, **self._kw()}


BatchNorm2D = BatchNormalization
LRN = LocalResponseNormalization


# ----------------------------------------------------------------------------------------------
# reshaping, dense, dropout
# ----------------------------------------------------------------------------------------------

class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), a view (C-order, matching Keras/PyTorch NCHW flattening)."""

    base_name = "flatten"

    def _shapes(self, input_shape):
        return (int(np.prod(input_shape)),), []

    def forward(self, x, training=False):
        self._ensure_built(x)
        self._cache = x.shape if training else None
        return x.reshape(x.shape[0], -1)

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        shape, self._cache = self._cache, None
        return gy.reshape(shape)


class Dense(Layer):
    """Fully connected: ``y = act(x @ kernel + bias)``; kernel ``(in, units)`` as in Keras."""

    param_names = ("kernel", "bias")
    base_name = "dense"

    def __init__(self, units: int, activation=None, use_bias: bool = True, input_shape=None,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", name=None, trainable=True):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        if isinstance(units, bool) or not isinstance(units, (int, np.integer)) or units <= 0:
            raise ValueError(f"units must be a positive int, got {units!r}")
        self.units = int(units)
        self.activation = _check_activation(activation)
        self.use_bias = bool(use_bias)
        if not self.use_bias:
            self.param_names = ("kernel",)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self._gbuf = None

    def _shapes(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"Dense {self.name!r} expects flat per-sample input (features,), got shape "
                             f"{input_shape}; add a Flatten() layer before it")
        shapes = [(input_shape[0], self.units)]
        if self.use_bias:
            shapes.append((self.units,))
        return (self.units,), shapes

    def _init_params(self, dtype, rng, outs=None):
        fin, fout = self._param_shapes[0]
        outs = outs or [None, None]
        out = [self.kernel_initializer((fin, fout), fin, fout, dtype, rng, out=outs[0])]
        if self.use_bias:
            out.append(self.bias_initializer((fout,), fin, fout, dtype, rng, out=outs[1]))
        return out

    def forward(self, x, training=False):
        self._ensure_built(x)
        xp = _xp(x)
        W = self.params[0]
        if x.dtype != W.dtype:
            x = x.astype(W.dtype)
        y = xp.matmul(x, W)
        act = self.activation
        b = self.params[1] if self.use_bias else None
        z = None
        if act == "softmax":
            if b is not None:
                y += b
            y = softmax(y)
        elif act in FROM_OUTPUT:   # bias + activation fused, in place
            ops.activation(y, act, bias=b, out=y)
        else:
            z = ops.activation(y, "linear", bias=b, out=y) if b is not None else y
            y = ops.activation(z, act, alpha=_STRING_ALPHA.get(act))
        self._cache = (x, y, z) if training else None
        return y

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        x, y, z = self._cache
        self._cache = None
        xp = _xp(y)
        act = self.activation
        if self._gbuf is None or self._gbuf.shape != y.shape or self._gbuf.dtype != y.dtype \
                or type(self._gbuf) is not type(y):
            self._gbuf = xp.empty_like(y)
        g = self._gbuf
        gb = None
        if act == "softmax":
            g[...] = y * (gy - (gy * y).sum(axis=1, keepdims=True))
            gb = g.sum(axis=0) if self.use_bias else None
        elif act == "linear":
            g = gy
            gb = g.sum(axis=0) if self.use_bias else None
        else:  # activation gradient and bias gradient (column sums) fused
            g = ops.activation_backward(gy, z, act, y=y, alpha=_STRING_ALPHA.get(act), out=g,
                                        bias_grad=self.grads[1] if (self.use_bias and self.trainable) else None)
        if self.trainable:
            xp.matmul(x.T, g, out=self.grads[0])
            if gb is not None:
                self.grads[1][...] = gb
        if not self.need_gx:
            return None
        return xp.matmul(g, self.params[0].T)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation,
                "use_bias": self.use_bias, "kernel_initializer": self.kernel_initializer.get_config(),
                "bias_initializer": self.bias_initializer.get_config()}


class Dropout(Layer):
    """Inverted dropout: zero each value with probability ``rate`` in training, scale the rest by 1/(1-rate).

    Its random stream is the model's (saved with checkpoints so a resumed run repeats the same
    masks); a stand-alone layer uses ``seed`` or nbcnn's global generator.
    """

    base_name = "dropout"

    def __init__(self, rate: float, seed: int | None = None, name=None, input_shape=None, trainable=True):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        rate = float(rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
        self.rate = rate
        self.seed = seed
        self.rng = None

    def forward(self, x, training=False):
        self._ensure_built(x)
        if not training or self.rate == 0.0:
            self._cache = None
            return x
        if self.rng is None:
            from .random import default_rng

            self.rng = default_rng(self.seed)
        keep = np.asarray(self.rng.random(tuple(x.shape), dtype=np.float32) >= self.rate)
        mask = keep.astype(x.dtype)
        mask *= x.dtype.type(1.0 / (1.0 - self.rate))
        if is_gpu_array(x):
            import cupy

            mask = cupy.asarray(mask)
        self._cache = mask
        return x * mask

    def backward(self, gy):
        if self._cache is None:
            return gy
        m, self._cache = self._cache, None
        return gy * m

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


# ----------------------------------------------------------------------------------------------
# activation layers
# ----------------------------------------------------------------------------------------------

class Activation(Layer):
    """An element-wise activation as its own layer: ``Activation("relu")``, ``Activation("gelu")`` etc.

    ``alpha``: leaky_relu's negative slope (Keras default 0.2 for the string) or elu's alpha (1).
    """

    base_name = "activation"

    def __init__(self, activation, name=None, input_shape=None, trainable=True, alpha=None):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        self.activation = _check_activation(activation)
        self.alpha = _STRING_ALPHA.get(self.activation) if alpha is None else float(alpha)

    def forward(self, x, training=False):
        self._ensure_built(x)
        z = None
        if self.activation == "softmax":
            if x.ndim != 2:
                raise ValueError(f"softmax expects (N, classes) input, got shape {tuple(x.shape)}")
            y = softmax(x)
        elif self.activation in FROM_OUTPUT:
            y = act_forward_inplace(x.copy(), self.activation)
        else:
            y, z = ops.activation(x, self.activation, alpha=self.alpha), x
        self._cache = (y, z) if training else None
        return y

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        (y, z), self._cache = self._cache, None
        if self.activation == "softmax":
            return y * (gy - (gy * y).sum(axis=1, keepdims=True))
        return act_backward(gy, y, self.activation, x=z, alpha=self.alpha)

    def get_config(self):
        cfg = super().get_config()
        if type(self) is Activation:
            cfg["activation"] = self.activation
            if self.alpha is not None and self.alpha != _STRING_ALPHA.get(self.activation):
                cfg["alpha"] = self.alpha
        return cfg


class _NamedActivation(Activation):
    """An Activation whose function is fixed by the class (``base_name``)."""

    def __init__(self, name=None, input_shape=None, trainable=True):
        super().__init__(self.base_name, name=name, input_shape=input_shape, trainable=trainable)


class ReLU(_NamedActivation):
    """``max(x, 0)``; ``ReLU(max_value=6)`` is :class:`ReLU6` (the only other cap supported)."""

    base_name = "relu"

    def __init__(self, max_value=None, name=None, input_shape=None, trainable=True):
        if max_value is not None and float(max_value) != 6.0:
            raise ValueError(f"ReLU supports max_value=None or 6 (ReLU6), got {max_value!r}")
        super().__init__(name=name, input_shape=input_shape, trainable=trainable)
        self.max_value = None if max_value is None else 6.0
        if self.max_value is not None:
            self.activation = "relu6"

    def get_config(self):
        cfg = super().get_config()
        if self.max_value is not None:
            cfg["max_value"] = self.max_value
        return cfg


class ReLU6(_NamedActivation):
    """``min(max(x, 0), 6)`` (MobileNet)."""

    base_name = "relu6"


class LeakyReLU(Activation):
    """``x`` for x > 0, ``negative_slope * x`` otherwise (Keras default slope 0.3)."""

    base_name = "leaky_relu"

    def __init__(self, negative_slope=0.3, name=None, input_shape=None, trainable=True):
        super().__init__("leaky_relu", name=name, input_shape=input_shape, trainable=trainable,
                         alpha=float(negative_slope))

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.alpha}


class ELU(Activation):
    """``x`` for x > 0, ``alpha * (exp(x) - 1)`` otherwise."""

    base_name = "elu"

    def __init__(self, alpha=1.0, name=None, input_shape=None, trainable=True):
        super().__init__("elu", name=name, input_shape=input_shape, trainable=trainable, alpha=float(alpha))

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


class GELU(Activation):
    """``x * Phi(x)`` (exact, erf) or its tanh approximation (``approximate=True`` or ``"tanh"``)."""

    base_name = "gelu"

    def __init__(self, approximate=False, name=None, input_shape=None, trainable=True):
        if approximate not in (False, True, "none", "tanh"):
            raise ValueError(f"approximate must be False/True or 'none'/'tanh', got {approximate!r}")
        self.approximate = approximate in (True, "tanh")
        super().__init__("gelu_tanh" if self.approximate else "gelu", name=name, input_shape=input_shape,
                         trainable=trainable)

    def get_config(self):
        return {**super().get_config(), "approximate": self.approximate}


class SiLU(_NamedActivation):
    """``x * sigmoid(x)`` (= swish)."""

    base_name = "silu"


Swish = SiLU


class HardSigmoid(_NamedActivation):
    """``relu6(x + 3) / 6`` (PyTorch's hardsigmoid, Keras 3's hard_sigmoid)."""

    base_name = "hard_sigmoid"


class HardSwish(_NamedActivation):
    """``x * relu6(x + 3) / 6`` (MobileNetV3)."""

    base_name = "hard_swish"


class Tanh(_NamedActivation):
    base_name = "tanh"


class Sigmoid(_NamedActivation):
    base_name = "sigmoid"


class Softmax(_NamedActivation):
    """Softmax over classes. Before a cross-entropy loss the model fuses it with the loss."""

    base_name = "softmax"


# ----------------------------------------------------------------------------------------------
# residual shortcuts
# ----------------------------------------------------------------------------------------------

class IdentityShortcut(Layer):
    """The parameter-free shortcut of CIFAR ResNets (He et al. 2016, option A): ``x[:, :, ::s, ::s]``
    zero-padded to ``filters`` channels (half the new channels before the input's, half after).

    ``IdentityShortcut(32, strides=2)`` joins a 16-channel input to a block that halves the
    resolution and doubles the width; with ``filters`` = C and ``strides=1`` it is the identity.
    """

    base_name = "identity_shortcut"

    def __init__(self, filters: int, strides=1, name=None, input_shape=None, trainable=True):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        for nm, v in (("filters", filters), ("strides", strides)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"IdentityShortcut {nm} must be a positive int, got {v!r}")
        self.filters, self.strides = int(filters), int(strides)

    def _shapes(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"IdentityShortcut {self.name!r} expects per-sample input (C, H, W), "
                             f"got shape {input_shape}")
        C, H, W = input_shape
        if self.filters < C:
            raise ValueError(f"IdentityShortcut {self.name!r}: filters={self.filters} is fewer than the "
                             f"input's {C} channels")
        s = self.strides
        return (self.filters, (H - 1) // s + 1, (W - 1) // s + 1), []

    def forward(self, x, training=False):
        self._ensure_built(x)
        self._cache = tuple(x.shape) if training else None
        return _shortcut_ops.shortcut(x, self.strides, self.filters)

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        shape, self._cache = self._cache, None
        return _shortcut_ops.shortcut_backward(gy, shape, self.strides)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


# ----------------------------------------------------------------------------------------------
# preprocessing inside the model (saved with it, so predict and every runtime transform alike)
# ----------------------------------------------------------------------------------------------

def _hw_arg(height, width, what):
    try:
        h, w = int(height), int(width)
    except (TypeError, ValueError):
        raise TypeError(f"{what} needs integer height and width, got {height!r}, {width!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{what} needs a positive height and width, got {height!r}, {width!r}")
    return h, w


def _label(layer) -> str:
    return type(layer).__name__ + (f" {layer.name!r}" if layer.name else "")


def _chw(layer, input_shape):
    if len(input_shape) != 3:
        raise ValueError(f"{_label(layer)} expects (C, H, W) inputs, got {input_shape}")
    return input_shape


class Rescaling(Layer):
    """``y = x * scale + offset``; ``scale``/``offset`` scalars or one value per channel.

    Models already scale uint8 input to [0, 1]; ``Rescaling(2, -1)`` then maps it to [-1, 1].
    """

    base_name = "rescaling"

    def __init__(self, scale, offset=0.0, name=None, input_shape=None, trainable=True):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        self.scale = [float(v) for v in np.ravel(scale)] if np.ndim(scale) else float(scale)
        self.offset = [float(v) for v in np.ravel(offset)] if np.ndim(offset) else float(offset)
        for k, v in (("scale", self.scale), ("offset", self.offset)):
            if not np.all(np.isfinite(v)):
                raise ValueError(f"Rescaling {k} must be finite, got {v!r}")

    def _shapes(self, input_shape):
        C = _chw(self, input_shape)[0]
        for k, v in (("scale", self.scale), ("offset", self.offset)):
            if isinstance(v, list) and len(v) not in (1, C):
                raise ValueError(f"Rescaling {k} has {len(v)} values for {C} channels")
        return input_shape, []

    def _per(self, v):
        return v[0] if isinstance(v, list) and len(v) == 1 else v

    def forward(self, x, training=False):
        self._ensure_built(x)
        return ops.channel_affine(x, self._per(self.scale), self._per(self.offset))

    def backward(self, gy):
        return ops.channel_affine(gy, self._per(self.scale), 0.0)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


class Normalization(Layer):
    """Per-channel ``(x - mean) / sqrt(variance)``, from given statistics or :meth:`adapt`.

    The statistics are layer state (saved with the model, never trained). ``adapt(data)``
    computes them in one streaming pass (batch moments merged in float64) over an array,
    an :class:`nbcnn.imagefolder.ImageFolder` / ImageArray, or any iterable of batches
    (``x`` or ``(x, y)``). uint8 data is read as ``x / 255``, which is what the layer sees
    inside a model fed uint8 images.
    """

    base_name = "normalization"
    state_names = ("mean", "variance")
    EPSILON = 1e-7

    def __init__(self, mean=None, variance=None, name=None, input_shape=None, trainable=True, adapted=None):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        if (mean is None) != (variance is None):
            raise ValueError("Normalization needs both mean and variance, or neither (then call adapt())")
        self._given = None
        if mean is not None:
            m = np.asarray(mean, np.float64).ravel()
            v = np.asarray(variance, np.float64).ravel()
            if m.shape != v.shape or not np.all(np.isfinite(m)) or not np.all(np.isfinite(v)) or (v < 0).any():
                raise ValueError(f"Normalization mean and variance must be finite, of one length, variance >= 0; "
                                 f"got {m.tolist()} and {v.tolist()}")
            self._given = (m, v)
        self.adapted = bool(adapted) if adapted is not None else mean is not None

    def _shapes(self, input_shape):
        C = _chw(self, input_shape)[0]
        if self._given is not None and len(self._given[0]) not in (1, C):
            raise ValueError(f"Normalization has {len(self._given[0])} statistics for {C} channels")
        return input_shape, [], [(C,), (C,)]

    def _init_state(self, dtype):
        C = self._state_shapes[0][0]
        if self._given is None:
            return [np.zeros(C, dtype), np.ones(C, dtype)]
        m, v = self._given
        return [np.broadcast_to(m, (C,)).astype(dtype), np.broadcast_to(v, (C,)).astype(dtype)]

    def set_weights(self, weights):
        super().set_weights(weights)
        self.adapted = True

    def adapt(self, data, batch_size: int = 256):
        """Set mean and variance per channel from ``data`` (one pass; see the class docstring)."""
        from .device import to_numpy
        from .kernels.cpu.preprocess import channel_moments

        n, mean, m2 = 0, None, None
        for xb in _batches_of(data, batch_size):
            xb = np.asarray(to_numpy(xb))
            if xb.ndim == 3:
                xb = xb[:, None]
            if xb.ndim != 4 or xb.shape[0] == 0:
                raise ValueError(f"Normalization.adapt needs (N, C, H, W) batches, got shape {xb.shape}")
            scale = 1.0 / 255.0 if xb.dtype == np.uint8 else 1.0
            if xb.dtype.kind not in "fu" or xb.dtype == np.float16:
                xb = xb.astype(np.float64)
            if not xb.flags.c_contiguous:
                xb = np.ascontiguousarray(xb)
            if xb.dtype.kind == "f" and not np.all(np.isfinite(xb)):
                raise ValueError("Normalization.adapt: the data contains NaN or infinite values")
            k, mb, qb = channel_moments(xb, scale)
            if mean is None:
                n, mean, m2 = k, mb, qb
            else:  # Chan et al.: merge two sets' counts, means and squared deviations
                if mb.shape != mean.shape:
                    raise ValueError(f"Normalization.adapt: batches with {len(mean)} and {len(mb)} channels")
                d = mb - mean
                tot = n + k
                mean = mean + d * (k / tot)
                m2 = m2 + qb + d * d * (n * k / tot)
                n = tot
        if mean is None:
            raise ValueError("Normalization.adapt: no data")
        var = m2 / n
        C = len(mean)
        if self.input_shape is not None and self.input_shape[0] != C:
            raise ValueError(f"Normalization {self.name!r} is built for {self.input_shape[0]} channels, "
                             f"the data has {C}")
        self._given = (mean, var)
        if self.state:
            xp = _xp(self.state[0])
            self.state[0][...] = xp.asarray(mean.astype(self.state[0].dtype))
            self.state[1][...] = xp.asarray(var.astype(self.state[1].dtype))
        self.adapted = True
        return self

    def _stat(self, i):
        if self.state:
            return self.get_weights()[i]
        return None if self._given is None else np.asarray(self._given[i])

    @property
    def mean(self):
        """Per-channel mean (None before adapt or mean=)."""
        return self._stat(0)

    @property
    def variance(self):
        return self._stat(1)

    def _scale_offset(self, x):
        from .device import to_numpy

        mean = np.asarray(to_numpy(self.state[0]), np.float64)
        std = np.maximum(np.sqrt(np.asarray(to_numpy(self.state[1]), np.float64)), self.EPSILON)
        return 1.0 / std, -mean / std

    def forward(self, x, training=False):
        if not self.adapted:
            raise ValueError(f"{_label(self)} has no statistics: pass mean= and variance= or call "
                             "adapt(data) first")
        self._ensure_built(x)
        scale, offset = self._scale_offset(x)
        self._cache = scale if training else None
        return ops.channel_affine(x, scale, offset)

    def backward(self, gy):
        scale = self._cache if self._cache is not None else self._scale_offset(gy)[0]
        self._cache = None
        return ops.channel_affine(gy, scale, 0.0)

    def get_config(self):
        cfg = {**super().get_config(), "adapted": self.adapted}
        if self._given is not None and not self.state:
            cfg["mean"], cfg["variance"] = self._given[0].tolist(), self._given[1].tolist()
        return cfg


def _batches_of(data, batch_size):
    """Yield ``x`` batches from an array, an ImageArray / ImageFolder, or an iterable of batches."""
    x = getattr(data, "x", None) if hasattr(data, "class_names") else None
    if x is not None:
        data = x
    if isinstance(data, np.ndarray) or is_gpu_array(data) or (hasattr(data, "view") and hasattr(data, "path")):
        for s in range(0, len(data), int(batch_size)):
            yield data[s:s + int(batch_size)]
        return
    if not hasattr(data, "__iter__"):
        raise TypeError(f"Normalization.adapt needs an array or an iterable of batches, got {type(data).__name__}")
    for item in data:
        yield item[0] if isinstance(item, (tuple, list)) else item


class Resizing(Layer):
    """Bilinear resize of every image to ``(height, width)`` (half-pixel centres, no antialiasing)."""

    base_name = "resizing"

    def __init__(self, height, width, interpolation="bilinear", name=None, input_shape=None, trainable=True):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        self.height, self.width = _hw_arg(height, width, "Resizing")
        if interpolation != "bilinear":
            raise ValueError(f"Resizing supports interpolation='bilinear' only, got {interpolation!r}")
        self.interpolation = interpolation

    def _shapes(self, input_shape):
        C = _chw(self, input_shape)[0]
        return (C, self.height, self.width), []

    def forward(self, x, training=False):
        self._ensure_built(x)
        self._cache = tuple(x.shape[2:]) if training else None
        if tuple(x.shape[2:]) == (self.height, self.width):
            return x
        return ops.resize_bilinear(x, (self.height, self.width))

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        hw, self._cache = self._cache, None
        if hw == (self.height, self.width):
            return gy
        return ops.resize_bilinear_backward(gy, hw)

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width,
                "interpolation": self.interpolation}


class CenterCrop(Layer):
    """The central ``(height, width)`` window (an odd margin leaves the extra row/column at the
    bottom/right). Inputs smaller than the crop are an error naming both sizes."""

    base_name = "center_crop"

    def __init__(self, height, width, name=None, input_shape=None, trainable=True):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        self.height, self.width = _hw_arg(height, width, "CenterCrop")

    def _pads(self, H, W):
        if H < self.height or W < self.width:
            raise ValueError(f"{_label(self)}: images of {H}x{W} are smaller than the "
                             f"{self.height}x{self.width} crop")
        top, left = (H - self.height) // 2, (W - self.width) // 2
        return (top, H - self.height - top, left, W - self.width - left)

    def _shapes(self, input_shape):
        C, H, W = _chw(self, input_shape)
        self._pads(H, W)
        return (C, self.height, self.width), []

    def forward(self, x, training=False):
        self._ensure_built(x)
        pads = self._pads(*x.shape[2:])
        self._cache = pads if training else None
        if not any(pads):
            return x
        return ops.pad2d_backward(x, pads)  # cropping is the adjoint of zero padding

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        pads, self._cache = self._cache, None
        return ops.pad2d(gy, pads) if any(pads) else gy

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


__all__ += ["Rescaling", "Normalization", "Resizing", "CenterCrop"]


# ----------------------------------------------------------------------------------------------
# merge layers (take a list of tensors)
# ----------------------------------------------------------------------------------------------

class _Merge(Layer):
    """Base of the layers that combine several tensors: ``Add()([a, b])``."""

    takes_list = True
    min_inputs, max_inputs = 2, None

    @property
    def _who(self) -> str:
        return f"{type(self).__name__} {self.name!r}" if self.name else type(self).__name__

    def configure(self, input_shapes) -> tuple:
        if not isinstance(input_shapes, (list, tuple)) or not input_shapes \
                or not all(isinstance(s, (list, tuple)) for s in input_shapes):
            raise ValueError(f"{self._who} takes a list of input shapes, got {input_shapes!r}")
        shapes = [self._check_shape(s) for s in input_shapes]
        n = len(shapes)
        if n < self.min_inputs or (self.max_inputs is not None and n > self.max_inputs):
            want = (f"exactly {self.min_inputs}" if self.max_inputs == self.min_inputs
                    else f"at least {self.min_inputs}")
            raise ValueError(f"{self._who} takes {want} inputs, got {n}")
        out = self._merge_shape(shapes)
        self.input_shape = [tuple(s) for s in shapes]
        self._out = tuple(out)
        self._param_shapes, self._state_shapes = [], []
        return self._out

    def _merge_shape(self, shapes):
        if any(s != shapes[0] for s in shapes):
            listed = ", ".join(str((None, *s)) for s in shapes)
            raise ValueError(f"{self._who} needs inputs of one shape, got {listed}")
        return shapes[0]

    def _ensure_built(self, xs):
        if self._out is None:
            self.configure([tuple(x.shape[1:]) for x in xs])

    def _check_inputs(self, xs):
        if not isinstance(xs, (list, tuple)):
            raise TypeError(f"{self._who} takes a list of arrays")
        self._ensure_built(xs)
        return xs


class Add(_Merge):
    """Element-wise sum of its inputs (a residual connection: ``Add()([x, shortcut])``)."""

    base_name = "add"

    def forward(self, xs, training=False):
        xs = self._check_inputs(xs)
        y = ops.ew(xs[0], xs[1], "add")
        for x in xs[2:]:
            ops.ew(y, x, "add", out=y)
        self._cache = len(xs) if training else None
        return y

    def backward(self, gy):
        n, self._cache = self._cache, None
        return (gy,) * n


class Subtract(_Merge):
    """``a - b`` of exactly two inputs."""

    base_name = "subtract"
    min_inputs = max_inputs = 2

    def forward(self, xs, training=False):
        xs = self._check_inputs(xs)
        self._cache = True if training else None
        return ops.ew(xs[0], xs[1], "sub")

    def backward(self, gy):
        self._cache = None
        return gy, ops.ew_scale(gy, -1.0)


class Multiply(_Merge):
    """Element-wise product of its inputs."""

    base_name = "multiply"

    def forward(self, xs, training=False):
        xs = self._check_inputs(xs)
        y = ops.ew(xs[0], xs[1], "mul")
        for x in xs[2:]:
            ops.ew(y, x, "mul", out=y)
        self._cache = tuple(xs) if training else None
        return y

    def backward(self, gy):
        xs, self._cache = self._cache, None
        out = []
        for i in range(len(xs)):
            g = gy
            for j, x in enumerate(xs):
                if j != i:
                    g = ops.ew(g, x, "mul")
            out.append(g)
        return tuple(out)


class Average(_Merge):
    """Element-wise mean of its inputs."""

    base_name = "average"

    def forward(self, xs, training=False):
        xs = self._check_inputs(xs)
        y = ops.ew(xs[0], xs[1], "add")
        for x in xs[2:]:
            ops.ew(y, x, "add", out=y)
        ops.ew_scale(y, 1.0 / len(xs), out=y)
        self._cache = len(xs) if training else None
        return y

    def backward(self, gy):
        n, self._cache = self._cache, None
        return (ops.ew_scale(gy, 1.0 / n),) * n


class Concatenate(_Merge):
    """Join inputs along ``axis`` (counted with the batch axis, as in Keras: 1 = channels in NCHW)."""

    base_name = "concatenate"

    def __init__(self, axis: int = 1, name=None, trainable=True, input_shape=None):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis == 0:
            raise ValueError(f"Concatenate axis must be a non-zero int (0 is the batch axis), got {axis!r}")
        self.axis = int(axis)

    def _merge_shape(self, shapes):
        nd = len(shapes[0])
        ax = self.axis - 1 if self.axis > 0 else nd + self.axis
        listed = ", ".join(str((None, *s)) for s in shapes)
        if not 0 <= ax < nd or any(len(s) != nd for s in shapes):
            raise ValueError(f"{self._who}: axis {self.axis} does not fit inputs {listed}")
        for s in shapes:
            if s[:ax] + s[ax + 1:] != shapes[0][:ax] + shapes[0][ax + 1:]:
                what = "channels" if ax == 0 else "sizes"
                raise ValueError(f"{self._who} joins along axis {self.axis}; the other axes "
                                 f"must match ({what} mismatch): got {listed}")
        out = list(shapes[0])
        out[ax] = sum(s[ax] for s in shapes)
        self._ax = ax + 1
        return tuple(out)

    def forward(self, xs, training=False):
        xs = self._check_inputs(xs)
        y = ops.concat(xs, self._ax)
        self._cache = [int(x.shape[self._ax]) for x in xs] if training else None
        return y

    def backward(self, gy):
        sizes, self._cache = self._cache, None
        return tuple(ops.concat_backward(gy, sizes, self._ax))

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


# ----------------------------------------------------------------------------------------------
# shape and utility layers (what imported ONNX graphs need beyond the CNN layers)
# ----------------------------------------------------------------------------------------------

class Reshape(Layer):
    """``(N, *in) -> (N, *target_shape)``: a view, no data moves (so no kernel on either device)."""

    base_name = "reshape"

    def __init__(self, target_shape, name=None, input_shape=None, trainable=True):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        self.target_shape = self._check_shape(target_shape)

    def _shapes(self, input_shape):
        if int(np.prod(input_shape)) != int(np.prod(self.target_shape)):
            raise ValueError(f"cannot reshape {input_shape} ({int(np.prod(input_shape))} values) to "
                             f"{self.target_shape}")
        return self.target_shape, []

    def forward(self, x, training=False):
        self._ensure_built(x)
        self._cache = x.shape if training else None
        return x.reshape(x.shape[0], *self.target_shape)

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        shape, self._cache = self._cache, None
        return gy.reshape(shape)

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}


class ChannelShuffle(Layer):
    """ShuffleNet's channel shuffle: ``(N, g*k, H, W)`` viewed as ``(N, g, k, H, W)``, transposed to
    ``(N, k, g, H, W)`` and flattened back. A strided copy (NumPy/CuPy), exact on both devices."""

    base_name = "channel_shuffle"

    def __init__(self, groups: int, name=None, input_shape=None, trainable=True):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups <= 0:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        self.groups = int(groups)

    def _shapes(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] % self.groups:
            raise ValueError(f"ChannelShuffle({self.groups}) needs (C, H, W) with C a multiple of "
                             f"{self.groups}, got {input_shape}")
        return input_shape, []

    @staticmethod
    def _shuffle(x, a, b):
        N, C, H, W = x.shape
        xp = _xp(x)
        return xp.ascontiguousarray(x.reshape(N, a, b, H, W).transpose(0, 2, 1, 3, 4)).reshape(N, C, H, W)

    def forward(self, x, training=False):
        self._ensure_built(x)
        self._cache = True if training else None
        return self._shuffle(x, self.groups, x.shape[1] // self.groups)

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        self._cache = None
        return self._shuffle(gy, gy.shape[1] // self.groups, self.groups)

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


class LogSoftmax(Layer):
    """``log(softmax(x))`` over the classes of ``(N, classes)``, computed stably."""

    base_name = "log_softmax"

    def _shapes(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"LogSoftmax expects (classes,) per sample, got {input_shape}")
        return input_shape, []

    def forward(self, x, training=False):
        self._ensure_built(x)
        xp = _xp(x)
        z = x - x.max(axis=1, keepdims=True)
        y = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
        self._cache = y if training else None
        return y

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        y, self._cache = self._cache, None
        xp = _xp(y)
        return gy - xp.exp(y) * gy.sum(axis=1, keepdims=True)


class Clip(Layer):
    """``min(max(x, low), high)``; the gradient passes where ``low < x < high``."""

    base_name = "clip"

    def __init__(self, low=-np.inf, high=np.inf, name=None, input_shape=None, trainable=True):
        super().__init__(name=name, trainable=trainable, input_shape=input_shape)
        self.low, self.high = float(low), float(high)
        if not self.low <= self.high:
            raise ValueError(f"Clip needs low <= high, got {low!r}, {high!r}")

    def forward(self, x, training=False):
        self._ensure_built(x)
        self._cache = x if training else None
        return _xp(x).clip(x, self.low, self.high)

    def backward(self, gy):
        if self._cache is None:
            raise RuntimeError(f"layer {self.name!r}: backward() needs a forward(x, training=True) first")
        x, self._cache = self._cache, None
        return gy * ((x > self.low) & (x < self.high))

    def get_config(self):
        return {**super().get_config(), "low": self.low, "high": self.high}


_REGISTRY = {c.__name__: c for c in (Conv2D, MaxPool2D, AvgPool2D, Flatten, Dense, Dropout, Activation,
                                     ReLU, Tanh, Sigmoid, Softmax)}
_REGISTRY.update({c.__name__: c for c in (GlobalAveragePooling2D, GlobalMaxPooling2D, BatchNormalization,
                                          LocalResponseNormalization, ReLU6, LeakyReLU, ELU, GELU, SiLU,
                                          HardSigmoid, HardSwish)})
_REGISTRY["IdentityShortcut"] = IdentityShortcut


_REGISTRY.update({c.__name__: c for c in (DepthwiseConv2D, SeparableConv2D, ZeroPadding2D)})
__all__ += ["DepthwiseConv2D", "SeparableConv2D", "ZeroPadding2D"]
_REGISTRY.update({c.__name__: c for c in (Rescaling, Normalization, Resizing, CenterCrop)})
_REGISTRY.update({c.__name__: c for c in (Add, Subtract, Multiply, Average, Concatenate)})
_REGISTRY.update({c.__name__: c for c in (Reshape, ChannelShuffle, LogSoftmax, Clip)})
__all__ += ["Reshape", "ChannelShuffle", "LogSoftmax", "Clip"]


def deserialize(cfg: dict) -> Layer:
    """A layer from ``{"class_name": ..., "config": {...}}`` (as written by a model file)."""
    if not isinstance(cfg, dict) or cfg.get("class_name") not in _REGISTRY:
        raise ValueError(f"unknown layer config {str(cfg)[:200]!r}")
    kwargs = dict(cfg.get("config", {}))
    if "input_shape" in kwargs:
        kwargs["input_shape"] = tuple(kwargs["input_shape"])
    for k in ("kernel_size", "stride", "size", "strides", "dilation_rate"):
        if isinstance(kwargs.get(k), list):
            kwargs[k] = tuple(kwargs[k])
    if isinstance(kwargs.get("padding"), list):
        kwargs["padding"] = tuple(kwargs["padding"])
    return _REGISTRY[cfg["class_name"]](**kwargs)


def serialize(layer: Layer) -> dict:
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def get(name: str) -> type:
    return _REGISTRY[name]
