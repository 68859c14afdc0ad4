"""float32 convolution by implicit GEMM on nbcnn's own micro-kernels (no column matrix).

Two other float32 paths are tried first: stride-1 layers with small planes
and batches that fill the vector lanes (LeNet) go to :mod:`.conv_lanes`
(``conv_lanes.applies``), 3x3 stride-1 layers with enough channels and pixels
to :mod:`.winograd` (``winograd.applies``), which reads this path's padded
input buffer.

The input is zero-padded and split into its stride phases once
(:mod:`.conv_layout`). In that layout every row
``(c, i, j)`` of the im2col matrix is the buffer shifted by one constant
offset (output rows are computed at the phase-plane width ``Wq``; the
``Wq - Wo`` junk columns are dropped), so the micro-kernels read the padded
input directly through an offset table:

* forward: per image, ``Y = W @ col`` with ``mk_outer`` tiles, then crop + bias
  (batches smaller than the thread count split the tiles instead);
* weight gradient: ``gW = gY @ col^T`` as ``mk_dot`` tiles (dot products along
  the output positions); each thread owns a range of filter blocks and reads
  every image group once; the bias gradient comes with the gy re-layout;
* input gradient, C >= MR: per stride phase (a, b) of the padded input, a
  stride-1 "full" correlation of gy with the flipped sub-filter
  ``w[:, :, a::sh, b::sw]`` (``mk_outer`` again; stride 1 is one phase),
  scattered into gx;
* input gradient, C < MR (LeNet conv1/conv2, AlexNet conv1): those tiles would
  be mostly empty rows, so per image ``gcol = W^T @ gY`` with ``mk_outer`` and
  a gather (``vsum``: one sum of shifted rows per phase plane).

Every parallel loop writes disjoint outputs (one image, or one block of
filters, per task) and each sum has a fixed order, so results are identical
run to run and for any thread count. A NaN/inf in x can leak into weight
gradients through 0 * NaN products in junk columns (as with im2col).
"""
from __future__ import annotations

import numpy as np
from numba import get_num_threads, get_thread_id, njit, prange

from .microkernel import MD, MR, ND, NR, VL, compact_code, mk_dot, mk_outer, vcopy, vjoin2, vsum, vzero
from . import conv_lanes, winograd
from .conv_layout import fill_phases, geometry, round_up, thread_rows
from .scratch import scratch



@njit(parallel=True, cache=True)
def _forward(xb, img, offs, wp, R, bias, Kp, Ppad, Wq, ybuf, y):
    """y[n, k] = crop(W @ col_n) + bias[k], one task per image."""
    N, K, Ho, Wo = y.shape
    nmb = Kp // MR
    nj = Ppad // NR
    yf = y.reshape(N * K * Ho * Wo)
    for n in prange(N):
        compact_code()
        yb = ybuf[get_thread_id()]
        for jb in range(nj):
            for ib in range(nmb):
                mk_outer(wp, ib * R * MR, xb, offs, n * img + jb * NR, R, yb, ib * MR * Ppad + jb * NR, Ppad)
        for k in range(K):
            for oh in range(Ho):
                vcopy(yf, ((n * K + k) * Ho + oh) * Wo, yb, k * Ppad + oh * Wq, Wo, bias[k])


@njit(parallel=True, cache=True)
def _forward_few(xb, img, offs, wp, R, bias, Kp, Ppad, Wq, yball, y):
    """_forward for batches smaller than the thread count (e.g. one image at inference):
    one task per (image, column tile) into a per-image buffer, then crop + bias per plane."""
    N, K, Ho, Wo = y.shape
    nmb = Kp // MR
    nj = Ppad // NR
    yf = y.reshape(N * K * Ho * Wo)
    for t in prange(N * nj):
        compact_code()
        n = t // nj
        jb = t - n * nj
        yb = yball[n]
        for ib in range(nmb):
            mk_outer(wp, ib * R * MR, xb, offs, n * img + jb * NR, R, yb, ib * MR * Ppad + jb * NR, Ppad)
    for t in prange(N * K):
        compact_code()
        n = t // K
        k = t - n * K
        for oh in range(Ho):
            vcopy(yf, (t * Ho + oh) * Wo, yball[n], k * Ppad + oh * Wq, Wo, bias[k])


@njit(parallel=True, cache=True, fastmath=True)
def _gy_flat(gy, Wq, Pv, Kl, gyb, gb):
    """gyb[k, n*Pv + oh*Wq + ow] = gy[n, k, oh, ow]; zero in the junk columns, the Pv padding and the slack.

    Also the bias gradient gb[k] = sum of gy[:, k], read back from the freshly
    written, cache-hot row (fastmath only lets those sums vectorise; the order is
    fixed: one task per k).
    """
    N, K, Ho, Wo = gy.shape
    gf = gy.reshape(N * K * Ho * Wo)
    zero = np.float32(0)
    for k in prange(K):
        compact_code()
        for n in range(N):
            s0 = k * Kl + n * Pv
            for oh in range(Ho):
                vcopy(gyb, s0 + oh * Wq, gf, ((n * K + k) * Ho + oh) * Wo, Wo, zero)
                vzero(gyb, s0 + oh * Wq + Wo, Wq - Wo)
            vzero(gyb, s0 + Ho * Wq, Pv - Ho * Wq)
        vzero(gyb, k * Kl + N * Pv, Kl - N * Pv)
        acc = 0.0
        for n in range(N):  # float32 sums per image, added up in float64
            seg = gyb[k * Kl + n * Pv:k * Kl + (n + 1) * Pv]  # indexed from 0: offset indexing ran 7x slower
            part = np.float32(0)
            for i in range(Pv):
                part += seg[i]
            acc += part
        gb[k] = acc


@njit(parallel=True, cache=True)
def _weight_grad(gyb, Kl, Pv, xb, img, aoffs, boffs, N, group, nchunks, gwp):
    """gwp[k, r] = sum_n sum_p gyb[k, n*Pv + p] * xb[n*img + boffs[r] + p] (gwp padded to MD x ND tiles).

    Each thread owns a fixed range of filter blocks and walks the images in
    groups small enough to stay in its cache, so the input is read once per
    thread (not once per filter block). Every entry is summed in the same order
    whatever the thread count: image groups in order, lanes by halving.
    """
    Kp, Rp = gwp.shape
    nkb = Kp // MD
    njb = Rp // ND
    L = Pv // VL
    gf = gwp.reshape(Kp * Rp)
    for ch in prange(nchunks):
        compact_code()
        k0 = ch * nkb // nchunks
        k1 = (ch + 1) * nkb // nchunks
        vzero(gf, k0 * MD * Rp, (k1 - k0) * MD * Rp)
        for n0 in range(0, N, group):
            ng = min(group, N - n0)
            for kb in range(k0, k1):
                for jb in range(njb):
                    mk_dot(gyb, n0 * Pv, aoffs[kb * MD:(kb + 1) * MD], Pv, xb, n0 * img, boffs[jb * ND:(jb + 1) * ND],
                           img, ng, L, gf, kb * MD * Rp + jb * ND, Rp)


@njit(parallel=True, cache=True)
def _input_grad(gy, wfp, wstart, offs, ostart, Rf, u0, u1, Cp, sh, sw, pt, pl, Hb, Wb, kmh, kmw,
                Pgpad, gbuf, obuf, gx):
    """gx by phases: each phase (a, b) of the padded input is a stride-1 "full" correlation of gy
    with the sub-filter w[:, :, a::sh, b::sw] flipped; one task per image.

    gy is embedded once per image in a zero border of kmh-1 rows / kmw-1 columns
    (kmh = ceil(kh/sh), the tallest sub-filter), then every phase runs mk_outer
    tiles over its rows u0[ph]..u1[ph] (those that land inside x) and is
    scattered into gx. Stride 1 is the single phase (0, 0) with the whole filter.
    """
    N, K, Ho, Wo = gy.shape
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    nmb = Cp // MR
    gf = gy.reshape(N * K * Ho * Wo)
    gxf = gx.reshape(N * C * H * W)
    zero = np.float32(0)
    for n in prange(N):
        compact_code()
        tid = get_thread_id()
        g = gbuf[tid]
        ob = obuf[tid]
        row = np.empty(sw * Wb if sw > 2 else 0, dtype=np.float32)   # a padded gx row (sw > 2 only)
        vzero(g, 0, g.shape[0])
        for k in range(K):
            for oh in range(Ho):
                vcopy(g, (k * Hb + oh + kmh - 1) * Wb + kmw - 1, gf, ((n * K + k) * Ho + oh) * Wo, Wo, zero)
        S = sh * sw
        for ph in range(S):
            if u1[ph] <= u0[ph]:
                continue
            p0 = u0[ph] * Wb
            nj = ((u1[ph] - u0[ph]) * Wb + NR - 1) // NR
            o0 = ph * Cp * Pgpad
            for jb in range(nj):
                for ib in range(nmb):
                    mk_outer(wfp, wstart[ph] + ib * Rf[ph] * MR, g, offs[ostart[ph]:], p0 + jb * NR, Rf[ph],
                             ob, o0 + ib * MR * Pgpad + jb * NR, Pgpad)
        # scatter: x row h is padded row h + pt = u*sh + a; its column phases b interleave
        # (rows outer: the divisions once per row, not once per row and channel)
        for h in range(H):
            hp = h + pt
            u = hp // sh
            a = hp - u * sh
            o_h = (u - u0[a * sw]) * Wb                           # row u in every phase (a, b)
            for c in range(C):
                d0 = ((n * C + c) * H + h) * W
                o = c * Pgpad + o_h
                if sw == 1:  # contiguous: one vector copy
                    vcopy(gxf, d0, ob, a * Cp * Pgpad + o + pl, W, zero)
                elif sw == 2:  # gx[h, j] = padded column j + pl = 2v + b: phase b, v = (j + pl) // 2
                    p0 = (a * 2) * Cp * Pgpad + o
                    p1 = p0 + Cp * Pgpad
                    if pl % 2 == 0:
                        vjoin2(gxf, d0, ob, p0 + pl // 2, p1 + pl // 2, W // 2)
                        if W % 2:
                            gxf[d0 + W - 1] = ob[p0 + (W - 1 + pl) // 2]
                    else:
                        vjoin2(gxf, d0, ob, p1 + (pl - 1) // 2, p0 + (pl + 1) // 2, W // 2)
                        if W % 2:
                            gxf[d0 + W - 1] = ob[p1 + (W - 1 + pl) // 2]
                else:
                    for b in range(sw):
                        rb = ob[(a * sw + b) * Cp * Pgpad + o:(a * sw + b) * Cp * Pgpad + o + Wb]
                        for v in range(Wb):
                            row[v * sw + b] = rb[v]
                    vcopy(gxf, d0, row, pl, W, zero)


@njit(parallel=True, cache=True)
def _input_grad_gcol(gyb, Kl, Pv, wtp, K, Rp, offs, kh, kw, sh, sw, Hq, Wq, Ho, Wo, pt, pl, Pr, ML, Prr,
                     toffs, tstart, tcount, cbuf, pbuf, gx):
    """Few input channels: per image gcol = W^T @ gY (mk_outer, M = C*kh*kw fills the tiles), then a
    gather into the phase planes, cropped into gx. One task per image.

    gcol rows are Prr floats: ML zeros, the Pr computed columns, zeros up to the plane
    size, so each phase plane is one ``vsum`` of its taps' rows at their shifts
    (taps of phase ph: toffs[tstart[ph]:tstart[ph] + tcount[ph]]).
    """
    N, C, H, W = gx.shape
    nmb = Rp // MR
    nj = Pr // NR
    HW = Hq * Wq
    R = kh * kw
    gxf = gx.reshape(N * C * H * W)
    zero = np.float32(0)
    for t in range(cbuf.shape[0]):       # the margins: never written below, zero for the whole call
        for r in range(Rp):
            vzero(cbuf[t], r * Prr, ML)
            vzero(cbuf[t], r * Prr + ML + Pr, Prr - ML - Pr)
    for n in prange(N):
        compact_code()
        tid = get_thread_id()
        gc = cbuf[tid]
        buf = pbuf[tid]
        for jb in range(nj):
            for ib in range(nmb):
                mk_outer(wtp, ib * K * MR, gyb, offs, n * Pv + jb * NR, K, gc, ib * MR * Prr + ML + jb * NR, Prr)
        if Pr > Pv:  # those columns read the next image's gy
            for r in range(Rp):
                vzero(gc, r * Prr + ML + Pv, Pr - Pv)
        for c in range(C):
            if sh == 1 and sw == 1:  # one phase: sum straight into gx (its rows, or the whole plane)
                if pt == 0 and pl == 0 and W == Wq:
                    vsum(gxf, (n * C + c) * H * W, gc, c * R * Prr + ML, toffs, 0, R, H * W)
                else:
                    for h in range(H):
                        vsum(gxf, ((n * C + c) * H + h) * W, gc, c * R * Prr + ML + (h + pt) * Wq + pl,
                             toffs, 0, R, W)
                continue
            for ph in range(sh * sw):
                vsum(buf, ph * HW, gc, c * R * Prr + ML, toffs, tstart[ph], tcount[ph], HW)
            for h in range(H):
                hp = h + pt
                a = hp % sh
                d0 = ((n * C + c) * H + h) * W
                if sw == 1:
                    vcopy(gxf, d0, buf, a * HW + (hp // sh) * Wq + pl, W, zero)
                    continue
                for b in range(sw):
                    s0 = (a * sw + b) * HW + (hp // sh) * Wq
                    v0 = min(max(0, -((b - pl) // sw)), Wq)
                    v1 = max(min(Wq, (W - 1 + pl - b) // sw + 1), v0)
                    for v in range(v0, v1):
                        gxf[d0 + v * sw + b - pl] = buf[s0 + v]


def _pack_rows(m2):
    """(M, R) -> flat panels of MR rows, k-major inside a panel: out[(p*R + k)*MR + i] = m2[p*MR + i, k]."""
    M, R = m2.shape
    Mp = round_up(M, MR)
    out = np.zeros((Mp // MR, R, MR), dtype=np.float32)
    padded = np.zeros((Mp, R), dtype=np.float32)
    padded[:M] = m2
    out[:] = padded.reshape(Mp // MR, MR, R).transpose(0, 2, 1)
    return out.reshape(-1), Mp


def forward(x, w, b, stride, pads, ctx=None):
    if conv_lanes.applies(x.shape, w.shape, stride, pads):
        return conv_lanes.forward(x, w, b, pads, ctx)
    g = geometry(x.shape, w.shape, stride, pads)
    xb = None
    if ctx is not None:
        xb = ctx.get("mk_xb")  # owned by the layer: the backward reads it again
        if xb is None or xb.shape[0] != g.xb_len:
            xb = np.empty(g.xb_len, dtype=np.float32)
        ctx["mk_xb"] = xb
    else:
        xb = scratch("mk_xb", (g.xb_len,), np.float32)
    fill_phases(x, g, xb)
    if winograd.applies(x.shape, w.shape, stride, pads):
        return winograd.forward(xb, w, b, g)
    wp, Kp = _pack_rows(w.reshape(g.K, g.R))
    bias = b if b is not None else np.zeros(g.K, dtype=np.float32)
    y = np.empty((g.N, g.K, g.Ho, g.Wo), dtype=np.float32)
    if 0 < g.N < get_num_threads():  # too few images to keep every thread busy: split the tiles
        yball = scratch("mk_yfew", (g.N, round_up(Kp * g.Ppad, 64)), np.float32)
        _forward_few(xb, g.img, g.offs, wp, g.R, bias, Kp, g.Ppad, g.Wq, yball, y)
        return y
    ybuf = thread_rows("mk_y", Kp * g.Ppad)
    _forward(xb, g.img, g.offs, wp, g.R, bias, Kp, g.Ppad, g.Wq, ybuf, y)
    return y


def backward(gy, x, w, stride, pads, need_gx=True, ctx=None):
    """(gx or None, gw, gb) in float32."""
    if conv_lanes.applies(x.shape, w.shape, stride, pads):
        return conv_lanes.backward(gy, x, w, pads, need_gx, ctx)
    g = geometry(x.shape, w.shape, stride, pads)
    xb = ctx.get("mk_xb") if ctx is not None else None
    if xb is None or xb.shape[0] != g.xb_len:
        xb = scratch("mk_xb", (g.xb_len,), np.float32)
        fill_phases(x, g, xb)
    gy = np.ascontiguousarray(gy)
    if winograd.applies(x.shape, w.shape, stride, pads):
        gw, gb = winograd.weight_grad(gy, xb, g)
        return (winograd.input_grad(gy, w, g) if need_gx else None), gw, gb
    K, N = g.K, g.N
    Kl = N * g.Pv + NR  # slack: the gcol tiles of the last image read up to NR columns past it
    gyb = scratch("mk_gy", (K * Kl,), np.float32)
    gb = np.empty(K, dtype=np.float32)
    _gy_flat(gy, g.Wq, g.Pv, Kl, gyb, gb)
    Kp = round_up(K, MD)
    aoffs = (np.minimum(np.arange(Kp), K - 1) * Kl).astype(np.int64)   # padded rows repeat the last
    gwp = scratch("mk_gw", (Kp, g.boffs.shape[0]), np.float32)
    nchunks = max(1, min(get_num_threads(), Kp // MD))
    # images per mk_dot call: >= ~64 vector steps per call (each call ends in MD*ND lane sums),
    # while one group's input and this thread's gradient rows stay within ~768 KB of cache
    per_image = (g.img + -(-Kp // nchunks) * g.Pv) * 4
    group = max(1, min(N, -(-64 // max(g.Pv // VL, 1)), (768 << 10) // max(per_image, 1)))
    _weight_grad(gyb, Kl, g.Pv, xb, g.img, aoffs, g.boffs, N, group, nchunks, gwp)
    gw2 = np.ascontiguousarray(gwp[:K, :g.R])
    gw = gw2.reshape(w.shape)
    if not need_gx:
        return None, gw, gb
    gx = np.empty(x.shape, dtype=np.float32)
    if g.C < MR:  # the phase kernels' tiles would be mostly empty rows: go through gcol
        wtp, Rp = _pack_rows(np.ascontiguousarray(w.reshape(K, g.R).T))
        offs = (np.arange(K) * Kl).astype(np.int64)
        Pr = round_up(g.Pv, NR)
        taps = g.memo.get("gcol")
        if taps is None:
            taps = g.memo["gcol"] = _gcol_taps(g, Pr)
        cbuf = thread_rows("mk_gcol", Rp * taps[1])
        pbuf = thread_rows("mk_planes", g.sh * g.sw * g.Hq * g.Wq)
        _input_grad_gcol(gyb, Kl, g.Pv, wtp, K, Rp, offs, g.kh, g.kw, g.sh, g.sw, g.Hq, g.Wq, g.Ho, g.Wo,
                         g.pt, g.pl, Pr, *taps, cbuf, pbuf, gx)
    else:
        _input_grad(gy, *_input_grad_plan(w, g), gx)
    return gx, gw, gb


def _gcol_taps(g, Pr):
    """gcol row layout (left margin ML, row stride Prr) and the taps of each stride phase:
    offsets (i*kw + j)*Prr - shift, shift = (i // sh)*Wq + j // sw, grouped by phase (i % sh, j % sw)."""
    sh, sw, kh, kw, Wq = g.sh, g.sw, g.kh, g.kw, g.Wq
    ML = ((kh - 1) // sh) * Wq + (kw - 1) // sw
    Prr = round_up(ML + max(Pr, g.Hq * g.Wq) + VL, 16)
    toffs, tstart, tcount = [], [], []
    for a in range(sh):
        for b in range(sw):
            tstart.append(len(toffs))
            for i in range(a, kh, sh):
                for j in range(b, kw, sw):
                    toffs.append((i * kw + j) * Prr - ((i // sh) * Wq + j // sw))
            tcount.append(len(toffs) - tstart[-1])
    toffs.append(0)
    return (ML, Prr, np.array(toffs, np.int64), np.array(tstart, np.int64), np.array(tcount, np.int64))


def _input_grad_tables(g):
    """The weight-independent part of the phase plan: sizes, offset tables and row ranges."""
    K, kh, kw, sh, sw = g.K, g.kh, g.kw, g.sh, g.sw
    kmh, kmw = -(-kh // sh), -(-kw // sw)
    Hb = max(g.Ho + 2 * (kmh - 1), g.Hq + kmh - 1)
    # Rows of the embedded gradient share their zero borders: a read past the end of a row
    # lands in the next row's kmw - 1 leading zeros, so Wb = Wo + kmw - 1 suffices (not
    # Wo + 2*(kmw - 1)) as long as it covers the phase-plane width: 6-14% less work.
    Wb = max(g.Wo + kmw - 1, g.Wq)
    tabs, Rf, u0, u1 = [], [], [], []
    for a in range(sh):
        for b in range(sw):
            kha, kwb = len(range(a, kh, sh)), len(range(b, kw, sw))
            k, i, j = np.meshgrid(np.arange(K), np.arange(kha), np.arange(kwb), indexing="ij")
            tabs.append(((k * Hb + i + kmh - kha) * Wb + j + kmw - kwb).reshape(-1))
            Rf.append(K * kha * kwb)
            u0.append(max(0, -((a - g.pt) // sh)))           # first u with u*sh + a - pt >= 0
            u1.append(min(g.Hq, (g.H - 1 + g.pt - a) // sh + 1))
    ostart = np.cumsum([0] + [t.size for t in tabs[:-1]]).astype(np.int64)
    offs = np.concatenate(tabs + [np.zeros(1, np.int64)]).astype(np.int64)
    rows = max(1, max(hi - lo for lo, hi in zip(u0, u1)))
    Pgpad = round_up(rows * Wb, NR)
    glen = max(K * Hb * Wb, max(lo for lo in u0) * Wb + Pgpad + int(offs.max())) + VL
    return (offs, ostart, np.array(Rf, np.int64), np.array(u0, np.int64), np.array(u1, np.int64),
            Hb, Wb, kmh, kmw, Pgpad, glen)


def _input_grad_plan(w, g):
    """Packed flipped sub-filters, offset tables, row ranges and buffers of every stride phase."""
    K, C, sh, sw = g.K, g.C, g.sh, g.sw
    t = g.memo.get("phases")
    if t is None:
        t = g.memo["phases"] = _input_grad_tables(g)
    offs, ostart, Rf, u0, u1, Hb, Wb, kmh, kmw, Pgpad, glen = t
    packs = []
    for a in range(sh):
        for b in range(sw):
            sub = w[:, :, a::sh, b::sw]                       # (K, C, kha, kwb), possibly empty
            wf = sub[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(C, K * sub.shape[2] * sub.shape[3])
            packed, Cp = _pack_rows(wf)
            packs.append(packed)
    wstart = np.cumsum([0] + [p.size for p in packs[:-1]]).astype(np.int64)
    gbuf = thread_rows("mk_gpad", glen)
    obuf = thread_rows("mk_gout", sh * sw * Cp * Pgpad)
    return (np.concatenate(packs), wstart, offs, ostart, Rf, u0, u1, Cp, sh, sw, g.pt, g.pl, Hb, Wb, kmh, kmw,
            Pgpad, gbuf, obuf)

