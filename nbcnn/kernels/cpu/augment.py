"""Per-pixel augmentation kernels on the CPU (NCHW, uint8 / float32 / float64).

Every kernel takes per-image parameters (one row per image), so a whole batch
is distorted in one call, one parallel task per (n, c) plane writing only its
own output plane (race-free, identical run to run and for any thread count).

Value handling, shared by all kernels: results are clipped to ``[lo, hi]``
(pass -inf/inf for no clipping) and, for integer outputs, rounded half up
(``rnd=True``) before the store.

Noise comes from a counter-based generator (SplitMix64 of a per-image seed and
the pixel index) so parallel loops need no shared RNG state and the result
does not depend on how the loop is split over threads.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(inline="always")
def _store(v, lo, hi, rnd):
    if rnd:
        v = math.floor(v + 0.5)
    if v < lo:
        v = lo
    elif v > hi:
        v = hi
    return v


@njit(parallel=True, cache=True)
def warp_affine(x, mats, fill, lo, hi, rnd, out):
    """Bilinear inverse warp: ``out[i, j] = x[a0*i + a1*j + a2, a3*i + a4*j + a5]``.

    mats ``(N, 6)`` float64 maps OUTPUT (row, col) to SOURCE (row, col).
    Source neighbours outside the image count as ``fill``, so borders blend.
    Source coordinates within 1e-6 of a grid point snap to it: a 90-degree
    rotation reproduces the pixels exactly despite cos(pi/2) != 0.
    """
    N, C, H, W = x.shape
    Ho, Wo = out.shape[2], out.shape[3]
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        a0 = mats[n, 0]
        a1 = mats[n, 1]
        a2 = mats[n, 2]
        a3 = mats[n, 3]
        a4 = mats[n, 4]
        a5 = mats[n, 5]
        for i in range(Ho):
            for j in range(Wo):
                r = a0 * i + a1 * j + a2
                q = a3 * i + a4 * j + a5
                rr = math.floor(r + 0.5)
                if abs(r - rr) < 1e-6:
                    r = rr
                qr = math.floor(q + 0.5)
                if abs(q - qr) < 1e-6:
                    q = qr
                r0 = math.floor(r)
                q0 = math.floor(q)
                fr = r - r0
                fq = q - q0
                ir = int(r0)
                iq = int(q0)
                v00 = fill
                v01 = fill
                v10 = fill
                v11 = fill
                if ir >= 0 and ir < H:
                    if iq >= 0 and iq < W:
                        v00 = float(x[n, c, ir, iq])
                    if iq + 1 >= 0 and iq + 1 < W:
                        v01 = float(x[n, c, ir, iq + 1])
                if ir + 1 >= 0 and ir + 1 < H:
                    if iq >= 0 and iq < W:
                        v10 = float(x[n, c, ir + 1, iq])
                    if iq + 1 >= 0 and iq + 1 < W:
                        v11 = float(x[n, c, ir + 1, iq + 1])
                v = ((1.0 - fr) * ((1.0 - fq) * v00 + fq * v01)
                     + fr * ((1.0 - fq) * v10 + fq * v11))
                out[n, c, i, j] = _store(v, lo, hi, rnd)


@njit(parallel=True, cache=True)
def shift(x, dy, dx, fill, out):
    """Integer translation: ``out[i, j] = x[i - dy[n], j - dx[n]]``, ``fill`` outside.

    Also random cropping with padding: pad by p, cut an HxW window at offset
    (oy, ox) == shift by (p - oy, p - ox).
    """
    N, C, H, W = x.shape
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        sy = dy[n]
        sx = dx[n]
        for i in range(H):
            si = i - sy
            if si < 0 or si >= H:
                for j in range(W):
                    out[n, c, i, j] = fill
                continue
            for j in range(W):
                sj = j - sx
                if sj < 0 or sj >= W:
                    out[n, c, i, j] = fill
                else:
                    out[n, c, i, j] = x[n, c, si, sj]


@njit(parallel=True, cache=True)
def flip(x, flip_h, flip_v, out):
    """Mirror image n left-right where ``flip_h[n]`` and top-bottom where ``flip_v[n]``."""
    N, C, H, W = x.shape
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        fh = flip_h[n]
        fv = flip_v[n]
        for i in range(H):
            si = H - 1 - i if fv else i
            if fh:
                for j in range(W):
                    out[n, c, i, j] = x[n, c, si, W - 1 - j]
            else:
                for j in range(W):
                    out[n, c, i, j] = x[n, c, si, j]


@njit(parallel=True, cache=True)
def offset_clip(x, offsets, lo, hi, rnd, out):
    """Colour shift: ``out = clip(x + offsets[n, c])`` per image and channel."""
    N, C, H, W = x.shape
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        o = offsets[n, c]
        for i in range(H):
            for j in range(W):
                out[n, c, i, j] = _store(float(x[n, c, i, j]) + o, lo, hi, rnd)


@njit(parallel=True, cache=True)
def contrast_brightness(x, gain, bias, lo, hi, rnd, out):
    """Colour jitter: ``out = clip((x - mean_n) * gain[n] + mean_n + bias[n])``, ``mean_n`` the
    image's mean over all channels and pixels (contrast about it, then brightness)."""
    N, C, H, W = x.shape
    for n in prange(N):
        s = 0.0
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    s += float(x[n, c, i, j])
        m = s / (C * H * W)
        g = gain[n]
        b = bias[n]
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    out[n, c, i, j] = _store((float(x[n, c, i, j]) - m) * g + m + b, lo, hi, rnd)


@njit(parallel=True, cache=True)
def cutout(x, top, left, size, fill, out):
    """Cutout: copy ``x`` with the ``size`` x ``size`` square at (top[n], left[n]) set to ``fill``
    (the square may hang over the border; only its inside part is filled)."""
    N, C, H, W = x.shape
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        t0, l0 = top[n], left[n]
        for i in range(H):
            inside_row = t0 <= i < t0 + size
            for j in range(W):
                if inside_row and l0 <= j < l0 + size:
                    out[n, c, i, j] = fill
                else:
                    out[n, c, i, j] = x[n, c, i, j]


@njit(inline="always")
def _splitmix(z):
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(parallel=True, cache=True)
def gaussian_noise(x, std, seeds, lo, hi, rnd, out):
    """``out = clip(x + std[n] * z)``, z ~ N(0, 1) from SplitMix64(seed[n], pixel) + Box-Muller."""
    N, C, H, W = x.shape
    two_pi = 2.0 * math.pi
    inv53 = 1.0 / 9007199254740992.0
    for t in prange(N * C):
        n = t // C
        c = t - n * C
        s = std[n]
        base = _splitmix(seeds[n] ^ np.uint64(c) * np.uint64(0xD1B54A32D192ED03))
        for i in range(H):
            for j in range(W):
                k = np.uint64(i * W + j)
                a = _splitmix(base + k * np.uint64(2))
                b = _splitmix(base + k * np.uint64(2) + np.uint64(1))
                u1 = (float(a >> np.uint64(11)) + 1.0) * inv53  # (0, 1]
                u2 = float(b >> np.uint64(11)) * inv53
                z = math.sqrt(-2.0 * math.log(u1)) * math.cos(two_pi * u2)
                out[n, c, i, j] = _store(float(x[n, c, i, j]) + s * z, lo, hi, rnd)
