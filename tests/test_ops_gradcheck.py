"""Finite-difference checks (float64) of every backward: independent of any reference code."""
from __future__ import annotations

import numpy as np
import pytest

from nbcnn import ops


def numgrad(f, a, eps=1e-6):
    """Central differences of the scalar f() w.r.t. every element of ``a`` (modified in place)."""
    g = np.zeros_like(a)
    flat, gf = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gf[i] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("shape,stride,padding", [
    ((2, 2, 5, 6, 3, 3, 2), 1, 1),            # im2col path
    ((1, 1, 6, 5, 2, 3, 3), 1, "same"),       # direct path (C = 1)
    ((2, 3, 7, 6, 2, 3, 2), (2, 3), "same"),  # strided 'same', asymmetric pads
    ((1, 2, 4, 4, 2, 2, 2), 1, "full"),
])
def test_conv2d_gradients_match_finite_differences(shape, stride, padding):
    rng = np.random.default_rng(0)
    N, C, H, W, K, kh, kw = shape
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((K, C, kh, kw))
    b = rng.standard_normal(K)
    r = rng.standard_normal(ops.conv2d_output_shape(x.shape, w.shape, stride, padding))

    def loss():
        return float(np.sum(ops.conv2d(x, w, b, stride, padding) * r))

    gx, gw, gb = ops.conv2d_backward(r, x, w, stride, padding)
    np.testing.assert_allclose(gx, numgrad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gw, numgrad(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gb, numgrad(loss, b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("padding,kernel,stride", [(1, None, 1), ((0, 2, 1, 0), None, 1), ("same", 4, 3)])
def test_pad2d_gradient(padding, kernel, stride):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 5, 4))
    r = rng.standard_normal(ops.pad2d(x, padding, kernel, stride).shape)
    g = ops.pad2d_backward(r, padding, kernel, stride, input_shape=x.shape)
    np.testing.assert_allclose(g, numgrad(lambda: float(np.sum(ops.pad2d(x, padding, kernel, stride) * r)), x),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("size,stride,padding", [(2, None, 0), (3, 2, 1), ((3, 2), 1, (1, 0)), (2, 3, 1)])
def test_pooling_gradients(size, stride, padding):
    rng = np.random.default_rng(2)
    # distinct values far apart, so max pooling is differentiable under the finite-difference step
    x = rng.permutation(2 * 2 * 7 * 6).reshape(2, 2, 7, 6).astype(np.float64) * 0.1
    r = rng.standard_normal(ops.pool2d_output_shape(x.shape, size, stride, padding))
    gm = ops.max_pool2d_backward(r, x, size, stride, padding)
    np.testing.assert_allclose(
        gm, numgrad(lambda: float(np.sum(ops.max_pool2d(x, size, stride, padding) * r)), x, 1e-4),
        rtol=1e-6, atol=1e-7)
    ga = ops.avg_pool2d_backward(r, x, size, stride, padding)
    np.testing.assert_allclose(
        ga, numgrad(lambda: float(np.sum(ops.avg_pool2d(x, size, stride, padding) * r)), x),
        rtol=1e-6, atol=1e-7)
