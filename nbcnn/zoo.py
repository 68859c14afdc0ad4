"""The model zoo: LeNet-5, AlexNet, VGG-16/19, a small VGG for 28x28 images, a small conv net (the
default for users' image folders), and the modern nets ResNet-20 (CIFAR), ResNet-18, VGG-16-BN,
MobileNet v1 and the two-tower Caffe AlexNet.

Models come back uncompiled and unallocated: defining VGG-16 (138 M
parameters) or printing its summary costs milliseconds; weights are drawn (in
float32, in about a second) at the first forward pass, ``compile`` or
``get_weights``. All convs use He initialisation for ReLU nets and Glorot for
tanh nets. Outputs are logits; ``predict`` returns softmax probabilities.

The residual and branching nets are graph models (:class:`nbcnn.Model`,
built with the functional API); their parameter counts equal those of the
reference implementations (torchvision, Keras, Caffe), see each docstring.
Batch norm follows PyTorch's settings where the reference is torchvision
(``momentum=0.9`` in Keras' convention, ``epsilon=1e-5``).
"""
from __future__ import annotations

from . import layers as L
from .layers import AvgPool2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D
from .models import Model, Sequential
from .symbolic import Input

__all__ = ["lenet5", "alexnet", "vgg16", "vgg19", "small_vgg", "small_cnn", "resnet20", "resnet18", "vgg16_bn",
           "mobilenet", "alexnet_caffe", "get", "MODELS"]


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



# ----------------------------------------------------------------------------------------------
# modern nets (graph models)
# ----------------------------------------------------------------------------------------------

def _bn():
    return L.BatchNormalization(momentum=0.9, epsilon=1e-5)


def _conv_bn(x, filters, kernel, stride=1, padding=0, relu=True):
    x = Conv2D(filters, kernel, stride=stride, padding=padding, use_bias=False)(x)
    x = _bn()(x)
    return L.ReLU()(x) if relu else x


def _basic_block(x, filters, stride, shortcut):
    """conv3x3-BN-ReLU, conv3x3-BN, + shortcut, ReLU (He et al. 2016's basic block)."""
    c_in = x.shape[0]
    y = _conv_bn(x, filters, 3, stride, 1)
    y = _conv_bn(y, filters, 3, 1, 1, relu=False)
    if stride != 1 or c_in != filters:
        if shortcut == "A":
            s = L.IdentityShortcut(filters, strides=stride)(x)
        else:
            s = _conv_bn(x, filters, 1, stride, 0, relu=False)
    else:
        s = x
    return L.ReLU()(L.Add()([y, s]))


def resnet20(num_classes: int = 10, input_shape=(3, 32, 32), device="auto", seed=None) -> Model:
    """ResNet-20 for CIFAR (He et al. 2016, section 4.2): 269,722 trainable parameters, 271,098 in all.

    conv 16@3x3 -> 3 stages of 3 basic blocks (16, 32, 64 channels; the 2nd and 3rd stages start
    with stride 2) -> global average pooling -> dense ``num_classes``. Shortcuts are option A: a
    strided identity zero-padded to the new width (:class:`~nbcnn.layers.IdentityShortcut`), no
    parameters. Any input size works, e.g. ``resnet20(input_shape=(1, 28, 28))`` for MNIST.
    """
    inp = Input(input_shape)
    x = _conv_bn(inp, 16, 3, 1, 1)
    for i, filters in enumerate((16, 32, 64)):
        for j in range(3):
            x = _basic_block(x, filters, 2 if (i > 0 and j == 0) else 1, "A")
    x = L.GlobalAveragePooling2D()(x)
    out = Dense(num_classes, kernel_initializer="he_normal")(x)
    return Model(inp, out, name="resnet20", device=device, seed=seed)


def resnet18(num_classes: int = 1000, input_shape=(3, 224, 224), device="auto", seed=None) -> Model:
    """ResNet-18 in torchvision's layout: 11,689,512 trainable parameters, 11,699,112 in all.

    conv 64@7x7/2 -> BN -> ReLU -> max pool 3/2 -> 4 stages of 2 basic blocks (64, 128, 256, 512;
    stride 2 from the 2nd stage) with 1x1 conv + BN projection shortcuts where the shape changes ->
    global average pooling -> dense ``num_classes``.
    """
    inp = Input(input_shape)
    x = _conv_bn(inp, 64, 7, 2, 3)
    x = MaxPool2D(3, stride=2, padding=1)(x)
    for i, filters in enumerate((64, 128, 256, 512)):
        for j in range(2):
            x = _basic_block(x, filters, 2 if (i > 0 and j == 0) else 1, "B")
    x = L.GlobalAveragePooling2D()(x)
    out = Dense(num_classes, kernel_initializer="he_normal")(x)
    return Model(inp, out, name="resnet18", device=device, seed=seed)


def vgg16_bn(num_classes: int = 1000, input_shape=(3, 224, 224), dropout: float = 0.5, device="auto",
             seed=None) -> Sequential:
    """VGG-16 with batch norm after every conv, torchvision's ``vgg16_bn`` layout:
    138,365,992 trainable parameters, 138,374,440 in all (convs keep their bias, as there)."""
    layers = []
    for filters, n in [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]:
        for _ in range(n):
            kw = {"input_shape": input_shape} if not layers else {}
            layers += [Conv2D(filters, 3, padding=1, **kw), _bn(), L.ReLU()]
        layers.append(MaxPool2D(2))
    layers += [Flatten(),
               Dense(4096, activation="relu", kernel_initializer="he_normal"), Dropout(dropout),
               Dense(4096, activation="relu", kernel_initializer="he_normal"), Dropout(dropout),
               Dense(num_classes)]
    return Sequential(layers, device=device, name="vgg16_bn", seed=seed)


def mobilenet(num_classes: int = 1000, input_shape=(3, 224, 224), alpha: float = 1.0, dropout: float = 1e-3,
              device="auto", seed=None) -> Model:
    """MobileNet v1 (Howard et al. 2017) as Keras builds it: 4,231,976 trainable parameters and
    4,253,864 in all for ``alpha = 1``, 224x224 and 1000 classes.

    conv 32@3x3/2 -> 13 depthwise-separable blocks (depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN +
    ReLU; widths 64, 128/2, 128, 256/2, 256, 512/2, 512 x5, 1024/2, 1024) -> global average pooling ->
    dropout -> dense ``num_classes``. ReLU where the paper's Keras release uses ReLU6 (same counts).
    """
    def w(c):
        return max(8, int(c * alpha))

    inp = Input(input_shape)
    x = _conv_bn(inp, w(32), 3, 2, 1)
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    for filters, stride in plan:
        x = L.DepthwiseConv2D(3, strides=stride, padding=1, use_bias=False)(x)
        x = L.ReLU()(L.BatchNormalization()(x))
        x = Conv2D(w(filters), 1, use_bias=False)(x)
        x = L.ReLU()(L.BatchNormalization()(x))
    x = L.GlobalAveragePooling2D()(x)
    if dropout:
        x = Dropout(dropout)(x)
    out = Dense(num_classes)(x)
    return Model(inp, out, name="mobilenet", device=device, seed=seed)


def alexnet_caffe(num_classes: int = 1000, input_shape=(3, 227, 227), dropout: float = 0.5, device="auto",
                  seed=None) -> Sequential:
    """The original two-tower AlexNet as released with Caffe (``bvlc_alexnet``, also in the ONNX zoo):
    60,965,224 parameters with 1000 classes.

    conv1 96@11x11/4 -> ReLU -> LRN -> max pool 3/2 -> conv2 256@5x5 (groups 2) -> ReLU -> LRN -> pool ->
    conv3 384@3x3 -> conv4 384@3x3 (groups 2) -> conv5 256@3x3 (groups 2) -> pool -> fc 4096 -> fc 4096 ->
    fc ``num_classes``; LRN with size 5, alpha 1e-4, beta 0.75. The groups are the two GPUs of the paper.
    """
    def lrn():
        return L.LocalResponseNormalization(size=5, alpha=1e-4, beta=0.75, k=1.0)

    return Sequential([
        Conv2D(96, 11, stride=4, activation="relu", input_shape=input_shape), lrn(), MaxPool2D(3, stride=2),
        Conv2D(256, 5, padding=2, groups=2, activation="relu"), lrn(), MaxPool2D(3, stride=2),
        Conv2D(384, 3, padding=1, activation="relu"),
        Conv2D(384, 3, padding=1, groups=2, activation="relu"),
        Conv2D(256, 3, padding=1, groups=2, activation="relu"),
        MaxPool2D(3, stride=2),
        Flatten(),
        Dense(4096, activation="relu", kernel_initializer="he_normal"), Dropout(dropout),
        Dense(4096, activation="relu", kernel_initializer="he_normal"), Dropout(dropout),
        Dense(num_classes),
    ], device=device, name="alexnet_caffe", seed=seed)


MODELS = {"small_cnn": small_cnn, "lenet5": lenet5, "alexnet": alexnet, "vgg16": vgg16, "vgg19": vgg19,
          "small_vgg": small_vgg, "resnet20": resnet20, "resnet18": resnet18, "vgg16_bn": vgg16_bn, "mobilenet": mobilenet,
          "alexnet_caffe": alexnet_caffe}


def get(name: str, **kwargs):
    """A zoo model by name (one of :data:`MODELS`, e.g. ``"lenet5"``, ``"resnet20"``, ``"mobilenet"``)."""
    key = name.lower().replace("-", "_")
    if key in ("vgg", "smallvgg", "small_vgg"):
        key = "small_vgg"
    if key == "lenet" or key == "lenet_5":
        key = "lenet5"
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[key](**kwargs)
