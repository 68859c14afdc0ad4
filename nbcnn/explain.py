"""``summary(explain=True)``: the arithmetic of a network, worked out with its own numbers.

For every layer call: the output size as a student computes it by hand
(``⌊(28 + 2·0 − 5) / 1⌋ + 1 = 24``; dilation's effective kernel ``(k − 1)·d + 1``
and pooling's ceil mode shown where they apply), the receptive field and jump
of one output unit (:mod:`nbcnn.receptive`), the multiply-adds of the forward
pass and the activation memory per image. Then the totals: FLOPs of a training
step (forward ≈ 2 FLOPs per multiply-add, backward ≈ twice the forward) and the
memory of weights and activations at the given batch size.

Works on the engine's graph, so Sequential and graph models alike; needs only
shapes (no weights are allocated).
"""
from __future__ import annotations

import numpy as np

from .kernels.geometry import effective_kernel
from .receptive import graph_receptive_fields

__all__ = ["explain", "layer_macs"]


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _pads_text(before: int, after: int) -> str:
    return f"2·{before}" if before == after else f"{before} + {after}"


def _conv_axis(n, k, d, pb, pa, s, out, axis):
    """One axis of a convolution's output size, with dilation's effective kernel when d > 1."""
    ke = effective_kernel(k, d)
    kt = f"{ke}" if d == 1 else f"{ke}"
    line = f"{axis}: ⌊({n} + {_pads_text(pb, pa)} − {kt}) / {s}⌋ + 1 = {out}"
    if d > 1:
        line += f"   (dilated kernel: ({k} − 1)·{d} + 1 = {ke})"
    return line


def _pool_axis(n, k, p, s, ceil, out, axis):
    if not ceil:
        return f"{axis}: ⌊({n} + 2·{p} − {k}) / {s}⌋ + 1 = {out}"
    raw = -(-(n + 2 * p - k) // s) + 1
    line = f"{axis}: ⌈({n} + 2·{p} − {k}) / {s}⌉ + 1 = {raw}   (ceil mode)"
    if raw != out:
        line += f"; the last window would start in the padding, so {out}"
    return line


def _size_lines(layer, in_shape, out_shape) -> list:
    kind = type(layer).__name__
    conv = getattr(layer, "depthwise", None) if hasattr(layer, "pointwise") else layer
    if conv is not None and hasattr(conv, "kernel_size") and getattr(conv, "pads", None) is not None \
            and len(in_shape) == 3:
        (kh, kw), (sh, sw) = conv.kernel_size, conv.strides
        dh, dw = tuple(getattr(conv, "dilation_rate", (1, 1)))
        pt, pb, pl, pr = conv.pads
        Ho, Wo = out_shape[1], out_shape[2]
        return [_conv_axis(in_shape[1], kh, dh, pt, pb, sh, Ho, "H"),
                _conv_axis(in_shape[2], kw, dw, pl, pr, sw, Wo, "W")]
    if hasattr(layer, "size") and hasattr(layer, "strides") and len(in_shape) == 3:
        (kh, kw), (sh, sw), (ph, pw) = layer.size, layer.strides, layer.padding
        ceil = bool(getattr(layer, "ceil_mode", False))
        return [_pool_axis(in_shape[1], kh, ph, sh, ceil, out_shape[1], "H"),
                _pool_axis(in_shape[2], kw, pw, sw, ceil, out_shape[2], "W")]
    if kind == "ZeroPadding2D" and len(in_shape) == 3:
        pt, pb, pl, pr = layer.pads
        return [f"H: {in_shape[1]} + {_pads_text(pt, pb)} = {out_shape[1]}",
                f"W: {in_shape[2]} + {_pads_text(pl, pr)} = {out_shape[2]}"]
    if kind == "Flatten":
        return [f"features: {' · '.join(map(str, in_shape))} = {out_shape[0]:,}"]
    if kind.startswith("Global") and len(in_shape) == 3:
        return [f"one value per channel: {in_shape[1]}×{in_shape[2]} → 1, so ({out_shape[0]},)"]
    if kind == "Concatenate":
        ax = layer._ax - 1
        parts = " + ".join(str(s[ax]) for s in in_shape)
        return [f"axis {layer.axis}: {parts} = {out_shape[ax]}"]
    return []


def layer_macs(layer, in_shape, out_shape) -> tuple[int, str]:
    """Multiply-adds of one forward pass per image, and how they are counted (text)."""
    if hasattr(layer, "depthwise") and hasattr(layer, "pointwise"):
        md, td = layer_macs(layer.depthwise, in_shape, layer.depthwise._out)
        mp, tp = layer_macs(layer.pointwise, layer.depthwise._out, out_shape)
        return md + mp, f"depthwise {md:,} + pointwise {mp:,}"
    if hasattr(layer, "kernel_size") and hasattr(layer, "filters") and len(out_shape) == 3:
        K, Ho, Wo = out_shape
        C = in_shape[0] // int(getattr(layer, "groups", 1))
        kh, kw = layer.kernel_size
        n = K * Ho * Wo * C * kh * kw
        return n, f"{K}·{Ho}·{Wo} outputs × {C}·{kh}·{kw} taps"
    if hasattr(layer, "units") and len(in_shape) == 1:
        return in_shape[0] * layer.units, f"{in_shape[0]} × {layer.units}"
    return 0, ""


def explain(model, batch_size: int = 1, print_fn=None) -> str:
    """The worked arithmetic of ``model`` (see the module docstring); returned as text."""
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    g = model._require_graph()
    itemsize = np.dtype(model.dtype).itemsize
    try:
        rfs = graph_receptive_fields(g)
    except ValueError:
        rfs = None
    in_names = [getattr(t, "name", None) or f"input_{i + 1}" for i, t in enumerate(model.inputs)] \
        if getattr(model, "inputs", None) else ["input"]
    shapes = list(model._input_shapes()) + [tuple(layer._out) for layer, *_ in g.steps]
    names = list(in_names) + [layer.name for layer, *_ in g.steps]
    lines = [f'Arithmetic of "{model.name}" (per image unless said otherwise)', "=" * 72]
    total_macs = 0
    total_act = 0
    for i, (layer, ins, out, multi) in enumerate(g.steps):
        in_shape = [shapes[t] for t in ins] if multi else shapes[ins[0]]
        out_shape = shapes[out]
        src = ", ".join(names[t] for t in ins)
        lines.append(f"{layer.name} ({type(layer).__name__})  ← {src}")
        lines.append(f"  output {(None, *out_shape)}")
        for s in _size_lines(layer, in_shape, out_shape):
            lines.append(f"  {s}")
        if rfs is not None:
            rf = rfs[out]
            if rf.spatial:
                lines.append(f"  receptive field {rf.size[0]}×{rf.size[1]} input pixels, jump {rf.jump[0]}×"
                             f"{rf.jump[1]} (unit (0, 0) starts at {rf.start})")
            else:
                lines.append("  receptive field: the whole input (no spatial layout after this layer)")
        macs, how = layer_macs(layer, in_shape if not multi else in_shape[0], out_shape)
        act = int(np.prod(out_shape))
        total_macs += macs
        total_act += act
        if macs:
            lines.append(f"  multiply-adds {how} = {macs:,}")
        lines.append(f"  activations {act:,} values = {_fmt_bytes(act * itemsize)}")
        n_params = layer.count_params() if g.steps[g.step_of_layer(layer)][2] == out else 0
        if n_params:
            lines.append(f"  parameters {n_params:,}")
        lines.append("")
    params = model.count_params()
    trainable = model.count_trainable_params()
    fwd = 2 * total_macs
    lines += ["-" * 72,
              f"forward multiply-adds per image: {total_macs:,} ({fwd:,} FLOPs)",
              f"training step at batch {batch_size}: ≈ 3 × forward = {3 * fwd * batch_size:,} FLOPs "
              "(the backward pass costs about twice the forward)",
              f"weights: {params:,} values = {_fmt_bytes(params * itemsize)} "
              f"({trainable:,} trainable; training keeps a gradient of each, plus the optimiser's slots)",
              f"activations per image: {total_act:,} values = {_fmt_bytes(total_act * itemsize)}; at batch "
              f"{batch_size}: {_fmt_bytes(total_act * itemsize * batch_size)} (kept for the backward pass)"]
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text
