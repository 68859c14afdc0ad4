"""The option-A residual shortcut: reference slicing, its transpose, finite differences, the layer."""
from __future__ import annotations

import numpy as np
import pytest

from nbcnn import layers as L
from nbcnn.ops import shortcut as sc


def _ref(x, s, k):
    n, c, h, w = x.shape
    y = np.zeros((n, k, len(range(0, h, s)), len(range(0, w, s))))
    off = (k - c) // 2
    for i in range(n):
        for j in range(c):
            for a, hh in enumerate(range(0, h, s)):
                for b, ww in enumerate(range(0, w, s)):
                    y[i, off + j, a, b] = x[i, j, hh, ww]
    return y


@pytest.mark.parametrize("shape,s,k", [((2, 3, 7, 5), 2, 6), ((1, 1, 4, 4), 1, 1), ((3, 4, 9, 8), 3, 9),
                                       ((2, 16, 8, 8), 2, 32), ((1, 2, 5, 6), 2, 3)])
def test_forward_backward_match_reference(rng, shape, s, k):
    x = rng.normal(0, 1, shape)
    y = sc.shortcut(x, s, k)
    np.testing.assert_array_equal(y, _ref(x, s, k))
    assert sc.shortcut(x.astype(np.float32), s, k).dtype == np.float32
    gy = rng.normal(0, 1, y.shape)
    gx = sc.shortcut_backward(gy, shape, s)
    # the adjoint identity <shortcut(x), gy> == <x, shortcut_backward(gy)> for a linear map
    assert np.isclose((y * gy).sum(), (x * gx).sum(), rtol=1e-12)
    # finite differences on a few entries (exact for a linear map, up to rounding)
    for idx in [(0, 0, 0, 0), tuple(d - 1 for d in shape), (0, shape[1] // 2, 1 % shape[2], 1 % shape[3])]:
        e = np.zeros(shape)
        e[idx] = 1e-3
        fd = ((sc.shortcut(x + e, s, k) - sc.shortcut(x - e, s, k)) * gy).sum() / 2e-3
        assert np.isclose(fd, gx[idx], atol=1e-9)


def test_layer_shapes_config_and_bad_input(rng):
    lay = L.IdentityShortcut(32, strides=2, input_shape=(16, 32, 32))
    assert lay.count_params() == 0
    lay.configure((16, 32, 32))
    assert lay.output_shape == (None, 32, 16, 16)
    x = rng.normal(0, 1, (2, 16, 32, 32))
    y = lay.forward(x, training=True)
    assert y.shape == (2, 32, 16, 16) and not y[:, :8].any() and not y[:, 24:].any()
    gx = lay.backward(np.ones_like(y))
    assert gx.shape == x.shape and gx[:, :, ::2, ::2].all() and not gx[:, :, 1::2].any()
    again = L.deserialize(L.serialize(lay))
    assert isinstance(again, L.IdentityShortcut) and (again.filters, again.strides) == (32, 2)
    with pytest.raises(ValueError, match="fewer"):
        L.IdentityShortcut(8).configure((16, 4, 4))
    with pytest.raises(ValueError, match="strides"):
        L.IdentityShortcut(8, strides=0)
    with pytest.raises(ValueError, match="out_channels"):
        sc.shortcut(x, 2, 8)
    with pytest.raises(ValueError, match="expected"):
        sc.shortcut_backward(np.ones((2, 32, 15, 16)), x.shape, 2)
