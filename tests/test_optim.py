"""Optimisers against plain NumPy re-statements of the PyTorch update rules; schedules; ranges."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nbcnn import optim


def _steps(opt, p, grads, ranges=None):
    p = p.copy()
    opt.setup(p.size, p.dtype)
    for g in grads:
        opt.step(p, g, ranges or [(0, p.size)])
    return p


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 1e-2),
                                                  (0.5, False, 1e-3)])
def test_sgd_matches_reference(rng, momentum, nesterov, wd):
    p0 = rng.normal(0, 1, 1000)
    grads = [rng.normal(0, 1, 1000) for _ in range(5)]
    got = _steps(optim.SGD(0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd), p0, grads)
    p, v = p0.copy(), np.zeros_like(p0)
    for g in grads:
        g = g + wd * p
        if momentum:
            v = momentum * v + g
            g = g + momentum * v if nesterov else v
        p = p - 0.1 * g
    np.testing.assert_allclose(got, p, rtol=1e-12, atol=1e-14)


def test_adam_matches_reference(rng):
    p0 = rng.normal(0, 1, 777)
    grads = [rng.normal(0, 1, 777) for _ in range(6)]
    got = _steps(optim.Adam(0.01, weight_decay=1e-3), p0, grads)
    p, m, v = p0.copy(), np.zeros(777), np.zeros(777)
    for t, g in enumerate(grads, 1):
        g = g + 1e-3 * p
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - 0.01 / (1 - 0.9 ** t) * m / (np.sqrt(v) / math.sqrt(1 - 0.999 ** t) + 1e-8)
    np.testing.assert_allclose(got, p, rtol=1e-10, atol=1e-12)


def test_float32_update_close_to_float64(rng):
    p0 = rng.normal(0, 1, 5000)
    grads = [rng.normal(0, 1, 5000) for _ in range(3)]
    a = _steps(optim.SGD(0.05, momentum=0.9), p0.astype(np.float32), [g.astype(np.float32) for g in grads])
    b = _steps(optim.SGD(0.05, momentum=0.9), p0, grads)
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_only_trainable_ranges_move(rng):
    p0 = rng.normal(0, 1, 100).astype(np.float32)
    grads = [rng.normal(0, 1, 100).astype(np.float32) for _ in range(2)]
    got = _steps(optim.Adam(0.1), p0, grads, ranges=[(10, 20), (50, 100)])
    assert np.array_equal(got[:10], p0[:10]) and np.array_equal(got[20:50], p0[20:50])
    assert not np.any(got[10:20] == p0[10:20]) and not np.any(got[50:] == p0[50:])


def test_schedules():
    s = optim.StepDecay(0.1, step_size=10, gamma=0.5)
    assert [s(i) for i in (0, 9, 10, 25)] == [0.1, 0.1, 0.05, 0.025]
    c = optim.CosineDecay(1.0, 100, final=0.1)
    assert c(0) == 1.0 and math.isclose(c(50), 0.55) and math.isclose(c(100), 0.1) and c(500) == 0.1
    w = optim.CosineDecay(1.0, 10, warmup_steps=4)
    assert [w(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    opt = optim.SGD(c)
    opt.setup(3, np.float64)
    p = np.zeros(3)
    for _ in range(50):
        opt.step(p, np.zeros(3), [(0, 3)])
    assert math.isclose(opt.current_lr, 0.55)
    again = optim.get(opt.get_config())
    assert isinstance(again.lr, optim.CosineDecay) and again.lr(50) == c(50)


def test_bad_arguments():
    for bad in (lambda: optim.SGD(0), lambda: optim.SGD(0.1, momentum=1.0), lambda: optim.SGD(0.1, nesterov=True),
                lambda: optim.Adam(0.1, beta_1=1.5), lambda: optim.get("lbfgs"), lambda: optim.SGD(0.1, weight_decay=-1)):
        with pytest.raises(ValueError):
            bad()
    assert isinstance(optim.get("adam"), optim.Adam) and isinstance(optim.get("SGD"), optim.SGD)
