"""The modern zoo: exact parameter counts (trainable and total), layouts, forward passes, ResNet-20 on 28x28."""
from __future__ import annotations

import re

import numpy as np
import pytest

from nbcnn import layers as L
from nbcnn import zoo

COUNTS = [("resnet20", 269_722, 271_098), ("resnet18", 11_689_512, 11_699_112),
          ("vgg16_bn", 138_365_992, 138_374_440), ("mobilenet", 4_231_976, 4_253_864),
          ("alexnet_caffe", 60_965_224, 60_965_224)]


def _trainable(model):
    return sum(l.count_trainable() for l in model.layers)


@pytest.mark.parametrize("name,trainable,total", COUNTS, ids=[c[0] for c in COUNTS])
def test_parameter_counts(name, trainable, total):
    m = zoo.get(name)
    assert m.count_params() == total
    assert _trainable(m) == trainable
    text = m.summary(print_fn=None)
    assert re.search(rf"Trainable params: {trainable:,}\b", text), text[-400:]
    assert re.search(rf"Total params: {total:,}\b", text)


def test_layouts():
    r20 = zoo.resnet20()
    kinds = [type(l).__name__ for l in r20.layers]
    assert kinds.count("Conv2D") == 19 and kinds.count("Add") == 9 and kinds.count("IdentityShortcut") == 2
    assert kinds.count("BatchNormalization") == 19 and kinds[-1] == "Dense"
    assert all(not l.use_bias for l in r20.layers if isinstance(l, L.Conv2D))
    r18 = zoo.resnet18()
    assert sum(isinstance(l, L.Conv2D) and l.kernel_size == (1, 1) for l in r18.layers) == 3  # projections
    ax = zoo.alexnet_caffe()
    assert [l.groups for l in ax.layers if isinstance(l, L.Conv2D)] == [1, 2, 1, 2, 2]
    assert sum(isinstance(l, L.LocalResponseNormalization) for l in ax.layers) == 2
    mb = zoo.mobilenet()
    assert sum(isinstance(l, L.DepthwiseConv2D) for l in mb.layers) == 13
    assert zoo.resnet20(input_shape=(1, 28, 28), num_classes=7).output_shape == (None, 7)


def _torch_counts():
    """ResNet-18 and VGG-16-BN written with plain torch.nn in torchvision's layout (an independent oracle)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else None)

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)]
    cin = 64
    for i, c in enumerate((64, 128, 256, 512)):
        for j in range(2):
            layers.append(Block(cin, c, 2 if i and not j else 1))
            cin = c
    layers.append(nn.Linear(512, 1000))
    r18 = nn.ModuleList(layers)
    vgg, cin = [], 3
    for c in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if c != "M":
            vgg += [nn.Conv2d(cin, c, 3, padding=1), nn.BatchNorm2d(c)]
            cin = c
    vgg += [nn.Linear(512 * 49, 4096), nn.Linear(4096, 4096), nn.Linear(4096, 1000)]
    vgg = nn.ModuleList(vgg)

    def count(m):
        return (sum(p.numel() for p in m.parameters()),
                sum(p.numel() for p in m.parameters()) + sum(b.numel() for n, b in m.named_buffers()
                                                            if not n.endswith("num_batches_tracked")))
    out = {"resnet18": count(r18), "vgg16_bn": count(vgg)}
    try:
        import torchvision

        out["torchvision"] = {"resnet18": count(torchvision.models.resnet18()),
                              "vgg16_bn": count(torchvision.models.vgg16_bn())}
    except ImportError:
        pass
    return out


def test_counts_match_torch():
    ref = _torch_counts()
    for name in ("resnet18", "vgg16_bn"):
        m = zoo.get(name)
        assert (_trainable(m), m.count_params()) == ref[name]
        if "torchvision" in ref:
            assert ref["torchvision"][name] == ref[name]


@pytest.mark.parametrize("name,shape,classes", [("resnet18", (3, 32, 32), 7), ("mobilenet", (3, 32, 32), 5),
                                                ("alexnet_caffe", (3, 67, 67), 3), ("vgg16_bn", (3, 32, 32), 4)])
def test_forward_small_inputs(name, shape, classes):
    m = zoo.get(name, input_shape=shape, num_classes=classes, seed=0)
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    p = m.predict(x)
    assert p.shape == (2, classes) and np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)


def test_resnet20_on_28x28_trains():
    m = zoo.resnet20(input_shape=(1, 28, 28), seed=0)
    r = np.random.default_rng(1)
    x = r.random((8, 1, 28, 28), dtype=np.float32)
    y = r.integers(0, 10, 8)
    from nbcnn import optim

    m.compile(optimizer=optim.SGD(0.05, momentum=0.9, nesterov=True))
    losses = [m.train_on_batch(x, y) for _ in range(6)]
    assert losses[-1] < losses[0]
    assert m.predict(x).shape == (8, 10)
