"""The model stack on a (simulated) CUDA device: same code, CUDA kernels, same numbers as the CPU."""
from __future__ import annotations

import numpy as np

import nbcnn
from nbcnn import layers as L
from nbcnn import optim


def _mk(device):
    return nbcnn.Sequential([
        L.Conv2D(2, 3, padding=1, activation="relu", input_shape=(1, 6, 6)), L.MaxPool2D(2),
        L.Conv2D(2, 2, activation="tanh"), L.AvgPool2D(2), L.Flatten(), L.Dense(4, activation="sigmoid"),
        L.Dropout(0.2), L.Dense(3)], device=device, seed=1)


def test_model_on_simulated_cuda_matches_cpu(tmp_path):
    r = np.random.default_rng(0)
    x = r.random((4, 1, 6, 6), dtype=np.float32)
    y = r.integers(0, 3, 4)
    gpu, cpu = _mk("cuda"), _mk("cpu")
    assert gpu.device.simulated
    for m in (gpu, cpu):
        m.compile(optimizer=optim.SGD(0.1, momentum=0.9))
    np.testing.assert_allclose(gpu.predict(x), cpu.predict(x), atol=1e-6)
    lg = [gpu.train_on_batch(x, y) for _ in range(3)]
    lc = [cpu.train_on_batch(x, y) for _ in range(3)]
    np.testing.assert_allclose(lg, lc, rtol=1e-5)
    for a, b in zip(gpu.get_weights(), cpu.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    h = gpu.fit(x, y, epochs=1, batch_size=2, verbose=0)
    assert len(h.history["loss"]) == 1
    gpu.save(tmp_path / "g.nbcnn")
    back = nbcnn.load_model(tmp_path / "g.nbcnn", device="cpu")
    np.testing.assert_allclose(back.predict(x), gpu.predict(x), atol=1e-6)


def test_to_moves_weights_and_optimizer_state():
    r = np.random.default_rng(1)
    x = r.random((4, 1, 6, 6), dtype=np.float32)
    y = r.integers(0, 3, 4)
    m = _mk("cpu")
    m.compile(optimizer=optim.Adam(0.01))
    m.train_on_batch(x, y)
    before = m.predict(x)
    state = {k: v.copy() for k, v in m.optimizer.state.items()}
    m.to("cuda")
    assert m.device.kind == "cuda"
    np.testing.assert_allclose(m.predict(x), before, atol=1e-6)
    for k, v in state.items():
        assert np.array_equal(m.optimizer.state[k], v)
    m.train_on_batch(x, y)
    m.to("cpu")
    assert m.device.kind == "cpu" and m.optimizer.iterations == 2
