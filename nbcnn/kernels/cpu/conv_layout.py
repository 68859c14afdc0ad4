"""The padded, stride-phase split input buffer shared by the float32 convolution paths.

Both the implicit GEMM (:mod:`.conv_implicit`) and Winograd (:mod:`.winograd`)
read the input zero-padded and split into its stride phases, from one flat
buffer with a little zero slack at the end (so a layer's forward and backward,
and the two paths, share one fill); ``Geometry`` holds the sizes and offset
tables of one shape case. ``thread_rows`` hands out per-worker scratch rows.
"""
from __future__ import annotations

import threading

import numpy as np
from numba import config, get_thread_id, njit, prange

from ..geometry import output_size, phase_plane_size
from .microkernel import ND, NR, VL, compact_code, vcopy, vsplit2, vzero
from .scratch import current, scratch


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@njit(parallel=True, cache=True)
def fill_planes(x, sh, sw, pt, pl, Hq, Wq, rowbuf, xb):
    """xb[((n*C + c)*S + a*sw + b)*Hq*Wq + u*Wq + v] = xpad[n, c, u*sh + a, v*sw + b] (0 outside x); slack zeroed.

    Stride 1 without column padding (LeNet conv2): one copy per plane. Stride 2: each
    input row is split straight into its two column phases (vector shuffles); other
    strides > 1 build the padded row in a small buffer and split it with scalar loops.
    """
    N, C, H, W = x.shape
    S = sh * sw
    plane = Hq * Wq
    xf = x.reshape(N * C * H * W)
    zero = np.float32(0)
    for t in prange(N * C):
        compact_code()
        n = t // C
        c = t - n * C
        if S == 1 and pl == 0 and Wq == W:   # no column padding: the plane's rows are x's rows, one copy
            u0 = min(max(pt, 0), Hq)
            u1 = min(max(H + pt, u0), Hq)
            base = t * plane
            vzero(xb, base, u0 * Wq)
            vcopy(xb, base + u0 * Wq, xf, (t * H + u0 - pt) * W, (u1 - u0) * Wq, zero)
            vzero(xb, base + u1 * Wq, (Hq - u1) * Wq)
            continue
        row = rowbuf[get_thread_id()]                   # one padded input row (sw > 2 only)
        if sw > 2:
            vzero(row, 0, row.shape[0])
        for a in range(sh):
            for u in range(Hq):
                h = u * sh + a - pt
                base = ((n * C + c) * S + a * sw) * plane + u * Wq      # phase (a, 0), row u
                if h < 0 or h >= H:
                    for b in range(sw):
                        vzero(xb, base + b * plane, Wq)
                    continue
                s0 = (t * H + h) * W
                if sw == 1:
                    v1 = min(Wq, W + pl)
                    vzero(xb, base, min(pl, Wq))
                    vcopy(xb, base + min(pl, Wq), xf, s0, v1 - min(pl, Wq), zero)
                    vzero(xb, base + v1, Wq - v1)
                    continue
                if sw == 2:  # x column j is padded column j + pl = 2v + b: straight into the phases
                    vzero(xb, base, Wq)
                    vzero(xb, base + plane, Wq)
                    q = pl // 2
                    if pl % 2 == 0:   # x[2i] -> phase 0, x[2i + 1] -> phase 1, both at v = i + q
                        npair = max(0, min(W // 2, Wq - q))
                        vsplit2(xb, base + q, base + plane + q, xf, s0, npair)
                    else:             # x[2i] -> phase 1 at v = i + q, x[2i + 1] -> phase 0 at v = i + q + 1
                        npair = max(0, min(W // 2, Wq - q - 1))
                        vsplit2(xb, base + plane + q, base + q + 1, xf, s0, npair)
                    for j in range(2 * npair, W):   # an odd last column (or a pair cut by Wq)
                        v = (j + pl) // 2
                        if v >= Wq:
                            break
                        xb[base + (j + pl - 2 * v) * plane + v] = xf[s0 + j]
                    continue
                n_in = min(W, sw * Wq - pl)
                vcopy(row, pl, xf, s0, n_in, zero)            # row[:pl] and row[pl + W:] stay 0
                for b in range(sw):
                    d = xb[base + b * plane:base + b * plane + Wq]
                    for v in range(Wq):
                        d[v] = row[v * sw + b]
    n0 = N * C * S * plane
    vzero(xb, n0, xb.shape[0] - n0)


def fill_phases(x, g, xb):
    """Pad x and split it into its stride phases in xb (see fill_planes)."""
    fill_planes(x, g.sh, g.sw, g.pt, g.pl, g.Hq, g.Wq, thread_rows("mk_row", g.sw * g.Wq), xb)


class Geometry:
    """Sizes and offset tables of one (input shape, filter shape, stride, padding) case."""

    def __init__(self, x_shape, w_shape, stride, pads):
        N, C, H, W = x_shape
        K, _, kh, kw = w_shape
        sh, sw = stride
        pt, pb, pl, pr = pads
        self.N, self.C, self.H, self.W, self.K, self.kh, self.kw = N, C, H, W, K, kh, kw
        self.sh, self.sw, self.pt, self.pl = sh, sw, pt, pl
        self.Ho, self.Wo = output_size(H, kh, pt, pb, sh), output_size(W, kw, pl, pr, sw)
        self.Hq, self.Wq = phase_plane_size(H, pt, pb, sh), phase_plane_size(W, pl, pr, sw)
        S = sh * sw
        plane = self.Hq * self.Wq
        self.img = C * S * plane
        self.R = C * kh * kw
        c, i, j = np.meshgrid(np.arange(C), np.arange(kh), np.arange(kw), indexing="ij")
        offs = ((c * S + (i % sh) * sw + j % sw) * plane + (i // sh) * self.Wq + j // sw).reshape(-1)
        self.offs = offs.astype(np.int64)
        self.Pc = self.Ho * self.Wq
        self.Ppad = round_up(self.Pc, NR)
        self.Pv = round_up(self.Pc, VL)
        need = (N - 1) * self.img + self.Ppad + int(offs.max())
        self.xb_len = max(N * self.img + self.Wq, need) + VL   # + Wq: the Winograd tiles of an odd size
        self.boffs = np.concatenate([self.offs, np.full(round_up(self.R, ND) - self.R, self.offs[-1])]).astype(np.int64)
        self.memo = {}   # tables of the backward paths, built on first use (Python loops: 20-80 us each)


_GEOMETRIES: dict = {}


def memo(table: dict, key: tuple, build):
    """table[key], made by build(*key) on first use; the table is emptied past 256 entries."""
    v = table.get(key)
    if v is None:
        if len(table) > 256:
            table.clear()
        v = table[key] = build(*key)
    return v


def geometry(x_shape, w_shape, stride, pads) -> Geometry:
    """Cached Geometry (a layer sees the same shapes every step; building one costs ~15 us)."""
    return memo(_GEOMETRIES, (tuple(x_shape), tuple(w_shape), tuple(stride), tuple(pads)), Geometry)


def thread_rows(name, n):
    """One row per Numba worker (indexed by get_thread_id() inside the parallel loops).

    Rows start on 64-byte boundaries and are padded to 64 floats, so two workers
    never write the same cache line: a 34-float row buffer that shared lines ran
    the strided input fill 2-3x slower (0.43 vs 0.19 ms), depending only on where
    the allocator happened to put it. The view is remembered while its scratch
    buffer lives (building it costs ~2 us; LeNet's conv layers ask 4 times a step).
    """
    T, m = config.NUMBA_NUM_THREADS, round_up(max(n, 1), 64)
    memo = _row_views.__dict__.setdefault("memo", {})
    hit = memo.get((name, m))
    if hit is not None and current(name, np.float32) is hit[1]:
        return hit[0]
    raw = scratch(name, (T * m + 16,), np.float32)
    off = (-raw.ctypes.data % 64) // 4
    rows = raw[off:off + T * m].reshape(T, m)
    if len(memo) > 64:   # entries keep replaced buffers alive: bound them
        memo.clear()
    memo[(name, m)] = (rows, current(name, np.float32))
    return rows


_row_views = threading.local()
