"""Plain NumPy float64 references for the ops (slow, obvious, independent of the kernels).

Convolution and its gradients are written as sums over kernel taps of strided
slices of the padded input (the backward is the exact adjoint of that loop).
Pooling is an explicit window loop; max pooling takes the first maximum in
scan order and never a padded cell (padding is -inf).
"""
from __future__ import annotations

import numpy as np


def _taps(xp_shape, kh, kw, stride):
    sh, sw = stride
    Ho = (xp_shape[2] - kh) // sh + 1
    Wo = (xp_shape[3] - kw) // sw + 1
    for i in range(kh):
        for j in range(kw):
            yield i, j, np.s_[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw]


def pad(x, pads, value=0.0):
    pt, pb, pl, pr = pads
    return np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=value)


def conv2d(x, w, b, stride, pads):
    xp = pad(x, pads)
    w = np.asarray(w, np.float64)
    y = 0.0
    for i, j, sl in _taps(xp.shape, w.shape[2], w.shape[3], stride):
        y = y + np.einsum("nchw,kc->nkhw", xp[sl], w[:, :, i, j])
    if b is not None:
        y = y + np.asarray(b, np.float64)[None, :, None, None]
    return y


def conv2d_backward(gy, x, w, stride, pads):
    xp = pad(x, pads)
    w = np.asarray(w, np.float64)
    gy = np.asarray(gy, np.float64)
    gxp = np.zeros_like(xp)
    gw = np.zeros(w.shape)
    for i, j, sl in _taps(xp.shape, w.shape[2], w.shape[3], stride):
        gxp[sl] += np.einsum("nkhw,kc->nchw", gy, w[:, :, i, j])
        gw[:, :, i, j] = np.einsum("nkhw,nchw->kc", gy, xp[sl])
    pt, pb, pl, pr = pads
    gx = gxp[:, :, pt:xp.shape[2] - pb, pl:xp.shape[3] - pr]
    return gx, gw, gy.sum(axis=(0, 2, 3))


def _windows(shape, size, stride, pads):
    N, C, H, W = shape
    kh, kw = size
    sh, sw = stride
    pt, pb, pl, pr = pads
    Ho = (H + pt + pb - kh) // sh + 1
    Wo = (W + pl + pr - kw) // sw + 1
    for oh in range(Ho):
        for ow in range(Wo):
            yield oh, ow, oh * sh, ow * sw  # window origin in padded coordinates


def _out(shape, size, stride, pads):
    N, C, H, W = shape
    return (N, C, (H + pads[0] + pads[1] - size[0]) // stride[0] + 1,
            (W + pads[2] + pads[3] - size[1]) // stride[1] + 1)


def max_pool2d(x, size, stride, pads):
    """(y, grad_routing) where routing[n, c, oh, ow] = flat padded index of the first maximum."""
    xp = pad(x, pads, -np.inf)
    kh, kw = size
    y = np.empty(_out(x.shape, size, stride, pads))
    arg = np.empty(y.shape, dtype=np.int64)
    for oh, ow, h0, w0 in _windows(x.shape, size, stride, pads):
        win = xp[:, :, h0:h0 + kh, w0:w0 + kw].reshape(x.shape[0], x.shape[1], -1)
        a = np.argmax(win, axis=2)  # first maximum in scan order
        y[:, :, oh, ow] = np.take_along_axis(win, a[..., None], 2)[..., 0]
        arg[:, :, oh, ow] = (h0 + a // kw) * xp.shape[3] + (w0 + a % kw)
    return y, arg


def max_pool2d_backward(gy, x, size, stride, pads):
    _, arg = max_pool2d(x, size, stride, pads)
    N, C = x.shape[:2]
    Hp, Wp = x.shape[2] + pads[0] + pads[1], x.shape[3] + pads[2] + pads[3]
    gxp = np.zeros((N, C, Hp * Wp))
    gy = np.asarray(gy, np.float64)
    for n in range(N):
        for c in range(C):
            np.add.at(gxp[n, c], arg[n, c].ravel(), gy[n, c].ravel())
    gxp = gxp.reshape(N, C, Hp, Wp)
    return gxp[:, :, pads[0]:Hp - pads[1], pads[2]:Wp - pads[3]]


def avg_pool2d(x, size, stride, pads):
    xp = pad(x, pads)
    kh, kw = size
    y = np.empty(_out(x.shape, size, stride, pads))
    for oh, ow, h0, w0 in _windows(x.shape, size, stride, pads):
        y[:, :, oh, ow] = xp[:, :, h0:h0 + kh, w0:w0 + kw].sum(axis=(2, 3)) / (kh * kw)
    return y


def avg_pool2d_backward(gy, x_shape, size, stride, pads):
    kh, kw = size
    N, C, H, W = x_shape
    gxp = np.zeros((N, C, H + pads[0] + pads[1], W + pads[2] + pads[3]))
    gy = np.asarray(gy, np.float64)
    for oh, ow, h0, w0 in _windows(x_shape, size, stride, pads):
        gxp[:, :, h0:h0 + kh, w0:w0 + kw] += gy[:, :, oh, ow][:, :, None, None] / (kh * kw)
    return gxp[:, :, pads[0]:pads[0] + H, pads[2]:pads[2] + W]
