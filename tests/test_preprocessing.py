"""Preprocessing layers and their ops against plain-loop references, finite differences and PyTorch."""
from __future__ import annotations

import math

import numpy as np
import pytest

import nbcnn
from nbcnn import layers as L
from nbcnn import ops
from nbcnn.kernels.cpu import preprocess as kp


def ref_resize(x, h, w):
    """Bilinear, half-pixel centres, written out pixel by pixel in float64."""
    N, C, H, W = x.shape
    out = np.zeros((N, C, h, w))

    def src(o, n_in, n_out):
        s = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        a = min(int(math.floor(s)), n_in - 1)
        return a, min(a + 1, n_in - 1), s - a

    for n in range(N):
        for c in range(C):
            for i in range(h):
                y0, y1, ly = src(i, H, h)
                for j in range(w):
                    x0, x1, lx = src(j, W, w)
                    out[n, c, i, j] = ((1 - ly) * ((1 - lx) * x[n, c, y0, x0] + lx * x[n, c, y0, x1])
                                       + ly * ((1 - lx) * x[n, c, y1, x0] + lx * x[n, c, y1, x1]))
    return out


SIZES = [((1, 1, 5, 7), (3, 4)), ((2, 3, 4, 4), (9, 6)), ((1, 2, 1, 3), (2, 5)), ((2, 1, 6, 5), (6, 5)),
         ((3, 2, 7, 3), (2, 8)), ((1, 3, 2, 2), (1, 1))]


@pytest.mark.parametrize("shape,size", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resize_forward_matches_loops(shape, size, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    got = ops.resize_bilinear(x, size)
    assert got.dtype == dtype and got.shape == (*shape[:2], *size)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got, ref_resize(x.astype(np.float64), *size), rtol=tol, atol=tol)


@pytest.mark.parametrize("shape,size", SIZES)
def test_resize_backward_finite_differences(shape, size, rng):
    x = rng.standard_normal(shape)
    gy = rng.standard_normal((*shape[:2], *size))
    gx = ops.resize_bilinear_backward(gy, shape[2:])
    eps = 1e-6
    num = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        d = np.zeros_like(x)
        d[idx] = eps
        num[idx] = ((ref_resize(x + d, *size) - ref_resize(x - d, *size)) * gy).sum() / (2 * eps)
    np.testing.assert_allclose(gx, num, rtol=1e-6, atol=1e-8)


def test_resize_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 11, 7))
    for size in [(5, 13), (11, 7), (22, 3)]:
        t = torch.tensor(x, requires_grad=True)
        y = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
        gy = rng.standard_normal(y.shape)
        y.backward(torch.tensor(gy))
        np.testing.assert_allclose(ops.resize_bilinear(x, size), y.detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(ops.resize_bilinear_backward(gy, (11, 7)), t.grad.numpy(), atol=1e-12)


def test_resize_parallel_equals_serial(rng):
    x = rng.standard_normal((3, 2, 9, 8))
    gy = rng.standard_normal((3, 2, 5, 13))
    from nbcnn.ops.preprocess import resize_tables

    t = resize_tables((9, 8), (5, 13), np.float64)
    out_p, out_s = np.empty((3, 2, 5, 13)), np.empty((3, 2, 5, 13))
    kp._resize_fwd(x, *t["fwd"][0], *t["fwd"][1], out_p)
    kp._resize_fwd.py_func(x, *t["fwd"][0], *t["fwd"][1], out_s)
    assert np.array_equal(out_p, out_s)
    g_p, g_s = np.empty_like(x), np.empty_like(x)
    kp._resize_bwd(gy, *t["bwd"][0], *t["bwd"][1], g_p)
    kp._resize_bwd.py_func(gy, *t["bwd"][0], *t["bwd"][1], g_s)
    assert np.array_equal(g_p, g_s)


@pytest.mark.parametrize("shape", [(1, 1, 3, 4), (2, 3, 5, 2), (4, 2, 1, 1)])
def test_channel_affine(shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    C = shape[1]
    s, o = rng.standard_normal(C), rng.standard_normal(C)
    got = ops.channel_affine(x, s, o)
    want = x.astype(np.float64) * s[None, :, None, None] + o[None, :, None, None]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(ops.channel_affine(x, 2.0), x * np.float32(2))
    with pytest.raises(ValueError, match="one value per channel"):
        ops.channel_affine(x, np.ones(C + 1))
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.channel_affine(x.astype(np.int32), 1.0)


def _fd_layer(layer, x, rng, eps=1e-6):
    """Check layer.backward against central differences of sum(forward(x) * gy), in float64."""
    y = layer.forward(x, training=True)
    gy = rng.standard_normal(y.shape)
    gx = layer.backward(gy)
    num = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        d = np.zeros_like(x)
        d[idx] = eps
        num[idx] = ((layer.forward(x + d) - layer.forward(x - d)) * gy).sum() / (2 * eps)
    np.testing.assert_allclose(gx, num, rtol=1e-6, atol=1e-8)


def test_layers_backward_finite_differences(rng):
    x = rng.standard_normal((2, 3, 5, 4))
    _fd_layer(L.Rescaling([1.0, -2.0, 0.5], 0.3), x, rng)
    _fd_layer(L.Normalization([0.1, 0.2, 0.3], [4.0, 0.25, 1.0]), x, rng)
    _fd_layer(L.Resizing(3, 7), x, rng)
    _fd_layer(L.CenterCrop(2, 3), x, rng)
    _fd_layer(L.CenterCrop(5, 4), x, rng)  # no crop at all


def test_center_crop_is_the_central_window(rng):
    x = rng.standard_normal((2, 1, 7, 6)).astype(np.float32)
    np.testing.assert_array_equal(L.CenterCrop(3, 3).forward(x), x[:, :, 2:5, 1:4])
    np.testing.assert_array_equal(L.CenterCrop(4, 5).forward(x), x[:, :, 1:5, 0:5])  # odd margin: extra at the end
    with pytest.raises(ValueError, match="images of 7x6 are smaller than the 8x8 crop"):
        L.CenterCrop(8, 8).forward(x)
    with pytest.raises(ValueError, match="smaller than the 8x2 crop"):
        nbcnn.Sequential([L.CenterCrop(8, 2, input_shape=(1, 7, 6))]).build()


def test_normalization_adapt_one_pass(rng):
    from nbcnn.imagefolder import ImageFolder

    x = rng.integers(0, 256, (37, 3, 5, 6)).astype(np.uint8)
    ref = x / 255.0
    want_m, want_v = ref.mean(axis=(0, 2, 3)), ref.var(axis=(0, 2, 3))
    for data in (x, [x[:10], x[10:11], x[11:]], ((x[i:i + 8], None) for i in range(0, 37, 8)),
                 ImageFolder(x, np.zeros(37), ["a"], batch_size=5)):
        n = L.Normalization().adapt(data, batch_size=7)
        np.testing.assert_allclose(n.mean, want_m, rtol=1e-6)
        np.testing.assert_allclose(n.variance, want_v, rtol=1e-6)
    xf = rng.standard_normal((10, 2, 3, 3)) * 5 + 3
    n = L.Normalization().adapt(xf)
    y = n.forward(xf)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(y.std(axis=(0, 2, 3)), 1, atol=1e-6)
    with pytest.raises(ValueError, match="no statistics"):
        L.Normalization().forward(xf)
    with pytest.raises(ValueError, match="both mean and variance"):
        L.Normalization(mean=[0.0])
    with pytest.raises(ValueError, match="NaN"):
        L.Normalization().adapt(np.full((2, 1, 2, 2), np.nan))


def test_model_with_preprocessing_saves_and_predicts_the_same(tmp_path, rng):
    x = rng.integers(0, 256, (20, 3, 12, 10)).astype(np.uint8)
    y = rng.integers(0, 2, 20)
    nbcnn.seed(1)
    norm = L.Normalization(input_shape=(3, 12, 10)).adapt(x)
    m = nbcnn.Sequential([norm, L.Resizing(8, 8), L.CenterCrop(6, 6), L.Rescaling(2.0, -1.0),
                          L.Conv2D(2, 3, activation="relu"), L.Flatten(), L.Dense(2)])
    m.compile(optimizer="adam")
    m.fit(x, y, epochs=1, batch_size=8, verbose=0)
    m.save(tmp_path / "p.nbcnn", metadata={"class_names": ["no", "yes"]})
    m2 = nbcnn.load_model(tmp_path / "p.nbcnn")
    assert [type(l).__name__ for l in m2.layers[:4]] == ["Normalization", "Resizing", "CenterCrop", "Rescaling"]
    np.testing.assert_array_equal(m.predict(x), m2.predict(x))
    np.testing.assert_allclose(m2.layers[0].mean, (x / 255.0).mean(axis=(0, 2, 3)), rtol=1e-6)
    assert m2.metadata["class_names"] == ["no", "yes"]
