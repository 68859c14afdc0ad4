"""Plain NumPy float64 loop references for the ops (slow, obviously correct).

They share nothing with the kernels: padding by ``np.pad``, one explicit loop
over output positions, windows sliced by hand.
"""
from __future__ import annotations

import numpy as np


def conv2d(x, w, b, stride, pads):
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    sh, sw = stride
    pt, pb, pl, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    N, C, Hp, Wp = xp.shape
    K, _, kh, kw = w.shape
    Ho, Wo = (Hp - kh) // sh + 1, (Wp - kw) // sw + 1
    y = np.zeros((N, K, Ho, Wo))
    for oh in range(Ho):
        for ow in range(Wo):
            win = xp[:, :, oh * sh:oh * sh + kh, ow * sw:ow * sw + kw]
            y[:, :, oh, ow] = np.tensordot(win, w, axes=([1, 2, 3], [1, 2, 3]))
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def conv2d_backward(gy, x, w, stride, pads):
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    gy = np.asarray(gy, np.float64)
    sh, sw = stride
    pt, pb, pl, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    K, _, kh, kw = w.shape
    gxp = np.zeros_like(xp)
    gw = np.zeros_like(w)
    Ho, Wo = gy.shape[2:]
    for oh in range(Ho):
        for ow in range(Wo):
            hs, ws = slice(oh * sh, oh * sh + kh), slice(ow * sw, ow * sw + kw)
            g = gy[:, :, oh, ow]                                # (N, K)
            gxp[:, :, hs, ws] += np.tensordot(g, w, axes=(1, 0))
            gw += np.tensordot(g, xp[:, :, hs, ws], axes=(0, 0))
    H, W = x.shape[2:]
    gx = gxp[:, :, pt:pt + H, pl:pl + W]
    return gx, gw, gy.sum(axis=(0, 2, 3))


def _windows(shape, size, stride, pad):
    N, C, H, W = shape
    kh, kw = size
    sh, sw = stride
    ph, pw = pad
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    for oh in range(Ho):
        for ow in range(Wo):
            h0, w0 = oh * sh - ph, ow * sw - pw
            yield oh, ow, [(h, v) for h in range(h0, h0 + kh) for v in range(w0, w0 + kw)
                           if 0 <= h < H and 0 <= v < W]
    return Ho, Wo


def _out(shape, size, stride, pad):
    N, C, H, W = shape
    return (N, C, (H + 2 * pad[0] - size[0]) // stride[0] + 1, (W + 2 * pad[1] - size[1]) // stride[1] + 1)


def max_pool2d(x, size, stride, pad):
    """Max over the in-bounds cells of each window (padded cells never win)."""
    x = np.asarray(x, np.float64)
    y = np.zeros(_out(x.shape, size, stride, pad))
    for oh, ow, cells in _windows(x.shape, size, stride, pad):
        vals = np.stack([x[:, :, h, v] for h, v in cells], axis=-1)
        y[:, :, oh, ow] = vals.max(axis=-1)
    return y


def max_pool2d_backward(gy, x, size, stride, pad):
    """Each window's gradient to the first maximum in row-major scan order."""
    x = np.asarray(x, np.float64)
    gx = np.zeros_like(x)
    N, C = x.shape[:2]
    for oh, ow, cells in _windows(x.shape, size, stride, pad):
        for n in range(N):
            for c in range(C):
                vals = [x[n, c, h, v] for h, v in cells]
                h, v = cells[int(np.argmax(vals))]
                gx[n, c, h, v] += gy[n, c, oh, ow]
    return gx


def avg_pool2d(x, size, stride, pad):
    """Sum of the in-bounds cells / (kh*kw): padded zeros count in the divisor."""
    x = np.asarray(x, np.float64)
    y = np.zeros(_out(x.shape, size, stride, pad))
    for oh, ow, cells in _windows(x.shape, size, stride, pad):
        y[:, :, oh, ow] = sum(x[:, :, h, v] for h, v in cells) / (size[0] * size[1])
    return y


def avg_pool2d_backward(gy, x_shape, size, stride, pad):
    gx = np.zeros(x_shape)
    for oh, ow, cells in _windows(x_shape, size, stride, pad):
        for h, v in cells:
            gx[:, :, h, v] += gy[:, :, oh, ow] / (size[0] * size[1])
    return gx



# -- pooling with ceil_mode / count_include_pad (PyTorch's rules, stated window by window) ---------

def _axis_windows(n, k, s, p, ceil_mode):
    """Window starts (real coordinates) along one axis: the floor windows, plus in ceil mode one
    more covering the leftover cells unless it would start in the right padding."""
    starts = [o * s - p for o in range((n + 2 * p - k) // s + 1)]
    covered = starts[-1] + k            # real coordinate one past the last floor window
    if ceil_mode and covered < n + p and starts[-1] + s < n:
        starts.append(starts[-1] + s)
    return starts


def pool2d_modes(x, size, stride, pad, kind, ceil_mode=False, count_include_pad=True):
    """max / avg pooling with PyTorch's ceil-mode drop rule and both divisor rules (float64)."""
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = size, stride, pad
    hs, ws = _axis_windows(H, kh, sh, ph, ceil_mode), _axis_windows(W, kw, sw, pw, ceil_mode)
    y = np.zeros((N, C, len(hs), len(ws)))
    for i, h0 in enumerate(hs):
        for j, w0 in enumerate(ws):
            rows = [h for h in range(h0, h0 + kh) if 0 <= h < H]
            cols = [v for v in range(w0, w0 + kw) if 0 <= v < W]
            win = x[:, :, rows][:, :, :, cols]
            if kind == "max":
                y[:, :, i, j] = win.max(axis=(2, 3))
            else:
                if count_include_pad:   # cells inside the padded input, none of the overhang beyond it
                    cnt = (sum(1 for h in range(h0, h0 + kh) if -ph <= h < H + ph)
                           * sum(1 for v in range(w0, w0 + kw) if -pw <= v < W + pw))
                else:
                    cnt = len(rows) * len(cols)
                y[:, :, i, j] = win.sum(axis=(2, 3)) / cnt
    return y


# -- normalisation --------------------------------------------------------------------------------

def batch_norm_train(x, gamma, beta, eps):
    """(y, batch mean, biased var, unbiased var) normalising over all axes but 1."""
    x = np.asarray(x, np.float64)
    ax = (0,) + tuple(range(2, x.ndim))
    shp = (1, -1) + (1,) * (x.ndim - 2)
    m = x.mean(axis=ax)
    v = x.var(axis=ax)
    cnt = x.size // x.shape[1]
    y = (x - m.reshape(shp)) / np.sqrt(v.reshape(shp) + eps) * np.asarray(gamma, np.float64).reshape(shp) \
        + np.asarray(beta, np.float64).reshape(shp)
    return y, m, v, v * cnt / (cnt - 1)


def batch_norm_train_backward(gy, x, gamma, eps):
    """The textbook gradient of the training-mode batch norm (float64)."""
    x = np.asarray(x, np.float64)
    gy = np.asarray(gy, np.float64)
    ax = (0,) + tuple(range(2, x.ndim))
    shp = (1, -1) + (1,) * (x.ndim - 2)
    cnt = x.size // x.shape[1]
    m = x.mean(axis=ax).reshape(shp)
    inv = 1 / np.sqrt(x.var(axis=ax).reshape(shp) + eps)
    xhat = (x - m) * inv
    g = np.asarray(gamma, np.float64).reshape(shp)
    gx = g * inv / cnt * (cnt * gy - gy.sum(axis=ax).reshape(shp) - xhat * (gy * xhat).sum(axis=ax).reshape(shp))
    return gx, (gy * xhat).sum(axis=ax), gy.sum(axis=ax)


def lrn(x, size, alpha, beta, k):
    """ONNX LocalResponseNormalization: window (size-1)//2 channels before, the rest after."""
    x = np.asarray(x, np.float64)
    C = x.shape[1]
    lo = (size - 1) // 2
    y = np.empty_like(x)
    for c in range(C):
        win = range(max(0, c - lo), min(C - 1, c + size - 1 - lo) + 1)
        s = sum(x[:, i] ** 2 for i in win)
        y[:, c] = x[:, c] / (k + alpha / size * s) ** beta
    return y


def conv2d_general(x, w, b, stride, pads, dilation=(1, 1), groups=1):
    """conv2d with dilation and groups: per group, one window of taps spaced d apart per output."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    N, C, Hp, Wp = xp.shape
    K, Cg, kh, kw = w.shape
    Kg = K // groups
    Ho, Wo = (Hp - (kh - 1) * dh - 1) // sh + 1, (Wp - (kw - 1) * dw - 1) // sw + 1
    y = np.zeros((N, K, Ho, Wo))
    for g in range(groups):
        xg = xp[:, g * Cg:(g + 1) * Cg]
        wg = w[g * Kg:(g + 1) * Kg]
        for oh in range(Ho):
            for ow in range(Wo):
                win = xg[:, :, oh * sh:oh * sh + (kh - 1) * dh + 1:dh, ow * sw:ow * sw + (kw - 1) * dw + 1:dw]
                y[:, g * Kg:(g + 1) * Kg, oh, ow] = np.tensordot(win, wg, axes=([1, 2, 3], [1, 2, 3]))
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def conv2d_general_backward(gy, x, w, stride, pads, dilation=(1, 1), groups=1):
    """(gx, gw, gb) of conv2d_general, by the same explicit windows."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    gy = np.asarray(gy, np.float64)
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    K, Cg, kh, kw = w.shape
    Kg = K // groups
    gxp = np.zeros_like(xp)
    gw = np.zeros_like(w)
    Ho, Wo = gy.shape[2:]
    for g in range(groups):
        cs, ks = slice(g * Cg, (g + 1) * Cg), slice(g * Kg, (g + 1) * Kg)
        for oh in range(Ho):
            for ow in range(Wo):
                hs = slice(oh * sh, oh * sh + (kh - 1) * dh + 1, dh)
                ws = slice(ow * sw, ow * sw + (kw - 1) * dw + 1, dw)
                gk = gy[:, ks, oh, ow]                                # (N, Kg)
                gxp[:, cs, hs, ws] += np.tensordot(gk, w[ks], axes=(1, 0))
                gw[ks] += np.tensordot(gk, xp[:, cs, hs, ws], axes=(0, 0))
    H, W = x.shape[2:]
    return gxp[:, :, pt:pt + H, pl:pl + W], gw, gy.sum(axis=(0, 2, 3))
