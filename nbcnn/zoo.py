"""The classical model zoo: LeNet-5, AlexNet, VGG-16/19, a small VGG for 28x28 images, and
a small conv net (the default for users' image folders).

Models come back uncompiled and unallocated: defining VGG-16 (138 M
parameters) or printing its summary costs milliseconds; weights are drawn (in
float32, in about a second) at the first forward pass, ``compile`` or
``get_weights``. All convs use He initialisation for ReLU nets and Glorot for
tanh nets. Outputs are logits; ``predict`` returns softmax probabilities.
"""
from __future__ import annotations

from .layers import AvgPool2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D
from .models import Sequential

__all__ = ["lenet5", "alexnet", "vgg16", "vgg19", "small_vgg", "small_cnn", "get", "MODELS"]


def lenet5(num_classes: int = 10, activation: str = "tanh", pooling: str = "avg",
           input_shape=(1, 28, 28), device="auto", seed=None) -> Sequential:
    """LeNet-5 for 28x28 inputs: 61,706 parameters with 10 classes.

    conv 6@5x5 (padding 2, so 28x28 stays 28x28 like the paper's 32x32 input) -> pool 2 ->
    conv 16@5x5 -> pool 2 -> dense 120 -> 84 -> classes. This is the common fully connected
    variant; LeCun et al. (1998) connect C3 to only some S2 maps (and use trainable
    subsampling and an RBF output), which gives about 60,000 parameters.

    ``activation``: ``"tanh"`` (the paper) or ``"relu"``; ``pooling``: ``"avg"`` (the paper's
    subsampling) or ``"max"``.
    """
    if activation not in ("tanh", "relu"):
        raise ValueError(f"activation must be 'tanh' or 'relu', got {activation!r}")
    if pooling not in ("avg", "max"):
        raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}")
    Pool = AvgPool2D if pooling == "avg" else MaxPool2D
    init = "glorot_uniform" if activation == "tanh" else "he_normal"
    return Sequential([
        Conv2D(6, 5, padding=2, activation=activation, kernel_initializer=init, input_shape=input_shape),
        Pool(2),
        Conv2D(16, 5, activation=activation, kernel_initializer=init),
        Pool(2),
        Flatten(),
        Dense(120, activation=activation, kernel_initializer=init),
        Dense(84, activation=activation, kernel_initializer=init),
        Dense(num_classes),
    ], device=device, name="lenet5", seed=seed)


def alexnet(num_classes: int = 1000, input_shape=(3, 227, 227), dropout: float = 0.5, device="auto",
            seed=None) -> Sequential:
    """AlexNet (Krizhevsky et al. 2012), single tower (ungrouped), on 3x227x227: 62,378,344 parameters."""
    return Sequential([
        Conv2D(96, 11, stride=4, activation="relu", input_shape=input_shape),
        MaxPool2D(3, stride=2),
        Conv2D(256, 5, padding=2, activation="relu"),
        MaxPool2D(3, stride=2),
        Conv2D(384, 3, padding=1, activation="relu"),
        Conv2D(384, 3, padding=1, activation="relu"),
        Conv2D(256, 3, padding=1, activation="relu"),
        MaxPool2D(3, stride=2),
        Flatten(),
        Dense(4096, activation="relu", kernel_initializer="he_normal"),
        Dropout(dropout),
        Dense(4096, activation="relu", kernel_initializer="he_normal"),
        Dropout(dropout),
        Dense(num_classes),
    ], device=device, name="alexnet", seed=seed)


def _vgg(blocks, num_classes, input_shape, dropout, name, device, seed) -> Sequential:
    layers = []
    for filters, n in blocks:
        for _ in range(n):
            kw = {"input_shape": input_shape} if not layers else {}
            layers.append(Conv2D(filters, 3, padding=1, activation="relu", **kw))
        layers.append(MaxPool2D(2))
    layers += [Flatten(),
               Dense(4096, activation="relu", kernel_initializer="he_normal"), Dropout(dropout),
               Dense(4096, activation="relu", kernel_initializer="he_normal"), Dropout(dropout),
               Dense(num_classes)]
    return Sequential(layers, device=device, name=name, seed=seed)


def vgg16(num_classes: int = 1000, input_shape=(3, 224, 224), dropout: float = 0.5, device="auto",
          seed=None) -> Sequential:
    """VGG-16 (Simonyan & Zisserman 2014, configuration D) on 3x224x224: 138,357,544 parameters."""
    return _vgg([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], num_classes, input_shape, dropout,
                "vgg16", device, seed)


def vgg19(num_classes: int = 1000, input_shape=(3, 224, 224), dropout: float = 0.5, device="auto",
          seed=None) -> Sequential:
    """VGG-19 (configuration E) on 3x224x224: 143,667,240 parameters."""
    return _vgg([(64, 2), (128, 2), (256, 4), (512, 4), (512, 4)], num_classes, input_shape, dropout,
                "vgg19", device, seed)


def small_vgg(num_classes: int = 10, input_shape=(1, 28, 28), widths=(16, 32), convs_per_block: int = 2,
              dense: int = 128, dropout: float = 0.3, device="auto", seed=None) -> Sequential:
    """A small VGG-style net for 28x28 images (Fashion-MNIST): blocks of 3x3 'same' ReLU convs + 2x2 max pool.

    Default: [conv 16, conv 16, pool] [conv 32, conv 32, pool] -> dense 128 -> dropout 0.3 -> classes
    (218,490 parameters, ~10 MFLOP per image forward: trains on a laptop CPU in minutes).
    ``widths=(32, 64)`` doubles the channels (467,818 parameters, ~4x the compute).
    """
    layers = []
    for filters in widths:
        for _ in range(convs_per_block):
            kw = {"input_shape": input_shape} if not layers else {}
            layers.append(Conv2D(filters, 3, padding=1, activation="relu", **kw))
        layers.append(MaxPool2D(2))
    layers += [Flatten(), Dense(dense, activation="relu", kernel_initializer="he_normal")]
    if dropout:
        layers.append(Dropout(dropout))
    layers.append(Dense(num_classes))
    return Sequential(layers, device=device, name="small_vgg", seed=seed)


def small_cnn(num_classes: int = 10, input_shape=(3, 32, 32), widths=(32, 64, 64), dense: int = 128,
              dropout: float = 0.3, device="auto", seed=None) -> Sequential:
    """The default net for users' image folders: [3x3 'same' ReLU conv, 2x2 max pool] per width,
    an average pool down to at most 4x4, dense 128, dropout, classes.

    On 3x32x32 inputs with 10 classes: 188,810 parameters, ~17 MFLOP per image forward, so a
    few thousand photos train in minutes on a laptop CPU. Blocks stop early for tiny inputs.
    """
    c, h, w = (int(v) for v in input_shape)
    layers = []
    for filters in widths:
        if min(h, w) < 2:
            break
        kw = {"input_shape": tuple(input_shape)} if not layers else {}
        layers += [Conv2D(filters, 3, padding=1, activation="relu", kernel_initializer="he_normal", **kw),
                   MaxPool2D(2)]
        h, w = h // 2, w // 2
    if max(h, w) > 4:
        k = max(1, min(h, w) // 4)
        layers.append(AvgPool2D(k))
    if not layers:
        layers.append(Flatten(input_shape=tuple(input_shape)))
    else:
        layers.append(Flatten())
    layers.append(Dense(dense, activation="relu", kernel_initializer="he_normal"))
    if dropout:
        layers.append(Dropout(dropout))
    layers.append(Dense(num_classes))
    return Sequential(layers, device=device, name="small_cnn", seed=seed)


MODELS = {"small_cnn": small_cnn, "lenet5": lenet5, "alexnet": alexnet, "vgg16": vgg16, "vgg19": vgg19, "small_vgg": small_vgg}


def get(name: str, **kwargs) -> Sequential:
    """A zoo model by name (``"lenet5"``, ``"alexnet"``, ``"vgg16"``, ``"vgg19"``, ``"small_vgg"``)."""
    key = name.lower().replace("-", "_")
    if key in ("vgg", "smallvgg", "small_vgg"):
        key = "small_vgg"
    if key == "lenet" or key == "lenet_5":
        key = "lenet5"
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[key](**kwargs)
