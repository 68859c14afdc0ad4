"""Dilated, grouped and depthwise convolution through the CUDA kernels (under the simulator: on
NumPy arrays), against the CPU kernels and a float64 loop reference. Small shapes: the simulator
runs ~1 ms per simulated thread."""
from __future__ import annotations

import numpy as np
import pytest

import nbcnn
import nbcnn.ops as ops
from nbcnn.kernels.cuda import runtime

TOL = {np.float32: 1e-5, np.float64: 1e-12}


def _ref(x, w, b, stride, pads, dil, groups, gy):
    """float64 loops: y and (gx, gw, gb), independent of every kernel."""
    x, w, gy = (np.asarray(a, np.float64) for a in (x, w, gy))
    sh, sw = stride
    dh, dw = dil
    pt, pb, pl, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    K, Cg, kh, kw = w.shape
    Kg = K // groups
    Ho, Wo = gy.shape[2:]
    y = np.zeros(gy.shape) + np.asarray(b, np.float64)[None, :, None, None]
    gxp, gw = np.zeros_like(xp), np.zeros_like(w)
    for k in range(K):
        g = k // Kg
        for oh in range(Ho):
            for ow in range(Wo):
                win = xp[:, g * Cg:(g + 1) * Cg, oh * sh:oh * sh + (kh - 1) * dh + 1:dh,
                         ow * sw:ow * sw + (kw - 1) * dw + 1:dw]
                y[:, k, oh, ow] += (win * w[k]).sum(axis=(1, 2, 3))
                gk = gy[:, k, oh, ow][:, None, None, None]
                gw[k] += (gk * win).sum(axis=0)
                gxp[:, g * Cg:(g + 1) * Cg, oh * sh:oh * sh + (kh - 1) * dh + 1:dh,
                    ow * sw:ow * sw + (kw - 1) * dw + 1:dw] += gk * w[k]
    H, W = x.shape[2:]
    return y, gxp[:, :, pt:pt + H, pl:pl + W], gw, gy.sum(axis=(0, 2, 3))


# N, C, H, W, K, k, stride, pads, dilation, groups, dtype
CASES = [
    pytest.param(1, 3, 6, 7, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 3, np.float32, id="depthwise-N1"),
    pytest.param(3, 2, 7, 6, 4, 3, (2, 1), (1, 0, 2, 1), (2, 1), 2, np.float32, id="depthwise-m2-dil-stride"),
    pytest.param(2, 4, 6, 6, 4, 3, (1, 1), (2, 2, 2, 2), (2, 2), 2, np.float32, id="grouped-dilated"),
    pytest.param(2, 4, 5, 6, 6, 2, (2, 2), (0, 1, 1, 0), (1, 1), 2, np.float32, id="grouped-stride2"),
    pytest.param(2, 1, 7, 7, 2, 3, (2, 2), (2, 2, 2, 2), (2, 3), 1, np.float32, id="C1-dilated-stride2"),
    pytest.param(2, 2, 6, 5, 4, 3, (1, 2), (1, 1, 1, 1), (1, 2), 2, np.float64, id="f64-depthwise-m2"),
    pytest.param(1, 4, 6, 6, 2, 3, (1, 1), (2, 2, 2, 2), (2, 2), 2, np.float64, id="f64-grouped-dilated"),
]


def _on(device, fn, *arrays):
    with nbcnn.using_device(device):
        dev = [nbcnn.to_device(a) for a in arrays]
        out = fn(*dev)
    return tuple(None if o is None else nbcnn.to_numpy(o) for o in out)


@pytest.mark.parametrize("N,C,H,W,K,k,stride,pads,dil,groups,dtype", CASES)
def test_against_cpu_and_reference(N, C, H, W, K, k, stride, pads, dil, groups, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C // groups, k, k)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    gy = rng.standard_normal(ops.conv2d_output_shape(x.shape, w.shape, stride, pads, dil, groups)).astype(dtype)

    def run(x, w, b, gy):
        ctx = {}
        y = ops.conv2d(x, w, b, stride, pads, dil, groups, ctx=ctx)
        return (y, *ops.conv2d_backward(gy, x, w, stride, pads, dil, groups, ctx=ctx))

    before = runtime.launches.copy()
    got = _on("cuda", run, x, w, b, gy)
    ran = set(dict(runtime.launches - before))
    depthwise = groups == C > 1
    if depthwise:
        assert {"_dw_forward", "_dw_weight_grad", "_dw_input_grad"} <= ran
    elif dil != (1, 1):
        assert {"_im2col_dil", "_col2im_dil"} <= ran
    cpu = _on("cpu", run, x, w, b, gy)
    want = _ref(x, w, b, stride, pads, dil, groups, gy)
    for name, g, c, r in zip(("y", "gx", "gw", "gb"), got, cpu, want):
        assert g.dtype == dtype and g.shape == r.shape and np.all(np.isfinite(g)), name
        scale = max(np.abs(r).max(), 1e-30)
        assert np.abs(g - r).max() / scale <= TOL[dtype], f"{name} vs float64 reference"
        assert np.abs(g - c).max() / scale <= TOL[dtype], f"{name} vs CPU kernels"


def test_depthwise_no_gx_and_deterministic():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)

    def bwd(need_gx):
        return lambda gy, x, w: ops.conv2d_backward(gy, x, w, 1, 1, groups=2, need_gx=need_gx)

    a = _on("cuda", bwd(True), gy, x, w)
    b = _on("cuda", bwd(True), gy, x, w)
    c = _on("cuda", bwd(False), gy, x, w)
    assert c[0] is None
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(a[1], c[1])
    np.testing.assert_array_equal(a[2], c[2])
