"""``nbcnn train``: train a zoo model on MNIST / Fashion-MNIST, CIFAR or a folder of images, resumably.

Where the data comes from and how it is shaped (image folders, CIFAR, their
class names) is :mod:`cli.loading`'s business; this module runs the training.

Training runs through ``Sequential.fit`` (the library's own loop) with a
CLI callback that draws the progress bar, prints a line per epoch and writes
a checkpoint after every epoch. Resuming is exact because everything random
is a function of saved state: the batch order of epoch ``e`` depends only on
the model's seed and ``e``, and the model file stores the weights, the
optimizer state, the dropout stream and ``model.progress`` (epoch, batch and
the partial epoch's running sums), which ``fit(initial_epoch=,
initial_batch=)`` continues from.

``Ctrl-C`` sets a flag; the current batch finishes, ``model.stop_training``
ends ``fit``, a checkpoint is written atomically and the command exits with
code 130. A second ``Ctrl-C`` aborts at once (the checkpoint of the last
finished epoch is still there). ``SIGTERM`` (schedulers, ``docker stop``) is
handled the same way and exits with code 143.

A run holds ``OUT.lock`` (see ``nbcnn._lockfile``) from before it touches any
file under ``--out`` until it ends, so a second run with the same ``--out``
is refused instead of overwriting the first one's checkpoint.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import click
import numpy as np

from nbcnn.callbacks import Callback

from . import common, loading, recipes

STATE_KEY = "nbcnn_train"
STATE_VERSION = 1

# Defaults: the recipe that takes LeNet-5 below the paper's 0.95% MNIST error
# (README "Results"): ReLU + max-pooling, Adam 0.002 with cosine decay, 15 epochs, batch 64.
DEFAULT_LR = {"sgd": 0.05, "nesterov": 0.05, "adam": 0.002, "adamw": 0.002, "rmsprop": 0.001}
LENET5_DEFAULTS = {"activation": "relu", "pooling": "max"}

# Options that define the run: a resumed run must use the same values.
RUN_OPTIONS = ("model", "activation", "pooling", "dataset", "batch_size", "optimizer", "lr", "schedule",
               "momentum", "seed", "val_split", "train_size", "augment", "image_size", "color", "test_split",
               "weight_decay", "label_smoothing", "warmup_epochs")
# Options a resumed run takes from the checkpoint unless given again (they do not change the weights).
SOFT_OPTIONS = ("epochs", "test_size", "no_plot", "workers")

# Testing hook: send ourselves SIGINT after this many training batches (a real
# Ctrl-C, at a reproducible point). Not a user option.
_INTERRUPT_ENV = "NBCNN_TEST_INTERRUPT_AFTER"


EXIT_TERMINATED = 143  # 128 + SIGTERM, what shells and schedulers expect


class _Interrupt:
    """First Ctrl-C or SIGTERM: ask the loop to stop after this batch. Second: abort now."""

    def __init__(self):
        self.requested = False
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave the signals alone
                pass
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum
        what = "Terminated (SIGTERM): stopping" if signum == signal.SIGTERM else "Stopping"
        common.notice(f"\n{what} after this batch and saving a checkpoint "
                      "(press Ctrl-C again to abort without saving)...")

    @property
    def exit_code(self) -> int:
        return EXIT_TERMINATED if self.signum == signal.SIGTERM else common.EXIT_INTERRUPTED

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            if previous is not None:
                signal.signal(sig, previous)
        return False


def _paths(out: Path) -> dict:
    base = out.with_suffix("") if out.suffix else out
    return {"model": out,
            "checkpoint": Path(f"{base}.ckpt{out.suffix}"),
            "metrics": Path(f"{base}.metrics.json"),
            "curves": Path(f"{base}.curves.png")}


def _model_path_for(resume: Path) -> Path:
    """Where a resumed run writes its model: ``x.ckpt.nbcnn`` -> ``x.nbcnn``; a model file -> itself."""
    resume = Path(resume)
    stem, suffix = (resume.name[:-len(resume.suffix)], resume.suffix) if resume.suffix else (resume.name, "")
    if stem.endswith(".ckpt"):
        return resume.with_name(stem[:-len(".ckpt")] + suffix)
    return resume


def _resolve_options(ctx, opts: dict, state: dict | None) -> dict:
    """Merge command-line options with a checkpoint's run settings (the checkpoint wins;
    an explicitly different value is an error, since it would not continue the same run)."""
    if state is None:
        return opts
    saved = state["options"]
    merged = dict(opts)
    for key in RUN_OPTIONS:
        explicit = ctx.get_parameter_source(key) not in (click.core.ParameterSource.DEFAULT, None)
        if explicit and opts[key] is not None and _differs(opts[key], saved.get(key)):
            flag = "--" + key.replace("_", "-")
            raise common.UserError(f"the checkpoint was trained with {flag} {saved.get(key)}; resuming with "
                                   f"{opts[key]} would not continue the same run (drop {flag})")
        merged[key] = saved.get(key)
    if opts.get("data_dir") is None and saved.get("data_dir"):
        merged["data_dir"] = Path(saved["data_dir"])
    for key in SOFT_OPTIONS:
        if key in saved and ctx.get_parameter_source(key) in (click.core.ParameterSource.DEFAULT, None):
            merged[key] = saved[key]
    return merged


def _differs(a, b) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return loading.normalise_zoo_name(a) != loading.normalise_zoo_name(b)
    return a != b


def _build_model(opts, input_shape, num_classes, device, steps_per_epoch, adapt_data=None):
    import nbcnn

    nbcnn.seed(opts["seed"])
    try:
        with nbcnn.using_device(device):
            model = loading.build_zoo_model(
                opts["model"], strict=("activation", "pooling"), num_classes=num_classes,
                input_shape=input_shape, device=device, seed=opts["seed"], activation=opts["activation"],
                pooling=opts["pooling"])
    except ValueError as exc:
        c, h, w = input_shape
        raise common.UserError(f"model {opts['model']} cannot take {opts['dataset']}'s {c}x{h}x{w} images "
                               f"({' '.join(str(exc).split())}); for 28x28 images use lenet5 or small_vgg") from None
    shape = loading.model_input_shape(model)
    if shape is not None and tuple(shape) != tuple(input_shape):
        raise common.UserError(
            f"model {opts['model']} takes inputs of shape {tuple(shape)} but {opts['dataset']} images are "
            f"{tuple(input_shape)}; pick a model for {input_shape[1]}x{input_shape[2]} images (e.g. lenet5)")
    if adapt_data is not None:  # colour data: per-channel normalisation inside the model
        model = loading.with_input_normalization(model, adapt_data, device)
    if getattr(model, "device", device) != device and hasattr(model, "to"):
        model.to(device)
    loss, opt = recipes.compile_args(opts, steps_per_epoch)
    model.compile(loss=loss, optimizer=opt, metrics=["accuracy"])
    return model


EPILOG = common.examples(
    "nbcnn train                                   # LeNet-5 on MNIST, 15 epochs",
    "nbcnn train --activation tanh --pooling avg   # the 1998 paper's LeNet-5",
    "nbcnn train --epochs 2 --train-size 5000      # a quick try",
    "nbcnn train --dataset fashion-mnist --model small_vgg --epochs 15 --out fashion.nbcnn",
    "nbcnn train --optimizer sgd --lr 0.05 --batch-size 128 --seed 1",
    "nbcnn train --augment rotate=10,crop=2,noise=0.05 --workers 2",
    "nbcnn train --resume lenet5-mnist.ckpt.nbcnn  # continue after Ctrl-C",
    "nbcnn train --resume lenet5-mnist.nbcnn --epochs 20   # train a finished model longer",
    "mpiexec -n 2 nbcnn train --distributed --batch-size 32   # 2 ranks, global batch 64")


@click.command(epilog=EPILOG)
@click.option("--model", default="lenet5", show_default=True,
              help="Zoo model to train (see `nbcnn summary NAME`).")
@click.option("--activation", type=click.Choice(["tanh", "relu", "sigmoid"]), default=None,
              help="LeNet-5's activation [default: relu; the 1998 paper's is tanh].")
@click.option("--pooling", type=click.Choice(["avg", "max"]), default=None,
              help="LeNet-5's pooling [default: max; the 1998 paper's is avg].")
@click.option("--dataset", type=click.Choice(loading.DATASETS, case_sensitive=False), default="mnist",
              show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with the data: IDX files (e.g. written by `nbcnn augment`), CIFAR binary batches, "
                   "or images in one sub-folder per class (train/ + test/ or val/, or one level).")
@click.option("--image-size", type=click.IntRange(min=1, max=4096), nargs=2, default=None, metavar="H W",
              callback=lambda ctx, p, v: list(v) if v else None,
              help="Resize folder images to H x W [default: the model's input, else the median size].")
@click.option("--color", type=click.Choice(["rgb", "grayscale"]), default=None,
              help="Channels for folder images [default: rgb; the model's for a resumed run].")
@click.option("--test-split", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="One level of class folders: the fraction of every class held out for the test "
                   "accuracy (seeded) [default: 0.2].")
@click.option("--strict", is_flag=True, help="An unreadable image file is an error (default: skipped, "
                                             "with a warning).")
@click.option("--epochs", type=click.IntRange(min=1), default=15, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "sgd", "nesterov", "adamw", "rmsprop"]), default="adam",
              show_default=True, help="nesterov = SGD with Nesterov momentum; a model's recipe may choose another "
                                      "(resnet20: nesterov; see docs/zoo_and_recipes.md).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Learning rate [default: 0.002 for adam/adamw, 0.05 for sgd/nesterov, 0.001 for rmsprop].")
@click.option("--schedule", type=click.Choice(["constant", "cosine", "onecycle"]), default="cosine",
              show_default=True, help="Learning-rate schedule: cosine decays to 0 over all epochs; onecycle "
                                      "rises to --lr over the first 30% of the run, then anneals.")
@click.option("--warmup-epochs", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Linear learning-rate warm-up over this many epochs before the schedule.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight decay on conv and dense kernels (biases and batch-norm parameters are exempt); "
                   "decoupled for adamw.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Cross-entropy against (1 - e) * one-hot + e / classes.")
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
              help="Online augmentation, e.g. rotate=10,crop=2,noise=0.05; keys: rotate, scale, shear, "
                   "translate, crop, mirror, vflip, color, jitter, cutout, noise.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Worker processes for --augment (0 = in this process).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Model file to write [default: MODEL-DATASET.nbcnn]; the metrics JSON, "
                   "curves PNG and checkpoint go beside it.")
@click.option("--resume", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Continue from a checkpoint (or a finished model file, with a larger --epochs).")
@click.option("--no-plot", is_flag=True, help="Do not write the training-curve PNG.")
@click.option("--distributed", is_flag=True,
              help="Data-parallel training over MPI: run as `mpiexec -n K nbcnn train --distributed ...`; "
                   "--batch-size is per rank, rank 0 writes the files.")
@click.option("--sync-batchnorm", is_flag=True,
              help="With --distributed: batch norm uses the global batch's statistics (default: each rank's).")
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
    trainer = Trainer(ctx, opts)
    try:
        trainer.run()
    finally:
        trainer.release()


class _CliCallback(Callback):
    """Progress bar, epoch lines, per-epoch checkpoints and Ctrl-C for ``fit``."""

    def __init__(self, trainer, stop: _Interrupt, steps: int):
        super().__init__()
        self.t = trainer
        self.stop = stop
        self.steps = steps
        self.bar = None
        self.batches_run = self.step = self.seen = 0
        self.interrupt_after = int(os.environ.get(_INTERRUPT_ENV, "0") or 0)

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()

    def on_epoch_begin(self, epoch, logs=None):
        from nbcnn.progress import ProgressBar

        prog = self.model.progress
        self.step = int(prog.get("batch", 0)) if prog.get("epoch") == epoch else 0
        self.bar = ProgressBar(self.steps, prefix=f"epoch {epoch + 1}/{self.t.opts['epochs']}",
                               enabled=None if self.t.verbose else False)
        self.seen = 0
        if self.bar.enabled and self.batches_run == 0:
            # Something to look at while the first batch runs (a cold kernel cache compiles for seconds).
            self.bar.stream.write(f"{self.bar.prefix} - starting ...")
            self.bar.stream.flush()

    def on_batch_end(self, batch, logs=None):
        logs = logs or {}
        self.batches_run += 1
        self.step += 1
        size = int(logs.get("size", 0))
        self.seen += size
        if self.bar is not None:
            metrics = {"loss": logs.get("loss"), "acc": logs.get("accuracy")}
            self.bar.update(self.step, items=size, **{k: v for k, v in metrics.items() if v is not None})
        if self.interrupt_after and self.batches_run == self.interrupt_after:
            os.kill(os.getpid(), signal.SIGINT)
        if self.stop.requested:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.close()
        self.t.record_epoch(epoch, logs or {}, self.seen)


def _distributed_comm(opts):
    """The MPI communicator for ``--distributed`` (None without it); a clear error without MPI."""
    if not opts.get("distributed"):
        if opts.get("sync_batchnorm"):
            raise common.UserError("--sync-batchnorm needs --distributed")
        return None
    try:
        from nbcnn import distributed
        comm = distributed.init(sync_batchnorm=bool(opts.get("sync_batchnorm")))
    except ImportError as exc:
        raise common.UserError(str(exc)) from None
    if comm.size == 1:
        common.notice("Notice: --distributed with a single MPI rank (start it as `mpiexec -n K nbcnn train "
                      "--distributed ...` to train on K ranks)")
    return comm


def validation_cut(n: int, val_split: float, group: int = 1) -> int:
    """Where the held-out tail starts (Keras convention: the last fraction, not shuffled).

    In a set written by ``nbcnn augment`` each source image sits next to its
    ``group - 1`` distorted copies; the tail then holds whole groups, so no
    validation image is a distorted twin of a training image.
    """
    n_val = int(round(n * val_split))
    if group > 1 and n_val % group:
        n_val += group - n_val % group
    return n - n_val


class Trainer:
    """One ``nbcnn train`` invocation: settings, data, model, the loop, the files."""

    def __init__(self, ctx, opts):
        self.state = None
        self.resumed_model = None
        self.comm = _distributed_comm(opts)  # None unless --distributed
        self.is_root = self.comm is None or self.comm.is_root
        if self.comm is not None:  # rank r trains on GPU r % n_gpus (when there are GPUs)
            from nbcnn.distributed import local_device

            opts["device"] = local_device(opts["device"] or os.environ.get("NBCNN_DEVICE"), self.comm.rank)
            opts["batch_size"] *= self.comm.size  # the run is defined by its global batch
        self.device = loading.resolve_device(opts["device"])
        if opts["resume"] is not None:
            self.resumed_model = loading.load_model_file(opts["resume"], self.device)
            state = loading.model_metadata(self.resumed_model).get(STATE_KEY)
            if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
                raise common.UserError(f"{opts['resume']} has no nbcnn training state: only files written "
                                       "by `nbcnn train` can be resumed")
            self.state = state
        opts = _resolve_options(ctx, opts, self.state)
        if self.comm is not None and opts["batch_size"] % self.comm.size:
            raise common.UserError(f"the checkpoint's global batch {opts['batch_size']} does not split over "
                                   f"{self.comm.size} ranks; resume with a number of ranks that divides it")
        kind = loading.data_kind(opts["dataset"], opts["data_dir"])
        if kind != "idx":
            opts["dataset"] = kind
        if self.state is None and ctx.get_parameter_source("model") in (click.core.ParameterSource.DEFAULT, None):
            opts["model"] = loading.default_model(kind)
        opts["model"] = loading.normalise_zoo_name(opts["model"])
        opts["dataset"] = opts["dataset"].lower()
        if self.state is None:  # a model's recipe fills the options not given (a resumed run keeps its own)
            opts = recipes.apply(ctx, opts)
        if opts["lr"] is None:
            opts["lr"] = DEFAULT_LR[opts["optimizer"]]
        if opts["model"] == "lenet5":
            for key, value in LENET5_DEFAULTS.items():
                opts[key] = opts[key] or value
        if opts["seed"] is None:
            opts["seed"] = int(np.random.SeedSequence().entropy % (2**31))
        if self.comm is not None:  # every rank draws the root's seed
            opts["seed"] = int(self.comm.bcast_json(opts["seed"], what="the seed"))
        if opts["augment"] is not None:
            from nbcnn import augment

            augment.parse_spec(opts["augment"])  # a bad spec fails here, before any work
        self.opts = opts
        data_name = (Path(opts["data_dir"]).resolve().name or "images") if kind == "folder" else opts["dataset"]
        out = opts["out"] or (_model_path_for(opts["resume"]) if opts["resume"] is not None
                              else Path(f"{opts['model']}-{data_name}.nbcnn"))
        self.paths = _paths(Path(out))
        folder = self.paths["model"].parent
        try:  # fail now, not after hours of training, when the output folder cannot be made
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise common.UserError(f"cannot create the folder for --out {out}: {exc.strerror or exc}") from None
        if not os.access(folder, os.W_OK):
            raise common.UserError(f"cannot write the model to {folder}: permission denied (pass --out PATH)")
        self.verbose = not opts["quiet"] and self.is_root
        self.lock = None
        if self.is_root:  # before any file under --out is read for replacement or written
            from nbcnn._lockfile import LockHeld, PathLock

            try:
                self.lock = PathLock(self.paths["model"], what="nbcnn train").acquire()
            except LockHeld as exc:
                h = exc.holder
                raise common.UserError(
                    f"another `nbcnn train` (pid {h.get('pid', '?')} on {h.get('host', '?')}) is writing "
                    f"{self.paths['model']}; wait for it or pass another --out (lock: {exc.path})") from None
            except OSError as exc:
                raise common.UserError(f"cannot create the lock file {self.paths['model']}.lock: "
                                       f"{exc.strerror or exc}") from None
        ck = self.paths["checkpoint"]
        if self.is_root and ck.exists() and (opts["resume"] is None or Path(opts["resume"]).resolve() != ck.resolve()):
            common.notice(f"Notice: {ck} (an interrupted run) will be replaced; to continue that run instead: "
                          f"nbcnn train --resume {ck}")
        if self.state is not None:
            self.history = {k: list(v) for k, v in self.state["history"].items()}
            self.elapsed_before = float(self.state.get("elapsed_s", 0.0))
        else:
            self.history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": [],
                            "epoch_time_s": [], "images_per_s": []}
            self.elapsed_before = 0.0
        self.t_start = time.perf_counter()

    def release(self):
        if getattr(self, "lock", None) is not None:
            self.lock.release()
            self.lock = None

    def say(self, text=""):
        if self.verbose:
            common.echo(text)

    # ------------------------------------------------------------------ data
    def _load_data(self):
        o = self.opts
        (x_tr, y_tr), (x_te, y_te), self.data_info = loading.load_dataset(
            o["dataset"], o["data_dir"], color=o["color"], seed=o["seed"],
            test_split=o["test_split"], strict=o["strict"], workers=o["workers"],
            image_size=o["image_size"] or loading.fixed_input_size(o["model"]))
        if self.data_info.get("image_size"):  # recorded, so a resumed run decodes the same way
            o["image_size"], o["color"] = list(self.data_info["image_size"]), self.data_info["color"]
        x_tr, x_te = loading.as_nchw_uint8(x_tr), loading.as_nchw_uint8(x_te)
        y_tr, y_te = np.asarray(y_tr).astype(np.int64), np.asarray(y_te).astype(np.int64)
        if o["train_size"] is not None:
            x_tr, y_tr = x_tr[:o["train_size"]], y_tr[:o["train_size"]]
        if o["test_size"] is not None:
            x_te, y_te = x_te[:o["test_size"]], y_te[:o["test_size"]]
        own_val = self.data_info.get("validation")
        cut = len(x_tr) if own_val else validation_cut(len(x_tr), o["val_split"],
                                                       int(self.data_info.get("group_size", 1)))
        if cut < 1:
            raise common.UserError(f"--val-split {o['val_split']} leaves no training images out of {len(x_tr)}")
        if loading.is_streamed(x_tr):
            self.x_train, self.x_val = x_tr.view(slice(0, cut)), loading.in_memory(x_tr.view(slice(cut, None)))
        else:
            self.x_train, self.x_val = x_tr[:cut], x_tr[cut:]
        self.y_train, self.y_val = y_tr[:cut], y_tr[cut:]
        if own_val:
            self.x_val, self.y_val = loading.in_memory(own_val[0]), np.asarray(own_val[1]).astype(np.int64)
        self.x_test, self.y_test = loading.in_memory(x_te), y_te
        names = self.data_info.get("class_names") or loading.dataset_classes(o["dataset"])
        if self.data_info.get("class_names") and self.verbose:
            for line in loading.describe_classes(names, {"train": self.y_train, "validation": self.y_val,
                                                         "test": self.y_test}):
                self.say(line)
        self.num_classes = max(int(max(y_tr.max(initial=0), y_te.max(initial=0)) + 1), len(names or []))
        self.class_names = names or [str(i) for i in range(self.num_classes)]

    # ------------------------------------------------------------------ run
    def run(self):
        o = self.opts
        self._load_data()
        input_shape = tuple(self.x_train.shape[1:])
        steps = -(-len(self.x_train) // o["batch_size"])
        if self.resumed_model is not None:
            model = self.resumed_model
            if getattr(model, "device", self.device) != self.device:
                model.to(self.device)
            progress = dict(getattr(model, "progress", None) or {})
            epoch, batch = int(progress.get("epoch", self.state["epoch"])), int(progress.get("batch", 0))
            if getattr(model, "optimizer", None) is None:
                raise common.UserError(f"{o['resume']} was saved without optimizer state; it cannot be resumed")
        else:
            model = _build_model(o, input_shape, self.num_classes, self.device, steps,
                                 adapt_data=self.x_train if o["dataset"] in ("folder", *loading.CIFAR) else None)
            epoch, batch = 0, 0
        self.model = model
        self._banner(model, epoch, batch, steps)
        if epoch >= o["epochs"] and not (epoch == o["epochs"] and self._resuming_checkpoint()):
            # A finished model (or a checkpoint past --epochs): nothing to train, nothing is rewritten.
            common.echo(f"Already trained for {epoch} epochs; nothing to do (files left as they are). "
                        f"Pass --epochs N (N > {epoch}) to train longer.")
            return
        if self.state is not None:
            self._check_schedule_left(model, epoch, batch, steps)
        source = self._augmented_source() if o["augment"] or loading.is_streamed(self.x_train) else None
        try:
            with _Interrupt() as stop:
                cbk = _CliCallback(self, stop, steps)
                if source is not None:
                    source.set_epoch(epoch)
                    x, y = source, None
                else:
                    x, y = self.x_train, self.y_train
                val = (self.x_val, self.y_val) if len(self.x_val) else None
                if epoch < o["epochs"]:
                    model.fit(x, y, epochs=o["epochs"], batch_size=o["batch_size"] // self.ranks,
                              validation_data=val, shuffle=True, callbacks=[cbk], verbose=0,
                              initial_epoch=epoch, initial_batch=batch, distributed=self.comm)
                if stop.requested or (self.comm is not None and model.stop_training):
                    prog = model.progress
                    if int(prog.get("epoch", 0)) < o["epochs"]:
                        self._checkpoint()
                        return self._stopped(int(prog["epoch"]), int(prog.get("batch", 0)), steps,
                                             stop.exit_code)
        except FloatingPointError as exc:
            raise common.UserError(f"{exc} (now --lr {o['lr']})") from None
        finally:
            if source is not None:
                source.close()
        self._finish(model)

    def _augmented_source(self):
        from nbcnn import loader

        return loader.online_batches(self.x_train, self.y_train, batch_size=self.opts["batch_size"],
                                     augment=self.opts["augment"] or "", seed=self.opts["seed"],
                                     workers=self.opts["workers"], shuffle=True, to_float=False)

    def record_epoch(self, epoch, logs, seen):
        h = self.history
        h["loss"].append(float(logs.get("loss", float("nan"))))
        h["accuracy"].append(float(logs["accuracy"]) if "accuracy" in logs else None)
        if "val_loss" in logs:
            h["val_loss"].append(float(logs["val_loss"]))
            h["val_accuracy"].append(float(logs.get("val_accuracy", float("nan"))))
        dt = float(logs.get("time", 0.0))
        h["epoch_time_s"].append(dt)
        h["images_per_s"].append(seen / dt if dt > 0 else None)  # this session's part of the epoch
        self._epoch_line(epoch + 1)
        self._checkpoint()

    # ------------------------------------------------------------------ reporting
    def _banner(self, model, epoch, batch, steps):
        o = self.opts
        params = model.count_params() if hasattr(model, "count_params") else None
        variant = [f"{o['activation']}" if o.get("activation") else "",
                   f"{o['pooling']}-pooling" if o.get("pooling") else "",
                   f"{params:,} parameters" if params else ""]
        variant = ", ".join(v for v in variant if v)
        what = f"{o['model']}" + (f" ({variant})" if variant else "")
        sample = " (bundled sample)" if self.data_info["bundled_sample"] else ""
        self.say(f"Training {what} on {o['dataset']}{sample}: {len(self.x_train):,} train / "
                 f"{len(self.x_val):,} validation / {len(self.x_test):,} test images")
        lr = f"lr {o['lr']:g}" + {"cosine": " with cosine decay", "onecycle": " one-cycle"}.get(o["schedule"], "")
        if o.get("warmup_epochs"):
            lr += f" after {o['warmup_epochs']:g} warm-up epochs"
        if o.get("weight_decay"):
            lr += f", weight decay {o['weight_decay']:g}"
        if o.get("label_smoothing"):
            lr += f", label smoothing {o['label_smoothing']:g}"
        batch_desc = (f"batch {o['batch_size']}" if self.comm is None else
                      f"batch {o['batch_size'] // self.ranks} per rank x {self.ranks} ranks = global batch "
                      f"{o['batch_size']} (the learning rate is not rescaled for it; set --lr)")
        self.say(f"device {self.device}, {o['optimizer']} {lr}, {batch_desc}, "
                 f"{o['epochs']} epoch{'s' if o['epochs'] != 1 else ''}, seed {o['seed']}"
                 + (f", augment {o['augment']} with {o['workers']} workers" if o["augment"] else ""))
        if self.state is not None:
            where = f"epoch {epoch + 1} after batch {batch}/{steps}" if batch else f"the end of epoch {epoch}"
            self.say(f"Resuming from {o['resume']} at {where}")
            decay_steps = getattr(getattr(model.optimizer, "lr", None), "decay_steps", None)
            if decay_steps:
                planned = -(-int(decay_steps) // steps)
                if o["epochs"] > planned:
                    common.notice(f"Notice: the learning-rate schedule of this run ends at epoch {planned}; "
                                  f"epochs {planned + 1}-{o['epochs']} train with its final rate")

    def _epoch_line(self, epoch):
        h = self.history
        parts = [f"epoch {epoch}/{self.opts['epochs']}", f"loss {h['loss'][-1]:.4f}"]
        if h["accuracy"][-1] is not None:
            parts.append(f"acc {h['accuracy'][-1]:.2%}")
        if h["val_loss"]:
            parts.append(f"val_loss {h['val_loss'][-1]:.4f}")
            parts.append("val_acc " + common.style(f"{h['val_accuracy'][-1]:.2%}", bold=True))
        if h["images_per_s"][-1]:
            parts.append(f"{h['images_per_s'][-1]:,.0f} img/s")
        parts.append(f"{h['epoch_time_s'][-1]:.1f} s")
        self.say("  ".join(parts))

    def _elapsed(self):
        return self.elapsed_before + time.perf_counter() - self.t_start

    def _metadata(self, extra=None) -> dict:
        keep = {k: self.opts[k] for k in (*RUN_OPTIONS, *SOFT_OPTIONS)}
        keep["data_dir"] = str(self.opts["data_dir"]) if self.opts["data_dir"] is not None else None
        state = {"version": STATE_VERSION, "options": keep, "epoch": int(self.model.progress.get("epoch", 0)),
                 "history": self.history, "elapsed_s": self._elapsed()}
        meta = {"dataset": self.opts["dataset"], "class_names": self.class_names,
                "bundled_sample": self.data_info["bundled_sample"], STATE_KEY: state}
        meta.update(extra or {})
        return meta

    @property
    def ranks(self) -> int:
        return 1 if self.comm is None else self.comm.size

    def _checkpoint(self):
        if not self.is_root:
            return
        self.model.save(self.paths["checkpoint"], metadata=self._metadata())

    def _resuming_checkpoint(self) -> bool:
        resume = self.opts.get("resume")
        return resume is not None and Path(resume).resolve() == self.paths["checkpoint"].resolve()

    def _check_schedule_left(self, model, epoch, batch, steps):
        """Refuse to train on when the saved learning-rate schedule has reached 0 for good (a finished
        cosine run): every further step would leave the weights as they are."""
        opt = getattr(model, "optimizer", None)
        sched = getattr(opt, "lr", None)
        if opt is None or not callable(sched):
            return
        first = int(getattr(opt, "iterations", 0))
        left = max(1, (self.opts["epochs"] - epoch) * steps - batch)
        probes = {first + (left - 1) * k // 32 for k in range(33)}
        try:
            if any(float(sched(i)) != 0.0 for i in probes):
                return
        except (TypeError, ValueError):
            return
        decay = getattr(sched, "decay_steps", None)
        ended = f" at epoch {-(-int(decay) // steps)}" if decay else ""
        raise common.UserError(
            f"the learning-rate schedule of {self.opts['resume']} ended{ended} with rate 0, so epochs "
            f"{epoch + 1}-{self.opts['epochs']} would not change the weights; train a new model with "
            f"--epochs {self.opts['epochs']} or fine-tune this one with `nbcnn transfer` (files left as they are)")

    def _stopped(self, epoch, batch, steps, code=common.EXIT_INTERRUPTED):
        ck = self.paths["checkpoint"]
        where = f"epoch {epoch + 1} after batch {batch}/{steps}" if batch else f"the end of epoch {epoch}"
        if self.is_root:
            common.notice(f"Stopped at {where}. Checkpoint: {ck}")
            common.notice(f"Resume with: nbcnn train --resume {ck}")
        raise click.exceptions.Exit(code)

    def _finish(self, model):
        o = self.opts
        test = None
        if len(self.x_test):
            ev = model.evaluate(self.x_test, self.y_test, batch_size=256, distributed=self.comm)
            test = {"loss": float(ev["loss"]), "accuracy": float(ev.get("accuracy", float("nan"))),
                    "images": int(len(self.x_test))}
        elapsed = self._elapsed()
        if not self.is_root:  # one set of output files: rank 0's
            return
        model.save(self.paths["model"], metadata=self._metadata({"test": test}))
        ck = self.paths["checkpoint"]
        if ck.exists() and ck.resolve() != self.paths["model"].resolve():
            ck.unlink()
        curves = None
        if not o["no_plot"] and self.history["loss"]:
            from nbcnn import plots

            try:
                curves = plots.plot_history(self.history, self.paths["curves"],
                                            title=f"{o['model']} on {o['dataset']}")
            except plots.PlotUnavailable as exc:
                common.notice(f"Notice: no training-curve PNG: {exc}")
        metrics = {
            "model": o["model"], "dataset": o["dataset"], "bundled_sample": self.data_info["bundled_sample"],
            "device": str(self.device), "epochs": o["epochs"], "batch_size": o["batch_size"],
            "optimizer": o["optimizer"], "lr": o["lr"],
            "momentum": o["momentum"] if o["optimizer"] in ("sgd", "nesterov") else None,
            "weight_decay": o.get("weight_decay"), "label_smoothing": o.get("label_smoothing"),
            "warmup_epochs": o.get("warmup_epochs"), "schedule": o.get("schedule"),
            "seed": o["seed"], "augment": o["augment"], "parameters": model.count_params(),
            "ranks": self.ranks, "batch_size_per_rank": o["batch_size"] // self.ranks,
            "train_images": int(len(self.x_train)), "val_images": int(len(self.x_val)),
            "history": self.history, "test": test, "wall_time_s": elapsed,
            "files": {"model": str(self.paths["model"]), "curves_png": str(curves) if curves else None},
        }
        common.write_json(self.paths["metrics"], metrics)
        if test is not None:
            msg = (f"test accuracy {test['accuracy']:.2%} (error {1 - test['accuracy']:.2%}, "
                   f"loss {test['loss']:.4f}) on {test['images']:,} images")
            common.echo(common.style(msg, bold=True))
        common.echo(f"model: {self.paths['model']}  metrics: {self.paths['metrics']}"
                    + (f"  curves: {curves}" if curves else "") + f"  ({elapsed:.1f} s)")
