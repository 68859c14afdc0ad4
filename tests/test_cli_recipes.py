"""Training recipes of `nbcnn train`: which options a model's recipe fills, and what they compile to."""
from __future__ import annotations

import math

from nbcnn import losses, optim
from nbcnn.cli import recipes
from nbcnn.cli.train import train


def _opts(*args):
    ctx = train.make_context("train", list(args))
    return recipes.apply(ctx, dict(ctx.params))


def test_recipe_fills_only_options_left_at_their_defaults():
    o = _opts("--model", "resnet20", "--dataset", "fashion-mnist")
    assert (o["optimizer"], o["lr"], o["momentum"], o["batch_size"]) == ("nesterov", 0.1, 0.9, 128)
    assert (o["weight_decay"], o["label_smoothing"], o["warmup_epochs"]) == (5e-4, 0.1, 1.0)
    assert o["augment"] == "crop=2,mirror"
    o = _opts("--model", "resnet20", "--dataset", "mnist", "--epochs", "3", "--augment", "none")
    assert o["epochs"] == 3 and o["augment"] == "none" and o["optimizer"] == "nesterov"
    o = _opts("--model", "resnet20", "--dataset", "mnist", "--optimizer", "adamw")
    assert o["optimizer"] == "adamw" and o["lr"] is None and o["augment"] == "crop=2"  # adamw's own rate
    plain = _opts("--model", "lenet5")
    assert plain["optimizer"] == "adam" and plain["weight_decay"] == 0.0 and plain["augment"] is None


def test_compile_args_build_the_recipe():
    o = _opts("--model", "resnet20", "--dataset", "fashion-mnist", "--epochs", "4")
    loss, opt = recipes.compile_args(o, steps_per_epoch=10)
    assert isinstance(loss, losses.CrossEntropy) and loss.label_smoothing == 0.1
    assert isinstance(opt, optim.SGD) and opt.nesterov and opt.momentum == 0.9
    assert opt.weight_decay == 5e-4 and not opt.decay_biases
    lr = opt.lr  # 10 warm-up steps to 0.1, then cosine over the other 30
    assert isinstance(lr, optim.LinearWarmup) and isinstance(lr.after, optim.CosineDecay)
    assert math.isclose(lr(0), 0.01) and math.isclose(lr(9), 0.1) and lr(10) == 0.1
    assert math.isclose(lr(25), 0.05) and lr(40) == 0.0
    one = dict(o, schedule="onecycle", optimizer="adamw", lr=0.01, warmup_epochs=0)
    _, opt = recipes.compile_args(one, steps_per_epoch=10)
    assert isinstance(opt, optim.AdamW) and isinstance(opt.lr, optim.OneCycle) and opt.lr.total_steps == 40
    _, plain = recipes.compile_args(dict(o, optimizer="adam", lr=0.002, weight_decay=None, label_smoothing=None,
                                         warmup_epochs=None, schedule="constant"), steps_per_epoch=10)
    assert type(plain) is optim.Adam and plain.lr == 0.002 and plain.weight_decay == 0.0
