"""A picture of a model's graph (PNG through matplotlib; no graphviz): ``nbcnn summary MODEL --plot``.

Layers are placed in rows by depth (longest path from an input), left to right in the
engine's order within a row; each box names the layer, its type and output shape, and
an arrow joins each tensor to the layers that read it.
"""
from __future__ import annotations

from ._atomic import atomic_path
from .plots import _pyplot

__all__ = ["plot_graph"]


def plot_graph(model, path, dpi: int = 110) -> None:
    """Write the graph of ``model`` (Sequential or Model) to the PNG ``path``, atomically."""
    g = model._require_graph()
    names = [getattr(t, "name", None) or f"input_{i + 1}" for i, t in enumerate(model.inputs)]
    labels = [f"{n}\nInput {(None, *s)}" for n, s in zip(names, model._input_shapes())]
    depth = [0] * g.n_inputs
    for layer, ins, out, _ in g.steps:
        depth.append(1 + max(depth[t] for t in ins))
        labels.append(f"{layer.name}\n{type(layer).__name__} {(None, *layer._out)}")
    rows: dict = {}
    for t, d in enumerate(depth):
        rows.setdefault(d, []).append(t)
    width = max(len(r) for r in rows.values())
    pos = {}
    for d, ts in rows.items():
        for k, t in enumerate(ts):
            pos[t] = ((k + 0.5) * width / len(ts), -d)
    Figure = _pyplot()
    fig = Figure(figsize=(max(4.0, 3.2 * width), max(3.0, 0.9 * len(rows) + 1)))
    ax = fig.add_subplot(1, 1, 1)
    for layer, ins, out, _ in g.steps:
        x1, y1 = pos[out]
        for t in ins:
            x0, y0 = pos[t]
            ax.annotate("", xy=(x1, y1 + 0.22), xytext=(x0, y0 - 0.22),
                        arrowprops={"arrowstyle": "->", "color": "#555555", "lw": 1.0})
    for t, (x, y) in pos.items():
        ax.text(x, y, labels[t], ha="center", va="center", fontsize=7,
                bbox={"boxstyle": "round,pad=0.3", "fc": "#dde8f5" if t < g.n_inputs else "#f5f5f5",
                      "ec": "#4a6fa5"})
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(-max(rows) - 0.6, 0.6)
    ax.axis("off")
    ax.set_title(f"{model.name}: {len(g.steps)} layer calls, {model.count_params():,} parameters", fontsize=9)
    with atomic_path(path, ".tmp.png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
