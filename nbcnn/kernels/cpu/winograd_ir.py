"""Winograd F(2x2, 3x3) tile transforms as LLVM vector IR (Numba intrinsics).

Why: the transforms are a few vector adds per tile, but written as Numba loops
they run scalar (tile rows of 8-16 floats and 16 output streams defeat LLVM's
vectoriser). Here one vector holds the same entry of VL neighbouring tiles.

Matrices (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
2016, F(2x2, 3x3)): B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]],
A^T = [[1,1,1,0],[0,1,-1,-1]]; the filter transform G g G^T is done by the
caller. Same masked-tail conventions (and the same stale-cache note) as
:mod:`.microkernel`.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .microkernel import (VL, _F32, _F32_1D, _c, _elem_ptr, _join_masks, _lane_mask, _load, _masked_fns, _pair_op,
                          _splat, _split_masks, _store, _tail)


def _bt(builder, d):
    """B^T applied to a list of 4 operands (vectors or lists of vectors, elementwise)."""
    if isinstance(d[0], list):
        return [list(t) for t in zip(*[_bt(builder, list(col)) for col in zip(*d)])]
    f = builder
    return [f.fsub(d[0], d[2]), f.fadd(d[1], d[2]), f.fsub(d[2], d[1]), f.fsub(d[1], d[3])]


def _at(builder, m):
    """A^T applied to 4 operands: 2 results."""
    f = builder
    s = f.fadd(m[1], m[2])
    return [f.fadd(m[0], s), f.fsub(f.fsub(m[1], m[2]), m[3])]


def _store_range(builder, dp, off, ld_, x0, x1, vals, m):
    """Store vals[xi] at dp + off + (xi - x0)*ld for xi in [x0, x1) (a fixed range: LLVM drops the
    loads and arithmetic that only feed the other positions)."""
    for xi in range(x0, x1):
        dst = builder.gep(dp, [builder.add(off, builder.mul(ld_, _c(xi - x0)))])
        _store(builder, vals[xi], _vptr(builder, dst, _c(0)), m)


def _vptr(builder, p, off):
    return builder.bitcast(builder.gep(p, [off]), ir.VectorType(_F32, VL).as_pointer())


def _tile_transform(nrows, shifts, transform, x0, x1, doc):
    """An intrinsic (D, d0, ld, S, s0, ws, n): for n tiles along one tile row, read nrows rows of
    S (row stride ws) at columns 2m + shift + (0, 1) for each shift (even/odd split by shuffles),
    apply transform(builder, rows) -> 16 vectors, store positions x0..x1-1 at D[d0 + (xi - x0)*ld + m].
    """
    extra = 2 * len(shifts) - 2          # columns read past 2n: 2 for the 4-wide input tiles

    @intrinsic
    def tile_transform(typingctx, D, d0, ld, S, s0, ws, n):
        sig = types.void(_F32_1D, types.intp, types.intp, _F32_1D, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            D_, d0_, ld_, S_, s0_, ws_, n_ = args
            vt = ir.VectorType(_F32, VL)
            fns = _masked_fns(builder, vt)
            dp = _elem_ptr(context, builder, signature.args[0], D_, d0_)
            sp = _elem_ptr(context, builder, signature.args[3], S_, s0_)
            even, odd = _split_masks()

            def body(off, rem):
                rows = []
                for r in range(nrows):
                    row = builder.gep(sp, [builder.add(builder.mul(off, _c(2)), builder.mul(ws_, _c(r)))])
                    cols = []
                    for shift in shifts:
                        a = _load(builder, _vptr(builder, row, _c(shift)), _tail(builder, rem, fns, 2, shift - extra))
                        b = _load(builder, _vptr(builder, row, _c(shift + VL)),
                                  _tail(builder, rem, fns, 2, VL + shift - extra))
                        cols += [builder.shuffle_vector(a, b, even), builder.shuffle_vector(a, b, odd)]
                    rows.append(cols)
                _store_range(builder, dp, off, ld_, x0, x1, transform(builder, rows), _tail(builder, rem, fns))

            _pair_op(builder, n_, body)
            return context.get_dummy_value()

        return sig, codegen

    tile_transform.__doc__ = doc
    return tile_transform


def _input_tile(builder, d):
    """B^T d B of 4x4 tiles, flattened (xi = 4i + j)."""
    t = _bt(builder, d)                                  # rows: B^T d
    return [v for row in t for v in _bt(builder, row)]   # columns: (B^T d) B


def _input_transform(x0, x1):
    return _tile_transform(4, (0, 2), _input_tile, x0, x1, f"""Input transform of n tiles along one tile row,
    positions {x0}..{x1 - 1}: D[d0 + (xi - {x0})*ld + m] = (B^T d_m B)[i, j] for xi = 4i + j.

    The 4x4 input tile m is d_m[r, q] = S[s0 + r*ws + 2m + q] (rows of the zero-padded
    input, row stride ws). Reads up to column 2n + 1 of row 3.
    """)


wg_in = _input_transform(0, 16)
wg_in_lo = _input_transform(0, 8)      # the weight gradient splits the 16 positions in two halves
wg_in_hi = _input_transform(8, 16)


@intrinsic
def wg_out(typingctx, D, d0, dws, S, s0, ld, n, wcols, rows, b):
    """Output transform of n tiles along one tile row, plus bias b, interleaved into output rows.

    Tile m's 2x2 result Y = A^T M_m A (M_m[i, j] = S[s0 + (4i + j)*ld + m]) goes to
    D[d0 + a*dws + 2m + c] for output rows a < rows (1 or 2) and columns
    2m + c < wcols (an odd width drops the last tile's right column).
    """
    sig = types.void(_F32_1D, types.intp, types.intp, _F32_1D, types.intp, types.intp, types.intp, types.intp,
                     types.intp, types.float32)

    def codegen(context, builder, signature, args):
        D_, d0_, dws_, S_, s0_, ld_, n_, wcols_, rows_, b_ = args
        vt = ir.VectorType(_F32, VL)
        fns = _masked_fns(builder, vt)
        dp = _elem_ptr(context, builder, signature.args[0], D_, d0_)
        sp = _elem_ptr(context, builder, signature.args[3], S_, s0_)
        bv = _splat(builder, b_, vt)
        lo, hi = _join_masks()

        def body(off, rem):
            m = _tail(builder, rem, fns)
            mm = [[_load(builder, _vptr(builder, builder.gep(sp, [builder.add(off, builder.mul(ld_, _c(4 * i + j)))]),
                                        _c(0)), m) for j in range(4)] for i in range(4)]
            t = [list(c) for c in zip(*[_at(builder, col) for col in zip(*mm)])]   # A^T M: 2 rows of 4
            y = [[builder.fadd(v, bv) for v in _at(builder, row)] for row in t]    # (A^T M) A + b
            c0 = builder.mul(off, _c(2))
            left = builder.sub(wcols_, c0)
            mlo = (_lane_mask(builder, left, VL),) + fns
            mhi = (_lane_mask(builder, builder.sub(left, _c(VL)), VL),) + fns
            for a in range(2):
                row = builder.gep(dp, [builder.add(c0, builder.mul(dws_, _c(a)))])

                def store(row=row, a=a):
                    _store(builder, builder.shuffle_vector(y[a][0], y[a][1], lo), _vptr(builder, row, _c(0)), mlo)
                    _store(builder, builder.shuffle_vector(y[a][0], y[a][1], hi), _vptr(builder, row, _c(VL)), mhi)

                if a == 0:
                    store()
                else:
                    with builder.if_then(builder.icmp_signed(">", rows_, _c(1))):
                        store()

        _pair_op(builder, n_, body)
        return context.get_dummy_value()

    return sig, codegen


def _a(builder, g):
    """A (4x2 of F(2x2, 3x3)) applied to 2 operands: 4 results."""
    f = builder
    return [g[0], f.fadd(g[0], g[1]), f.fsub(g[0], g[1]), f.fneg(g[1])]


def _grad_tile(builder, g):
    """A g A^T of 2x2 tiles, flattened (xi = 4i + j)."""
    t = [list(c) for c in zip(*[_a(builder, col) for col in zip(*g)])]   # A g: 4 rows of 2
    return [v for row in t for v in _a(builder, row)]                    # (A g) A^T: 4 x 4


def _grad_transform(x0, x1):
    return _tile_transform(2, (0,), _grad_tile, x0, x1, f"""Output-gradient transform of n tiles along one
    tile row, positions {x0}..{x1 - 1}: D[d0 + (xi - {x0})*ld + m] = (A g_m A^T)[i, j] for xi = 4i + j,
    where g_m[a, c] = S[s0 + a*ws + 2m + c] (a, c < 2): the adjoint of the output transform.
    """)


wg_grad_lo = _grad_transform(0, 8)
wg_grad_hi = _grad_transform(8, 16)
