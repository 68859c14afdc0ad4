"""Checks shared by the float32 convolution path tests (each path's test file picks shapes
that route through it): results against the float64 loop reference, and gradients by
finite differences."""
from __future__ import annotations

import numpy as np

import _reference as ref
from nbcnn import ops


def check_conv_vs_reference(x, w, b, stride, pads, atol=1e-5):
    """Forward and backward against the reference (atol relative to the largest reference
    value); the backward bitwise the same without the forward's ctx, and its weight and
    bias gradients bitwise the same with need_gx=False. Returns the layer ctx."""
    st = (stride, stride) if np.isscalar(stride) else tuple(stride)
    ctx = {}
    y = ops.conv2d(x, w, b, stride, pads, ctx=ctx)
    yr = ref.conv2d(x, w, b, st, pads)
    np.testing.assert_allclose(y, yr, rtol=1e-5, atol=atol * np.abs(yr).max())
    gy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    grads = ops.conv2d_backward(gy, x, w, stride, pads, ctx=ctx)
    for got, want in zip(grads, ref.conv2d_backward(gy, x, w, st, pads)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol * np.abs(want).max())
    for got, want in zip(ops.conv2d_backward(gy, x, w, stride, pads), grads):   # without the forward's buffers
        np.testing.assert_array_equal(got, want)
    gx_none, gw2, gb2 = ops.conv2d_backward(gy, x, w, stride, pads, need_gx=False, ctx=ctx)
    assert gx_none is None
    np.testing.assert_array_equal(gw2, grads[1])
    np.testing.assert_array_equal(gb2, grads[2])
    return ctx


def check_conv_grads_by_fd(x, w, b, stride, pads, rng, eps=0.5, rtol=1e-4):
    """ops.conv2d_backward against directional central differences of L = <gy, conv2d(x, w, b)>
    (evaluated in float64), one random direction per argument.

    The convolution is linear in each argument, so the quotient is exact up to
    the float32 rounding of the outputs: a large eps keeps that rounding small.
    """
    gy = rng.standard_normal(ops.conv2d(x, w, b, stride, pads).shape)
    grads = ops.conv2d_backward(gy.astype(np.float32), x, w, stride, pads)

    def loss(args):
        return float((ops.conv2d(*args, stride, pads).astype(np.float64) * gy).sum())

    for which, grad in enumerate(grads):
        d = rng.standard_normal(grad.shape).astype(np.float32)
        plus, minus = [x, w, b], [x, w, b]
        plus[which] = (plus[which] + eps * d).astype(np.float32)
        minus[which] = (minus[which] - eps * d).astype(np.float32)
        fd = (loss(plus) - loss(minus)) / (2 * eps)
        an = float((grad.astype(np.float64) * d).sum())
        assert abs(fd - an) <= rtol * (abs(an) + np.abs(gy).sum()), (which, fd, an)
