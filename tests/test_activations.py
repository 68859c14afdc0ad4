"""Every element-wise activation: float64 formulas, finite differences, float32 accuracy, the fused
bias (Dense), layers and strings, and PyTorch as an extra oracle where installed."""
from __future__ import annotations

import math

import numpy as np
import pytest

import nbcnn
from nbcnn import layers as L
from nbcnn import ops

_erf = np.vectorize(math.erf)


def _sig(v):
    return 1 / (1 + np.exp(-v))


REF = {
    "linear": lambda v, a: v,
    "relu": lambda v, a: np.maximum(v, 0),
    "tanh": lambda v, a: np.tanh(v),
    "sigmoid": lambda v, a: _sig(v),
    "leaky_relu": lambda v, a: np.where(v > 0, v, a * v),
    "elu": lambda v, a: np.where(v > 0, v, a * (np.exp(v) - 1)),
    "gelu": lambda v, a: 0.5 * v * (1 + _erf(v / np.sqrt(2))),
    "gelu_tanh": lambda v, a: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3))),
    "silu": lambda v, a: v * _sig(v),
    "relu6": lambda v, a: np.clip(v, 0, 6),
    "hard_sigmoid": lambda v, a: np.clip(v + 3, 0, 6) / 6,
    "hard_swish": lambda v, a: v * np.clip(v + 3, 0, 6) / 6,
}
ALPHA = {"leaky_relu": 0.07, "elu": 1.3}
KINKS = np.array([0.0, -3.0, 3.0, 6.0])


def _x(shape, seed=0, dtype=np.float64):
    x = np.random.default_rng(seed).normal(0, 3, shape)
    # keep finite differences away from the kinks
    near = np.abs(x[..., None] - KINKS).min(axis=-1) < 1e-3
    x[near] += 0.01
    return x.astype(dtype)


@pytest.mark.parametrize("name", list(REF))
def test_forward_reference_and_backward_fd_float64(name):
    a = ALPHA.get(name)
    x = _x((3, 5, 7))
    y = ops.activation(x, name, alpha=a)
    np.testing.assert_allclose(y, REF[name](x, a), rtol=1e-13, atol=1e-14)
    gy = _x((3, 5, 7), 1)
    gx = ops.activation_backward(gy, x, name, alpha=a)
    e = 1e-6
    fd = (REF[name](x + e, a) - REF[name](x - e, a)) / (2 * e) * gy
    np.testing.assert_allclose(gx, fd, rtol=1e-6, atol=1e-7)
    if name in ("relu", "tanh", "sigmoid"):
        np.testing.assert_allclose(ops.activation_backward(gy, None, name, y=y), gx, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", list(REF))
def test_float32_close_to_float64_and_in_place(name):
    a = ALPHA.get(name)
    x64 = np.concatenate([_x(4001), np.linspace(-12, 12, 2001), [0.0, -3.0, 3.0, 6.0, 40.0, -40.0]])
    x = x64.astype(np.float32)
    want = REF[name](x.astype(np.float64), a)
    y = ops.activation(x, name, alpha=a)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=2e-6, atol=2e-6)
    buf = x.copy()
    assert ops.activation(buf, name, alpha=a, out=buf) is buf
    np.testing.assert_array_equal(buf, y)
    gy = np.ones_like(x)
    g32 = ops.activation_backward(gy, x, name, alpha=a)
    g64 = ops.activation_backward(gy.astype(np.float64), x.astype(np.float64), name, alpha=a)
    np.testing.assert_allclose(g32, g64, rtol=1e-5, atol=5e-6)   # float32 tanh saturates: tails ~4e-6


@pytest.mark.parametrize("name", ["relu", "gelu", "hard_swish", "leaky_relu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_bias_and_bias_gradient(name, dtype):
    x = _x((9, 13), 0, dtype)
    b = _x(13, 2, dtype)
    gy = _x((9, 13), 1, dtype)
    y = ops.activation(x, name, bias=b)
    np.testing.assert_allclose(y, REF[name](x.astype(np.float64) + b, 0.01), rtol=2e-6, atol=2e-6)  # default slope
    z = x + b
    gb = np.empty(13, dtype)
    g = ops.activation_backward(gy, z, name, y=y, bias_grad=gb)
    np.testing.assert_allclose(gb, g.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-5)


def test_named_wrappers_and_errors():
    x = _x((4, 6))
    np.testing.assert_allclose(ops.gelu(x, approximate="tanh"), REF["gelu_tanh"](x, None), rtol=1e-13)
    np.testing.assert_allclose(ops.leaky_relu(x), REF["leaky_relu"](x, 0.01), rtol=1e-13)
    np.testing.assert_array_equal(ops.swish(x), ops.silu(x))
    np.testing.assert_allclose(ops.hard_swish_backward(np.ones_like(x), x), ops.activation_backward(
        np.ones_like(x), x, "hard_swish"))
    with pytest.raises(ValueError, match="unknown activation 'mish'"):
        ops.activation(x, "mish")
    with pytest.raises(ValueError, match="needs x"):
        ops.activation_backward(x, None, "gelu", y=x)
    with pytest.raises(ValueError, match="approximate"):
        ops.gelu(x, approximate="fast")
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.activation(x, "relu", bias=np.zeros(5))


@pytest.mark.parametrize("name", ["leaky_relu", "elu", "gelu", "gelu_tanh", "silu", "relu6", "hard_sigmoid",
                                  "hard_swish"])
def test_against_torch(name):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    fn = {"leaky_relu": lambda t: F.leaky_relu(t, 0.07), "elu": lambda t: F.elu(t, 1.3), "gelu": F.gelu,
          "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu, "relu6": F.relu6,
          "hard_sigmoid": F.hardsigmoid, "hard_swish": F.hardswish}[name]
    x = np.concatenate([_x(500), [-3.0, 3.0, 0.0, 6.0, -6.0]]).astype(np.float32)
    gy = _x(505, 1, np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = fn(xt)
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(ops.activation(x, name, alpha=ALPHA.get(name)), yt.detach().numpy(), rtol=2e-6,
                               atol=2e-6)
    np.testing.assert_allclose(ops.activation_backward(gy, x, name, alpha=ALPHA.get(name)), xt.grad.numpy(),
                               rtol=2e-5, atol=3e-5)   # float32 tanh tails


@pytest.mark.parametrize("layer,act", [(L.LeakyReLU(0.1), "leaky_relu"), (L.ELU(0.5), "elu"), (L.GELU(), "gelu"),
                                       (L.GELU(approximate=True), "gelu_tanh"), (L.SiLU(), "silu"),
                                       (L.ReLU(max_value=6), "relu6"), (L.ReLU6(), "relu6"),
                                       (L.HardSigmoid(), "hard_sigmoid"), (L.HardSwish(), "hard_swish")])
def test_activation_layers_and_config_round_trip(layer, act):
    assert layer.activation == act
    x = _x((3, 2, 4, 4), 0, np.float32)
    y = layer(x, training=True)
    np.testing.assert_allclose(y, ops.activation(x, act, alpha=layer.alpha), rtol=1e-6)
    gy = _x(x.shape, 1, np.float32)
    np.testing.assert_allclose(layer.backward(gy), ops.activation_backward(gy, x, act, alpha=layer.alpha),
                               rtol=1e-6)
    back = L.deserialize(L.serialize(layer))
    assert type(back) is type(layer) and back.activation == act and back.alpha == layer.alpha


def test_activation_strings_in_conv_and_dense_fit_and_reload(tmp_path):
    """Conv2D(activation='gelu') keeps the pre-activation for its backward; whole-model gradient by FD."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (6, 1, 6, 6))
    y = rng.integers(0, 3, 6)
    m = nbcnn.Sequential([L.Conv2D(3, 3, activation="gelu", input_shape=(1, 6, 6)),
                          L.Conv2D(2, 3, activation="hard_swish"), L.Flatten(),
                          L.Dense(5, activation="swish"), L.Dense(3, activation="leaky_relu")],
                         device="cpu", dtype="float64", seed=2)
    m.compile(optimizer="sgd")
    loss, grads = m.gradients(x, y)
    w = m.get_weights()
    d = [np.random.default_rng(i).standard_normal(a.shape) for i, a in enumerate(w)]
    e = 1e-6
    m.set_weights([a + e * b for a, b in zip(w, d)])
    lp = m.gradients(x, y)[0]
    m.set_weights([a - e * b for a, b in zip(w, d)])
    lm = m.gradients(x, y)[0]
    m.set_weights(w)
    an = sum(float((g * b).sum()) for g, b in zip(grads, d))
    assert abs((lp - lm) / (2 * e) - an) < 1e-6 * (1 + abs(an))
    assert m.layers[3].activation == "silu"
    p = tmp_path / "act.nbcnn"
    m.save(p)
    m2 = nbcnn.load_model(p, device="cpu")
    np.testing.assert_array_equal(m.predict(x), m2.predict(x))
