"""Augmentation ops against NumPy references; seeded pipelines; offline data set files."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from nbcnn import augment as A


def _imgs(rng, n=3, c=2, h=6, w=5, dtype=np.uint8):
    if dtype == np.uint8:
        return rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
    return rng.uniform(0, 1, (n, c, h, w)).astype(dtype)


def _bilinear_rotate_ref(img, deg, fill=0.0):
    """Plain NumPy reference: rotate a (H, W) image about its centre, counter-clockwise."""
    H, W = img.shape
    t = np.deg2rad(deg)
    cr, cc = (H - 1) / 2, (W - 1) / 2
    ii, jj = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    # output pixel p came from R(-t) p: rows grow downwards, so counter-clockwise on screen
    sr = cr + np.cos(t) * (ii - cr) + np.sin(t) * (jj - cc)
    sc = cc - np.sin(t) * (ii - cr) + np.cos(t) * (jj - cc)
    padded = np.pad(img.astype(float), 1, constant_values=fill)
    r0, c0 = np.floor(sr).astype(int), np.floor(sc).astype(int)
    fr, fc = sr - r0, sc - c0
    def at(r, c):
        r, c = np.clip(r + 1, 0, H + 1), np.clip(c + 1, 0, W + 1)
        return padded[r, c]
    return ((1 - fr) * ((1 - fc) * at(r0, c0) + fc * at(r0, c0 + 1))
            + fr * ((1 - fc) * at(r0 + 1, c0) + fc * at(r0 + 1, c0 + 1)))


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_rotate_by_multiples_of_90_is_rot90(rng, dtype):
    x = _imgs(rng, h=7, w=7, dtype=dtype)
    for k in (1, 2, 3, -1):
        got = A.rotate(x, 90 * k)
        assert got.dtype == x.dtype and got.shape == x.shape
        np.testing.assert_array_equal(got, np.rot90(x, k, axes=(2, 3)))
    np.testing.assert_array_equal(A.rotate(x, 0), x)


def test_rotate_any_angle_matches_bilinear_reference(rng):
    x = _imgs(rng, n=2, c=1, h=9, w=8, dtype=np.float64)
    got = A.rotate(x, [30.0, -47.5], fill=0.25)
    for n, deg in enumerate([30.0, -47.5]):
        np.testing.assert_allclose(got[n, 0], _bilinear_rotate_ref(x[n, 0], deg, 0.25), atol=1e-12)
    # uint8: the reference rounded half up and clipped
    xu = _imgs(rng, n=1, c=1, h=9, w=9)
    ref = np.clip(np.floor(_bilinear_rotate_ref(xu[0, 0], 13.0) + 0.5), 0, 255)
    np.testing.assert_array_equal(A.rotate(xu, 13.0)[0, 0], ref)


def test_mirror_is_flip(rng):
    x = _imgs(rng, n=4)
    flags = np.array([True, False, True, False])
    got = A.mirror(x, horizontal=flags)
    for n in range(4):
        np.testing.assert_array_equal(got[n], x[n, :, :, ::-1] if flags[n] else x[n])
    np.testing.assert_array_equal(A.mirror(x, horizontal=False, vertical=True), x[:, :, ::-1])
    np.testing.assert_array_equal(A.mirror(x, True, True), x[:, :, ::-1, ::-1])


def test_translate_against_padded_slicing(rng):
    x = _imgs(rng, n=3, dtype=np.float32)
    dy, dx = np.array([2, -1, 0]), np.array([-3, 0, 6])
    got = A.translate(x, dy, dx, fill=7)
    P = 8
    for n in range(3):
        pad = np.pad(x[n], ((0, 0), (P, P), (P, P)), constant_values=7)
        ref = pad[:, P - dy[n]:P - dy[n] + 6, P - dx[n]:P - dx[n] + 5]
        np.testing.assert_array_equal(got[n], ref)


def test_random_crop_keeps_shape_and_is_a_padded_window(rng):
    x = _imgs(rng, n=20, c=1, h=8, w=8)
    out = A.RandomCrop(2)(x, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    for n in range(20):  # some window of the zero-padded image
        pad = np.pad(x[n, 0], 2)
        assert any(np.array_equal(out[n, 0], pad[a:a + 8, b:b + 8]) for a in range(5) for b in range(5))


def test_color_shift_clips_uint8(rng):
    x = _imgs(rng, n=2, c=3, h=4, w=4)
    off = np.array([[20, -20, 20], [-300, 0, 255]])
    got = A.color_shift(x, off)
    ref = np.clip(x.astype(int) + off[:, :, None, None], 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(got, ref)
    xf = x.astype(np.float32) / 255
    np.testing.assert_allclose(A.color_shift(xf, [0.5, 0, -0.5], clip=(0, 1)),
                               np.clip(xf + np.array([0.5, 0, -0.5], np.float32)[:, None, None], 0, 1), atol=1e-7)
    with pytest.raises(ValueError, match="offsets"):
        A.color_shift(x, [1, 2])


def test_noise_statistics_seeding_and_clipping():
    x = np.full((4, 1, 64, 64), 0.5, np.float32)
    a = A.add_noise(x, 0.1, seeds=[1, 2, 3, 4])
    d = (a - x).astype(np.float64)
    assert abs(d.mean()) < 0.005 and abs(d.std() - 0.1) < 0.005
    np.testing.assert_array_equal(a, A.add_noise(x, 0.1, seeds=[1, 2, 3, 4]))  # reproducible
    assert not np.array_equal(a[0], a[1])                                       # seeds differ
    # a normality check: ~68% within one sigma
    assert abs(np.mean(np.abs(d) < 0.1) - 0.6827) < 0.02
    xu = np.full((1, 1, 32, 32), 250, np.uint8)
    u = A.add_noise(xu, 40.0, seeds=[9])
    assert u.dtype == np.uint8 and u.max() == 255 and (u < 250).any()


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_pipeline_seeded_and_input_untouched(rng, dtype):
    x = _imgs(rng, n=5, c=3, h=10, w=10, dtype=dtype)
    keep = x.copy()
    p = A.parse_spec("rotate=15,scale=0.1,shear=0.1,translate=1,crop=2,mirror,color=0.1,noise=0.05")
    assert len(p) == 5
    a, b = p(x, 7), p(x, 7)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == x.dtype and a.shape == x.shape
    assert not np.array_equal(a, p(x, 8))
    np.testing.assert_array_equal(x, keep)
    assert A.parse_spec(p.spec()).spec() == p.spec()


def test_parse_spec_errors_and_empty():
    assert len(A.parse_spec("")) == 0 and len(A.parse_spec("none")) == 0 and len(A.parse_spec(None)) == 0
    for bad, msg in [("rotat=3", "unknown augmentation"), ("rotate", "needs a value"), ("noise=abc", "not a number"),
                     ("crop=1.5", "crop padding"), ("rotate=-1", ">= 0"), ("mirror=2", r"\[0, 1\]"),
                     ("crop=1,crop=2", "twice"), ("scale=1", "< 1")]:
        with pytest.raises(ValueError, match=msg):
            A.parse_spec(bad)


def test_bad_batches():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        A.rotate(np.zeros((3, 3), np.uint8), 5)
    with pytest.raises(TypeError, match="uint8, float32 or float64"):
        A.mirror(np.zeros((1, 1, 2, 2), np.int32))
    with pytest.raises(ValueError, match="one per image"):
        A.rotate(np.zeros((2, 1, 3, 3), np.float32), [1, 2, 3])


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    assert zero == 0 and code == 0x08
    return np.frombuffer(data[4 + 4 * ndim:], np.uint8).reshape(shape)


def test_augment_dataset_and_idx_files(tmp_path, rng):
    x = _imgs(rng, n=10, c=1, h=8, w=8)
    y = rng.integers(0, 10, 10).astype(np.uint8)
    xa, ya = A.augment_dataset(x, y, "rotate=10,noise=0.02", copies=2, seed=3, batch_size=4)
    assert xa.shape == (30, 1, 8, 8) and ya.tolist() == y.tolist() * 3
    np.testing.assert_array_equal(xa[:10], x)
    assert not np.array_equal(xa[10:20], xa[20:30])  # two different copies
    xb, _ = A.augment_dataset(x, y, "rotate=10,noise=0.02", copies=2, seed=3, batch_size=4)
    np.testing.assert_array_equal(xa, xb)
    files = A.write_dataset(tmp_path, "mnist", (xa, ya), (x, y))
    assert [f.name for f in files] == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                      "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    np.testing.assert_array_equal(_read_idx(files[0]), xa[:, 0])
    np.testing.assert_array_equal(_read_idx(files[1]), ya)
    try:
        from nbcnn import datasets
    except ImportError:
        return
    if not hasattr(datasets, "load_mnist"):
        return
    (xt, yt), (xe, ye) = datasets.load_mnist(path=tmp_path / "mnist")
    np.testing.assert_array_equal(xt.reshape(xa.shape), xa)
    np.testing.assert_array_equal(yt, ya)


# ---------------------------------------------------------------- colour data: jitter, cutout

def test_jitter_matches_reference():
    from nbcnn import augment as A

    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (3, 3, 4, 5)).astype(np.uint8)
    gains, biases = np.array([1.0, 1.5, 0.5]), np.array([0.0, -20.0, 30.0])
    got = A.jitter(x, gains, biases)
    m = x.reshape(3, -1).astype(np.float64).mean(axis=1)[:, None, None, None]
    want = np.clip(np.floor((x - m) * gains[:, None, None, None] + m + biases[:, None, None, None] + 0.5), 0, 255)
    np.testing.assert_array_equal(got, want.astype(np.uint8))
    np.testing.assert_array_equal(A.jitter(x, 1.0, 0.0), x)
    xf = rng.random((2, 3, 3, 3))
    np.testing.assert_allclose(A.jitter(xf, 2.0, 0.1), (xf - xf.mean(axis=(1, 2, 3), keepdims=True)) * 2
                               + xf.mean(axis=(1, 2, 3), keepdims=True) + 0.1)


def test_cutout_matches_reference():
    from nbcnn import augment as A

    x = np.arange(2 * 3 * 6 * 5, dtype=np.float32).reshape(2, 3, 6, 5) + 1
    got = A.cut_out(x, [1, -2], [3, 4], 3, fill=0)
    want = x.copy()
    want[0, :, 1:4, 3:6] = 0
    want[1, :, 0:1, 4:7] = 0   # hangs over the top and right borders
    np.testing.assert_array_equal(got, want)


def test_colour_pipeline_is_seeded_and_keeps_shape():
    from nbcnn import augment as A

    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (8, 3, 10, 10)).astype(np.uint8)
    p = A.parse_spec("mirror,crop=2,jitter=0.2,color=0.05,rotate=10,scale=0.1,cutout=4")
    assert p.spec() and "cutout=4" in p.spec() and "jitter=0.2" in p.spec()
    a, b = p(x, A.batch_rng(1, 0, 0)), p(x, A.batch_rng(1, 0, 0))
    assert a.shape == x.shape and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, p(x, A.batch_rng(1, 0, 1)))
    zeros = (a == 0).all(axis=1)
    assert zeros.reshape(8, -1).sum(axis=1).min() >= 4  # every image lost at least part of a square
