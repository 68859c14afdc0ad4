"""Differential test against PyTorch, only where it happens to be installed (never in CI)."""
from __future__ import annotations

import numpy as np
import pytest

from nbcnn import ops

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.mark.parametrize("case", [
    # (N, C, H, W, K, kh, kw, stride, padding as torch takes it)
    (2, 3, 9, 8, 4, 3, 3, 1, 1),
    (2, 1, 12, 12, 3, 5, 5, 1, 2),
    (2, 4, 11, 10, 5, 3, 2, (2, 1), (1, 0)),
    (1, 3, 23, 23, 4, 11, 11, 4, 0),
    (2, 2, 7, 7, 3, 1, 1, 1, 0),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_matches_torch(case, dtype):
    N, C, H, W, K, kh, kw, s, p = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, kh, kw)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = F.conv2d(tx, tw, tb, stride=s, padding=p)
    gy = rng.standard_normal(tuple(ty.shape)).astype(dtype)
    ty.backward(torch.tensor(gy))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    y = ops.conv2d(x, w, b, s, p)
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    for mine, theirs in zip(ops.conv2d_backward(gy, x, w, s, p), (tx, tw, tb)):
        np.testing.assert_allclose(mine, theirs.grad.numpy(), **tol)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_conv2d_same_stride1_matches_torch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 8, 9))
    w = rng.standard_normal((4, 3, 4, 3))  # even kernel: torch puts the extra padding at the bottom
    np.testing.assert_allclose(ops.conv2d(x, w, padding="same"),
                               F.conv2d(torch.tensor(x), torch.tensor(w), padding="same").numpy(), rtol=1e-10)


@pytest.mark.parametrize("size,stride,padding", [(2, None, 0), (3, 2, 1), ((3, 2), (2, 1), (1, 1))])
def test_pooling_matches_torch(size, stride, padding):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 9, 8))
    tx = torch.tensor(x, requires_grad=True)
    ty = F.max_pool2d(tx, size, stride, padding)
    gy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(gy))
    np.testing.assert_array_equal(ops.max_pool2d(x, size, stride, padding), ty.detach().numpy())
    np.testing.assert_allclose(ops.max_pool2d_backward(gy, x, size, stride, padding), tx.grad.numpy(), rtol=1e-12)
    tx.grad = None
    ta = F.avg_pool2d(tx, size, stride, padding)
    ta.backward(torch.tensor(gy))
    np.testing.assert_allclose(ops.avg_pool2d(x, size, stride, padding), ta.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(ops.avg_pool2d_backward(gy, x, size, stride, padding), tx.grad.numpy(), rtol=1e-12)
