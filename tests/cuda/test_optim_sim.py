"""The optimiser kernels on a (simulated) GPU: the CUDA update, clip and norm kernels give the CPU's numbers."""
from __future__ import annotations

import numpy as np
import pytest

import nbcnn
from nbcnn import layers as L
from nbcnn import losses, optim
from nbcnn.device import using_device
from nbcnn.kernels.cuda import runtime

_CASES = [
    ("sgd", lambda: optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01, decay_biases=False,
                              clipnorm=0.8), ("_sgd_update", "_sumsq_partials", "_clip_scale")),
    ("sgd-plain", lambda: optim.SGD(0.1), ("_sgd_update",)),
    ("adamw", lambda: optim.AdamW(optim.OneCycle(0.02, 6), weight_decay=0.1, clipnorm=0.5),
     ("_adam_update", "_sumsq_partials", "_clip_scale")),
    ("adam", lambda: optim.Adam(0.01, weight_decay=1e-3), ("_adam_update",)),
    ("rmsprop", lambda: optim.RMSprop(0.01, rho=0.9, momentum=0.5, centered=True, weight_decay=1e-3),
     ("_rmsprop_update",)),
]


@pytest.mark.parametrize("name,make,kernels", _CASES, ids=[c[0] for c in _CASES])
def test_cuda_update_matches_cpu(name, make, kernels):
    r = np.random.default_rng(7)
    p0 = r.normal(0, 1, 157)
    grads = [r.normal(0, 1, 157) for _ in range(3)]
    ranges, nd = [(0, 90), (100, 157)], [(20, 30), (140, 150)]
    out = {}
    for dev in ("cpu", "cuda"):
        before = {k: runtime.launches[k] for k in kernels}
        with using_device(dev):
            opt = make()
            p = p0.copy()
            opt.setup(p.size, p.dtype)
            for g in grads:
                opt.step(p, g.copy(), ranges, nd)
        ran = {k: runtime.launches[k] - before[k] for k in kernels}
        assert all(v > 0 for v in ran.values()) == (dev == "cuda"), (dev, ran)
        out[dev] = p, opt.state
    np.testing.assert_allclose(out["cuda"][0], out["cpu"][0], rtol=1e-12, atol=1e-13)
    for k, v in out["cpu"][1].items():
        np.testing.assert_allclose(out["cuda"][1][k], v, rtol=1e-12, atol=1e-13)
    assert np.array_equal(out["cuda"][0][90:100], p0[90:100])


def test_cuda_clip_factor_is_the_global_norm():
    r = np.random.default_rng(2)
    from nbcnn.kernels.cuda import optim as k

    g = r.normal(0, 1, 300)
    part = np.zeros(k.NORM_BLOCKS * k.TPB)
    gsc = np.ones(1)
    for maxnorm in (2.0, 1e9):
        k.clip_scale(g, [(0, 100), (200, 300)], np.float64(maxnorm), part, gsc)
        want = min(1.0, maxnorm / (np.sqrt((g[:100] ** 2).sum() + (g[200:] ** 2).sum()) + 1e-6))
        assert np.isclose(gsc[0], want, rtol=1e-12)


def test_model_with_training_aids_on_simulated_cuda_matches_cpu():
    r = np.random.default_rng(0)
    x = r.random((4, 1, 5, 5), dtype=np.float32)
    y = r.integers(0, 3, 4)
    ms = []
    for dev in ("cuda", "cpu"):
        m = nbcnn.Sequential([L.Conv2D(2, 3, activation="relu", input_shape=(1, 5, 5)), L.Flatten(), L.Dense(3)],
                             device=dev, seed=1)
        m.compile(loss=losses.CrossEntropy(label_smoothing=0.1),
                  optimizer=optim.AdamW(0.01, weight_decay=0.1, decay_biases=False, clipnorm=0.3))
        ms.append([m.train_on_batch(x, y) for _ in range(3)])
        ms.append(m.get_weights())
    np.testing.assert_allclose(ms[0], ms[2], rtol=1e-5)
    for a, b in zip(ms[1], ms[3]):
        np.testing.assert_allclose(a, b, atol=1e-5)
