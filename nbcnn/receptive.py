"""Receptive fields: the input window one unit of a layer sees, and the step ("jump") between units.

Recurrence per conv/pool layer (kernel k, dilation d, stride s, leading pad p), from
the input (size 1, jump 1, start 0): ``size += (k - 1) * d * jump``,
``start -= p * jump``, ``jump *= s``. Where branches meet (Add, Concatenate) a
unit sees the union of its inputs' windows. Used by the patch visualisation and
by ``summary(explain=True)``; imports nothing above the layers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ReceptiveField", "graph_receptive_fields"]


@dataclass(frozen=True)
class ReceptiveField:
    size: tuple      # (h, w) input pixels one unit sees
    jump: tuple      # (h, w) input step between neighbouring units
    start: tuple     # (h, w) input coordinate of unit (0, 0)'s top-left corner (may be < 0)
    spatial: bool = True  # False after Flatten/Dense: a unit sees the whole input

    def box(self, i, j):
        """Input window ``(r0, r1, c0, c1)`` (half-open) of the unit at output position (i, j)."""
        r0 = self.start[0] + i * self.jump[0]
        c0 = self.start[1] + j * self.jump[1]
        return r0, r0 + self.size[0], c0, c0 + self.size[1]


def _geometry(layer):
    """(kernel, strides, (top, left) pads) of a spatial layer, None for pointwise ones, 'global' for Flatten/Dense."""
    kind = type(layer).__name__
    if hasattr(layer, "depthwise") and hasattr(layer, "pointwise"):  # separable: the depthwise part's window
        return _geometry(layer.depthwise)
    if kind == "ZeroPadding2D":
        return (1, 1), (1, 1), (layer.pads[0], layer.pads[2])
    if hasattr(layer, "kernel_size") and hasattr(layer, "strides"):
        pads = getattr(layer, "pads", None)
        if pads is None:
            raise ValueError(f"layer {layer.name!r}: padding not resolved yet (build the model or pass input_shape)")
        return tuple(layer.kernel_size), tuple(layer.strides), (pads[0], pads[2])
    if hasattr(layer, "size") and hasattr(layer, "strides") and hasattr(layer, "pads"):
        return tuple(layer.size), tuple(layer.strides), (layer.pads[0], layer.pads[2])
    if kind in ("Flatten", "Dense") or kind.startswith("Global") or getattr(layer, "units", None) is not None:
        return "global"
    return None


def _dilation(layer) -> tuple:
    d = getattr(layer, "dilation_rate", None) or getattr(layer, "dilation", None) or (1, 1)
    return (int(d), int(d)) if np.isscalar(d) else (int(d[0]), int(d[1]))


def _is_chain(graph) -> bool:
    return graph.n_inputs == 1 and all(ins == (k,) and not multi
                                       for k, (_, ins, _, multi) in enumerate(graph.steps))


def graph_receptive_fields(graph) -> list:
    """The :class:`ReceptiveField` of every tensor of an engine graph (index = tensor id).

    Where branches meet (Add, Concatenate, ...) a unit sees the union of its inputs' windows
    (their jumps must agree); a global layer (Flatten, Dense) makes everything after it non-spatial.
    """
    rfs: list = [ReceptiveField((1, 1), (1, 1), (0, 0))] * graph.n_inputs
    for layer, ins, out, multi in graph.steps:
        srcs = [rfs[t] for t in ins]
        if not all(r.spatial for r in srcs):
            rfs.append(ReceptiveField(None, None, None, spatial=False))
            continue
        if multi:
            if len({r.jump for r in srcs}) != 1:
                raise ValueError(f"layer {layer.name!r} joins units of different strides {[r.jump for r in srcs]}")
            lo = [min(r.start[a] for r in srcs) for a in range(2)]
            hi = [max(r.start[a] + r.size[a] for r in srcs) for a in range(2)]
            rfs.append(ReceptiveField((hi[0] - lo[0], hi[1] - lo[1]), srcs[0].jump, tuple(lo)))
            continue
        g = _geometry(layer)
        r = srcs[0]
        if g is None:
            rfs.append(r)
        elif g == "global":
            rfs.append(ReceptiveField(None, None, None, spatial=False))
        else:
            k, st, p = g
            d = _dilation(layer)
            size = tuple(r.size[a] + ((k[a] - 1) * d[a]) * r.jump[a] for a in range(2))
            start = tuple(r.start[a] - p[a] * r.jump[a] for a in range(2))
            rfs.append(ReceptiveField(size, tuple(r.jump[a] * st[a] for a in range(2)), start))
    return rfs


