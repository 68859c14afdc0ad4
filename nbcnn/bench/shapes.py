"""The benchmark shapes and the speed targets they are held to.

A target is a ratio nbcnn time / PyTorch time that the case should stay at or
under (``<=``), or for whole-model throughput a speed-up nbcnn images/s /
PyTorch images/s to reach (``>=``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConvShape:
    """One convolution layer: input (N, C, H, W), K square k x k filters, stride s, padding p."""

    name: str
    N: int
    C: int
    H: int
    W: int
    K: int
    k: int
    s: int
    p: int

    @property
    def out_hw(self) -> tuple[int, int]:
        return ((self.H + 2 * self.p - self.k) // self.s + 1, (self.W + 2 * self.p - self.k) // self.s + 1)

    @property
    def flops_fwd(self) -> int:
        """Multiply-adds x 2 of the forward pass (no bias)."""
        ho, wo = self.out_hw
        return 2 * self.N * self.K * self.C * self.k * self.k * ho * wo

    def label(self) -> str:
        return f"({self.N},{self.C},{self.H},{self.W})->{self.K} {self.k}x{self.k} s{self.s} p{self.p}"


# Layers of the classic small networks (LeNet-5, VGG, AlexNet) plus a strided 3x3.
CONV_SHAPES: dict[str, ConvShape] = {s.name: s for s in (
    ConvShape("lenet_conv1", 64, 1, 28, 28, 6, 5, 1, 2),
    ConvShape("lenet_conv2", 64, 6, 14, 14, 16, 5, 1, 0),
    ConvShape("vgg", 32, 64, 32, 32, 64, 3, 1, 1),
    ConvShape("vgg_deep", 32, 128, 16, 16, 128, 3, 1, 1),
    ConvShape("alexnet_conv1", 8, 3, 227, 227, 96, 11, 4, 0),
    ConvShape("strided", 32, 32, 32, 32, 64, 3, 2, 1),
)}
# A one-layer shape small enough for the CUDA simulator and smoke tests.
TINY_CONV = ConvShape("tiny", 2, 2, 6, 6, 3, 3, 1, 1)
# (N, C, H, W) input of the ops that are not convolutions (pooling, ...).
POOL_SHAPE = (64, 32, 32, 32)
SHAPE_GROUPS: dict[str, tuple[str, ...]] = {
    "lenet": ("lenet_conv1", "lenet_conv2"),
    "vgg": ("vgg", "vgg_deep", "strided"),  # the 3x3 layers, stride 1 and 2
    "alexnet": ("alexnet_conv1",),
    "all": tuple(CONV_SHAPES),
}

# Whole-model targets: speed-up (nbcnn images/s / torch images/s) to reach.
MODEL_TARGETS = {"train": 1.5, "predict": 1.5}


def select_shapes(shapes) -> list[ConvShape]:
    """Shapes for a group name (lenet|vgg|alexnet|all), a shape name, a ConvShape, or a list of those."""
    items = [shapes] if isinstance(shapes, (str, ConvShape)) else list(shapes)
    out: dict[str, ConvShape] = {}
    for n in items:
        if isinstance(n, ConvShape):
            out[n.name] = n
        elif n in SHAPE_GROUPS:
            out.update((m, CONV_SHAPES[m]) for m in SHAPE_GROUPS[n])
        elif n in CONV_SHAPES:
            out[n] = CONV_SHAPES[n]
        else:
            raise ValueError(f"unknown shape group or shape {n!r}: choose from "
                             f"{', '.join([*SHAPE_GROUPS, *CONV_SHAPES])}")
    return list(out.values())
