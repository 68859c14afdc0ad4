"""Convolution (cross-correlation) on the GPU: im2col kernel + cuBLAS GEMM (``xp.matmul``).

Same algorithm and data layout as the CPU's im2col path
(:mod:`nbcnn.kernels.cpu.conv`), so the two read side by side:

* forward: ``col (C*kh*kw, N*Ho*Wo)`` = im2col(x); ``y2 = w2 @ col`` (one
  GEMM); a kernel scatters ``y2 (K, N*P)`` to NCHW while adding the bias.
* backward: one kernel turns ``gy`` into ``gyT (K, N*P)`` and reduces the bias
  gradient on the way; ``gw = gyT @ col.T``; ``gcol = w2.T @ gyT``; a
  gather-style col2im (one thread per input element, summing every column
  entry that came from it) writes ``gx`` — race-free and deterministic.

Padding and stride are fused into im2col/col2im. Every kernel writes every
element of its output, so outputs are allocated uninitialised.
"""
from __future__ import annotations

from numba import cuda, float64

from .runtime import I64, MAX_BLOCKS, arr, kernel, xp_of

RED_TPB = 256  # threads per block of the bias-gradient reduction (shared array size; power of 2)


_GEO = (I64,) * 8  # kh, kw, sh, sw, pt, pl, Ho, Wo


@kernel(lambda f: (arr(f, 4), *_GEO, arr(f, 2)))
def _im2col(x, kh, kw, sh, sw, pt, pl, Ho, Wo, col):
    """col[(c*kh + i)*kw + j, n*P + oh*Wo + ow] = x[n, c, oh*sh - pt + i, ow*sw - pl + j] (0 outside)."""
    N, C, H, W = x.shape
    P = Ho * Wo
    NP = N * P
    total = col.shape[0] * NP
    khw = kh * kw
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        r = t // NP
        q = t - r * NP
        n = q // P
        p = q - n * P
        oh = p // Wo
        ow = p - oh * Wo
        c = r // khw
        ij = r - c * khw
        i = ij // kw
        j = ij - i * kw
        ih = oh * sh - pt + i
        iw = ow * sw - pl + j
        if 0 <= ih < H and 0 <= iw < W:
            col[r, q] = x[n, c, ih, iw]
        else:
            col[r, q] = 0


@kernel(lambda f: (arr(f, 2), *_GEO, arr(f, 4)))
def _col2im(col, kh, kw, sh, sw, pt, pl, Ho, Wo, gx):
    """Gather: gx[n, c, h, w] = sum of the col entries im2col copied from (n, c, h, w)."""
    N, C, H, W = gx.shape
    P = Ho * Wo
    total = N * C * H * W
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        w = t % W
        r = t // W
        h = r % H
        r = r // H
        c = r % C
        n = r // C
        hp = h + pt
        wp = w + pl
        s = gx.dtype.type(0)
        # rows i with (hp - i) divisible by sh and 0 <= oh = (hp - i) / sh < Ho
        for i in range(hp % sh, min(kh, hp + 1), sh):
            oh = (hp - i) // sh
            if oh >= Ho:
                continue
            rbase = (c * kh + i) * kw
            qbase = n * P + oh * Wo
            for j in range(wp % sw, min(kw, wp + 1), sw):
                ow = (wp - j) // sw
                if ow < Wo:
                    s += col[rbase + j, qbase + ow]
        gx[n, c, h, w] = s


@kernel(lambda f: (arr(f, 2), arr(f, 1), arr(f, 3)))
def _kn_to_nk_bias(y2, b, y):
    """(K, N*P) GEMM result -> (N, K, P) output, adding the bias on the way."""
    N, K, P = y.shape
    total = N * K * P
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        p = t % P
        r = t // P
        k = r % K
        n = r // K
        y[n, k, p] = y2[k, n * P + p] + b[k]


@kernel(lambda f: (arr(f, 3), arr(f, 2), arr(f, 1)), fixed_tpb=RED_TPB)
def _nk_to_kn_bias_grad(gy, out, gb):
    """One block per filter k: out[k, n*P + p] = gy[n, k, p] and gb[k] = their sum.

    The sum is a float64 tree reduction in shared memory with a fixed shape,
    so it is deterministic. Needs blockDim.x a power of two <= RED_TPB.
    """
    N, K, P = gy.shape
    NP = N * P
    buf = cuda.shared.array(RED_TPB, float64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for k in range(cuda.blockIdx.x, K, cuda.gridDim.x):
        s = 0.0
        for q in range(tid, NP, nt):
            n = q // P
            v = gy[n, k, q - n * P]
            out[k, q] = v
            s += v
        buf[tid] = s
        cuda.syncthreads()
        half = nt // 2
        while half > 0:
            if tid < half:
                buf[tid] += buf[tid + half]
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            gb[k] = buf[0]
        cuda.syncthreads()  # buf is reused for the next k


def _geometry(x_shape, w_shape, stride, pads):
    N, C, H, W = x_shape
    K, _, kh, kw = w_shape
    sh, sw = stride
    pt, pb, pl, pr = pads
    Ho = (H + pt + pb - kh) // sh + 1
    Wo = (W + pl + pr - kw) // sw + 1
    return N, C, K, kh, kw, sh, sw, pt, pl, Ho, Wo


def _col(x, w_shape, stride, pads, geo, out=None):
    N, C, K, kh, kw, sh, sw, pt, pl, Ho, Wo = geo
    xp = xp_of(x)
    R, NP = C * kh * kw, N * Ho * Wo
    col = out if out is not None else xp.empty((R, NP), dtype=x.dtype)
    _im2col(R * NP, x, kh, kw, sh, sw, pt, pl, Ho, Wo, col)
    return col


def conv2d_forward(x, w, b, stride, pads, ctx=None):
    xp = xp_of(x)
    geo = _geometry(x.shape, w.shape, stride, pads)
    N, C, K, kh, kw, sh, sw, pt, pl, Ho, Wo = geo
    R, NP = C * kh * kw, N * Ho * Wo
    key = (xp.__name__, x.shape, w.shape, stride, pads)
    buf = None
    if ctx is not None:
        old = ctx.get("col")
        if old is not None and xp_of(old) is xp and old.shape == (R, NP) and old.dtype == x.dtype:
            buf = old  # reuse the previous step's column matrix
    col = _col(x, w.shape, stride, pads, geo, buf)
    if ctx is not None:
        ctx.clear()
        ctx.update(key=key, col=col)
    y2 = xp.matmul(w.reshape(K, R), col)
    bias = b if b is not None else xp.zeros(K, dtype=x.dtype)
    y = xp.empty((N, K, Ho, Wo), dtype=x.dtype)
    _kn_to_nk_bias(y.size, y2, bias, y.reshape(N, K, Ho * Wo))
    return y


def conv2d_backward(gy, x, w, stride, pads, need_gx=True, ctx=None):
    xp = xp_of(x)
    geo = _geometry(x.shape, w.shape, stride, pads)
    N, C, K, kh, kw, sh, sw, pt, pl, Ho, Wo = geo
    R, NP = C * kh * kw, N * Ho * Wo
    key = (xp.__name__, x.shape, w.shape, stride, pads)
    col = ctx.get("col") if (ctx is not None and ctx.get("key") == key) else None
    if col is None:
        col = _col(x, w.shape, stride, pads, geo)
    gyT = xp.empty((K, NP), dtype=x.dtype)
    gb = xp.empty(K, dtype=x.dtype)
    _nk_to_kn_bias_grad.launch(min(K, MAX_BLOCKS), RED_TPB, gy.reshape(N, K, Ho * Wo), gyT, gb)
    gw = xp.matmul(gyT, col.T).reshape(w.shape)
    gx = None
    if need_gx:
        gcol = xp.matmul(w.reshape(K, R).T, gyT)
        gx = xp.empty(x.shape, dtype=x.dtype)
        _col2im(gx.size, gcol, kh, kw, sh, sw, pt, pl, Ho, Wo, gx)
    return gx, gw, gb
