"""What convolutional layers learn: top-activating patches, filters, feature maps.

* :func:`receptive_field` — size, stride ("jump") and offset of the input
  window seen by one unit of a layer, from the layer stack including padding:
  the unit at output position (i, j) sees input rows
  ``start + i * jump .. start + i * jump + size - 1`` (start < 0 reaches into
  the padding).
* :func:`top_activations` — scan a data set and keep, per unit (channel), the
  k images whose maximum over positions is largest (ties: earlier image
  first), with where that maximum is; :func:`top_patches` crops the receptive
  field around it; :func:`save_patch_grid` renders units x k patches, as in
  Zeiler & Fergus (2013).
* :func:`save_filter_grid` (first-layer filters), :func:`save_feature_maps`
  (the maps of one image at one layer).

PNGs are written with Pillow, atomically. Areas of a patch outside the image
(padding) are drawn dark blue so they are not mistaken for black pixels.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ._atomic import atomic_path
from .receptive import ReceptiveField, _dilation, _geometry, _is_chain, graph_receptive_fields
from .transfer import _layers, extract_features, layer_index

__all__ = [
    "ReceptiveField", "receptive_field", "input_box", "top_activations", "top_patches", "save_patch_grid",
    "save_filter_grid", "save_feature_maps", "grid_size", "visualize_layer",
]

OUTSIDE_RGB = (20, 30, 90)


def receptive_field(model, layer=-1, input_shape=None) -> ReceptiveField:
    """Receptive field of one unit of ``layer`` (index or name, inclusive).

    Recurrence per conv/pool layer (kernel k, stride s, leading pad p):
    ``size += (k - 1) * jump``, ``start -= p * jump``, ``jump *= s``.
    ``input_shape`` (C, H, W) configures unbuilt layers (to resolve 'same' padding).
    """
    graph = getattr(model, "_graph", None)
    if graph is not None and getattr(model, "_multi_in", None) is not None and not _is_chain(graph):
        return graph_receptive_fields(graph)[graph.steps[graph.step_of_layer(
            _layers(model)[layer_index(model, layer)])][2]]
    layers = _layers(model)
    upto = layer_index(model, layer)
    if input_shape is not None:
        shape = tuple(input_shape)
        for l in layers[:upto + 1]:
            if getattr(l, "_out", None) is None and hasattr(l, "configure"):
                shape = l.configure(shape)
            elif getattr(l, "_out", None) is not None:
                shape = l._out
    size, jump, start = [1, 1], [1, 1], [0, 0]
    for l in layers[:upto + 1]:
        g = _geometry(l)
        if g is None:
            continue
        if g == "global":
            return ReceptiveField(None, None, None, spatial=False)
        k, s, p = g
        for a in range(2):
            size[a] += (k[a] - 1) * _dilation(l)[a] * jump[a]
            start[a] -= p[a] * jump[a]
            jump[a] *= s[a]
    return ReceptiveField(tuple(size), tuple(jump), tuple(start))


def input_box(model, layer, i, j):
    """The input pixels that actually reach unit (i, j) of ``layer``: ``(r0, r1, c0, c1)``
    half-open, or None when the unit sees only padding.

    Unlike :meth:`ReceptiveField.box` (the textbook window, also used to crop
    equal-sized patches), this clips to the valid positions at every layer: a
    unit near the border may read an intermediate layer's *padding*, which
    carries no input pixel. With non-zero weights this is exactly the set of
    pixels whose change changes the unit.
    """
    layers = _layers(model)
    upto = layer_index(model, layer)
    lo, hi = [int(i), int(j)], [int(i), int(j)]
    for l in reversed(layers[:upto + 1]):
        g = _geometry(l)
        if g is None:
            continue
        if g == "global":
            raise ValueError(f"layer {l.name!r} is not spatial: every unit sees the whole input")
        (k, s, p), size = g, l.input_shape[1:]
        for a in range(2):
            lo[a] = max(lo[a] * s[a] - p[a], 0)
            hi[a] = min(hi[a] * s[a] - p[a] + (k[a] - 1) * _dilation(l)[a], size[a] - 1)
            if lo[a] > hi[a]:
                return None
    return lo[0], hi[0] + 1, lo[1], hi[1] + 1


# ---------------------------------------------------------------- top-k

def _merge_topk(best_v, best_i, best_p, v, i, p, k):
    """Per unit (row): keep the k largest values; stable, so earlier entries win ties."""
    allv = np.concatenate([best_v, v], axis=1)
    alli = np.concatenate([best_i, i], axis=1)
    allp = np.concatenate([best_p, p], axis=1)
    order = np.argsort(-allv, axis=1, kind="stable")[:, :k]
    rows = np.arange(allv.shape[0])[:, None]
    return allv[rows, order], alli[rows, order], allp[rows, order]


def top_activations(model, x, layer, units=None, k=9, *, batch_size=256, progress=None):
    """For each unit (channel) of ``layer``: the k images of ``x`` with the largest
    maximum activation, best first.

    Returns ``(values (U, k), image_index (U, k), position (U, k, 2))``; position is
    the (row, col) of the maximum in the layer's output (0, 0 for dense layers).
    ``units``: channel indices (default: all). ``progress(n)`` after each batch.
    """
    upto = layer_index(model, layer)
    x = np.asarray(x)
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if x.shape[0] < k:
        raise ValueError(f"need at least k={k} images to pick the top {k}, got {x.shape[0]}")
    best = None
    for s in range(0, x.shape[0], int(batch_size)):
        a = extract_features(model, x[s:s + batch_size], upto, batch_size=batch_size)
        if a.ndim == 2:
            a = a[:, :, None, None]
        if a.ndim != 4:
            raise ValueError(f"layer {upto} output has shape {a.shape}; expected (N, C, H, W) or (N, units)")
        n, c, h, w = a.shape
        if units is None:
            units = np.arange(c)
        units = np.asarray(units, dtype=np.int64)
        if units.size == 0 or units.min() < 0 or units.max() >= c:
            raise ValueError(f"units must be channel indices in 0..{c - 1}, got {units.tolist()}")
        flat = a[:, units].reshape(n, units.size, h * w)
        arg = flat.argmax(axis=2)                                   # (n, U), first maximum
        val = np.take_along_axis(flat, arg[:, :, None], 2)[:, :, 0]
        v = val.T.astype(np.float64)                                # (U, n)
        i = np.broadcast_to(np.arange(s, s + n), v.shape)
        p = np.stack([arg.T // w, arg.T % w], axis=-1)
        if best is None:
            best = (np.empty((units.size, 0)), np.empty((units.size, 0), np.int64),
                    np.empty((units.size, 0, 2), np.int64))
        best = _merge_topk(*best, v, i, p, k)
        if progress is not None:
            progress(n)
    return best


def _crop(img, box, fill=np.nan):
    """``img[:, r0:r1, c0:c1]`` with ``fill`` where the box leaves the image."""
    c, h, w = img.shape
    r0, r1, c0, c1 = box
    out = np.full((c, r1 - r0, c1 - c0), fill, dtype=np.float64)
    rr0, rr1, cc0, cc1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    if rr0 < rr1 and cc0 < cc1:
        out[:, rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = img[:, rr0:rr1, cc0:cc1]
    return out


def top_patches(model, x, layer, units=None, k=9, *, batch_size=256, progress=None, input_shape=None):
    """Crops of the input around each unit's top-k activations, by its receptive field.

    Returns ``(patches (U, k, C, h, w) float64 in the input's units with NaN outside
    the image, values, image_index)``. For dense layers the patch is the whole image.
    """
    x = np.asarray(x)
    vals, idx, pos = top_activations(model, x, layer, units, k, batch_size=batch_size, progress=progress)
    rf = receptive_field(model, layer, input_shape=input_shape or x.shape[1:])
    U = vals.shape[0]
    if rf.spatial:
        h, w = rf.size
    else:
        h, w = x.shape[2:]
    patches = np.empty((U, k, x.shape[1], h, w))
    for u in range(U):
        for j in range(k):
            img = x[idx[u, j]].astype(np.float64)
            box = rf.box(*pos[u, j]) if rf.spatial else (0, h, 0, w)
            patches[u, j] = _crop(img, box)
    return patches, vals, idx


# ---------------------------------------------------------------- rendering

def _write_png(img, path):
    from PIL import Image
    path = Path(path)
    with atomic_path(path, ".png") as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    return path


def grid_size(rows, cols, tile_h, tile_w, scale=1, gap=1):
    """(height, width) in pixels of a grid image: tiles of ``tile*scale`` separated and framed by ``gap``."""
    return rows * tile_h * scale + (rows + 1) * gap, cols * tile_w * scale + (cols + 1) * gap


def _to_rgb(tile, lo, hi):
    """(C, h, w) floats (NaN = outside) -> (h, w, 3) uint8, ``lo..hi`` mapped to 0..255."""
    c = tile.shape[0]
    span = hi - lo if hi > lo else 1.0
    t = np.clip((tile - lo) / span, 0, 1) * 255
    outside = np.isnan(tile).any(axis=0)
    t = np.nan_to_num(t)
    if c == 3:
        rgb = t.transpose(1, 2, 0)
    else:
        rgb = np.repeat(t[0][:, :, None], 3, axis=2)
    rgb = np.round(rgb).astype(np.uint8)
    rgb[outside] = OUTSIDE_RGB
    return rgb


def _grid(tiles, scale, gap, norm="tile", bg=(255, 255, 255)):
    """tiles (R, K, C, h, w) -> an RGB uint8 image; ``norm``: 'tile' (each tile min..max),
    'symmetric' (each tile -m..m around 0 -> grey 128) or a fixed (lo, hi)."""
    R, K, _, h, w = tiles.shape
    H, W = grid_size(R, K, h, w, scale, gap)
    img = np.empty((H, W, 3), np.uint8)
    img[...] = bg
    for r in range(R):
        for k in range(K):
            t = tiles[r, k]
            if isinstance(norm, tuple):
                lo, hi = norm
            else:
                finite = t[np.isfinite(t)]
                if finite.size == 0:
                    lo, hi = 0.0, 1.0
                elif norm == "symmetric":
                    m = float(np.abs(finite).max()) or 1.0
                    lo, hi = -m, m
                else:
                    lo, hi = float(finite.min()), float(finite.max())
            rgb = _to_rgb(t, lo, hi)
            if scale > 1:
                rgb = rgb.repeat(scale, 0).repeat(scale, 1)
            y0 = gap + r * (h * scale + gap)
            x0 = gap + k * (w * scale + gap)
            img[y0:y0 + h * scale, x0:x0 + w * scale] = rgb
    return img


def _value_range(x):
    return (0.0, 255.0) if np.asarray(x).dtype == np.uint8 else (0.0, 1.0)


def save_patch_grid(patches, path, *, scale=4, gap=2, value_range=(0.0, 1.0)):
    """Units x k patches as one PNG (rows = units). ``value_range`` maps to black..white
    (the same for all tiles, so brightness compares across patches). Returns the path."""
    patches = np.asarray(patches, dtype=np.float64)
    if patches.ndim != 5:
        raise ValueError(f"patches must be (units, k, C, h, w), got shape {patches.shape}")
    return _write_png(_grid(patches, int(scale), int(gap), tuple(map(float, value_range))), path)


def _first_conv(layers):
    for i, l in enumerate(layers):
        if hasattr(l, "kernel_size") and getattr(l, "param_names", ()):
            return i
    raise ValueError("the model has no convolutional layer")


def save_filter_grid(model, path, layer=None, *, scale=8, gap=2):
    """Filters of a conv layer (default: the first) as a PNG. 3-channel filters are
    RGB tiles in a square-ish grid; otherwise one row per filter, one tile per input
    channel (a single channel: a square-ish grid). Each tile: -m..m -> black..white."""
    layers = _layers(model)
    i = _first_conv(layers) if layer is None else layer_index(model, layer)
    l = layers[i]
    if not hasattr(l, "kernel_size"):
        raise ValueError(f"layer {l.name!r} is not a convolution")
    w = np.asarray(l.get_weights()[0], dtype=np.float64)  # (K, C, kh, kw)
    K, C, kh, kw = w.shape
    if C in (1, 3):
        cols = math.ceil(math.sqrt(K))
        rows = math.ceil(K / cols)
        tiles = np.full((rows * cols, C, kh, kw), np.nan)
        tiles[:K] = w
        tiles = tiles.reshape(rows, cols, C, kh, kw)
    else:
        tiles = w[:, :, None]  # (K, C, 1, kh, kw)
    img = _grid(tiles, int(scale), int(gap), "symmetric")
    return _write_png(img, path)


def save_feature_maps(model, image, layer, path, *, scale=4, gap=2):
    """The activations of one image (C, H, W) at ``layer``, one tile per channel
    (each tile min..max -> black..white); dense layers give a 1-pixel-high strip."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be one (C, H, W) image, got shape {image.shape}")
    a = extract_features(model, image[None], layer)[0]
    if a.ndim == 1:
        a = a[None, None, None, None, :]  # one tile 1 x units
        lo, hi = float(a.min()), float(a.max())
        return _write_png(_grid(a, int(scale), int(gap), (lo, hi) if hi > lo else (lo, lo + 1)), path)
    C, h, w = a.shape
    cols = math.ceil(math.sqrt(C))
    rows = math.ceil(C / cols)
    tiles = np.full((rows * cols, 1, h, w), np.nan)
    tiles[:C, 0] = a
    return _write_png(_grid(tiles.reshape(rows, cols, 1, h, w), int(scale), int(gap), "tile"), path)


def visualize_layer(model, x, layer, out_dir, *, units=9, k=9, scale=4, batch_size=256, progress=None):
    """Everything for one layer into ``out_dir``: top-k patch grid, first-layer filters,
    feature maps of the first image. Returns a dict of written paths and the receptive field."""
    out = Path(out_dir)
    layers = _layers(model)
    li = layer_index(model, layer)
    x = np.asarray(x)
    probe = extract_features(model, x[:1], li)
    n_units = probe.shape[1]
    sel = np.arange(min(int(units), n_units)) if isinstance(units, (int, np.integer)) else np.asarray(units)
    patches, vals, idx = top_patches(model, x, li, sel, k, batch_size=batch_size, progress=progress,
                                     input_shape=x.shape[1:])
    name = getattr(layers[li], "name", f"layer{li}")
    paths = {"patches": save_patch_grid(patches, out / f"{name}_top{k}.png", scale=scale,
                                        value_range=_value_range(x))}
    try:
        paths["filters"] = save_filter_grid(model, out / "filters_first_conv.png")
    except ValueError:
        pass
    paths["feature_maps"] = save_feature_maps(model, x[0], li, out / f"{name}_feature_maps.png", scale=scale)
    return {"paths": paths, "receptive_field": receptive_field(model, li, input_shape=x.shape[1:]),
            "values": vals, "images": idx, "units": sel}
