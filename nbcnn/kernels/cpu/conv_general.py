"""Grouped, depthwise and dilated convolution on the CPU, on top of the dense kernels of :mod:`.conv`.

The kernel contract's ``conv2d_forward`` / ``conv2d_backward`` with
``dilation`` and ``groups``; plain convolutions go straight to :mod:`.conv`.

* **depthwise** (one input channel per group, any depth multiplier, any
  stride and dilation): the direct kernels of :mod:`.depthwise`;
* **dilated, stride 1**: re-expressed as an undilated convolution on the
  ``dh*dw`` dilation phases of the padded input, stacked along the batch
  (space-to-batch): output phase (a, b) only ever reads input phase (a, b),
  with the taps adjacent. So the whole dense machinery applies unchanged,
  Winograd included, and the weight and bias gradients come out summed over
  the phases by the batch reduction. The layout passes are one copy each way;
* **dilated, stride > 1**: the dense kernels on the zero-inserted filter of
  extent ``(k - 1) * d + 1`` (rare in practice; correct, not fast);
* **grouped** (``1 < groups < C``): the dense kernels per group. They read a
  C-contiguous input (the padded phase buffer is filled from it), so each
  group's channels are first copied into one contiguous block: one extra pass
  over the input, small next to the convolution itself (see
  benchmarks/results/conv_modern.md).

Everything here is deterministic: the same fixed sequence of deterministic
kernel calls for any thread count.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..geometry import conv2d_output_hw, effective_kernel, phase_plane_size
from . import conv, depthwise


def conv2d_forward(x, w, b, stride, pads, ctx=None, dilation=(1, 1), groups=1):
    dilation = tuple(dilation)
    if groups == 1 and dilation == (1, 1):
        return conv.conv2d_forward(x, w, b, stride, pads, ctx)
    if ctx is not None:
        key = (x.shape, w.shape, tuple(stride), tuple(pads), dilation, groups)
        if ctx.get("key") != key:
            ctx.clear()        # the sub-contexts and buffers below are kept while the shapes stay
        ctx["key"] = key
        ctx["x"] = x
    if groups == x.shape[1] and w.shape[1] == 1:
        return depthwise.forward(x, w, b, stride, pads, dilation)
    if dilation != (1, 1):
        return _dilated_forward(x, w, b, stride, pads, dilation, groups, ctx)
    return _grouped_forward(x, w, b, stride, pads, groups, ctx)


def conv2d_backward(gy, x, w, stride, pads, need_gx=True, ctx=None, dilation=(1, 1), groups=1):
    dilation = tuple(dilation)
    if groups == 1 and dilation == (1, 1):
        return conv.conv2d_backward(gy, x, w, stride, pads, need_gx, ctx)
    key = (x.shape, w.shape, tuple(stride), tuple(pads), dilation, groups)
    cached = ctx if (ctx is not None and ctx.get("key") == key and ctx.get("x") is x) else None
    if groups == x.shape[1] and w.shape[1] == 1:
        return depthwise.backward(gy, x, w, stride, pads, dilation, need_gx)
    if dilation != (1, 1):
        return _dilated_backward(gy, x, w, stride, pads, dilation, groups, need_gx, cached)
    return _grouped_backward(gy, x, w, stride, pads, groups, need_gx, cached)


# ---------------------------------------------------------------- grouped

# The channel copies are serial on purpose (as conv.py's layout copies): memory-bound passes
# that 2 threads speed up little, while a parallel region's barrier stalls on a loaded machine.

@njit(cache=True)
def _take_channels(x, c0, out):
    """out[n, c] = x[n, c0 + c]: one group's channels as a C-contiguous block."""
    N, Cg = out.shape[0], out.shape[1]
    for t in range(N * Cg):
        n = t // Cg
        c = t - n * Cg
        src = x[n, c0 + c]
        dst = out[n, c]
        for h in range(src.shape[0]):
            s = src[h]
            d = dst[h]
            for v in range(s.shape[0]):
                d[v] = s[v]


@njit(cache=True)
def _put_channels(src, out, c0):
    """out[n, c0 + c] = src[n, c]."""
    N, Cg = src.shape[0], src.shape[1]
    for t in range(N * Cg):
        n = t // Cg
        c = t - n * Cg
        s2 = src[n, c]
        d2 = out[n, c0 + c]
        for h in range(s2.shape[0]):
            s = s2[h]
            d = d2[h]
            for v in range(s.shape[0]):
                d[v] = s[v]


def _group_input(x, g, Cg, ctx):
    """Group g's input block, copied once per forward (kept in ctx for the backward; the
    buffer is reused from step to step)."""
    key = ("xg", g)
    shape = (x.shape[0], Cg) + x.shape[2:]
    xg = ctx.get(key) if ctx is not None else None
    if xg is None or xg.shape != shape or xg.dtype != x.dtype:
        xg = np.empty(shape, dtype=x.dtype)
    _take_channels(x, g * Cg, xg)
    if ctx is not None:
        ctx[key] = xg
    return xg


def _grouped_forward(x, w, b, stride, pads, groups, ctx):
    N, C, H, W = x.shape
    K = w.shape[0]
    Cg, Kg = C // groups, K // groups
    Ho, Wo = conv2d_output_hw(H, W, w.shape[2:], stride, pads)
    y = np.empty((N, K, Ho, Wo), dtype=x.dtype)
    for g in range(groups):
        xg = _group_input(x, g, Cg, ctx)
        sub = None
        if ctx is not None:
            sub = ctx.setdefault(("ctx", g), {})
        yg = conv.conv2d_forward(xg, w[g * Kg:(g + 1) * Kg], None if b is None else b[g * Kg:(g + 1) * Kg],
                                 stride, pads, sub)
        _put_channels(yg, y, g * Kg)
    return y


def _grouped_backward(gy, x, w, stride, pads, groups, need_gx, cached):
    N, C, H, W = x.shape
    K = w.shape[0]
    Cg, Kg = C // groups, K // groups
    gx = np.empty(x.shape, dtype=x.dtype) if need_gx else None
    gw = np.empty(w.shape, dtype=x.dtype)
    gb = np.empty(K, dtype=x.dtype)
    for g in range(groups):
        if cached is not None and ("xg", g) in cached:
            xg, sub = cached[("xg", g)], cached.get(("ctx", g))
        else:
            xg, sub = _group_input(x, g, Cg, None), None
        gyg = np.empty((N, Kg) + gy.shape[2:], dtype=gy.dtype)
        _take_channels(gy, g * Kg, gyg)
        gxg, gwg, gbg = conv.conv2d_backward(gyg, xg, w[g * Kg:(g + 1) * Kg], stride, pads, need_gx, sub)
        gw[g * Kg:(g + 1) * Kg] = gwg
        gb[g * Kg:(g + 1) * Kg] = gbg
        if need_gx:
            _put_channels(gxg, gx, g * Cg)
    return gx, gw, gb


def _dense_or_grouped_forward(x, w, b, stride, pads, groups, ctx):
    if groups == 1:
        return conv.conv2d_forward(x, w, b, stride, pads, ctx)
    if groups == x.shape[1] and w.shape[1] == 1:
        return depthwise.forward(x, w, b, stride, pads)
    return _grouped_forward(x, w, b, stride, pads, groups, ctx)


def _dense_or_grouped_backward(gy, x, w, stride, pads, groups, need_gx, ctx):
    if groups == 1:
        return conv.conv2d_backward(gy, x, w, stride, pads, need_gx, ctx)
    if groups == x.shape[1] and w.shape[1] == 1:
        return depthwise.backward(gy, x, w, stride, pads, (1, 1), need_gx)
    return _grouped_backward(gy, x, w, stride, pads, groups, need_gx, ctx)


# ---------------------------------------------------------------- dilated
# (the layout passes are serial, like the channel copies above)

@njit(cache=True)
def _space_to_batch(x, dh, dw, pt, pl, Hq, Wq, xs):
    """xs[(a*dw + b)*N + n, c, u, v] = xpad[n, c, u*dh + a, v*dw + b] (0 in the padding and beyond)."""
    N, C, H, W = x.shape
    for t in range(dh * dw * N * C):
        c = t % C
        r = t // C
        n = r % N
        ab = r // N
        a = ab // dw
        b = ab - a * dw
        src = x[n, c]
        dst = xs[ab * N + n, c]
        for u in range(Hq):
            h = u * dh + a - pt
            d = dst[u]
            if h < 0 or h >= H:
                for v in range(Wq):
                    d[v] = 0
                continue
            s = src[h]
            v0 = min(max(0, -((b - pl) // dw)), Wq)          # first v with v*dw + b - pl >= 0
            v1 = max(min(Wq, (W - 1 + pl - b) // dw + 1), v0)
            for v in range(v0):
                d[v] = 0
            for v in range(v0, v1):
                d[v] = s[v * dw + b - pl]
            for v in range(v1, Wq):
                d[v] = 0


@njit(cache=True)
def _batch_to_space(ys, dh, dw, N, y):
    """y[n, k, u*dh + a, v*dw + b] = ys[(a*dw + b)*N + n, k, u, v] for the positions inside y."""
    K, Ho, Wo = y.shape[1], y.shape[2], y.shape[3]
    for n in range(N):
        for k in range(K):
            dst = y[n, k]
            for a in range(dh):
                for b in range(dw):
                    src = ys[(a * dw + b) * N + n, k]
                    nv = (Wo - b + dw - 1) // dw
                    for u in range((Ho - a + dh - 1) // dh):
                        s = src[u]
                        d = dst[u * dh + a]
                        for v in range(nv):
                            d[v * dw + b] = s[v]


@njit(cache=True)
def _space_to_batch_grad(gy, dh, dw, Hu, Wu, gys):
    """Inverse of _batch_to_space for gradients: gys gets gy's values, zero where no output exists."""
    N, K, Ho, Wo = gy.shape
    for t in range(dh * dw * N * K):
        k = t % K
        r = t // K
        n = r % N
        ab = r // N
        a = ab // dw
        b = ab - a * dw
        dst = gys[ab * N + n, k]
        for u in range(Hu):
            oh = u * dh + a
            d = dst[u]
            if oh >= Ho:
                for v in range(Wu):
                    d[v] = 0
                continue
            s = gy[n, k, oh]
            for v in range(Wu):
                ow = v * dw + b
                d[v] = s[ow] if ow < Wo else 0


@njit(cache=True)
def _batch_to_space_grad(gxs, dh, dw, pt, pl, gx):
    """gx[n, c, h, w] = gxs[phase of (h + pt, w + pl), c, (h + pt) // dh, (w + pl) // dw]."""
    N, C, H, W = gx.shape
    for n in range(N):
        for c in range(C):
            dst = gx[n, c]
            for h in range(H):
                hp = h + pt
                u = hp // dh
                a = hp - u * dh
                d = dst[h]
                for b in range(dw):
                    j0 = (b - pl) % dw               # first column j with (j + pl) % dw == b
                    v0 = (j0 + pl) // dw
                    s = gxs[(a * dw + b) * N + n, c, u]
                    for q in range((W - j0 + dw - 1) // dw):
                        d[j0 + q * dw] = s[v0 + q]


def _phase_shape(x_shape, pads, dilation):
    N, C, H, W = x_shape
    dh, dw = dilation
    pt, pb, pl, pr = pads
    return phase_plane_size(H, pt, pb, dh), phase_plane_size(W, pl, pr, dw)


def _dilate_filter(w, dilation):
    K, Cg, kh, kw = w.shape
    dh, dw = dilation
    we = np.zeros((K, Cg, effective_kernel(kh, dh), effective_kernel(kw, dw)), dtype=w.dtype)
    we[:, :, ::dh, ::dw] = w
    return we


def _dilated_forward(x, w, b, stride, pads, dilation, groups, ctx):
    N, C, H, W = x.shape
    dh, dw = dilation
    if tuple(stride) != (1, 1):
        sub = ctx.setdefault("dense", {}) if ctx is not None else None
        return _dense_or_grouped_forward(x, _dilate_filter(w, dilation), b, stride, pads, groups, sub)
    Hq, Wq = _phase_shape(x.shape, pads, dilation)
    xs = np.empty((dh * dw * N, C, Hq, Wq), dtype=x.dtype)
    _space_to_batch(x, dh, dw, pads[0], pads[2], Hq, Wq, xs)
    sub = None
    if ctx is not None:
        ctx["xs"] = xs
        sub = ctx.setdefault("phases", {})
    ys = _dense_or_grouped_forward(xs, w, b, (1, 1), (0, 0, 0, 0), groups, sub)
    Ho, Wo = conv2d_output_hw(H, W, w.shape[2:], (1, 1), pads, dilation)
    y = np.empty((N, w.shape[0], Ho, Wo), dtype=x.dtype)
    _batch_to_space(ys, dh, dw, N, y)
    return y


def _dilated_backward(gy, x, w, stride, pads, dilation, groups, need_gx, cached):
    N, C, H, W = x.shape
    dh, dw = dilation
    if tuple(stride) != (1, 1):
        sub = cached.get("dense") if cached is not None else None
        gx, gwe, gb = _dense_or_grouped_backward(gy, x, _dilate_filter(w, dilation), stride, pads, groups,
                                                 need_gx, sub)
        return gx, np.ascontiguousarray(gwe[:, :, ::dh, ::dw]), gb
    Hq, Wq = _phase_shape(x.shape, pads, dilation)
    xs = cached.get("xs") if cached is not None else None
    sub = cached.get("phases") if cached is not None else None
    if xs is None:
        xs = np.empty((dh * dw * N, C, Hq, Wq), dtype=x.dtype)
        _space_to_batch(x, dh, dw, pads[0], pads[2], Hq, Wq, xs)
        sub = None
    kh, kw = w.shape[2:]
    Hu, Wu = Hq - kh + 1, Wq - kw + 1
    gys = np.empty((dh * dw * N, w.shape[0], Hu, Wu), dtype=x.dtype)
    _space_to_batch_grad(gy, dh, dw, Hu, Wu, gys)
    gxs, gw, gb = _dense_or_grouped_backward(gys, xs, w, (1, 1), (0, 0, 0, 0), groups, need_gx, sub)
    gx = None
    if need_gx:
        gx = np.empty(x.shape, dtype=x.dtype)
        _batch_to_space_grad(gxs, dh, dw, pads[0], pads[2], gx)
    return gx, gw, gb
