"""Non-trainable layer state (moving statistics): counted, saved, loaded, never touched by the optimiser."""
import numpy as np
import pytest

import nbcnn
from nbcnn import layers as L


class RunningMean(L.Layer):
    """Identity that keeps a moving mean of its input per channel (state only, no parameters)."""

    state_names = ("moving_mean",)
    base_name = "running_mean"

    def _shapes(self, input_shape):
        return input_shape, [], [(input_shape[0],)]

    def _init_state(self, dtype):
        return [np.full(self._state_shapes[0], 0.5, dtype)]

    def forward(self, x, training=False):
        self._ensure_built(x)
        if training:
            m = x.mean(axis=tuple(i for i in range(x.ndim) if i != 1))
            self.state[0][...] = 0.9 * self.state[0] + 0.1 * m
        return x

    def backward(self, gy):
        return gy


@pytest.fixture(autouse=True)
def _registered(monkeypatch):
    monkeypatch.setitem(L._REGISTRY, "RunningMean", RunningMean)


def _model():
    return nbcnn.Sequential([L.Conv2D(2, 3, input_shape=(1, 6, 6)), RunningMean(), L.Flatten(), L.Dense(3)],
                            device="cpu", seed=3)


def test_state_counts_and_summary():
    m = _model()
    n_conv, n_dense = 2 * 9 + 2, 2 * 16 * 3 + 3
    assert m.count_params() == n_conv + n_dense + 2
    text = m.summary(print_fn=None)
    assert f"Total params: {n_conv + n_dense + 2:,}" in text
    assert f"Trainable params: {n_conv + n_dense:,}" in text
    assert "Non-trainable params: 2" in text
    assert m.get_layer("running_mean_1").weight_names == ("moving_mean",)


def test_state_initialised_updated_and_not_optimised(tmp_path):
    m = _model()
    m.compile(optimizer="sgd")
    ws = m.get_weights()
    assert len(ws) == 5 and np.array_equal(ws[2], [0.5, 0.5])
    x = np.random.default_rng(0).random((4, 1, 6, 6)).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    m.train_on_batch(x, y)
    st = m.get_layer("running_mean_1").state[0]
    assert not np.allclose(st, 0.5)                    # the forward pass updated it
    assert m._flat.size == 20 + 99                      # the optimiser's buffer holds parameters only
    loss, grads = m.gradients(x, y)
    assert len(grads) == 5 and grads[2] is None
    before = st.copy()
    m.predict(x)                                        # inference leaves state alone
    assert np.array_equal(st, before)
    path = tmp_path / "m.nbcnn"
    m.save(path)
    m2 = nbcnn.load_model(path, device="cpu")
    for a, b in zip(m.get_weights(), m2.get_weights()):
        assert np.array_equal(a, b)
    assert np.array_equal(m.predict(x), m2.predict(x))


def test_set_weights_counts_state():
    m = _model()
    ws = m.get_weights()
    with pytest.raises(ValueError, match="5 weight arrays, got 4"):
        m.set_weights(ws[:4])
    ws[2] = np.array([1.0, 2.0], np.float32)
    m.set_weights(ws)
    assert np.array_equal(m.get_layer("running_mean_1").state[0], [1.0, 2.0])
