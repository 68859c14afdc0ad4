"""Symbolic tensors: what ``Input(...)`` and a layer called on one return.

A :class:`SymbolicTensor` holds no data: its per-sample ``shape`` and the
:class:`Node` (one call of one layer) that produced it. ``Model(inputs,
outputs)`` walks these links back from the outputs to find the graph. Shapes
are worked out at call time, so a mismatch (e.g. in ``Add``) is reported where
the layer is called, naming it.

This module sits below the layers (they call :func:`call_layer` when given a
symbolic tensor) and imports nothing from the model stack.
"""
from __future__ import annotations

import itertools

__all__ = ["SymbolicTensor", "Node", "Input", "is_symbolic", "call_layer"]

_ids = itertools.count()


class Node:
    """One call of ``layer`` on ``inputs`` (symbolic tensors); ``output`` is the tensor it made."""

    __slots__ = ("layer", "inputs", "output", "multi", "id")

    def __init__(self, layer, inputs, multi: bool):
        self.layer = layer
        self.inputs = tuple(inputs)
        self.multi = bool(multi)  # the layer takes a list (merge layers)
        self.output = None
        self.id = next(_ids)


class SymbolicTensor:
    """A placeholder for a batch of shape ``(None, *shape)`` flowing through a graph."""

    __slots__ = ("shape", "node", "name", "model", "id")

    def __init__(self, shape, node: Node | None = None, name: str | None = None):
        self.shape = tuple(int(s) for s in shape)
        self.node = node          # None for an Input
        self.name = name
        self.model = None         # the first Model built over this tensor
        self.id = next(_ids)

    @property
    def is_input(self) -> bool:
        return self.node is None

    @property
    def layer(self):
        return None if self.node is None else self.node.layer

    def __repr__(self) -> str:
        src = "Input" if self.node is None else f"{self.node.layer.name or type(self.node.layer).__name__}"
        return f"<SymbolicTensor shape={(None, *self.shape)} from {src}>"


def Input(shape, name: str | None = None) -> SymbolicTensor:
    """A model input of per-sample ``shape`` (no batch axis), e.g. ``Input((3, 32, 32))``."""
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"Input shape must be a tuple of ints (per sample, e.g. (1, 28, 28)), got {shape!r}") from None
    if not shape or min(shape) <= 0:
        raise ValueError(f"Input shape must be non-empty with positive sizes, got {shape!r}")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"Input name must be a non-empty string, got {name!r}")
    return SymbolicTensor(shape, None, name)


def is_symbolic(x) -> bool:
    if isinstance(x, SymbolicTensor):
        return True
    return isinstance(x, (list, tuple)) and len(x) > 0 and any(isinstance(t, SymbolicTensor) for t in x)


def _label(layer) -> str:
    return f"layer {layer.name!r} ({type(layer).__name__})" if layer.name else f"a {type(layer).__name__} layer"


def call_layer(layer, x) -> SymbolicTensor:
    """``layer(x)`` on symbolic tensor(s): configure the layer's shapes now and record the call."""
    multi = isinstance(x, (list, tuple))
    tensors = list(x) if multi else [x]
    for t in tensors:
        if not isinstance(t, SymbolicTensor):
            raise TypeError(f"{_label(layer)} was called on a mix of symbolic tensors and {type(t).__name__}")
    if multi != bool(getattr(layer, "takes_list", False)):
        if multi:
            raise TypeError(f"{_label(layer)} takes one tensor, got a list of {len(tensors)}")
        raise TypeError(f"{_label(layer)} takes a list of tensors, e.g. {type(layer).__name__}()([a, b])")
    models = {id(t.model): t.model for t in tensors if t.model is not None}
    if len(models) > 1:
        names = " and ".join(repr(m.name) for m in models.values())
        raise ValueError(f"{_label(layer)} was called on tensors of two different models ({names})")
    if getattr(layer, "_sequential_owner", None) is not None:
        raise ValueError(f"{_label(layer)} belongs to Sequential model {layer._sequential_owner!r}; "
                         "a layer of a Sequential cannot also be called on symbolic tensors")
    shapes = [t.shape for t in tensors]
    prev = getattr(layer, "input_shape", None)
    try:
        if getattr(layer, "_calls", 0) and prev is not None:
            want = [tuple(s) for s in prev] if multi else tuple(prev)
            got = shapes if multi else shapes[0]
            if got != want:
                raise ValueError(f"a shared layer takes the same input shape at every call: first "
                                 f"{want}, now {got}")
        out = layer.configure(shapes if multi else shapes[0])
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if (layer.name and repr(layer.name) in msg) else f"{_label(layer)}: {msg}") from None
    layer._calls = getattr(layer, "_calls", 0) + 1
    node = Node(layer, tensors, multi)
    node.output = SymbolicTensor(out, node)
    return node.output
