"""Batch norm and LRN ops: float64 references, in-place running statistics, finite differences,
bad input, and PyTorch / onnxruntime as extra oracles where installed."""
from __future__ import annotations

import numpy as np
import pytest

import _reference as ref
from nbcnn import ops

BN_SHAPES = [(3, 5, 7, 6), (1, 3, 4, 5), (4, 1, 3, 3), (6, 4), (2, 1), (1, 2, 1, 3)]


def _rand(shape, seed, dtype=np.float64, scale=1.0, shift=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + shift).astype(dtype)


def _bn_args(shape, dtype, seed=0):
    C = shape[1]
    x = _rand(shape, seed, dtype, 2.0, 3.0)
    g, b = _rand(C, seed + 1, dtype), _rand(C, seed + 2, dtype)
    rm = _rand(C, seed + 3, dtype)
    rv = (np.random.default_rng(seed + 4).random(C) + 0.5).astype(dtype)
    return x, g, b, rm, rv


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_train_updates_running_stats_in_place(shape, dtype):
    x, g, b, rm, rv = _bn_args(shape, dtype)
    rm0, rv0 = rm.copy(), rv.copy()
    ids = (id(rm), id(rv))
    y = ops.batch_norm(x, g, b, rm, rv, training=True, momentum=0.3, eps=1e-3)
    yr, m, _, vu = ref.batch_norm_train(x, g, b, 1e-3)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, yr, rtol=tol, atol=tol * 10)
    assert (id(rm), id(rv)) == ids and rm.dtype == dtype
    np.testing.assert_allclose(rm, 0.7 * rm0 + 0.3 * m, rtol=tol, atol=tol)
    np.testing.assert_allclose(rv, 0.7 * rv0 + 0.3 * vu, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batch_norm_eval_uses_running_stats_and_changes_nothing(shape):
    x, g, b, rm, rv = _bn_args(shape, np.float64)
    rm0, rv0 = rm.copy(), rv.copy()
    y = ops.batch_norm(x, g, b, rm, rv, training=False, eps=1e-5)
    shp = (1, -1) + (1,) * (x.ndim - 2)
    np.testing.assert_allclose(y, (x - rm.reshape(shp)) / np.sqrt(rv.reshape(shp) + 1e-5) * g.reshape(shp)
                               + b.reshape(shp), rtol=1e-12)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    ynone = ops.batch_norm(x, None, None, rm, rv, training=False)
    np.testing.assert_allclose(ynone, (x - rm.reshape(shp)) / np.sqrt(rv.reshape(shp) + 1e-5), rtol=1e-12)


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batch_norm_backward_reference_and_fd(shape):
    x, g, b, rm, rv = _bn_args(shape, np.float64)
    gy = _rand(shape, 9)
    ctx = {}
    ops.batch_norm(x, g, b, rm.copy(), rv.copy(), training=True, eps=1e-3, ctx=ctx)
    got = ops.batch_norm_backward(gy, x, g, eps=1e-3, ctx=ctx)
    for a, w in zip(got, ref.batch_norm_train_backward(gy, x, g, 1e-3)):
        np.testing.assert_allclose(a, w, rtol=1e-9, atol=1e-11)
    for a, w in zip(ops.batch_norm_backward(gy, x, g, eps=1e-3), got):   # without the forward's ctx
        np.testing.assert_allclose(a, w, rtol=1e-13, atol=1e-14)

    def loss(xx, gg, bb):
        return float((gy * ops.batch_norm(xx, gg, bb, rm.copy(), rv.copy(), training=True, eps=1e-3)).sum())

    rng = np.random.default_rng(5)
    e = 1e-6
    for which, grad in enumerate(got):
        d = rng.standard_normal(grad.shape)
        plus, minus = [x, g, b], [x, g, b]
        plus[which] = plus[which] + e * d
        minus[which] = minus[which] - e * d
        fd = (loss(*plus) - loss(*minus)) / (2 * e)
        an = float((grad * d).sum())
        assert abs(fd - an) <= 1e-6 * (1 + abs(an)), (which, fd, an)


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batch_norm_frozen_backward_fd(shape):
    x, g, b, rm, rv = _bn_args(shape, np.float64)
    gy = _rand(shape, 9)
    gx, gg, gb = ops.batch_norm_backward(gy, x, g, eps=1e-3, training=False, running_mean=rm, running_var=rv)

    def loss(xx, gg_, bb):
        return float((gy * ops.batch_norm(xx, gg_, bb, rm, rv, training=False, eps=1e-3)).sum())

    rng = np.random.default_rng(6)
    for which, grad in enumerate((gx, gg, gb)):
        d = rng.standard_normal(grad.shape)
        plus, minus = [x, g, b], [x, g, b]
        plus[which] = plus[which] + d
        minus[which] = minus[which] - d
        fd = (loss(*plus) - loss(*minus)) / 2       # affine in each argument: exact
        assert abs(fd - float((grad * d).sum())) <= 1e-9 * (1 + abs(fd))


def test_batch_norm_float32_large_offset_is_stable():
    """A channel mean far from 0 must not cancel the variance (the sums are shifted)."""
    x = _rand((8, 2, 16, 16), 0, np.float32, 1.0, 1000.0)
    y = ops.batch_norm(x, None, None, np.zeros(2, np.float32), np.ones(2, np.float32), training=True)
    yr = ref.batch_norm_train(x, np.ones(2), np.zeros(2), 1e-5)[0]
    np.testing.assert_allclose(y, yr, atol=2e-3)


def test_batch_norm_validation():
    x, g, b, rm, rv = _bn_args((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\)"):
        ops.batch_norm(x, g[:2], b, rm, rv, training=True)
    with pytest.raises(TypeError, match="running_var has dtype float64"):
        ops.batch_norm(x, g, b, rm, rv.astype(np.float64), training=True)
    with pytest.raises(ValueError, match="4-D .* or 2-D"):
        ops.batch_norm(x[0], g, b, rm, rv, training=True)
    with pytest.raises(ValueError, match="momentum must be in"):
        ops.batch_norm(x, g, b, rm, rv, training=True, momentum=1.5)
    with pytest.raises(ValueError, match="eps must be > 0"):
        ops.batch_norm(x, g, b, rm, rv, training=True, eps=0)
    with pytest.raises(ValueError, match="more than one value per channel"):
        ops.batch_norm(np.ones((1, 3), np.float32), g, b, rm, rv, training=True)
    with pytest.raises(ValueError, match="needs running_mean"):
        ops.batch_norm_backward(x, x, g, training=False)
    with pytest.raises(ValueError, match="gy has shape"):
        ops.batch_norm_backward(x[:1], x, g)


@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (5, 3), (1, 1, 3, 2)], ids=str)
def test_batch_norm_against_torch(shape):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, g, b, rm, rv = _bn_args(shape, np.float32)
    rmt, rvt = torch.tensor(rm), torch.tensor(rv)
    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, g, b))
    yt = F.batch_norm(xt, rmt, rvt, gt, bt, training=True, momentum=0.1, eps=1e-5)
    gy = _rand(shape, 7, np.float32)
    yt.backward(torch.tensor(gy))
    ctx = {}
    y = ops.batch_norm(x, g, b, rm, rv, training=True, momentum=0.1, eps=1e-5, ctx=ctx)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rm, rmt.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, rvt.numpy(), rtol=1e-5, atol=1e-6)
    for a, t in zip(ops.batch_norm_backward(gy, x, g, ctx=ctx), (xt, gt, bt)):
        np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-4, atol=1e-4)
    ye = F.batch_norm(torch.tensor(x), rmt, rvt, torch.tensor(g), torch.tensor(b), training=False)
    np.testing.assert_allclose(ops.batch_norm(x, g, b, rm, rv, training=False), ye.numpy(), rtol=1e-5, atol=1e-5)


# -- LRN -----------------------------------------------------------------------------------------

LRN_CASES = [((2, 7, 5, 4), 5), ((1, 1, 3, 3), 3), ((2, 4, 3, 5), 2), ((1, 6, 2, 2), 1), ((3, 3, 17, 19), 4),
             ((1, 5, 1, 1), 9)]


@pytest.mark.parametrize("shape,size", LRN_CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lrn_vs_reference(shape, size, dtype):
    x = _rand(shape, 0, dtype, 3.0)
    for alpha, beta, k in ((1e-4, 0.75, 1.0), (0.3, 0.6, 2.0), (0.5, 0.5, 1.5), (0.2, 1.0, 1.0)):
        y = ops.lrn(x, size, alpha=alpha, beta=beta, k=k)
        tol = 2e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(y, ref.lrn(x, size, alpha, beta, k), rtol=tol, atol=tol)


@pytest.mark.parametrize("shape,size", LRN_CASES, ids=str)
def test_lrn_backward_fd(shape, size):
    x = _rand(shape, 0, np.float64, 3.0)
    gy = _rand(shape, 1)
    for alpha, beta, k in ((0.3, 0.75, 2.0), (0.4, 0.6, 1.0)):
        kw = dict(alpha=alpha, beta=beta, k=k)
        ctx = {}
        ops.lrn(x, size, **kw, ctx=ctx)
        gx = ops.lrn_backward(gy, x, size, **kw, ctx=ctx)
        np.testing.assert_allclose(ops.lrn_backward(gy, x, size, **kw), gx, rtol=1e-13, atol=1e-14)
        d = _rand(shape, 2)
        e = 1e-6
        fd = ((gy * ops.lrn(x + e * d, size, **kw)).sum() - (gy * ops.lrn(x - e * d, size, **kw)).sum()) / (2 * e)
        assert abs(fd - (gx * d).sum()) < 1e-6 * (1 + abs(fd))


def test_lrn_edges_by_hand():
    """C = 3, size 3: channel 0 sees channels 0, 1 (zero beyond the edge); channel 2 sees 1, 2."""
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    y = ops.lrn(x, 3, alpha=3.0, beta=1.0, k=1.0).ravel()
    np.testing.assert_allclose(y, [1 / (1 + 5), 2 / (1 + 14), 3 / (1 + 13)])
    y2 = ops.lrn(x, 2, alpha=2.0, beta=1.0, k=1.0).ravel()   # even: 0 before, 1 after (ONNX)
    np.testing.assert_allclose(y2, [1 / (1 + 5), 2 / (1 + 13), 3 / (1 + 9)])


def test_lrn_validation():
    x = np.ones((1, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match="size must be a positive int"):
        ops.lrn(x, 0)
    with pytest.raises(ValueError, match="k must be > 0"):
        ops.lrn(x, 3, k=0.0)
    with pytest.raises(ValueError, match="4-D"):
        ops.lrn(x[0], 3)


@pytest.mark.parametrize("shape,size", [((2, 7, 5, 4), 5), ((1, 4, 3, 3), 3)], ids=str)
def test_lrn_against_torch_odd_sizes(shape, size):
    torch = pytest.importorskip("torch")
    x = _rand(shape, 0, np.float32, 3.0)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.local_response_norm(xt, size, alpha=0.1, beta=0.75, k=2.0)
    gy = _rand(shape, 1, np.float32)
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(ops.lrn(x, size, alpha=0.1, beta=0.75, k=2.0), yt.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(ops.lrn_backward(gy, x, size, alpha=0.1, beta=0.75, k=2.0), xt.grad.numpy(),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("size", [1, 3, 5])   # onnxruntime takes odd sizes only
def test_lrn_against_onnxruntime(size):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    x = _rand((2, 6, 3, 4), 0, np.float32, 3.0)
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=0.2, beta=0.75, bias=1.5)
    graph = helper.make_graph([node], "lrn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 8)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(ops.lrn(x, size, alpha=0.2, beta=0.75, k=1.5), want, rtol=1e-5, atol=1e-6)
