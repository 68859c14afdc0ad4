"""Parallel == serial, bitwise, and run to run: no races, no order-dependent reductions."""
from __future__ import annotations

import numba
import numpy as np
import pytest

from nbcnn import ops

CASES = [
    # (N, C, H, W, K, k, stride, padding): im2col, direct, strided, 1x1, Winograd, lanes
    (4, 8, 12, 12, 6, 3, 1, 1),
    (8, 1, 14, 14, 4, 5, 1, 2),
    (3, 2, 11, 11, 5, 3, 1, 0),
    (4, 4, 13, 13, 6, 3, 2, 1),
    (4, 6, 9, 9, 5, 1, 1, 0),
    (5, 32, 17, 15, 33, 3, 1, 1),   # float32: Winograd (chunks of tile rows, per-group partial sums)
    (32, 6, 14, 14, 16, 5, 1, 0),   # float32: batch in the lanes (per-group partial sums)
]


def _run_all(case, dtype):
    N, C, H, W, K, k, s, p = case
    rng = np.random.default_rng(11)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, k, k)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    ctx = {}
    y = ops.conv2d(x, w, b, s, p, ctx=ctx)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx, gw, gb = ops.conv2d_backward(gy, x, w, s, p, ctx=ctx)
    pctx = {}
    m = ops.max_pool2d(x, 2, ctx=pctx)
    gm = ops.max_pool2d_backward(np.ones_like(m), x, 2, ctx=pctx)
    a = ops.avg_pool2d(x, 3, 2, 1)
    ga = ops.avg_pool2d_backward(np.ones_like(a), x, 3, 2, 1)
    out = [y, gx, gw, gb, m, gm, a, ga]
    # ceil-mode / count_include_pad=False pooling, global pooling, batch norm (train and frozen), LRN
    a2 = ops.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    out += [a2, ops.avg_pool2d_backward(np.ones_like(a2), x, 3, 2, 1, ceil_mode=True, count_include_pad=False)]
    g2 = rng.standard_normal((N, C)).astype(dtype)
    out += [ops.global_avg_pool2d(x), ops.global_avg_pool2d_backward(g2, x), ops.global_max_pool2d(x),
            ops.global_max_pool2d_backward(g2, x)]
    gamma, beta = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    rm, rv = np.zeros(C, dtype), np.ones(C, dtype)
    bctx = {}
    out += [ops.batch_norm(x, gamma, beta, rm, rv, training=True, ctx=bctx), rm, rv,
            *ops.batch_norm_backward(gy if gy.shape == x.shape else x, x, gamma, ctx=bctx),
            *ops.batch_norm_backward(x, x, gamma, training=False, running_mean=rm, running_var=rv)]
    lctx = {}
    out += [ops.lrn(x, 5, alpha=0.1, ctx=lctx), ops.lrn_backward(x, x, 5, alpha=0.1, ctx=lctx)]
    for name in ("gelu", "silu", "hard_swish", "tanh"):
        out += [ops.activation(x, name), ops.activation_backward(x, x, name)]
    rows = x.reshape(N, -1)
    gb = np.empty(rows.shape[1], dtype)
    out += [ops.activation_backward(rows, rows, "elu", bias_grad=gb), gb]
    return out


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parallel_equals_serial_and_run_to_run(case, dtype):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs NUMBA_NUM_THREADS >= 2")
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        par1 = _run_all(case, dtype)
        par2 = _run_all(case, dtype)
        numba.set_num_threads(1)
        ser = _run_all(case, dtype)
    finally:
        numba.set_num_threads(before)
    for a, b, c in zip(par1, par2, ser):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
