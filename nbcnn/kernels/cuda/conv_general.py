"""Dilated, grouped and depthwise convolution on the GPU.

* dilated (and dilated + grouped): im2col / col2im kernels with the taps
  spaced ``(dh, dw)`` apart, then the same cuBLAS GEMMs as :mod:`.conv`;
* grouped: the column matrix of all C channels is built once; group g's
  filters multiply its contiguous block of rows (``C // groups * kh * kw``),
  one GEMM per group, no copy of the input;
* depthwise (one input channel per group): direct kernels, no GEMM. The
  forward is one thread per output element, the input gradient one thread per
  input element (a gather over the filters and taps that read it), the weight
  and bias gradients one block per (filter, tap) with a fixed-shape float64
  tree reduction in shared memory: race-free and deterministic.
"""
from __future__ import annotations

from numba import cuda, float64

from ..geometry import conv2d_output_hw
from .runtime import I64, MAX_BLOCKS, arr, kernel, xp_of

RED_TPB = 256   # threads (= shared slots) of the depthwise weight-gradient blocks; a power of two

_GEO = (I64,) * 10  # kh, kw, sh, sw, dh, dw, pt, pl, Ho, Wo


@kernel(lambda f: (arr(f, 4), *_GEO, arr(f, 2)))
def _im2col_dil(x, kh, kw, sh, sw, dh, dw, pt, pl, Ho, Wo, col):
    """col[(c*kh + i)*kw + j, n*P + oh*Wo + ow] = x[n, c, oh*sh - pt + i*dh, ow*sw - pl + j*dw] (0 outside)."""
    N, C, H, W = x.shape
    P = Ho * Wo
    R = col.shape[0]
    khw = kh * kw
    p0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    pstep = cuda.gridDim.x * cuda.blockDim.x
    for r in range(cuda.blockIdx.y, R, cuda.gridDim.y):
        c = r // khw
        ij = r - c * khw
        i = ij // kw
        j = ij - i * kw
        for n in range(cuda.blockIdx.z, N, cuda.gridDim.z):
            q0 = n * P
            for p in range(p0, P, pstep):
                oh = p // Wo
                ih = oh * sh - pt + i * dh
                iw = (p - oh * Wo) * sw - pl + j * dw
                if 0 <= ih < H and 0 <= iw < W:
                    col[r, q0 + p] = x[n, c, ih, iw]
                else:
                    col[r, q0 + p] = 0


@kernel(lambda f: (arr(f, 2), *_GEO, arr(f, 4)))
def _col2im_dil(col, kh, kw, sh, sw, dh, dw, pt, pl, Ho, Wo, gx):
    """Gather: gx[n, c, h, w] = sum of the col entries _im2col_dil copied from (n, c, h, w)."""
    N, C, H, W = gx.shape
    P = Ho * Wo
    HW = H * W
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for c in range(cuda.blockIdx.y, C, cuda.gridDim.y):
        for n in range(cuda.blockIdx.z, N, cuda.gridDim.z):
            for t in range(t0, HW, tstep):
                h = t // W
                w = t - h * W
                s = gx.dtype.type(0)
                for i in range(kh):
                    a = h + pt - i * dh
                    if a < 0:
                        break
                    oh = a // sh
                    if oh * sh != a or oh >= Ho:
                        continue
                    for j in range(kw):
                        b = w + pl - j * dw
                        if b < 0:
                            break
                        ow = b // sw
                        if ow * sw == b and ow < Wo:
                            s += col[(c * kh + i) * kw + j, n * P + oh * Wo + ow]
                gx[n, c, h, w] = s


@kernel(lambda f: (arr(f, 4), arr(f, 4), arr(f, 1), I64, *_GEO[2:8], arr(f, 4)))
def _dw_forward(x, w, b, M, sh, sw, dh, dw, pt, pl, y):
    """y[n, k, oh, ow] = b[k] + sum_ij w[k, 0, i, j] * x[n, k // M, oh*sh - pt + i*dh, ow*sw - pl + j*dw].

    Grid: threads along x over output pixels, blocks along y over filters k, along z over images n.
    """
    N, K, Ho, Wo = y.shape
    H, W = x.shape[2], x.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    P = Ho * Wo
    p0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    pstep = cuda.gridDim.x * cuda.blockDim.x
    for k in range(cuda.blockIdx.y, K, cuda.gridDim.y):
        c = k // M
        for n in range(cuda.blockIdx.z, N, cuda.gridDim.z):
            for p in range(p0, P, pstep):
                oh = p // Wo
                ow = p - oh * Wo
                s = b[k]
                for i in range(kh):
                    ih = oh * sh - pt + i * dh
                    if 0 <= ih < H:
                        for j in range(kw):
                            iw = ow * sw - pl + j * dw
                            if 0 <= iw < W:
                                s += w[k, 0, i, j] * x[n, c, ih, iw]
                y[n, k, oh, ow] = s


@kernel(lambda f: (arr(f, 4), arr(f, 4), I64, *_GEO[2:8], arr(f, 4)))
def _dw_input_grad(gy, w, M, sh, sw, dh, dw, pt, pl, gx):
    """Gather: gx[n, c, h, w] = sum over the M filters of c and the taps (i, j) whose window reads (h, w)."""
    N, C, H, W = gx.shape
    Ho, Wo = gy.shape[2], gy.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    HW = H * W
    t0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    tstep = cuda.gridDim.x * cuda.blockDim.x
    for c in range(cuda.blockIdx.y, C, cuda.gridDim.y):
        for n in range(cuda.blockIdx.z, N, cuda.gridDim.z):
            for t in range(t0, HW, tstep):
                h = t // W
                v = t - h * W
                s = gx.dtype.type(0)
                for m in range(M):
                    k = c * M + m
                    for i in range(kh):
                        a = h + pt - i * dh
                        if a < 0:
                            break
                        oh = a // sh
                        if oh * sh != a or oh >= Ho:
                            continue
                        for j in range(kw):
                            bb = v + pl - j * dw
                            if bb < 0:
                                break
                            ow = bb // sw
                            if ow * sw == bb and ow < Wo:
                                s += w[k, 0, i, j] * gy[n, k, oh, ow]
                gx[n, c, h, v] = s


@kernel(lambda f: (arr(f, 4), arr(f, 4), I64, *_GEO, arr(f, 4), arr(f, 1)))
def _dw_weight_grad(gy, x, M, kh, kw, sh, sw, dh, dw, pt, pl, Ho, Wo, gw, gb):
    """One block per (filter k, tap t): gw[k, 0, i, j] (t = i*kw + j) or gb[k] (t = kh*kw).

    Each thread sums a fixed strided share of the N*Ho*Wo products in float64, then a
    fixed-shape tree reduction in shared memory: deterministic. blockDim.x must be a
    power of two <= RED_TPB.
    """
    N, K = gy.shape[0], gy.shape[1]
    H, W = x.shape[2], x.shape[3]
    T = kh * kw + 1
    P = Ho * Wo
    NP = N * P
    buf = cuda.shared.array(RED_TPB, float64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for bt in range(cuda.blockIdx.x, K * T, cuda.gridDim.x):
        k = bt // T
        tap = bt - k * T
        c = k // M
        i = tap // kw
        j = tap - i * kw
        s = 0.0
        for q in range(tid, NP, nt):
            n = q // P
            p = q - n * P
            oh = p // Wo
            ow = p - oh * Wo
            g = gy[n, k, oh, ow]
            if tap == kh * kw:
                s += g
            else:
                ih = oh * sh - pt + i * dh
                iw = ow * sw - pl + j * dw
                if 0 <= ih < H and 0 <= iw < W:
                    s += g * x[n, c, ih, iw]
        buf[tid] = s
        cuda.syncthreads()
        half = nt // 2
        while half > 0:
            if tid < half:
                buf[tid] += buf[tid + half]
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            if tap == kh * kw:
                gb[k] = buf[0]
            else:
                gw[k, 0, i, j] = buf[0]
        cuda.syncthreads()  # buf is reused for the next (k, tap)


def depthwise_forward(x, w, b, stride, pads, dilation):
    xp = xp_of(x)
    N, C, H, W = x.shape
    K, _, kh, kw = w.shape
    Ho, Wo = conv2d_output_hw(H, W, (kh, kw), stride, pads, dilation)
    y = xp.empty((N, K, Ho, Wo), dtype=x.dtype)
    bias = b if b is not None else xp.zeros(K, dtype=x.dtype)
    _dw_forward.grid3(Ho * Wo, K, N, x, w, bias, K // C, stride[0], stride[1], dilation[0], dilation[1],
                      pads[0], pads[2], y)
    return y


def depthwise_backward(gy, x, w, stride, pads, dilation, need_gx):
    xp = xp_of(x)
    N, C, H, W = x.shape
    K, _, kh, kw = w.shape
    Ho, Wo = gy.shape[2], gy.shape[3]
    gw = xp.empty(w.shape, dtype=x.dtype)
    gb = xp.empty(K, dtype=x.dtype)
    _dw_weight_grad.launch(min(K * (kh * kw + 1), MAX_BLOCKS), RED_TPB, gy, x, K // C, kh, kw, stride[0],
                           stride[1], dilation[0], dilation[1], pads[0], pads[2], Ho, Wo, gw, gb)
    gx = None
    if need_gx:
        gx = xp.empty(x.shape, dtype=x.dtype)
        _dw_input_grad.grid3(H * W, C, N, gy, w, K // C, stride[0], stride[1], dilation[0], dilation[1],
                             pads[0], pads[2], gx)
    return gx, gw, gb


def im2col(x, w_shape, stride, pads, dilation, Ho, Wo, out=None):
    xp = xp_of(x)
    N, C = x.shape[0], x.shape[1]
    kh, kw = w_shape[2], w_shape[3]
    R = C * kh * kw
    col = out if out is not None else xp.empty((R, N * Ho * Wo), dtype=x.dtype)
    _im2col_dil.grid3(Ho * Wo, R, N, x, kh, kw, stride[0], stride[1], dilation[0], dilation[1], pads[0],
                      pads[2], Ho, Wo, col)
    return col


def col2im(gcol, x_shape, w_shape, stride, pads, dilation, Ho, Wo, xp):
    N, C, H, W = x_shape
    gx = xp.empty(x_shape, dtype=gcol.dtype)
    _col2im_dil.grid3(H * W, C, N, gcol, w_shape[2], w_shape[3], stride[0], stride[1], dilation[0], dilation[1],
                      pads[0], pads[2], Ho, Wo, gx)
    return gx
