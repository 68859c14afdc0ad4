"""Training callbacks (Keras-like) and the History that ``fit`` returns.

Hooks: ``on_train_begin(logs)``, ``on_epoch_begin(epoch, logs)``,
``on_batch_begin(batch, logs)``, ``on_batch_end(batch, logs)``,
``on_epoch_end(epoch, logs)``, ``on_train_end(logs)``. ``self.model`` is the
model being trained; set ``model.stop_training = True`` to stop after the
current batch (the CLI does this on Ctrl-C, then saves a checkpoint).
Batch logs hold the running ``loss``/``accuracy`` of the epoch, ``size`` and
``batch``; epoch logs hold ``loss``, ``accuracy``, ``val_loss``,
``val_accuracy``, ``lr``, ``time`` (the whole epoch, in seconds) and ``train_time``
(without validation).
"""
from __future__ import annotations

import csv
import json
import math
import os

import numpy as np

from . import _threads
from ._atomic import write_text

__all__ = ["Callback", "CallbackList", "History", "EarlyStopping", "ModelCheckpoint", "CSVLogger",
           "JSONLogger", "LearningRateScheduler", "LambdaCallback", "TerminateOnNaN"]


class Callback:
    def __init__(self):
        self.model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    def on_batch_begin(self, batch, logs=None): pass
    def on_batch_end(self, batch, logs=None): pass


class CallbackList(Callback):
    """Calls every callback's hook in order."""

    def __init__(self, callbacks=None, model=None):
        super().__init__()
        self.callbacks = list(callbacks or [])
        for c in self.callbacks:
            if not isinstance(c, Callback):
                raise TypeError(f"callbacks must be nbcnn.callbacks.Callback instances, got {type(c).__name__}")
        if model is not None:
            self.set_model(model)

    def set_model(self, model):
        self.model = model
        for c in self.callbacks:
            c.set_model(model)

    def _call(self, hook, *args):
        for c in self.callbacks:
            getattr(c, hook)(*args)

    def on_train_begin(self, logs=None): self._call("on_train_begin", logs)
    def on_train_end(self, logs=None): self._call("on_train_end", logs)
    def on_epoch_begin(self, epoch, logs=None): self._call("on_epoch_begin", epoch, logs)
    def on_epoch_end(self, epoch, logs=None): self._call("on_epoch_end", epoch, logs)
    def on_batch_begin(self, batch, logs=None): self._call("on_batch_begin", batch, logs)
    def on_batch_end(self, batch, logs=None): self._call("on_batch_end", batch, logs)


class _ThreadShare(Callback):
    """Added by ``fit``: shares the CPUs with other nbcnn processes that train at the same time."""

    def on_train_begin(self, logs=None):
        _threads.training_begin()

    def on_batch_end(self, batch, logs=None):
        _threads.rebalance()

    def on_train_end(self, logs=None):
        _threads.training_end()


class History(Callback):
    """Per-epoch metrics: ``history.history["val_accuracy"][-1]``; ``history.epoch`` lists the epochs."""

    def __init__(self):
        super().__init__()
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


def _mode_for(monitor: str, mode: str):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        mode = "max" if "acc" in monitor else "min"
    return mode


def _better(mode, a, b, min_delta=0.0):
    if b is None:
        return True
    return a < b - min_delta if mode == "min" else a > b + min_delta


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs; optionally restore the best weights."""

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False, verbose: int = 0):
        super().__init__()
        self.monitor, self.patience, self.min_delta = monitor, int(patience), abs(float(min_delta))
        self.mode = _mode_for(monitor, mode)
        self.restore_best_weights, self.verbose = bool(restore_best_weights), verbose
        self.best = None
        self.best_epoch = None
        self.best_weights = None
        self.wait = 0
        self.stopped_epoch = None

    def on_train_begin(self, logs=None):
        self.best, self.best_epoch, self.best_weights, self.wait, self.stopped_epoch = None, None, None, 0, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r} but the epoch logs only have "
                             f"{sorted(logs or {})}; pass validation data for val_* metrics")
        if _better(self.mode, value, self.best, self.min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)
            if self.verbose:
                print(f"EarlyStopping: restored the weights of epoch {self.best_epoch + 1} "
                      f"({self.monitor} {self.best:.4f})")
        if self.verbose and self.stopped_epoch is not None:
            print(f"EarlyStopping: stopped after epoch {self.stopped_epoch + 1}")


class ModelCheckpoint(Callback):
    """Save the model after each epoch (``{epoch}`` and metric names may appear in ``filepath``).

    With ``save_best_only`` it saves only when ``monitor`` improved. The file is written
    atomically and includes the optimiser state, so it can be resumed.
    """

    def __init__(self, filepath, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto", verbose: int = 0):
        super().__init__()
        self.filepath = os.fspath(filepath)
        self.monitor, self.save_best_only, self.verbose = monitor, bool(save_best_only), verbose
        self.mode = _mode_for(monitor, mode)
        self.best = None
        self.last_path = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            value = logs.get(self.monitor)
            if value is None:
                raise ValueError(f"ModelCheckpoint monitors {self.monitor!r} but the epoch logs only have "
                                 f"{sorted(logs)}")
            if not _better(self.mode, value, self.best):
                return
            self.best = value
        path = self.filepath.format(epoch=epoch + 1, **{k: v for k, v in logs.items()
                                                        if isinstance(v, (int, float))})
        self.model.save(path)
        self.last_path = path
        if self.verbose:
            print(f"ModelCheckpoint: saved {path}")


def _plain(v):
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class _EpochLogger(Callback):
    """A file with one record per epoch (``epoch`` + every metric), rewritten atomically after each
    epoch, so an interrupted run keeps every finished epoch. ``append`` continues an existing file."""

    def __init__(self, filename, append: bool = False):
        super().__init__()
        self.filename, self.append = os.fspath(filename), bool(append)
        self.rows: list[dict] = []

    def on_train_begin(self, logs=None):
        self.rows = self._read() if self.append and os.path.exists(self.filename) else []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch + 1, **{k: _plain(v) for k, v in (logs or {}).items()}})
        write_text(self.filename, self._format())

    def _read(self) -> list[dict]:
        raise NotImplementedError

    def _format(self) -> str:
        raise NotImplementedError


class CSVLogger(_EpochLogger):
    """One CSV row per epoch (``epoch`` + every metric); rewritten atomically after each epoch."""

    def _read(self):
        with open(self.filename, newline="") as f:
            return list(csv.DictReader(f))

    def _format(self):
        import io

        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.rows)
        return buf.getvalue()


class JSONLogger(_EpochLogger):
    """A JSON file ``{"epochs": [{"epoch": 1, "loss": ...}, ...]}`` rewritten atomically after each epoch."""

    def _read(self):
        with open(self.filename) as f:
            return json.load(f).get("epochs", [])

    def _format(self):
        return json.dumps({"epochs": self.rows}, indent=1) + "\n"


class LearningRateScheduler(Callback):
    """Set the optimiser's learning rate at each epoch start: ``schedule(epoch, lr) -> lr``."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def on_epoch_begin(self, epoch, logs=None):
        opt = self.model.optimizer
        opt.lr = float(self.schedule(epoch, opt.current_lr))


class LambdaCallback(Callback):
    """Callbacks from plain functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``."""

    def __init__(self, **hooks):
        super().__init__()
        for k, fn in hooks.items():
            if not k.startswith("on_") or not hasattr(Callback, k):
                raise ValueError(f"unknown callback hook {k!r}")
            setattr(self, k, fn)


class TerminateOnNaN(Callback):
    """Stop training as soon as a batch loss is NaN or infinite."""

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            print(f"TerminateOnNaN: batch {batch} has loss {loss}; stopping")
            self.model.stop_training = True
