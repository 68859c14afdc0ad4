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
element of its output, so outputs are allocated uninitialised. Dilated,
grouped and depthwise convolution: :mod:`.conv_general`.
"""
from __future__ import annotations

from numba import cuda, float64

from ..geometry import conv2d_output_hw
from ..saved import saved_for
from . import conv_general
from .runtime import I64, MAX_BLOCKS, arr, kernel, xp_of

# Threads per block of the bias-gradient kernel (= its shared array size; a power of two). The
# kernel runs one block per filter, so few filters (LeNet: 6) mean few blocks: a large block
# keeps enough loads in flight per SM to hide memory latency. Not 1024: that would cap the
# kernel at 64 registers per thread (it uses ~54 with numba-cuda 0.30; another version may use
# more, and the launch would fail), see tests/cuda/test_cuda_compile.py.
RED_TPB = 512


# Largest column matrix a layer keeps (in its ctx) from forward to backward. im2col is cheap on
# a GPU and memory is not: VGG-16 at 224x224, batch 32, would otherwise hold ~4 GB per layer.
CTX_COL_BYTES = 256 * 2**20

_GEO = (I64,) * 8  # kh, kw, sh, sw, pt, pl, Ho, Wo


@kernel(lambda f: (arr(f, 4), *_GEO, arr(f, 2)))
def _im2col(x, kh, kw, sh, sw, pt, pl, Ho, Wo, col):
    """col[(c*kh + i)*kw + j, n*P + oh*Wo + ow] = x[n, c, oh*sh - pt + i, ow*sw - pl + j] (0 outside).

    Grid: threads along x over output pixels p, blocks along y over col rows r = (c, i, j),
    along z over images n (all grid-stride), so each element costs one division.
    """
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
                ih = oh * sh - pt + i
                iw = (p - oh * Wo) * sw - pl + j
                if 0 <= ih < H and 0 <= iw < W:
                    col[r, q0 + p] = x[n, c, ih, iw]
                else:
                    col[r, q0 + p] = 0


@kernel(lambda f: (arr(f, 2), *_GEO, arr(f, 4)))
def _col2im(col, kh, kw, sh, sw, pt, pl, Ho, Wo, gx):
    """Gather: gx[n, c, h, w] = sum of the col entries im2col copied from (n, c, h, w).

    Grid: threads along x over pixels h*W + w, blocks along y over channels c, along z over
    images n. Rows i with (h + pt - i) divisible by sh are i0, i0 + sh, ...; their output
    rows oh count down by one from (h + pt - i0) / sh (same for columns), so the inner
    loops need no division.
    """
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
                hp = h + pt
                wp = w + pl
                i0 = hp % sh
                j0 = wp % sw
                oh_top = (hp - i0) // sh
                ow_top = (wp - j0) // sw
                s = gx.dtype.type(0)
                oh = oh_top
                for i in range(i0, min(kh, hp + 1), sh):
                    if oh < Ho:
                        rbase = (c * kh + i) * kw
                        qbase = n * P + oh * Wo
                        ow = ow_top
                        for j in range(j0, min(kw, wp + 1), sw):
                            if ow < Wo:
                                s += col[rbase + j, qbase + ow]
                            ow -= 1
                    oh -= 1
                gx[n, c, h, w] = s


@kernel(lambda f: (arr(f, 2), arr(f, 1), arr(f, 3)))
def _kn_to_nk_bias(y2, b, y):
    """(K, N*P) GEMM result -> (N, K, P) output, adding the bias on the way (x: p, y: k, z: n)."""
    N, K, P = y.shape
    p0 = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    pstep = cuda.gridDim.x * cuda.blockDim.x
    for k in range(cuda.blockIdx.y, K, cuda.gridDim.y):
        bk = b[k]
        for n in range(cuda.blockIdx.z, N, cuda.gridDim.z):
            q0 = n * P
            for p in range(p0, P, pstep):
                y[n, k, p] = y2[k, q0 + p] + bk


@kernel(lambda f: (arr(f, 3), arr(f, 2), arr(f, 1)))
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


def _geometry(x_shape, w_shape, stride, pads, dilation=(1, 1)):
    N, C, H, W = x_shape
    K, _, kh, kw = w_shape
    sh, sw = stride
    pt, pb, pl, pr = pads
    Ho, Wo = conv2d_output_hw(H, W, (kh, kw), stride, pads, dilation)
    return N, C, K, kh, kw, sh, sw, pt, pl, Ho, Wo


def _col(x, w_shape, stride, pads, geo, out=None, dilation=(1, 1)):
    N, C, K, kh, kw, sh, sw, pt, pl, Ho, Wo = geo
    if tuple(dilation) != (1, 1):
        return conv_general.im2col(x, w_shape, stride, pads, dilation, Ho, Wo, out)
    xp = xp_of(x)
    R, NP = C * kh * kw, N * Ho * Wo
    col = out if out is not None else xp.empty((R, NP), dtype=x.dtype)
    _im2col.grid3(Ho * Wo, R, N, x, kh, kw, sh, sw, pt, pl, Ho, Wo, col)
    return col


def _grouped_matmul(xp, a, bmat, groups, transpose_a=False, transpose_b=False):
    """Block-diagonal product: rows of group g of the result = op(a_g) @ op(b_g), where a_g and
    b_g are group g's contiguous blocks of rows of ``a`` and ``b`` (op: optional transpose)."""
    if groups == 1:
        return xp.matmul(a.T if transpose_a else a, bmat.T if transpose_b else bmat)
    ra, rb = a.shape[0] // groups, bmat.shape[0] // groups
    parts = []
    for g in range(groups):
        ag, bg = a[g * ra:(g + 1) * ra], bmat[g * rb:(g + 1) * rb]
        parts.append(xp.matmul(ag.T if transpose_a else ag, bg.T if transpose_b else bg))
    return xp.concatenate(parts, axis=0)


def _is_depthwise(x, w, groups):
    return groups > 1 and groups == x.shape[1] and w.shape[1] == 1


def conv2d_forward(x, w, b, stride, pads, ctx=None, dilation=(1, 1), groups=1):
    dilation = tuple(dilation)
    if _is_depthwise(x, w, groups):
        if ctx is not None:
            ctx.clear()
        return conv_general.depthwise_forward(x, w, b, stride, pads, dilation)
    xp = xp_of(x)
    geo = _geometry(x.shape, w.shape, stride, pads, dilation)
    N, C, K, kh, kw, sh, sw, pt, pl, Ho, Wo = geo
    R, NP = C * kh * kw, N * Ho * Wo
    key = (xp.__name__, x.shape, w.shape, stride, pads, dilation, groups)
    buf = None
    if ctx is not None:
        old = ctx.get("col")
        if old is not None and xp_of(old) is xp and old.shape == (R, NP) and old.dtype == x.dtype:
            buf = old  # reuse the previous step's column matrix
    col = _col(x, w.shape, stride, pads, geo, buf, dilation)
    if ctx is not None:
        ctx.clear()
        if col.nbytes <= CTX_COL_BYTES:
            ctx.update(key=key, col=col, x=x)  # the backward reuses col only for this very x
        # else the backward recomputes the columns: one more im2col instead of holding
        # C*kh*kw copies of the input per layer on the GPU until the backward pass
    y2 = _grouped_matmul(xp, w.reshape(K, -1), col, groups)
    bias = b if b is not None else xp.zeros(K, dtype=x.dtype)
    y = xp.empty((N, K, Ho, Wo), dtype=x.dtype)
    _kn_to_nk_bias.grid3(Ho * Wo, K, N, y2, bias, y.reshape(N, K, Ho * Wo))
    return y


def conv2d_backward(gy, x, w, stride, pads, need_gx=True, ctx=None, dilation=(1, 1), groups=1):
    dilation = tuple(dilation)
    if _is_depthwise(x, w, groups):
        return conv_general.depthwise_backward(gy, x, w, stride, pads, dilation, need_gx)
    xp = xp_of(x)
    geo = _geometry(x.shape, w.shape, stride, pads, dilation)
    N, C, K, kh, kw, sh, sw, pt, pl, Ho, Wo = geo
    R, NP = C * kh * kw, N * Ho * Wo
    key = (xp.__name__, x.shape, w.shape, stride, pads, dilation, groups)
    col = saved_for(ctx, key, x).get("col")
    if col is None:
        col = _col(x, w.shape, stride, pads, geo, dilation=dilation)
    gyT = xp.empty((K, NP), dtype=x.dtype)
    gb = xp.empty(K, dtype=x.dtype)
    _nk_to_kn_bias_grad.launch(min(K, MAX_BLOCKS), RED_TPB, gy.reshape(N, K, Ho * Wo), gyT, gb)
    gw = _grouped_matmul(xp, gyT, col, groups, transpose_b=True).reshape(w.shape)
    gx = None
    if need_gx:
        gcol = _grouped_matmul(xp, w.reshape(K, -1), gyT, groups, transpose_a=True)
        if dilation != (1, 1):
            gx = conv_general.col2im(gcol, x.shape, w.shape, stride, pads, dilation, Ho, Wo, xp)
        else:
            gx = xp.empty(x.shape, dtype=x.dtype)
            _col2im.grid3(x.shape[2] * x.shape[3], C, N, gcol, kh, kw, sh, sw, pt, pl, Ho, Wo, gx)
    return gx, gw, gb
