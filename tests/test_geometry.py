"""Shape arithmetic shared by the ops and both kernel backends (pure Python, no Numba)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nbcnn.kernels import geometry as g


@pytest.mark.parametrize("n", range(1, 12))
@pytest.mark.parametrize("f", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("s", [1, 2, 3])
def test_same_padding_gives_ceil_and_puts_the_extra_at_the_end(n, f, s):
    before, after = g.same_padding_1d(n, f, s)
    assert before >= 0 and after - before in (0, 1)
    out = g.output_size(n, f, before, after, s)
    if f <= n + before + after:
        assert out == math.ceil(n / s)


def test_resolve_padding_forms():
    assert g.resolve_padding(2, (3, 3)) == (2, 2, 2, 2)
    assert g.resolve_padding((1, 2), (3, 3)) == (1, 1, 2, 2)
    assert g.resolve_padding([0, 1, 2, 3], (3, 3)) == (0, 1, 2, 3)
    assert g.resolve_padding("valid", (3, 5)) == (0, 0, 0, 0)
    assert g.resolve_padding("full", (3, 5)) == (2, 2, 4, 4)
    assert g.resolve_padding("same", (3, 4)) == (1, 1, 1, 2)          # even kernel: extra at the right
    assert g.resolve_padding("Same", (3, 3), (2, 2), (7, 8)) == (1, 1, 0, 1)
    assert g.resolve_padding(np.int64(1), (3, 3)) == (1, 1, 1, 1)     # NumPy ints are ints


def test_resolve_padding_errors():
    with pytest.raises(ValueError, match="depends on the input size"):
        g.resolve_padding("same", (3, 3), (2, 2))
    with pytest.raises(ValueError, match="unknown padding 'half'"):
        g.resolve_padding("half", (3, 3))
    with pytest.raises(TypeError, match="padding must be"):
        g.resolve_padding(True, (3, 3))
    with pytest.raises(ValueError, match="padding must be >= 0"):
        g.resolve_padding((1, -1), (3, 3))


def test_conv_output_size():
    assert g.conv_output_size(6, 3) == 4
    assert g.conv_output_size(7, 3, stride=2) == 3
    assert g.conv_output_size(32, 5) == 28
    assert g.conv_output_size(227, 11, 0, 4) == 55
    assert g.conv_output_size(7, 3, "same", 2) == 4
    assert g.conv_output_size(5, 3, (0, 1)) == 4
    with pytest.raises(TypeError, match="must be ints"):
        g.conv_output_size(5.0, 3)
    with pytest.raises(ValueError, match="stride must be positive"):
        g.conv_output_size(5, 3, 0, 0)
    with pytest.raises(ValueError, match="n and f must be positive"):
        g.conv_output_size(0, 3)


def test_as_pair_and_stride():
    assert g.as_pair(3, "size") == (3, 3)
    assert g.as_pair((2, 5), "size") == (2, 5)
    with pytest.raises(TypeError, match="size must be an int or a pair"):
        g.as_pair((1, 2, 3), "size")
    with pytest.raises(TypeError, match="stride"):
        g.as_stride(1.0)
    with pytest.raises(ValueError, match="stride must be positive"):
        g.as_stride((1, 0))
