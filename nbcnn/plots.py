"""Training-curve and confusion-matrix PNGs (matplotlib, an optional extra).

matplotlib is imported inside the functions, never at ``import nbcnn``: it
costs ~0.3 s and is not installed by default. Without it the functions raise
:class:`PlotUnavailable` (an ImportError) whose message says how to install
it, so callers can degrade to a one-line notice.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._atomic import atomic_path

__all__ = ["PlotUnavailable", "plot_history", "plot_confusion_matrix", "confusion_matrix",
           "matplotlib_available"]

INSTALL_HINT = 'plots need matplotlib: pip install "nbcnn[plot]"'


class PlotUnavailable(ImportError):
    """matplotlib is not installed."""


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    """The Figure class; no pyplot, so no GUI backend and no global state is touched."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailable(INSTALL_HINT) from exc
    return Figure


def _save(fig, path) -> Path:
    """Save atomically: a half-written PNG must never replace a good one."""
    path = Path(path)
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path


def plot_history(history: dict, path, title: str | None = None) -> Path:
    """Loss and accuracy per epoch (train and, when present, ``val_``) as a two-panel PNG.

    ``history`` is ``History.history``: ``{"loss": [...], "accuracy": [...],
    "val_loss": [...], "val_accuracy": [...]}``; missing keys are skipped.
    """
    if not isinstance(history, dict):
        raise TypeError(f"history must be a dict of per-epoch lists, got {type(history).__name__}")
    Figure = _pyplot()
    fig = Figure(figsize=(9, 3.6))
    panels = [("loss", "loss"), ("accuracy", "accuracy")]
    for i, (key, label) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        drew = False
        for prefix, style in (("", "-o"), ("val_", "--s")):
            values = history.get(prefix + key)
            if values is None or len(values) == 0:
                continue
            epochs = np.arange(1, len(values) + 1)
            ax.plot(epochs, np.asarray(values, dtype=float), style, markersize=3,
                    label="validation" if prefix else "training")
            drew = True
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if drew:
            ax.legend()
        if history.get(key) is not None and len(history[key]) > 0:
            ax.set_xticks(_epoch_ticks(len(history[key])))
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _epoch_ticks(n: int) -> list[int]:
    step = max(1, int(np.ceil(n / 10)))
    return list(range(1, n + 1, step))


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """``cm[i, j]`` = how many samples of true class ``i`` were predicted as ``j``."""
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    y_pred = np.asarray(y_pred).astype(np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.shape} vs {y_pred.shape}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} has labels outside [0, {num_classes}): min {y.min()}, max {y.max()}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def plot_confusion_matrix(cm, path, class_names=None, title: str | None = None) -> Path:
    """A confusion-matrix heat map with counts in the cells; rows = true, columns = predicted."""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    k = cm.shape[0]
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names for {k} classes")
    Figure = _pyplot()
    size = min(4 + 0.45 * k, 16)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot(1, 1, 1)
    # Colour by row-normalised rate so rare classes stay visible; write raw counts.
    rows = cm.sum(axis=1, keepdims=True)
    rate = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    im = ax.imshow(rate, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=45 if max(len(n) for n in names) > 2 else 0, ha="right")
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rate[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title)
    return _save(fig, path)
