"""Register-blocked float32 GEMM micro-kernels, written as LLVM vector IR through Numba intrinsics.

Why: the big convolutions are GEMM-bound, and neither LLVM's auto-vectoriser
(accumulators spill to memory) nor NumPy's OpenBLAS (pinned to AVX2 kernels on
this project's AVX-512 machine, 90-150 GFLOP/s) gets near the CPU's peak. An
explicit ``<VL x float>`` accumulator tile held in registers (phi nodes) with
``llvm.fma`` reaches 400-490 GFLOP/s on 2 Zen 5 cores (AVX-512), and its
operand rows are read through an offset table, so a convolution's column
matrix never has to be materialised: row ``(c, i, j)`` of the implicit column
matrix is the padded input shifted by a constant offset.

Two kernels:

* ``mk_outer``  C[MR, NR] = sum_k A[k, :MR] (x) B[off[k] : off[k] + NR]
  (outer products; A packed k-major in panels of MR rows, NR = NV * VL);
  ``mk_outer_cols`` is the same tile with each of its NV vectors read from
  its own base.
* ``mk_dot``    O[i, j] += sum over images and positions of
  A[aoff[i] + ...] * B[boff[j] + ...] (dot products: VL lanes in registers,
  summed once per call by a transposing tree).

The tile shape follows the host: 8 x 48 with 512-bit vectors (24 of the 32
registers), 6 x 16 with AVX2-sized vectors. Results do not depend on threads.

Row helpers (``vcopy``, ``vsum``, ``vtrans`` ...) move data around them.

Maintainers: these intrinsics are inlined into the kernels of conv_implicit.py,
conv_lanes.py, conv_layout.py, winograd.py, pool.py and optim.py, and Numba's
on-disk cache keys a kernel on its own file only. After editing this file (or
winograd_ir.py), clear ``NUMBA_CACHE_DIR`` (or touch those files), or the old
machine code is loaded from the cache. (A fresh install or CI starts with an
empty cache.)
"""
from __future__ import annotations

import os

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _host_has_avx512() -> bool:
    if os.environ.get("NUMBA_CPU_NAME"):
        return False  # a portable build: assume nothing wider than the baseline
    try:
        import llvmlite.binding as llvm
        return bool(llvm.get_host_cpu_features().get("avx512f", False))
    except Exception:  # pragma: no cover - exotic hosts
        return False


AVX512 = _host_has_avx512()
VL = 16 if AVX512 else 8          # floats per vector register
MR = 8 if AVX512 else 6           # rows of the outer-product tile
NV = 3 if AVX512 else 2           # vectors per row of that tile
NR = NV * VL                      # columns of that tile
MD = 4 if AVX512 else 3           # mk_dot: A rows per tile (4x6 measured best of 7 shapes)
ND = 6 if AVX512 else 4           # mk_dot: B rows per tile

_I64 = ir.IntType(64)
_F32 = ir.FloatType()


def _c(v):
    return ir.Constant(_I64, v)


def _elem_ptr(context, builder, arrty, arr, idx):
    ary = context.make_array(arrty)(context, builder, arr)
    return builder.gep(ary.data, [idx])


def _vec_load(builder, ptr, vt):
    ld = builder.load(builder.bitcast(ptr, vt.as_pointer()))
    ld.align = 4
    return ld


def _vec_store(builder, val, ptr, vt):
    st = builder.store(val, builder.bitcast(ptr, vt.as_pointer()))
    st.align = 4


def _splat(builder, scalar, vt):
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), vt.count), [0] * vt.count)
    return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), mask)


def _phis(builder, ty, incoming):
    """One phi of type ty per entry of incoming: a list of [(value, block), ...]."""
    out = []
    for pairs in incoming:
        p = builder.phi(ty)
        for value, block in pairs:
            p.add_incoming(value, block)
        out.append(p)
    return out


def _close(phis, values, block):
    """Add the loop-back edge (values from block) to phis."""
    for p, v in zip(phis, values):
        p.add_incoming(v, block)


def _fma(builder, vt):
    fnty = ir.FunctionType(vt, [vt, vt, vt])
    return cgutils.get_or_insert_function(builder.module, fnty, "llvm.fma.v%df32" % vt.count)


_F32_1D = types.Array(types.float32, 1, "C")
_I64_1D = types.Array(types.int64, 1, "C")


def _outer_codegen(context, builder, at, A_, a0_, bptrs, offs_, K_, C_, c0_, ldc_):
    """The mk_outer tile loop; bptrs: the NV base pointers of B's vectors (before offs[k])."""
    vt = ir.VectorType(_F32, VL)
    fma = _fma(builder, vt)
    ap0 = _elem_ptr(context, builder, at[0], A_, a0_)
    op0 = _elem_ptr(context, builder, at[3], offs_, _c(0))
    cp0 = _elem_ptr(context, builder, at[-3], C_, c0_)
    zero = ir.Constant(vt, [0.0] * VL)
    entry = builder.block
    loop = builder.append_basic_block("mko_loop")
    done = builder.append_basic_block("mko_done")
    builder.cbranch(builder.icmp_signed(">", K_, _c(0)), loop, done)

    builder.position_at_end(loop)
    k, = _phis(builder, _I64, [[(_c(0), entry)]])
    acc = _phis(builder, vt, [[(zero, entry)]] * (MR * NV))
    off = builder.load(builder.gep(op0, [k]))
    bv = [_vec_load(builder, builder.gep(bp, [off]), vt) for bp in bptrs]
    ak = builder.gep(ap0, [builder.mul(k, _c(MR))])
    new = []
    for i in range(MR):
        a = _splat(builder, builder.load(builder.gep(ak, [_c(i)])), vt)
        for v in range(NV):
            new.append(builder.call(fma, [a, bv[v], acc[i * NV + v]]))
    k1 = builder.add(k, _c(1))
    tail = builder.block
    _close([k] + acc, [k1] + new, tail)
    builder.cbranch(builder.icmp_signed("<", k1, K_), loop, done)

    builder.position_at_end(done)
    res = _phis(builder, vt, [[(zero, entry), (n, tail)] for n in new])
    for i in range(MR):
        row = builder.gep(cp0, [builder.mul(ldc_, _c(i))])
        for v in range(NV):
            _vec_store(builder, res[i * NV + v], builder.gep(row, [_c(v * VL)]), vt)


@intrinsic
def mk_outer(typingctx, A, a0, B, offs, b0, K, C, c0, ldc):
    """C[c0 + i*ldc + j] = sum_{k<K} A[a0 + k*MR + i] * B[b0 + offs[k] + j] for i < MR, j < NR.

    A, B, C: 1-D float32 arrays; offs: 1-D int64. No bounds checks: the caller
    guarantees every index is inside its array.
    """
    sig = types.void(_F32_1D, types.intp, _F32_1D, _I64_1D, types.intp, types.intp,
                     _F32_1D, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        A_, a0_, B_, offs_, b0_, K_, C_, c0_, ldc_ = args
        bp0 = _elem_ptr(context, builder, signature.args[2], B_, b0_)
        bptrs = [builder.gep(bp0, [_c(v * VL)]) for v in range(NV)]
        _outer_codegen(context, builder, signature.args, A_, a0_, bptrs, offs_, K_, C_, c0_, ldc_)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def mk_outer_cols(typingctx, A, a0, B, offs, cols, K, C, c0, ldc):
    """mk_outer whose NV column vectors start anywhere: C[c0 + i*ldc + v*VL + l] =
    sum_{k<K} A[a0 + k*MR + i] * B[cols[v] + offs[k] + l] for i < MR, v < NV, l < VL.

    Why: in the batch-in-lanes layout (:mod:`.conv_lanes`) one vector is one
    output position; a tile of NV consecutive positions may wrap to the next
    output row, whose input starts elsewhere.
    """
    sig = types.void(_F32_1D, types.intp, _F32_1D, _I64_1D, _I64_1D, types.intp,
                     _F32_1D, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        A_, a0_, B_, offs_, cols_, K_, C_, c0_, ldc_ = args
        at = signature.args
        cp = _elem_ptr(context, builder, at[4], cols_, _c(0))
        bptrs = [_elem_ptr(context, builder, at[2], B_, builder.load(builder.gep(cp, [_c(v)]))) for v in range(NV)]
        _outer_codegen(context, builder, at, A_, a0_, bptrs, offs_, K_, C_, c0_, ldc_)
        return context.get_dummy_value()

    return sig, codegen


def _hsums(builder, vs):
    """The lane sums of every vector in vs, by a transposing tree (a fixed order).

    Why: summing each accumulator alone costs log2(VL) shuffle+add steps per
    vector; pairing vectors at every level shares them (24 accumulators: ~70
    instead of ~190 vector operations), which matters when a dot product is short.
    """
    i32 = ir.IntType(32)
    vt = vs[0].type
    n = vt.count
    items = [(v, [k]) for k, v in enumerate(vs)]      # (vector, accumulator ids; each owns n/len lanes)
    w = n
    while w > 1:
        h = w // 2
        nxt = []
        for a in range(0, len(items), 2):
            va, ida = items[a]
            vb, idb = items[a + 1] if a + 1 < len(items) else (ir.Constant(vt, [0.0] * n), [None] * len(ida))
            k = len(ida)
            lo = [j * w + t for j in range(k) for t in range(h)] + [n + j * w + t for j in range(k) for t in range(h)]
            hi = [x + h for x in lo]
            m = lambda idx: ir.Constant(ir.VectorType(i32, n), idx)
            nxt.append((builder.fadd(builder.shuffle_vector(va, vb, m(lo)), builder.shuffle_vector(va, vb, m(hi))),
                        ida + idb))
        items = nxt
        w = h
    out = [None] * len(vs)
    for v, ids in items:
        for lane, k in enumerate(ids):
            if k is not None:
                out[k] = builder.extract_element(v, ir.Constant(i32, lane))
    return out


@intrinsic
def mk_dot(typingctx, A, a0, aoffs, astride, B, b0, boffs, bstride, nimg, L, O, o0, ldo):
    """O[o0 + i*ldo + j] += sum_{n<nimg, q<L*VL} A[a0 + n*astride + aoffs[i] + q] * B[b0 + n*bstride + boffs[j] + q]

    for i < MD, j < ND: MD x ND dot products over nimg segments of L vectors.
    Each pair accumulates in a VL-lane register over all segments; the lanes are
    then summed (a transposing tree) and added to O, so O is an ordinary (rows x ldo) tile.
    """
    sig = types.void(_F32_1D, types.intp, _I64_1D, types.intp, _F32_1D, types.intp, _I64_1D,
                     types.intp, types.intp, types.intp, _F32_1D, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        A_, a0_, ao_, as_, B_, b0_, bo_, bs_, nimg_, L_, O_, o0_, ldo_ = args
        at = signature.args
        vt = ir.VectorType(_F32, VL)
        fma = _fma(builder, vt)
        ap0 = _elem_ptr(context, builder, at[0], A_, a0_)
        bp0 = _elem_ptr(context, builder, at[4], B_, b0_)
        aop = _elem_ptr(context, builder, at[2], ao_, _c(0))
        bop = _elem_ptr(context, builder, at[6], bo_, _c(0))
        op0 = _elem_ptr(context, builder, at[10], O_, o0_)
        arow = [builder.gep(ap0, [builder.load(builder.gep(aop, [_c(i)]))]) for i in range(MD)]
        brow = [builder.gep(bp0, [builder.load(builder.gep(bop, [_c(j)]))]) for j in range(ND)]
        zero = ir.Constant(vt, [0.0] * VL)
        entry = builder.block
        seg = builder.append_basic_block("mkd_seg")
        loop = builder.append_basic_block("mkd_loop")
        latch = builder.append_basic_block("mkd_latch")
        done = builder.append_basic_block("mkd_done")
        ok = builder.and_(builder.icmp_signed(">", nimg_, _c(0)), builder.icmp_signed(">", L_, _c(0)))
        builder.cbranch(ok, seg, done)

        # outer loop over segments (images): their base pointers; the inner loop is a plain
        # counted loop (a flat loop with per-iteration segment selects ran ~35% slower)
        builder.position_at_end(seg)
        sidx, = _phis(builder, _I64, [[(_c(0), entry)]])
        sacc = _phis(builder, vt, [[(zero, entry)]] * (MD * ND))
        abase = [builder.gep(r, [builder.mul(sidx, as_)]) for r in arow]
        bbase = [builder.gep(r, [builder.mul(sidx, bs_)]) for r in brow]
        builder.branch(loop)

        builder.position_at_end(loop)
        q, = _phis(builder, _I64, [[(_c(0), seg)]])
        acc = _phis(builder, vt, [[(a, seg)] for a in sacc])
        qv = builder.mul(q, _c(VL))
        av = [_vec_load(builder, builder.gep(r, [qv]), vt) for r in abase]
        bv = [_vec_load(builder, builder.gep(r, [qv]), vt) for r in bbase]
        new = [builder.call(fma, [av[i], bv[j], acc[i * ND + j]]) for i in range(MD) for j in range(ND)]
        q1 = builder.add(q, _c(1))
        _close([q] + acc, [q1] + new, builder.block)
        builder.cbranch(builder.icmp_signed("<", q1, L_), loop, latch)

        builder.position_at_end(latch)
        s1 = builder.add(sidx, _c(1))
        _close([sidx] + sacc, [s1] + new, latch)
        builder.cbranch(builder.icmp_signed("<", s1, nimg_), seg, done)

        builder.position_at_end(done)
        res = _phis(builder, vt, [[(zero, entry), (n, latch)] for n in new])
        sums = _hsums(builder, res)
        for i in range(MD):
            row = builder.gep(op0, [builder.mul(ldo_, _c(i))])
            for j in range(ND):
                ptr = builder.gep(row, [_c(j)])
                builder.store(builder.fadd(builder.load(ptr), sums[i * ND + j]), ptr)
        return context.get_dummy_value()

    return sig, codegen


# ----------------------------------------------------------------------------------------
# Row helpers: full vectors plus ONE masked vector for the tail. LLVM's own loops run the
# tail (and any row shorter than its 64-float unrolled step: e.g. 10, 14, 28, 136) scalar.
# ----------------------------------------------------------------------------------------

def _row_op(builder, n_, ptrs, body):
    """Run body(vector_ptrs, mask_or_None) over n_ floats from each of ptrs: full vectors, then one
    masked vector for the tail (mask = (mask, masked_load, masked_store))."""
    vt = ir.VectorType(_F32, VL)
    fns = _masked_fns(builder, vt)

    def step(off, rem):
        body([builder.bitcast(builder.gep(p, [off]), vt.as_pointer()) for p in ptrs], _tail(builder, rem, fns))

    _pair_op(builder, n_, step)


def _load(builder, p, m):
    if m is None:
        v = builder.load(p)
        v.align = 4
        return v
    mask, mload, _ = m
    vt = p.type.pointee
    return builder.call(mload, [p, ir.Constant(ir.IntType(32), 4), mask, ir.Constant(vt, [0.0] * vt.count)])


def _store(builder, v, p, m):
    if m is None:
        st = builder.store(v, p)
        st.align = 4
    else:
        mask, _, mstore = m
        builder.call(mstore, [v, p, ir.Constant(ir.IntType(32), 4), mask])


@intrinsic
def vadd(typingctx, D, d0, S, s0, n):
    """D[d0:d0+n] += S[s0:s0+n] (float32; the ranges must not overlap)."""
    sig = types.void(_F32_1D, types.intp, _F32_1D, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        D_, d0_, S_, s0_, n_ = args
        dp = _elem_ptr(context, builder, signature.args[0], D_, d0_)
        sp = _elem_ptr(context, builder, signature.args[2], S_, s0_)

        def body(p, m):
            _store(builder, builder.fadd(_load(builder, p[0], m), _load(builder, p[1], m)), p[0], m)

        _row_op(builder, n_, [dp, sp], body)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vsum(typingctx, D, d0, S, s0, offs, o0, m, n):
    """D[d0 + p] = sum_{t<m} S[s0 + offs[o0 + t] + p] for p < n: a sum of m shifted rows, in t order.

    Why: a col2im-style gather as one pass per output vector (m loads, one store)
    instead of m read-modify-write passes over the output row.
    """
    sig = types.void(_F32_1D, types.intp, _F32_1D, types.intp, _I64_1D, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        D_, d0_, S_, s0_, offs_, o0_, m_, n_ = args
        vt = ir.VectorType(_F32, VL)
        fns = _masked_fns(builder, vt)
        dp = _elem_ptr(context, builder, signature.args[0], D_, d0_)
        sp = _elem_ptr(context, builder, signature.args[2], S_, s0_)
        op = _elem_ptr(context, builder, signature.args[4], offs_, o0_)
        zero = ir.Constant(vt, [0.0] * VL)

        def body(off, rem):
            mask = _tail(builder, rem, fns)
            entry = builder.block
            loop = builder.append_basic_block("vsum_loop")
            done = builder.append_basic_block("vsum_done")
            builder.cbranch(builder.icmp_signed(">", m_, _c(0)), loop, done)
            builder.position_at_end(loop)
            t, = _phis(builder, _I64, [[(_c(0), entry)]])
            acc, = _phis(builder, vt, [[(zero, entry)]])
            src = builder.gep(sp, [builder.add(builder.load(builder.gep(op, [t])), off)])
            new = builder.fadd(acc, _load(builder, builder.bitcast(src, vt.as_pointer()), mask))
            t1 = builder.add(t, _c(1))
            _close([t, acc], [t1, new], builder.block)
            builder.cbranch(builder.icmp_signed("<", t1, m_), loop, done)
            builder.position_at_end(done)
            res, = _phis(builder, vt, [[(zero, entry), (new, loop)]])
            _store(builder, res, builder.bitcast(builder.gep(dp, [off]), vt.as_pointer()), mask)

        _pair_op(builder, n_, body)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vcopy(typingctx, D, d0, S, s0, n, b):
    """D[d0:d0+n] = S[s0:s0+n] + b (float32 scalar b; use 0 for a plain copy)."""
    sig = types.void(_F32_1D, types.intp, _F32_1D, types.intp, types.intp, types.float32)

    def codegen(context, builder, signature, args):
        D_, d0_, S_, s0_, n_, b_ = args
        dp = _elem_ptr(context, builder, signature.args[0], D_, d0_)
        sp = _elem_ptr(context, builder, signature.args[2], S_, s0_)
        bv = _splat(builder, b_, ir.VectorType(_F32, VL))

        def body(p, m):
            _store(builder, builder.fadd(_load(builder, p[1], m), bv), p[0], m)

        _row_op(builder, n_, [dp, sp], body)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vzero(typingctx, D, d0, n):
    """D[d0:d0+n] = 0 (float32)."""
    sig = types.void(_F32_1D, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        D_, d0_, n_ = args
        dp = _elem_ptr(context, builder, signature.args[0], D_, d0_)
        zero = ir.Constant(ir.VectorType(_F32, VL), [0.0] * VL)

        def body(p, m):
            _store(builder, zero, p[0], m)

        _row_op(builder, n_, [dp], body)
        return context.get_dummy_value()

    return sig, codegen


def _lane_mask(builder, rem, count):
    """<count x i1>: lanes < rem (rem may exceed count)."""
    i32 = ir.IntType(32)
    it = ir.VectorType(_I64, count)
    remv = builder.insert_element(ir.Constant(it, ir.Undefined), rem, ir.Constant(i32, 0))
    remv = builder.shuffle_vector(remv, ir.Constant(it, ir.Undefined), ir.Constant(ir.VectorType(i32, count), [0] * count))
    return builder.icmp_signed("<", ir.Constant(it, list(range(count))), remv)


def _masked_fns(builder, vt):
    mt = ir.VectorType(ir.IntType(1), vt.count)
    i32 = ir.IntType(32)
    mload = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vt, [vt.as_pointer(), i32, mt, vt]), "llvm.masked.load.v%df32.p0" % vt.count)
    mstore = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), i32, mt]),
        "llvm.masked.store.v%df32.p0" % vt.count)
    return mload, mstore


def _pair_op(builder, n_, body):
    """Loop over n_ output floats in steps of VL (last step masked): body(step_offset, mask_or_None)."""
    nfull = builder.sdiv(n_, _c(VL))
    entry = builder.block
    loop = builder.append_basic_block("pair_loop")
    tail = builder.append_basic_block("pair_tail")
    done = builder.append_basic_block("pair_done")
    builder.cbranch(builder.icmp_signed(">", nfull, _c(0)), loop, tail)
    builder.position_at_end(loop)
    i = builder.phi(_I64)
    i.add_incoming(_c(0), entry)
    body(builder.mul(i, _c(VL)), None)
    i1 = builder.add(i, _c(1))
    i.add_incoming(i1, builder.block)
    builder.cbranch(builder.icmp_signed("<", i1, nfull), loop, tail)
    builder.position_at_end(tail)
    base = builder.mul(nfull, _c(VL))
    body(base, builder.sub(n_, base))
    builder.branch(done)
    builder.position_at_end(done)


def _tail(builder, rem, fns, scale=1, minus=0):
    """The mask argument of _load/_store for lanes < rem*scale - minus (None: a full vector)."""
    if rem is None:
        return None
    n = builder.sub(builder.mul(rem, _c(scale)), _c(minus))
    return (_lane_mask(builder, n, VL),) + fns


def _split_masks():
    """Shuffle masks taking the even / the odd lanes of two concatenated vectors."""
    i32 = ir.IntType(32)
    return (ir.Constant(ir.VectorType(i32, VL), [2 * i for i in range(VL)]),
            ir.Constant(ir.VectorType(i32, VL), [2 * i + 1 for i in range(VL)]))


def _join_masks():
    """Shuffle masks interleaving two vectors a, b: (a0 b0 a1 b1 ...) low half, then high half."""
    i32 = ir.IntType(32)
    return (ir.Constant(ir.VectorType(i32, VL), [i // 2 + (VL if i % 2 else 0) for i in range(VL)]),
            ir.Constant(ir.VectorType(i32, VL), [VL // 2 + i // 2 + (VL if i % 2 else 0) for i in range(VL)]))


@intrinsic
def vsplit2(typingctx, D, d0, e0, S, s0, n):
    """D[d0 + i] = S[s0 + 2i], D[e0 + i] = S[s0 + 2i + 1] for i < n: split even/odd columns (stride-2 phases)."""
    sig = types.void(_F32_1D, types.intp, types.intp, _F32_1D, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        D_, d0_, e0_, S_, s0_, n_ = args
        vt = ir.VectorType(_F32, VL)
        fns = _masked_fns(builder, vt)
        dp = _elem_ptr(context, builder, signature.args[0], D_, d0_)
        ep = _elem_ptr(context, builder, signature.args[0], D_, e0_)
        sp = _elem_ptr(context, builder, signature.args[3], S_, s0_)
        even, odd = _split_masks()

        def body(off, rem):
            s = builder.gep(sp, [builder.mul(off, _c(2))])
            a = _load(builder, builder.bitcast(s, vt.as_pointer()), _tail(builder, rem, fns, 2))
            b = _load(builder, builder.bitcast(builder.gep(s, [_c(VL)]), vt.as_pointer()),
                      _tail(builder, rem, fns, 2, VL))
            m = _tail(builder, rem, fns)
            _store(builder, builder.shuffle_vector(a, b, even), builder.bitcast(builder.gep(dp, [off]), vt.as_pointer()), m)
            _store(builder, builder.shuffle_vector(a, b, odd), builder.bitcast(builder.gep(ep, [off]), vt.as_pointer()), m)

        _pair_op(builder, n_, body)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vjoin2(typingctx, D, d0, S, s0, e0, n):
    """D[d0 + 2i] = S[s0 + i], D[d0 + 2i + 1] = S[e0 + i] for i < n: interleave two column phases."""
    sig = types.void(_F32_1D, types.intp, _F32_1D, types.intp, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        D_, d0_, S_, s0_, e0_, n_ = args
        vt = ir.VectorType(_F32, VL)
        fns = _masked_fns(builder, vt)
        dp = _elem_ptr(context, builder, signature.args[0], D_, d0_)
        sp = _elem_ptr(context, builder, signature.args[2], S_, s0_)
        ep = _elem_ptr(context, builder, signature.args[2], S_, e0_)
        lo, hi = _join_masks()

        def body(off, rem):
            m = _tail(builder, rem, fns)
            a = _load(builder, builder.bitcast(builder.gep(sp, [off]), vt.as_pointer()), m)
            b = _load(builder, builder.bitcast(builder.gep(ep, [off]), vt.as_pointer()), m)
            d = builder.gep(dp, [builder.mul(off, _c(2))])
            _store(builder, builder.shuffle_vector(a, b, lo), builder.bitcast(d, vt.as_pointer()),
                   _tail(builder, rem, fns, 2))
            _store(builder, builder.shuffle_vector(a, b, hi), builder.bitcast(builder.gep(d, [_c(VL)]), vt.as_pointer()),
                   _tail(builder, rem, fns, 2, VL))

        _pair_op(builder, n_, body)
        return context.get_dummy_value()

    return sig, codegen


def _transpose(builder, rows):
    """The VL x VL transpose of rows (VL vectors): log2(VL) rounds of swapping the off-diagonal
    h x h blocks of every 2h x 2h block (h = VL/2, ..., 1), two shuffles per row pair per round."""
    i32 = ir.IntType(32)
    n = len(rows)
    m = list(rows)
    h = n // 2
    while h >= 1:
        lo = [(l // (2 * h)) * 2 * h + (l % (2 * h) if l % (2 * h) < h else n + l % (2 * h) - h) for l in range(n)]
        hi = [x + h for x in lo]
        lo_c, hi_c = (ir.Constant(ir.VectorType(i32, n), idx) for idx in (lo, hi))
        for i in range(n):
            if i & h:
                continue
            a, b = m[i], m[i + h]
            m[i] = builder.shuffle_vector(a, b, lo_c)
            m[i + h] = builder.shuffle_vector(a, b, hi_c)
        h //= 2
    return m


@intrinsic
def vtrans(typingctx, D, d0, dstride, nd, dlen, S, s0, sstride, ns, slen, b):
    """One VL x VL block transposed: D[d0 + q*dstride + l] = S[s0 + l*sstride + q] + b

    for q < nd, l < dlen; source rows l >= ns and lanes q >= slen read as zero.
    Why: the batch-in-lanes convolution (:mod:`.conv_lanes`) keeps VL images in
    the lanes of each vector; this moves NCHW rows in and out of that layout
    (masked loads and stores: rows of 10 or 14 floats, a last group of fewer images).
    """
    sig = types.void(_F32_1D, types.intp, types.intp, types.intp, types.intp,
                     _F32_1D, types.intp, types.intp, types.intp, types.intp, types.float32)

    def codegen(context, builder, signature, args):
        D_, d0_, ds_, nd_, dl_, S_, s0_, ss_, ns_, sl_, b_ = args
        at = signature.args
        vt = ir.VectorType(_F32, VL)
        mload, mstore = _masked_fns(builder, vt)
        al = ir.Constant(ir.IntType(32), 4)
        zero = ir.Constant(vt, [0.0] * VL)
        sp = _elem_ptr(context, builder, at[5], S_, s0_)
        dp = _elem_ptr(context, builder, at[0], D_, d0_)
        rows = []
        for r in range(VL):
            n = builder.select(builder.icmp_signed(">", ns_, _c(r)), sl_, _c(0))
            p = builder.bitcast(builder.gep(sp, [builder.mul(ss_, _c(r))]), vt.as_pointer())
            rows.append(builder.call(mload, [p, al, _lane_mask(builder, n, VL), zero]))
        bv = _splat(builder, b_, vt)
        for q, v in enumerate(_transpose(builder, rows)):
            n = builder.select(builder.icmp_signed(">", nd_, _c(q)), dl_, _c(0))
            p = builder.bitcast(builder.gep(dp, [builder.mul(ds_, _c(q))]), vt.as_pointer())
            builder.call(mstore, [builder.fadd(v, bv), p, al, _lane_mask(builder, n, VL)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def compact_code(typingctx):
    """Mark the enclosing LLVM function ``optsize``; call it first thing in a prange body.

    Why: at -O3 LLVM unswitches every loop-invariant branch of a parallel loop body
    (stride 1 / stride 2 / generic ...) into its own copy of the loop nest. For
    nbcnn's kernels that tripled compile time (the padded-input fill: 2.6 s ->
    0.8 s with optsize) and bought no speed: their hot loops are the explicit
    vector code above, which optsize leaves as it is.
    """
    def codegen(context, builder, signature, args):
        builder.function.attributes.add("optsize")
        return context.get_dummy_value()

    return types.void(), codegen
