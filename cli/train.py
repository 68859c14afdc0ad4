"""``nbcnn train``: train a zoo model on MNIST / Fashion-MNIST, resumably.

The loop is the CLI's own (``Sequential.train_on_batch`` per batch) rather
than one ``fit`` call, because the CLI must be able to stop after any batch
and continue later *to the same result*:

* the batch order of epoch ``e`` is a pure function of ``(seed, e)``
  (``SeedSequence(seed, spawn_key=(e,))``, the same order
  :class:`nbcnn.loader.AugmentedBatches` uses), so a resumed run sees the
  same batches without replaying anything;
* the model file stores the weights, the optimizer state and the model's
  random stream (dropout), and its metadata stores the position (epoch,
  batch) and the partial epoch's running sums.

``Ctrl-C`` sets a flag; the current batch finishes, a checkpoint is written
atomically, and the command exits with code 130. A second ``Ctrl-C`` aborts
at once (the checkpoint of the last finished epoch is still there).
"""
from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import click
import numpy as np

from . import common, loading

STATE_KEY = "nbcnn_train"
STATE_VERSION = 1

# Defaults chosen for LeNet-5 on MNIST on a laptop CPU (see README "Results").
DEFAULT_LR = {"sgd": 0.05, "adam": 0.001}

# Options that define the run: a resumed run must use the same values.
RUN_OPTIONS = ("model", "dataset", "batch_size", "optimizer", "lr", "momentum", "seed", "val_split",
               "train_size", "augment")

# Testing hook: send ourselves SIGINT after this many training batches (a real
# Ctrl-C, at a reproducible point). Not a user option.
_INTERRUPT_ENV = "NBCNN_TEST_INTERRUPT_AFTER"


class _Interrupt:
    """First Ctrl-C: ask the loop to stop after this batch. Second: abort now."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._previous = None
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        common.notice("\nStopping after this batch and saving a checkpoint "
                      "(press Ctrl-C again to abort without saving)...")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _paths(out: Path) -> dict:
    base = out.with_suffix("") if out.suffix else out
    return {"model": out,
            "checkpoint": Path(f"{base}.ckpt{out.suffix}"),
            "metrics": Path(f"{base}.metrics.json"),
            "curves": Path(f"{base}.curves.png")}


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch,))).permutation(n)


def _step(model, xb, yb):
    """One optimizer step -> (loss, number of correct predictions or None)."""
    out = model.train_on_batch(xb, yb)
    acc = None
    if isinstance(out, dict):
        loss, acc = out.get("loss"), out.get("accuracy")
    elif isinstance(out, (tuple, list)):
        loss, acc = out[0], (out[1] if len(out) > 1 else None)
    else:
        loss = out
    return float(loss), (None if acc is None else float(acc))


def _resolve_options(ctx, opts: dict, state: dict | None) -> dict:
    """Merge command-line options with a checkpoint's run settings (the checkpoint wins;
    an explicitly different value is an error, since it would not continue the same run)."""
    if state is None:
        return opts
    saved = state["options"]
    merged = dict(opts)
    for key in RUN_OPTIONS:
        explicit = ctx.get_parameter_source(key) not in (click.core.ParameterSource.DEFAULT, None)
        if explicit and opts[key] is not None and opts[key] != saved.get(key):
            flag = "--" + key.replace("_", "-")
            raise common.UserError(f"the checkpoint was trained with {flag} {saved.get(key)}; resuming with "
                                   f"{opts[key]} would not continue the same run (drop {flag})")
        merged[key] = saved.get(key)
    for key in ("data_dir",):
        if opts.get(key) is None:
            merged[key] = saved.get(key)
    if ctx.get_parameter_source("epochs") in (click.core.ParameterSource.DEFAULT, None):
        merged["epochs"] = saved.get("epochs", opts["epochs"])
    return merged


def _build_model(opts, input_shape, num_classes, device):
    import nbcnn

    nbcnn.seed(opts["seed"])
    with nbcnn.using_device(device):
        model = loading.build_zoo_model(opts["model"], num_classes=num_classes, input_shape=input_shape)
    shape = loading.model_input_shape(model)
    if shape is not None and tuple(shape) != tuple(input_shape):
        raise common.UserError(
            f"model {opts['model']} takes inputs of shape {tuple(shape)} but {opts['dataset']} images are "
            f"{tuple(input_shape)}; pick a model for {input_shape[1]}x{input_shape[2]} images (e.g. lenet5)")
    from nbcnn import optim

    if opts["optimizer"] == "sgd":
        opt = optim.SGD(opts["lr"], momentum=opts["momentum"])
    else:
        opt = optim.Adam(opts["lr"])
    model.compile(loss="cross_entropy", optimizer=opt, metrics=["accuracy"])
    return model


def _save(model, path: Path, metadata: dict) -> None:
    model.save(path, metadata=metadata)


def _metadata(opts, paths, dataset_info, class_names, state: dict) -> dict:
    return {"dataset": opts["dataset"], "class_names": class_names,
            "preprocess": dict(loading.DEFAULT_PREPROCESS),
            "bundled_sample": dataset_info["bundled_sample"],
            STATE_KEY: state}


EPILOG = common.examples(
    "nbcnn train                                   # LeNet-5 on MNIST, 10 epochs",
    "nbcnn train --epochs 2 --train-size 5000      # a quick try",
    "nbcnn train --dataset fashion-mnist --model small_vgg --epochs 15 --out fashion.nbcnn",
    "nbcnn train --optimizer sgd --lr 0.05 --batch-size 128 --seed 1",
    "nbcnn train --augment rotate=10,crop=2,noise=0.05 --workers 2",
    "nbcnn train --resume lenet5-mnist.ckpt.nbcnn  # continue after Ctrl-C",
    "nbcnn train --resume lenet5-mnist.nbcnn --epochs 20   # train a finished model longer")


@click.command(epilog=EPILOG)
@click.option("--model", default="lenet5", show_default=True,
              help="Zoo model to train (see `nbcnn summary NAME`).")
@click.option("--dataset", type=click.Choice(loading.DATASETS, case_sensitive=False), default="mnist",
              show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with the data set's IDX files, e.g. one written by `nbcnn augment`.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate [default: 0.001 for adam, 0.05 for sgd].")
@click.option("--momentum", type=click.FloatRange(0, 1, max_open=True), default=0.9, show_default=True,
              help="SGD momentum.")
@click.option("--device", default=None, metavar="auto|cpu|cuda",
              help="Where to train [default: $NBCNN_DEVICE or auto = a GPU when usable].")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Random seed for initialisation and shuffling [default: a fresh one, printed].")
@click.option("--val-split", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Fraction of the training images (the last ones) held out for validation.")
@click.option("--train-size", type=click.IntRange(min=1), default=None,
              help="Use only the first N training images (quick runs).")
@click.option("--test-size", type=click.IntRange(min=1), default=None,
              help="Use only the first N test images for the final accuracy.")
@click.option("--augment", default=None, metavar="SPEC",
              help="Online augmentation, e.g. rotate=10,crop=2,noise=0.05 (see README).")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Worker processes for --augment (0 = in this process).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Model file to write [default: MODEL-DATASET.nbcnn]; the metrics JSON, "
                   "curves PNG and checkpoint go beside it.")
@click.option("--resume", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Continue from a checkpoint (or a finished model file, with a larger --epochs).")
@click.option("--no-plot", is_flag=True, help="Do not write the training-curve PNG.")
@click.option("-q", "--quiet", is_flag=True, help="Only the final result (no epoch lines, no progress bar).")
@common.verbose_option
@click.pass_context
def train(ctx, **opts):
    """Train a model and report validation and test accuracy.

    With no options: LeNet-5 on MNIST. The data comes from --data-dir,
    $NBCNN_DATA, the cache (~/.cache/nbcnn), a download, or, offline, a small
    sample bundled with nbcnn (a notice says so). Writes the model file, a
    metrics JSON and a training-curve PNG. Ctrl-C saves a checkpoint that
    --resume continues to the same result as an uninterrupted run (CPU, same seed).
    """
    Trainer(ctx, opts).run()


class Trainer:
    """One ``nbcnn train`` invocation: settings, data, model, the loop, the files."""

    def __init__(self, ctx, opts):
        import nbcnn

        self.opts = opts
        self.state = None
        self.resumed_model = None
        if opts["resume"] is not None:
            self.resumed_model = loading.load_model_file(opts["resume"])
            state = loading.model_metadata(self.resumed_model).get(STATE_KEY)
            if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
                raise common.UserError(f"{opts['resume']} has no nbcnn training state: only files written "
                                       "by `nbcnn train` can be resumed")
            self.state = state
        opts = _resolve_options(ctx, opts, self.state)
        opts["model"] = loading.normalise_zoo_name(opts["model"])
        opts["dataset"] = opts["dataset"].lower()
        if opts["lr"] is None:
            opts["lr"] = DEFAULT_LR[opts["optimizer"]]
        if opts["seed"] is None:
            opts["seed"] = int(np.random.SeedSequence().entropy % (2**31))
        if opts["augment"] is not None:
            from nbcnn import augment

            augment.parse_spec(opts["augment"])  # a bad spec fails here, before any work
        self.opts = opts
        self.device = nbcnn.device.parse_device(opts["device"] or os.environ.get("NBCNN_DEVICE") or "auto")
        out = opts["out"] or (Path(self.state["out"]) if self.state and self.state.get("out")
                              else Path(f"{opts['model']}-{opts['dataset']}.nbcnn"))
        self.paths = _paths(Path(out))
        self.verbose = not opts["quiet"]

    # ------------------------------------------------------------------ output
    def say(self, text=""):
        if self.verbose:
            common.echo(text)

    # ------------------------------------------------------------------ data
    def _load_data(self):
        o = self.opts
        (x_tr, y_tr), (x_te, y_te), self.data_info = loading.load_dataset(o["dataset"], o["data_dir"])
        x_tr, x_te = loading.as_nchw_uint8(x_tr), loading.as_nchw_uint8(x_te)
        y_tr, y_te = np.asarray(y_tr).astype(np.int64), np.asarray(y_te).astype(np.int64)
        if o["train_size"] is not None:
            x_tr, y_tr = x_tr[:o["train_size"]], y_tr[:o["train_size"]]
        if o["test_size"] is not None:
            x_te, y_te = x_te[:o["test_size"]], y_te[:o["test_size"]]
        n_val = int(round(len(x_tr) * o["val_split"]))
        if len(x_tr) - n_val < 1:
            raise common.UserError(f"--val-split {o['val_split']} leaves no training images out of {len(x_tr)}")
        cut = len(x_tr) - n_val  # Keras convention: the last fraction, not shuffled
        self.x_train, self.y_train = x_tr[:cut], y_tr[:cut]
        self.x_val, self.y_val = x_tr[cut:], y_tr[cut:]
        self.x_test, self.y_test = x_te, y_te
        self.num_classes = int(max(y_tr.max(initial=0), y_te.max(initial=0)) + 1)
        self.num_classes = max(self.num_classes, len(loading.CLASS_NAMES.get(o["dataset"], [])))
        self.class_names = (loading.CLASS_NAMES.get(o["dataset"])
                            or [str(i) for i in range(self.num_classes)])

    def _inputs(self, pixels):
        return loading.to_inputs(pixels, loading.DEFAULT_PREPROCESS)

    # ------------------------------------------------------------------ run
    def run(self):
        import nbcnn

        o = self.opts
        t_start = time.perf_counter()
        self._load_data()
        input_shape = tuple(self.x_train.shape[1:])
        if self.resumed_model is not None:
            model = self.resumed_model
            to = getattr(model, "to", None)
            if callable(to):
                to(self.device)
            state = self.state
            epoch, batch = int(state["epoch"]), int(state["batch"])
            history = {k: list(v) for k, v in state["history"].items()}
            partial = dict(state.get("partial") or {})
            elapsed_before = float(state.get("elapsed_s", 0.0))
        else:
            model = _build_model(o, input_shape, self.num_classes, self.device)
            epoch, batch, partial, elapsed_before = 0, 0, {}, 0.0
            history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": [],
                       "epoch_time_s": [], "images_per_s": []}
        self.model = model
        n = len(self.x_train)
        bs = o["batch_size"]
        nb = math.ceil(n / bs)
        self._banner(model, epoch, batch, nb)
        x_val = self._inputs(self.x_val) if len(self.x_val) else None
        source = self._augmented_source(n) if o["augment"] else None
        interrupt_after = int(os.environ.get(_INTERRUPT_ENV, "0") or 0)
        steps_done = 0
        try:
            with _Interrupt() as stop:
                while epoch < o["epochs"]:
                    t_epoch = time.perf_counter() - float(partial.get("time_s", 0.0))
                    loss_sum = float(partial.get("loss_sum", 0.0))
                    acc_sum = partial.get("acc_sum")
                    acc_sum = None if acc_sum is None else float(acc_sum)
                    seen = int(partial.get("seen", 0))
                    bar = common.ProgressBar(n, label=f"epoch {epoch + 1}/{o['epochs']}",
                                             enabled=None if self.verbose else False, initial=seen)
                    for xb, yb in self._batches(source, epoch, batch, nb):
                        loss, acc = _step(model, xb, yb)
                        if not math.isfinite(loss):
                            raise common.UserError(
                                f"the loss became {loss} at epoch {epoch + 1}, batch {batch + 1}: "
                                f"lower the learning rate (now {o['lr']})")
                        k = len(yb)
                        loss_sum += loss * k
                        acc_sum = None if acc is None else (acc_sum or 0.0) + acc * k
                        seen += k
                        batch += 1
                        steps_done += 1
                        bar.update(k, loss=loss_sum / seen,
                                   acc=None if acc_sum is None else acc_sum / seen)
                        if interrupt_after and steps_done == interrupt_after:
                            os.kill(os.getpid(), signal.SIGINT)
                        if stop.requested and batch < nb:
                            bar.close()
                            partial = {"loss_sum": loss_sum, "acc_sum": acc_sum, "seen": seen,
                                       "time_s": time.perf_counter() - t_epoch}
                            self._checkpoint(epoch, batch, history, partial,
                                             elapsed_before + time.perf_counter() - t_start)
                            return self._stopped(epoch, batch, nb)
                    bar.close()
                    dt = time.perf_counter() - t_epoch
                    history["loss"].append(loss_sum / max(seen, 1))
                    history["accuracy"].append(None if acc_sum is None else acc_sum / max(seen, 1))
                    if x_val is not None:
                        ev = model.evaluate(x_val, self.y_val, batch_size=256)
                        history["val_loss"].append(float(ev["loss"]))
                        history["val_accuracy"].append(float(ev.get("accuracy", float("nan"))))
                    history["epoch_time_s"].append(dt)
                    history["images_per_s"].append(seen / dt if dt > 0 else None)
                    epoch, batch, partial = epoch + 1, 0, {}
                    self._epoch_line(epoch, history)
                    self._checkpoint(epoch, 0, history, {}, elapsed_before + time.perf_counter() - t_start)
                    if stop.requested and epoch < o["epochs"]:
                        return self._stopped(epoch, 0, nb)
        finally:
            if source is not None:
                source.close()
        self._finish(model, history, elapsed_before + time.perf_counter() - t_start)

    def _augmented_source(self, n):
        from nbcnn import augment

        return augment.online_batches(self.x_train, self.y_train, batch_size=self.opts["batch_size"],
                                      augment=self.opts["augment"], seed=self.opts["seed"],
                                      workers=self.opts["workers"], shuffle=True, to_float=True)

    def _batches(self, source, epoch, start, nb):
        """Batches ``start..nb-1`` of ``epoch`` as float inputs and int64 labels."""
        if source is not None:
            import itertools

            source.set_epoch(epoch)
            yield from itertools.islice(iter(source), start, None)
            return
        order = _epoch_order(self.opts["seed"], epoch, len(self.x_train))
        bs = self.opts["batch_size"]
        for b in range(start, nb):
            idx = order[b * bs:(b + 1) * bs]
            yield self._inputs(self.x_train[idx]), self.y_train[idx]

    # ------------------------------------------------------------------ reporting
    def _banner(self, model, epoch, batch, nb):
        o = self.opts
        params = model.count_params() if hasattr(model, "count_params") else None
        what = f"{o['model']}" + (f" ({params:,} parameters)" if params else "")
        sample = " (bundled sample)" if self.data_info["bundled_sample"] else ""
        self.say(f"Training {what} on {o['dataset']}{sample}: {len(self.x_train):,} train / "
                 f"{len(self.x_val):,} validation / {len(self.x_test):,} test images")
        self.say(f"device {self.device}, {o['optimizer']} lr {o['lr']:g}, batch {o['batch_size']}, "
                 f"{o['epochs']} epochs, seed {o['seed']}"
                 + (f", augment {o['augment']} with {o['workers']} workers" if o["augment"] else ""))
        if self.state is not None:
            where = f"epoch {epoch + 1}, batch {batch + 1}/{nb}" if batch else f"the end of epoch {epoch}"
            self.say(f"Resuming from {o['resume']} at {where}")

    def _epoch_line(self, epoch, h):
        o = self.opts
        parts = [f"epoch {epoch}/{o['epochs']}", f"loss {h['loss'][-1]:.4f}"]
        if h["accuracy"][-1] is not None:
            parts.append(f"acc {h['accuracy'][-1]:.2%}")
        if h["val_loss"]:
            parts.append(f"val_loss {h['val_loss'][-1]:.4f}")
            parts.append("val_acc " + common.style(f"{h['val_accuracy'][-1]:.2%}", bold=True))
        if h["images_per_s"][-1]:
            parts.append(f"{h['images_per_s'][-1]:,.0f} img/s")
        parts.append(f"{h['epoch_time_s'][-1]:.1f} s")
        self.say("  ".join(parts))

    def _train_state(self, epoch, batch, history, partial, elapsed):
        keep = {k: self.opts[k] for k in (*RUN_OPTIONS, "data_dir", "epochs")}
        keep["data_dir"] = str(keep["data_dir"]) if keep["data_dir"] is not None else None
        return {"version": STATE_VERSION, "options": keep, "epoch": epoch, "batch": batch,
                "history": history, "partial": partial, "elapsed_s": elapsed,
                "out": str(self.paths["model"])}

    def _checkpoint(self, epoch, batch, history, partial, elapsed):
        state = self._train_state(epoch, batch, history, partial, elapsed)
        meta = _metadata(self.opts, self.paths, self.data_info, self.class_names, state)
        _save(self.model, self.paths["checkpoint"], meta)

    def _stopped(self, epoch, batch, nb):
        ck = self.paths["checkpoint"]
        where = f"epoch {epoch + 1}, batch {batch}/{nb}" if batch else f"the end of epoch {epoch}"
        common.notice(f"Stopped at {where}. Checkpoint: {ck}")
        common.notice(f"Resume with: nbcnn train --resume {ck}")
        raise click.exceptions.Exit(common.EXIT_INTERRUPTED)

    def _finish(self, model, history, elapsed):
        o = self.opts
        test = None
        if len(self.x_test):
            ev = model.evaluate(self._inputs(self.x_test), self.y_test, batch_size=256)
            test = {"loss": float(ev["loss"]), "accuracy": float(ev.get("accuracy", float("nan"))),
                    "images": int(len(self.x_test))}
        state = self._train_state(o["epochs"], 0, history, {}, elapsed)
        meta = _metadata(o, self.paths, self.data_info, self.class_names, state)
        meta["test"] = test
        _save(model, self.paths["model"], meta)
        ck = self.paths["checkpoint"]
        if ck.exists() and ck != self.paths["model"]:
            ck.unlink()
        curves = None
        if not o["no_plot"]:
            from nbcnn import plots

            try:
                curves = plots.plot_history(history, self.paths["curves"],
                                            title=f"{o['model']} on {o['dataset']}")
            except plots.PlotUnavailable as exc:
                common.notice(f"Notice: no training-curve PNG: {exc}")
        metrics = {
            "model": o["model"], "dataset": o["dataset"], "bundled_sample": self.data_info["bundled_sample"],
            "device": str(self.device), "epochs": o["epochs"], "batch_size": o["batch_size"],
            "optimizer": o["optimizer"], "lr": o["lr"], "momentum": o["momentum"] if o["optimizer"] == "sgd" else None,
            "seed": o["seed"], "augment": o["augment"],
            "train_images": int(len(self.x_train)), "val_images": int(len(self.x_val)),
            "history": history, "test": test, "wall_time_s": elapsed,
            "files": {"model": str(self.paths["model"]), "curves_png": str(curves) if curves else None},
        }
        common.write_json(self.paths["metrics"], metrics)
        if test is not None:
            msg = (f"test accuracy {test['accuracy']:.2%} (error {1 - test['accuracy']:.2%}, "
                   f"loss {test['loss']:.4f}) on {test['images']:,} images")
            common.echo(common.style(msg, bold=True))
        common.echo(f"model: {self.paths['model']}  metrics: {self.paths['metrics']}"
                    + (f"  curves: {curves}" if curves else "") + f"  ({elapsed:.1f} s)")
