"""Visualisation: receptive fields vs brute force, top-k vs a plain sort, PNG files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nbcnn import layers as L
from nbcnn import visualize as V


def _stack(seed=0):
    """conv 3x3 pad 1 -> avgpool 2 -> conv 3x3 stride 2 pad (1,0,2,1) -> avgpool 3 stride 2 pad 1."""
    rng = np.random.default_rng(seed)
    stack = [L.Conv2D(2, 3, padding=1, input_shape=(1, 19, 17)), L.AvgPool2D(2),
             L.Conv2D(3, (3, 2), stride=2, padding=(1, 0, 2, 1)), L.ReLU(), L.AvgPool2D(3, stride=2, padding=1)]
    shape = (1, 19, 17)
    for l in stack:
        l.build(shape, dtype=np.float64)
        shape = l.configure(shape)
        for p in l.params:  # positive weights bounded away from 0: every pixel in the field matters, ReLU stays on
            p[...] = rng.uniform(0.5, 1.5, p.shape) if p.ndim > 1 else 0.0
    return stack


def _influence(stack, upto, x, unit):
    """Which input pixels change unit (c, i, j) of layer ``upto`` (brute force)."""
    def f(z):
        for l in stack[:upto + 1]:
            z = l.forward(z, training=False)
        return z[0][unit]
    base = f(x)
    H, W = x.shape[2:]
    hit = np.zeros((H, W), bool)
    for r in range(H):
        for c in range(W):
            z = x.copy()
            z[0, 0, r, c] += 10.0
            hit[r, c] = abs(f(z) - base) > 1e-9
    return hit


@pytest.mark.parametrize("upto,units", [(0, [(0, 0, 0), (1, 18, 16)]), (1, [(0, 4, 3), (1, 0, 7)]),
                                        (2, [(1, 0, 0), (2, 3, 2), (0, 1, 4), (0, 0, 1)]),
                                        (4, [(0, 1, 1), (2, 1, 0), (1, 0, 2)])])
def test_receptive_field_matches_brute_force(upto, units):
    stack = _stack()
    x = np.random.default_rng(1).uniform(1, 2, (1, 1, 19, 17))  # positive: ReLU stays on
    rf = V.receptive_field(stack, upto)
    for c, i, j in units:
        hit = _influence(stack, upto, x, (c, i, j))
        box = V.input_box(stack, upto, i, j)
        want = np.zeros_like(hit)
        if box is not None:
            want[box[0]:box[1], box[2]:box[3]] = True
        np.testing.assert_array_equal(hit, want, err_msg=f"layer {upto} unit {(c, i, j)} box {box}")
        # the textbook window contains the true one, and equals it clipped to the image
        # wherever no intermediate padding is involved
        r0, r1, c0, c1 = rf.box(i, j)
        if box is not None:
            assert r0 <= box[0] and box[1] <= r1 and c0 <= box[2] and box[3] <= c1
    # a unit in the middle: the window lies inside the image and is exactly the influence set
    h, w = stack[upto].output_shape[2:]
    i, j = h // 2, w // 2
    r0, r1, c0, c1 = rf.box(i, j)
    if r0 >= 0 and c0 >= 0 and r1 <= 19 and c1 <= 17:
        assert V.input_box(stack, upto, i, j) == (r0, r1, c0, c1)


def test_unit_seeing_only_padding_has_no_input_box():
    # conv2 of _stack pads 2 columns on the left with a 2-wide kernel: column 0 reads padding only
    stack = _stack()
    assert V.input_box(stack, 2, 0, 0) is None
    assert not _influence(stack, 2, np.ones((1, 1, 19, 17)), (0, 0, 0)).any()


def test_receptive_field_arithmetic_by_hand():
    # LeNet-5 front: conv 5 pad 2 -> pool 2 -> conv 5 -> pool 2
    stack = [L.Conv2D(6, 5, padding=2), L.ReLU(), L.MaxPool2D(2), L.Conv2D(16, 5), L.MaxPool2D(2), L.Flatten()]
    rf = V.receptive_field(stack, 3, input_shape=(1, 28, 28))
    assert (rf.size, rf.jump, rf.start) == ((14, 14), (2, 2), (-2, -2))
    rf = V.receptive_field(stack, 4)
    assert (rf.size, rf.jump, rf.start) == ((16, 16), (4, 4), (-2, -2))
    assert not V.receptive_field(stack, 5).spatial


def test_max_pool_receptive_field_brute_force():
    # max pooling passes a change only if it wins: perturb by +big so the changed value does
    stack = [L.Conv2D(1, 3, padding=1, use_bias=False), L.MaxPool2D(3, stride=2, padding=1)]
    shape = (1, 9, 9)
    for l in stack:
        l.build(shape, dtype=np.float64)
        shape = l.configure(shape)
    stack[0].params[0][...] = 1.0  # positive weights: +10 on an input raises every conv output it touches
    x = np.random.default_rng(2).uniform(0, 1, (1, 1, 9, 9))
    rf = V.receptive_field(stack, 1)
    for unit in [(0, 0, 0), (0, 2, 3), (0, 4, 4)]:
        hit = _influence(stack, 1, x, unit)
        r0, r1, c0, c1 = rf.box(*unit[1:])
        want = np.zeros_like(hit)
        want[max(r0, 0):r1, max(c0, 0):c1] = True
        np.testing.assert_array_equal(hit, want)


def test_topk_merge_matches_plain_sort(rng):
    U, N, k = 4, 50, 9
    vals = rng.integers(0, 12, (U, N)).astype(float)  # many ties
    best = (np.empty((U, 0)), np.empty((U, 0), np.int64), np.empty((U, 0, 2), np.int64))
    for s in range(0, N, 7):  # streamed in uneven batches
        v = vals[:, s:s + 7]
        i = np.broadcast_to(np.arange(s, s + v.shape[1]), v.shape)
        p = np.zeros((*v.shape, 2), np.int64)
        best = V._merge_topk(*best, v, i, p, k)
    for u in range(U):
        ref = sorted(range(N), key=lambda n: (-vals[u, n], n))[:k]
        assert best[1][u].tolist() == ref
        assert best[0][u].tolist() == [vals[u, n] for n in ref]


def test_top_activations_and_patches_against_direct_computation(rng):
    stack = _stack(3)
    x = rng.uniform(0, 1, (23, 1, 19, 17))
    vals, idx, pos = V.top_activations(stack, x, 2, units=[0, 2], k=5, batch_size=6)
    a = x
    for l in stack[:3]:
        a = l.forward(a)
    for r, u in enumerate([0, 2]):
        m = a[:, u].reshape(23, -1).max(1)
        ref = sorted(range(23), key=lambda n: (-m[n], n))[:5]
        assert idx[r].tolist() == ref
        np.testing.assert_allclose(vals[r], m[ref])
        for j, n in enumerate(ref):
            assert a[n, u][tuple(pos[r, j])] == m[n]
    patches, _, _ = V.top_patches(stack, x, 2, units=[0, 2], k=5, batch_size=6)
    rf = V.receptive_field(stack, 2)
    assert patches.shape == (2, 5, 1, *rf.size)
    r0, r1, c0, c1 = rf.box(*pos[0, 0])
    img = x[idx[0, 0], 0]
    inside = patches[0, 0, 0][max(-r0, 0):, max(-c0, 0):]
    np.testing.assert_array_equal(np.isnan(patches[0, 0, 0]).sum() == 0, r0 >= 0 and c0 >= 0 and r1 <= 19 and c1 <= 17)
    np.testing.assert_array_equal(inside[:min(r1, 19) - max(r0, 0), :min(c1, 17) - max(c0, 0)],
                                  img[max(r0, 0):r1, max(c0, 0):c1])


def test_pngs_decode_with_expected_size(tmp_path, rng):
    stack = _stack(4)
    x = (rng.uniform(0, 1, (12, 1, 19, 17)) * 255).astype(np.uint8)
    res = V.visualize_layer(stack, x, 2, tmp_path, units=3, k=4, scale=3)
    rf = res["receptive_field"]
    with Image.open(res["paths"]["patches"]) as im:
        im.load()
        assert im.format == "PNG"
        assert (im.height, im.width) == V.grid_size(3, 4, *rf.size, scale=3, gap=2)
    with Image.open(res["paths"]["filters"]) as im:  # 2 filters 3x3, one channel: 2 columns x 1 row
        assert (im.height, im.width) == V.grid_size(1, 2, 3, 3, scale=8, gap=2)
    with Image.open(res["paths"]["feature_maps"]) as im:  # conv2 output (3, 4, 5): grid 2x2
        assert (im.height, im.width) == V.grid_size(2, 2, 4, 5, scale=3, gap=2)
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_bad_layer_and_k(rng):
    stack = _stack()
    x = rng.uniform(0, 1, (3, 1, 19, 17))
    with pytest.raises(ValueError, match="no layer named"):
        V.top_activations(stack, x, "nope")
    with pytest.raises(ValueError, match="at least k=9"):
        V.top_activations(stack, x, 0)
    with pytest.raises(ValueError, match="units must be"):
        V.top_activations(stack, x, 0, units=[5], k=2)


def test_png_gets_normal_permissions(tmp_path):
    import os
    p = V.save_patch_grid(np.zeros((1, 1, 1, 2, 2)), tmp_path / "a.png")
    mask = os.umask(0)
    os.umask(mask)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~mask)
