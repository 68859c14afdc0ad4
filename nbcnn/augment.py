"""Data augmentation: seeded, batched image distortions for NCHW uint8 or float batches.

Two layers:

* functions with explicit per-image parameters (:func:`rotate`, :func:`affine`,
  :func:`translate`, :func:`mirror`, :func:`add_noise`, :func:`color_shift`) —
  deterministic, testable, one Numba kernel call per batch;
* random operations (:class:`RandomAffine`, :class:`RandomCrop`, ...) that draw
  those parameters from a ``numpy.random.Generator`` and compose into a
  :class:`Pipeline`, e.g. ``parse_spec("rotate=10,crop=2,noise=0.05")``.

Magnitudes of value changes (noise, colour) are fractions of the value range:
255 levels for uint8, 1.0 for floats (assumed in [0, 1]); uint8 results are
rounded and clipped to [0, 255], float results are clipped only when a
``clip=(lo, hi)`` is given. Inputs are never modified.

Offline: :func:`augment_dataset` and :func:`write_dataset` write IDX files that
:mod:`nbcnn.datasets` reads. Online, worker processes distort mini-batches while
the model trains: :func:`nbcnn.loader.online_batches` (the loader uses this
module; this module knows nothing of the loader).
"""
from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np

from ._atomic import atomic_open

__all__ = [
    "rotate", "affine", "translate", "mirror", "add_noise", "color_shift",
    "RandomAffine", "RandomRotation", "RandomCrop", "RandomMirror", "GaussianNoise", "ColorShift",
    "ColorJitter", "Cutout", "jitter", "cut_out",
    "Pipeline", "parse_spec", "batch_rng", "augment_dataset", "write_dataset", "write_idx",
    "SPEC_KEYS",
]

_DTYPES = (np.uint8, np.float32, np.float64)


def _kernels():
    from .kernels.cpu import augment as k  # lazy: Numba loads on first use
    return k


def _check_batch(x, name="x"):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must be a batch (N, C, H, W), got shape {x.shape}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"{name} must be uint8, float32 or float64, got {x.dtype}")
    return np.ascontiguousarray(x)


def _per_image(v, n, name, dtype=np.float64):
    a = np.asarray(v, dtype=dtype)
    if a.ndim == 0:
        a = np.full(n, a, dtype=dtype)
    if a.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},) (one per image), got {a.shape}")
    return np.ascontiguousarray(a)


def _value_range(x) -> float:
    return 255.0 if x.dtype == np.uint8 else 1.0


def _clip_args(x, clip):
    """(lo, hi, round) for the kernels' store."""
    if x.dtype == np.uint8:
        lo, hi = (0.0, 255.0) if clip is None else (max(0.0, float(clip[0])), min(255.0, float(clip[1])))
        return lo, hi, True
    if clip is None:
        return -math.inf, math.inf, False
    lo, hi = float(clip[0]), float(clip[1])
    if not lo <= hi:
        raise ValueError(f"clip must be (lo, hi) with lo <= hi, got {clip!r}")
    return lo, hi, False


# ---------------------------------------------------------------- deterministic ops

def affine(x, mats, *, fill=0.0, clip=None):
    """Bilinear inverse warp: ``mats`` ``(N, 2, 3)`` maps each OUTPUT (row, col) to its SOURCE (row, col)."""
    x = _check_batch(x)
    m = np.ascontiguousarray(np.asarray(mats, dtype=np.float64).reshape(-1, 6))
    if m.shape[0] != x.shape[0]:
        raise ValueError(f"mats must have one 2x3 matrix per image: x has N={x.shape[0]}, mats {np.shape(mats)}")
    lo, hi, rnd = _clip_args(x, clip)
    out = np.empty_like(x)
    _kernels().warp_affine(x, m, float(fill), lo, hi, rnd, out)
    return out


def _inverse_mats(shape, angles, scales=None, shears=None, ty=None, tx=None):
    """Inverse-warp matrices for: rotate (degrees, counter-clockwise as displayed),
    scale, horizontal shear and translate (pixels), all about the image centre."""
    n, _, h, w = shape
    th = np.deg2rad(np.asarray(angles, dtype=np.float64))
    c, s = np.cos(th), np.sin(th)
    sc = np.ones(n) if scales is None else np.asarray(scales, np.float64)
    sh = np.zeros(n) if shears is None else np.asarray(shears, np.float64)
    ty = np.zeros(n) if ty is None else np.asarray(ty, np.float64)
    tx = np.zeros(n) if tx is None else np.asarray(tx, np.float64)
    # forward map on (row, col) offsets from the centre: A = R(theta) @ Shear @ scale
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)          # (n, 2, 2)
    shr = np.zeros((n, 2, 2))
    shr[:, 0, 0] = 1.0
    shr[:, 1, 1] = 1.0
    shr[:, 1, 0] = sh                                                          # col += shear * row
    fwd = rot @ shr * sc[:, None, None]
    inv = np.linalg.inv(fwd)
    cr, cc = (h - 1) / 2.0, (w - 1) / 2.0
    # src = inv @ (out - centre - t) + centre
    orr, occ = cr + ty, cc + tx
    mats = np.empty((n, 2, 3))
    mats[:, :, :2] = inv
    mats[:, 0, 2] = cr - inv[:, 0, 0] * orr - inv[:, 0, 1] * occ
    mats[:, 1, 2] = cc - inv[:, 1, 0] * orr - inv[:, 1, 1] * occ
    return mats


def rotate(x, angles, *, fill=0.0, clip=None):
    """Rotate each image by ``angles[n]`` degrees (counter-clockwise as displayed, like
    ``np.rot90``) about its centre, bilinear; areas from outside the image get ``fill``."""
    x = _check_batch(x)
    a = _per_image(angles, x.shape[0], "angles")
    return affine(x, _inverse_mats(x.shape, a), fill=fill, clip=clip)


def translate(x, dy, dx, *, fill=0):
    """Shift image n down by ``dy[n]`` and right by ``dx[n]`` whole pixels; vacated pixels get ``fill``."""
    x = _check_batch(x)
    n = x.shape[0]
    dy = _per_image(dy, n, "dy", np.int64)
    dx = _per_image(dx, n, "dx", np.int64)
    out = np.empty_like(x)
    _kernels().shift(x, dy, dx, x.dtype.type(fill), out)
    return out


def mirror(x, horizontal=True, vertical=False):
    """Flip images left-right (``horizontal``) and/or top-bottom; bool or one bool per image."""
    x = _check_batch(x)
    n = x.shape[0]
    fh = _per_image(horizontal, n, "horizontal", np.bool_)
    fv = _per_image(vertical, n, "vertical", np.bool_)
    out = np.empty_like(x)
    _kernels().flip(x, fh, fv, out)
    return out


def color_shift(x, offsets, *, clip=None):
    """Add ``offsets`` (scalar, ``(C,)``, or ``(N, C)``; in data units, e.g. uint8 levels
    ``(+20, -20, +20)`` for R, G, B) per channel, clipping to the valid range."""
    x = _check_batch(x)
    n, c = x.shape[:2]
    o = np.asarray(offsets, dtype=np.float64)
    try:
        o = np.ascontiguousarray(np.broadcast_to(o, (n, c)))
    except ValueError:
        raise ValueError(f"offsets of shape {o.shape} do not fit x with N={n}, C={c} "
                         f"(use a scalar, (C,) or (N, C))") from None
    lo, hi, rnd = _clip_args(x, clip)
    out = np.empty_like(x)
    _kernels().offset_clip(x, o, lo, hi, rnd, out)
    return out


def add_noise(x, std, seeds, *, clip=None):
    """Add Gaussian noise of standard deviation ``std`` (data units; scalar or per image),
    reproducible from per-image integer ``seeds``."""
    x = _check_batch(x)
    n = x.shape[0]
    s = _per_image(std, n, "std")
    if np.any(s < 0):
        raise ValueError("std must be >= 0")
    seeds = _per_image(seeds, n, "seeds", np.uint64)
    lo, hi, rnd = _clip_args(x, clip)
    out = np.empty_like(x)
    _kernels().gaussian_noise(x, s, seeds, lo, hi, rnd, out)
    return out


def jitter(x, gains, biases, *, clip=None):
    """Contrast ``gains[n]`` about each image's mean, then brightness ``biases[n]`` (data units)."""
    x = _check_batch(x)
    n = x.shape[0]
    lo, hi, rnd = _clip_args(x, clip)
    out = np.empty_like(x)
    _kernels().contrast_brightness(x, _per_image(gains, n, "gains"), _per_image(biases, n, "biases"), lo, hi, rnd,
                                   out)
    return out


def cut_out(x, top, left, size, *, fill=0):
    """Set the ``size`` x ``size`` square at ``(top[n], left[n])`` of image n to ``fill``."""
    x = _check_batch(x)
    n = x.shape[0]
    out = np.empty_like(x)
    _kernels().cutout(x, _per_image(top, n, "top", np.int64), _per_image(left, n, "left", np.int64), int(size),
                      x.dtype.type(fill), out)
    return out


# ---------------------------------------------------------------- random ops

def _nonneg(v, name):
    v = float(v)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return v


class RandomAffine:
    """One bilinear warp per image: rotation in [-rotate, rotate] degrees, scale in
    [1 - scale, 1 + scale], horizontal shear factor in [-shear, shear], translation
    in [-translate, translate] pixels per axis (sub-pixel). Folding them into one
    warp interpolates once (sharper, faster than chaining)."""

    def __init__(self, rotate=0.0, scale=0.0, shear=0.0, translate=0.0, fill=0.0):
        self.rotate = _nonneg(rotate, "rotate")
        self.scale = _nonneg(scale, "scale")
        if self.scale >= 1:
            raise ValueError(f"scale must be < 1 (scale factor in [1-scale, 1+scale]), got {scale}")
        self.shear = _nonneg(shear, "shear")
        self.translate = _nonneg(translate, "translate")
        self.fill = float(fill)

    def __call__(self, x, rng):
        n = x.shape[0]
        u = lambda m: rng.uniform(-m, m, size=n) if m else np.zeros(n)  # noqa: E731
        ang, sc, sh, ty, tx = u(self.rotate), 1.0 + u(self.scale), u(self.shear), u(self.translate), u(self.translate)
        return affine(x, _inverse_mats(x.shape, ang, sc, sh, ty, tx), fill=self.fill)

    def spec(self):
        parts = [f"{k}={getattr(self, k):g}" for k in ("rotate", "scale", "shear", "translate") if getattr(self, k)]
        return ",".join(parts)


class RandomRotation(RandomAffine):
    """Rotation by a uniform angle in [-degrees, degrees], bilinear."""

    def __init__(self, degrees, fill=0.0):
        super().__init__(rotate=degrees, fill=fill)


class RandomCrop:
    """Pad by ``padding`` pixels (``fill``) on every side and cut a random window of the
    original size: a random whole-pixel shift of up to ``padding`` in each axis."""

    def __init__(self, padding, fill=0):
        if int(padding) != padding or padding < 0:
            raise ValueError(f"crop padding must be an int >= 0, got {padding!r}")
        self.padding = int(padding)
        self.fill = fill

    def __call__(self, x, rng):
        p = self.padding
        if p == 0:
            return x
        n = x.shape[0]
        return translate(x, rng.integers(-p, p + 1, size=n), rng.integers(-p, p + 1, size=n), fill=self.fill)

    def spec(self):
        return f"crop={self.padding}"


class RandomMirror:
    """Flip each image left-right (or top-bottom with ``vertical=True``) with probability ``p``."""

    def __init__(self, p=0.5, vertical=False):
        p = float(p)
        if not 0 <= p <= 1:
            raise ValueError(f"mirror probability must be in [0, 1], got {p}")
        self.p, self.vertical = p, bool(vertical)

    def __call__(self, x, rng):
        f = rng.random(x.shape[0]) < self.p
        return mirror(x, horizontal=False, vertical=f) if self.vertical else mirror(x, horizontal=f)

    def spec(self):
        return f"{'vflip' if self.vertical else 'mirror'}={self.p:g}"


class GaussianNoise:
    """Additive Gaussian noise, ``std`` a fraction of the value range (0.05 = 12.75 uint8 levels)."""

    def __init__(self, std):
        self.std = _nonneg(std, "noise std")

    def __call__(self, x, rng):
        n = x.shape[0]
        seeds = rng.integers(0, 2**63, size=n, dtype=np.uint64)
        return add_noise(x, self.std * _value_range(x), seeds)

    def spec(self):
        return f"noise={self.std:g}"


class ColorShift:
    """Per-image, per-channel offsets uniform in [-max_shift, max_shift] (fraction of the
    value range; 0.08 ~ +-20 uint8 levels), clipped to the valid range."""

    def __init__(self, max_shift):
        self.max_shift = _nonneg(max_shift, "color shift")

    def __call__(self, x, rng):
        n, c = x.shape[:2]
        o = rng.uniform(-self.max_shift, self.max_shift, size=(n, c)) * _value_range(x)
        if x.dtype == np.uint8:
            o = np.round(o)
        return color_shift(x, o)

    def spec(self):
        return f"color={self.max_shift:g}"


class ColorJitter:
    """Per-image contrast gain in [1 - amount, 1 + amount] about the image mean, then a brightness
    offset in [-amount, amount] of the value range (all channels alike), clipped."""

    def __init__(self, amount):
        self.amount = _nonneg(amount, "jitter")

    def __call__(self, x, rng):
        n = x.shape[0]
        a = self.amount
        gains = rng.uniform(1 - a, 1 + a, size=n)
        biases = rng.uniform(-a, a, size=n) * _value_range(x)
        return jitter(x, gains, biases)

    def spec(self):
        return f"jitter={self.amount:g}"


class Cutout:
    """Zero one ``size`` x ``size`` square per image, centred anywhere in the image (DeVries &
    Taylor 2017: the square may hang over the border)."""

    def __init__(self, size, fill=0):
        if int(size) != size or size < 0:
            raise ValueError(f"cutout size must be an int >= 0, got {size!r}")
        self.size = int(size)
        self.fill = fill

    def __call__(self, x, rng):
        if self.size == 0:
            return x
        n, _, h, w = x.shape
        cy, cx = rng.integers(0, h, size=n), rng.integers(0, w, size=n)
        return cut_out(x, cy - self.size // 2, cx - self.size // 2, self.size, fill=self.fill)

    def spec(self):
        return f"cutout={self.size}"


class Pipeline:
    """Operations applied in order; ``pipeline(x, rng)`` returns a new distorted batch."""

    def __init__(self, ops=()):
        self.ops = list(ops)
        for op in self.ops:
            if not callable(op):
                raise TypeError(f"pipeline operations must be callable (x, rng) -> x, got {op!r}")

    def __call__(self, x, rng=None):
        x = _check_batch(x)
        if rng is None or isinstance(rng, (int, np.integer)):
            rng = np.random.default_rng(rng)
        for op in self.ops:
            x = op(x, rng)
        return x

    def __len__(self):
        return len(self.ops)

    def spec(self):
        return ",".join(s for s in (op.spec() for op in self.ops if hasattr(op, "spec")) if s)

    def __repr__(self):
        return f"Pipeline({self.spec()!r})"


SPEC_KEYS = {
    "rotate": "max rotation, degrees (bilinear)",
    "scale": "max relative scale change, e.g. 0.1 = 90%..110%",
    "shear": "max horizontal shear factor",
    "translate": "max sub-pixel shift, pixels",
    "crop": "pad by N pixels and crop back (whole-pixel shift up to N)",
    "mirror": "probability of a left-right flip (default 0.5)",
    "vflip": "probability of a top-bottom flip (default 0.5)",
    "color": "max per-channel offset, fraction of the value range",
    "jitter": "max contrast change and brightness offset (fractions), e.g. 0.2",
    "cutout": "side of a square zeroed at a random place per image, pixels",
    "noise": "Gaussian noise std, fraction of the value range",
}


def parse_spec(spec) -> Pipeline:
    """``"rotate=10,crop=2,noise=0.05"`` -> a :class:`Pipeline` (see ``SPEC_KEYS``).

    The order is fixed, whatever the order in the string: one affine warp
    (rotate/scale/shear/translate), crop, mirror, colour shift, jitter, cutout, noise.
    ``""`` or ``"none"`` gives an empty pipeline.
    """
    if isinstance(spec, Pipeline):
        return spec
    if spec is None or not str(spec).strip() or str(spec).strip().lower() == "none":
        return Pipeline()
    vals = {}
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        key, eq, val = part.partition("=")
        key = key.strip().lower()
        if key not in SPEC_KEYS:
            raise ValueError(f"unknown augmentation {key!r} in {spec!r}; known: {', '.join(SPEC_KEYS)}")
        if key in vals:
            raise ValueError(f"augmentation {key!r} given twice in {spec!r}")
        if not eq:
            if key in ("mirror", "vflip"):
                val = "0.5"
            else:
                raise ValueError(f"augmentation {key!r} needs a value, e.g. {key}=2")
        try:
            vals[key] = float(val)
        except ValueError:
            raise ValueError(f"augmentation {key}={val!r}: not a number") from None
    ops = []
    geo = {k: vals[k] for k in ("rotate", "scale", "shear", "translate") if vals.get(k)}
    if geo:
        ops.append(RandomAffine(**geo))
    if vals.get("crop"):
        ops.append(RandomCrop(vals["crop"]))
    if vals.get("mirror"):
        ops.append(RandomMirror(vals["mirror"]))
    if vals.get("vflip"):
        ops.append(RandomMirror(vals["vflip"], vertical=True))
    if vals.get("color"):
        ops.append(ColorShift(vals["color"]))
    if vals.get("jitter"):
        ops.append(ColorJitter(vals["jitter"]))
    if vals.get("cutout"):
        ops.append(Cutout(vals["cutout"]))
    if vals.get("noise"):
        ops.append(GaussianNoise(vals["noise"]))
    return Pipeline(ops)


def batch_rng(seed, epoch, batch):
    """The RNG of one mini-batch: child ``(epoch, batch)`` of ``SeedSequence(seed)``.

    Every batch has its own independent stream, so results depend on the seed
    only — not on which worker process made the batch nor how many there are.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(int(epoch), int(batch))))


# ---------------------------------------------------------------- offline

def augment_dataset(x, y, pipeline, copies=1, *, seed=0, include_original=True, batch_size=1024,
                    progress=None):
    """``copies`` distorted copies of ``(x, y)`` (plus the originals first, by default).

    Deterministic for a given seed. ``progress(n_done)`` is called after each batch.
    """
    pipeline = parse_spec(pipeline)
    x = _check_batch(x)
    y = np.asarray(y)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} images but y has {y.shape[0]} labels")
    copies = int(copies)
    if copies < 0:
        raise ValueError(f"copies must be >= 0, got {copies}")
    parts_x, parts_y = ([x], [y]) if include_original else ([], [])
    n = x.shape[0]
    for k in range(copies):
        out = np.empty_like(x)
        for b, s in enumerate(range(0, n, batch_size)):
            out[s:s + batch_size] = pipeline(x[s:s + batch_size], batch_rng(seed, k, b))
            if progress is not None:
                progress(min(s + batch_size, n) - s)
        parts_x.append(out)
        parts_y.append(y)
    if not parts_x:
        return x[:0].copy(), y[:0].copy()
    return np.concatenate(parts_x), np.concatenate(parts_y)


_IDX_TYPES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
              np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def write_idx(path, arr, *, compress=None):
    """Write ``arr`` as an IDX file (gzip when the name ends in .gz), atomically."""
    path = Path(path)
    arr = np.asarray(arr)
    if arr.dtype.kind in "iu" and arr.dtype != np.uint8:
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
            raise ValueError(f"{path.name}: integer values outside 0..255 need a wider IDX type")
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        arr = arr.astype(">f4" if arr.dtype.itemsize <= 4 else ">f8")
    code = _IDX_TYPES.get(arr.dtype)
    if code is None:
        raise TypeError(f"{path.name}: dtype {arr.dtype} has no IDX type")
    header = struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    compress = path.suffix == ".gz" if compress is None else compress
    with atomic_open(path, "wb") as raw:
        f = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) if compress else raw
        f.write(header)
        f.write(np.ascontiguousarray(arr).tobytes())
        if compress:
            f.close()
    return path


def write_dataset(out_dir, name, train, test, *, compress=True):
    """Write ``(x, y)`` train and test sets as ``out_dir/name/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``,
    the MNIST layout :mod:`nbcnn.datasets` reads (``nbcnn train --data-dir out_dir``)."""
    d = Path(out_dir) / name
    ext = ".gz" if compress else ""
    written = []
    for prefix, (x, y) in (("train", train), ("t10k", test)):
        x = np.asarray(x)
        if x.ndim == 4:
            if x.shape[1] != 1:
                raise ValueError(f"IDX image files hold one channel; got x of shape {x.shape}")
            x = x[:, 0]
        written.append(write_idx(d / f"{prefix}-images-idx3-ubyte{ext}", x))
        written.append(write_idx(d / f"{prefix}-labels-idx1-ubyte{ext}", np.asarray(y)))
    return written
