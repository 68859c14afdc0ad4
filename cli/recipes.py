"""Training recipes: the settings ``nbcnn train`` uses for a model unless options say otherwise.

A recipe fills only the options left at their defaults on the command line, so
``nbcnn train --model resnet20 --epochs 5`` keeps the recipe's optimiser,
schedule and augmentation and changes only the epoch count. The optimiser, loss
and schedule for any set of options are built here too (:func:`compile_args`).
Documented in ``docs/zoo_and_recipes.md``.
"""
from __future__ import annotations

import click

# ResNet-20 on 28x28 greyscale images: SGD with Nesterov momentum, lr 0.1 after a linear warm-up
# over the first epoch, cosine to 0; weight decay 5e-4 on conv/dense kernels only; label smoothing
# 0.1; random 2-pixel crops (+ mirror for Fashion-MNIST; digits are not mirror-symmetric).
_RESNET = {"optimizer": "nesterov", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
           "label_smoothing": 0.1, "schedule": "cosine", "warmup_epochs": 1.0, "batch_size": 128,
           "epochs": 15, "augment": {"fashion-mnist": "crop=2,mirror", "mnist": "crop=2", None: "crop=2,mirror"}}
RECIPES = {"resnet20": _RESNET}


def apply(ctx, opts: dict) -> dict:
    """``opts`` with the model's recipe filling every option the user did not give."""
    recipe = RECIPES.get(opts.get("model"))
    if not recipe:
        return opts
    out = dict(opts)
    given = {k for k in ctx.params if ctx.get_parameter_source(k) not in (click.core.ParameterSource.DEFAULT, None)}
    for key, value in recipe.items():
        if key in given or (key in ("lr", "momentum") and "optimizer" in given):
            continue  # the user's value; another optimizer takes its own default rate
        if key == "augment" and out.get("augment") is not None:
            continue
        if isinstance(value, dict):
            value = value.get(opts.get("dataset"), value[None])
        out[key] = value
    return out


def compile_args(opts: dict, steps_per_epoch: int):
    """``(loss, optimizer)`` for ``model.compile`` from the run's options."""
    from nbcnn import losses, optim

    lr = opts["lr"]
    total = opts["epochs"] * steps_per_epoch
    warm = int(round(float(opts.get("warmup_epochs") or 0) * steps_per_epoch))
    schedule = opts["schedule"]
    if schedule == "cosine":  # decays to 0 over the whole run (kept when resumed)
        lr = optim.CosineDecay(lr, max(total - warm, 1))
    elif schedule == "onecycle":  # its own warm-up: the first 30% of the run
        lr = optim.OneCycle(lr, max(total, 2))
        warm = 0
    if warm > 0:
        lr = optim.LinearWarmup(lr, warm)
    wd = float(opts.get("weight_decay") or 0.0)
    kw = {"weight_decay": wd, "decay_biases": False} if wd else {}
    name = opts["optimizer"]
    if name in ("sgd", "nesterov"):
        opt = optim.SGD(lr, momentum=opts["momentum"], nesterov=name == "nesterov" and opts["momentum"] > 0, **kw)
    elif name == "adamw":
        opt = optim.AdamW(lr, **kw)
    elif name == "rmsprop":
        opt = optim.RMSprop(lr, **kw)
    else:
        opt = optim.Adam(lr, **kw)
    loss = losses.CrossEntropy(label_smoothing=float(opts.get("label_smoothing") or 0.0))
    return loss, opt
