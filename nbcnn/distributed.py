"""Data-parallel training over MPI (mpi4py): every rank holds the model and trains on its shard.

The design, and why:

* **Equivalence with one process.** Rank ``r`` of ``K`` takes the ``r``-th contiguous slice of
  every *global* batch of the single-process shuffle order (same seed), and the gradients are
  averaged weighted by slice size. So ``K`` ranks x batch ``B`` follow one process x batch
  ``K*B``: the same batches, the same mean gradient, the same optimiser steps (up to float
  rounding of the sums). The step count and the shuffle order are global, which is also why a
  checkpoint written by ``K`` ranks resumes with any ``K'``.
* **Gradient buckets overlapping backward.** The model keeps every gradient in one flat buffer
  (``model._gflat``), layer by layer. Buckets are slices of it covering whole layers, filled
  from the output end (the first to be finished by backward); a bucket is reduced with a
  non-blocking ``Iallreduce`` as soon as the last layer it covers has run its backward, while
  the earlier layers still compute (the DDP design). On GPUs the buckets go through NCCL
  (``cupy.cuda.nccl``) on the device buffers, on a side stream.
* **Rank 0 does the I/O.** Callbacks, progress output and files run on the root only; the
  others train silently. ``stop_training`` is broadcast from the root after every batch, so a
  Ctrl-C or early stop ends every rank at the same step.
* **No hangs.** A blocking MPI call on a dead peer waits forever, so every collective here
  runs under a watchdog thread: a peer on this host whose process is gone, or a collective
  that takes longer than ``timeout`` seconds (``$NBCNN_MPI_TIMEOUT``, default 30), prints what
  happened and calls ``Abort`` on ``COMM_WORLD``. An exception on one rank during ``fit``
  does the same (the others could never finish their collective). A killed rank ends the job
  through the launcher (``mpiexec`` tears down the rest). The start of ``fit`` compares a hash
  of the model and training configuration across ranks and refuses to train on a mismatch.
* **Batch norm.** Per-rank batch statistics by default (each rank normalises its own slice,
  like PyTorch's DDP without SyncBatchNorm); ``sync_batchnorm=True`` hands BN layers
  :func:`allreduce_moments` so they normalise with the global batch's statistics. Moving
  statistics are averaged over the ranks at the end of every epoch.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
import traceback

import numpy as np

__all__ = ["Communicator", "DistributedError", "init", "allreduce_mean", "allreduce_moments",
           "mpi_available", "mpi_library", "shard_bounds", "local_device", "GradientReducer",
           "ShardedBatches", "single_process"]

DEFAULT_TIMEOUT_S = 30.0
BUCKET_BYTES = 1 << 18     # 256 KiB buckets: several per ResNet-20, large enough for the link bandwidth
_WATCH_S = 0.25            # how often the watchdog looks at the peers during a collective


class DistributedError(RuntimeError):
    """The ranks disagree (model, configuration) or a collective could not complete."""


# ----------------------------------------------------------------------------------------------
# MPI discovery
# ----------------------------------------------------------------------------------------------

def _mpi(initialize: bool = True):
    """``mpi4py.MPI``, initialised (thread level MULTIPLE: the watchdog may call Abort).

    ``MPI_Init`` waits for every rank of the job, holding the GIL; a rank that died before it
    would leave this one waiting forever, so a forked watchdog process ends this one after
    ``$NBCNN_MPI_TIMEOUT`` seconds unless the initialisation closes its pipe first.
    """
    import mpi4py

    mpi4py.rc.initialize = False  # initialise here, under the watchdog, not at import
    mpi4py.rc.finalize = True     # ... but still finalise at exit (a rank that exits without
    from mpi4py import MPI        # MPI_Finalize makes the launcher kill the whole job)

    if initialize and not MPI.Is_initialized() and not MPI.Is_finalized():
        timeout = float(os.environ.get("NBCNN_MPI_TIMEOUT", DEFAULT_TIMEOUT_S))

        watch = _init_watchdog(timeout)
        try:
            MPI.Init_thread(MPI.THREAD_MULTIPLE)
        finally:
            if watch is not None:
                os.close(watch[0])
                os.waitpid(watch[1], 0)
        import atexit

        atexit.register(_finalize, MPI)
    return MPI


def _finalize(MPI):
    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()


def _init_watchdog(timeout: float):
    """Fork a process that kills this one if the pipe it is given stays open ``timeout`` s."""
    import select
    import signal

    try:
        r, w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
    except (OSError, AttributeError):  # no fork (or no resources): go without the guard
        return None
    if pid == 0:  # the watchdog: only system calls until it exits
        try:
            os.close(w)
            ready, _, _ = select.select([r], [], [], timeout)
            if not ready:
                os.write(2, (f"nbcnn: distributed training aborted: MPI did not start within {timeout:g} s "
                             "(another rank may have failed before it reached MPI; "
                             "$NBCNN_MPI_TIMEOUT)\n").encode())
                os.kill(parent, signal.SIGKILL)
        finally:
            os._exit(0)
    os.close(r)
    return w, pid


def mpi_available() -> tuple[bool, str]:
    """``(True, library)`` when mpi4py imports, else ``(False, why)``; initialises nothing."""
    try:
        return True, mpi_library()
    except Exception as exc:  # ImportError, or a broken MPI shared library
        return False, f"{type(exc).__name__}: {exc}"


def mpi_library() -> str:
    """``"MPICH 5.0.2 (mpi4py 4.1.2)"``: the MPI library's first version line and mpi4py's version."""
    import mpi4py

    MPI = _mpi(initialize=False)
    first = MPI.Get_library_version().strip().splitlines()[0]
    lib = " ".join(first.replace("Version:", "").split())
    return f"{lib} (mpi4py {mpi4py.__version__}, MPI {'.'.join(map(str, MPI.Get_version()))})"


# ----------------------------------------------------------------------------------------------
# the communicator
# ----------------------------------------------------------------------------------------------

class Communicator:
    """An MPI communicator with the few collectives data-parallel training needs, each guarded.

    ``comm``: an ``mpi4py`` communicator (default ``MPI.COMM_WORLD``). ``timeout``: seconds a
    collective may wait for the slowest rank before the job is aborted (``$NBCNN_MPI_TIMEOUT``).
    """

    def __init__(self, comm=None, timeout: float | None = None, sync_batchnorm: bool = False):
        self.MPI = MPI = _mpi()
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = int(self.comm.Get_rank())
        self.size = int(self.comm.Get_size())
        if timeout is None:
            timeout = float(os.environ.get("NBCNN_MPI_TIMEOUT", DEFAULT_TIMEOUT_S))
        if not timeout > 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        self.timeout = float(timeout)
        self.sync_batchnorm = bool(sync_batchnorm)
        self.step_weight = 1.0 / self.size
        self._busy: tuple | None = None  # (what, since) while inside a collective
        # time spent waiting for the gradient allreduce after backward, and steps (benchmarks)
        self.stats = {"allreduce_wait_s": 0.0, "steps": 0, "early_buckets": 0}
        self._lock = threading.Lock()
        self._watchdog = None
        # who runs where: (host hash, pid) of every rank, for the watchdog. Polled with a deadline:
        # a rank that died before reaching here (an import error) must not hang the others.
        host = socket.gethostname()
        me = np.array([int.from_bytes(hashlib.sha256(host.encode()).digest()[:7], "little"), os.getpid()],
                      np.int64)
        peers = np.empty(2 * self.size, np.int64)
        req = self.comm.Iallgather(me, peers)
        deadline = time.monotonic() + self.timeout
        while not req.Test():
            if time.monotonic() > deadline:
                self.abort(f"rank {self.rank} waited {self.timeout:g} s for the other ranks to start "
                           "(one may have failed before it reached MPI; $NBCNN_MPI_TIMEOUT)")
            time.sleep(0.001)
        peers = peers.reshape(self.size, 2)
        self._local_peers = [(r, int(pid)) for r, (h, pid) in enumerate(peers)
                             if h == me[0] and r != self.rank]
        self.hosts = sorted({int(h) for h, _ in peers})

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"<nbcnn Communicator rank {self.rank} of {self.size} on {len(self.hosts)} host(s)>"

    # -- guards ------------------------------------------------------------------------------
    def _start_watchdog(self):
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="nbcnn-mpi-watchdog", daemon=True)
            self._watchdog.start()

    def _watch(self):
        while True:
            time.sleep(_WATCH_S)
            busy = self._busy
            if busy is None:
                continue
            what, since = busy
            for r, pid in self._local_peers:
                if not _pid_alive(pid):
                    self.abort(f"rank {r} (pid {pid}) is gone while rank {self.rank} waits in {what}")
            waited = time.monotonic() - since
            if waited > self.timeout:
                self.abort(f"rank {self.rank} waited {waited:.0f} s in {what} (timeout {self.timeout:g} s, "
                           "$NBCNN_MPI_TIMEOUT): another rank is stuck or gone")

    def wait(self, requests, what: str):
        """Wait for MPI request(s) under the watchdog (a dead peer or the timeout aborts the job)."""
        reqs = requests if isinstance(requests, (list, tuple)) else [requests]
        if not reqs:
            return
        if self.size == 1:
            self.MPI.Request.Waitall(list(reqs))
            return
        self._start_watchdog()
        self._busy = (what, time.monotonic())
        try:
            self.MPI.Request.Waitall(list(reqs))
        finally:
            self._busy = None

    def abort(self, message: str, code: int = 1):
        """Print ``message`` (naming this rank) on stderr and end the whole MPI job."""
        with self._lock:
            sys.stderr.write(f"nbcnn: distributed training aborted: {message}\n")
            sys.stderr.flush()
            time.sleep(0.3)  # let the launcher forward the message before Abort tears the job down
            comm = self.MPI.COMM_WORLD
            comm.Abort(code)

    # -- collectives -----------------------------------------------------------------------
    def allreduce_(self, a, what="allreduce"):
        """Sum ``a`` (a contiguous NumPy array) over the ranks, in place; returns it."""
        if self.size > 1:
            self.wait(self.comm.Iallreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM), what)
        return a

    def bcast_(self, a, root: int = 0, what="broadcast"):
        """Overwrite ``a`` (a contiguous NumPy array) with the root's copy, in place; returns it."""
        if self.size > 1:
            self.wait(self.comm.Ibcast(a, root=root), what)
        return a

    def bcast_json(self, obj, root: int = 0, what="broadcast"):
        """The root's JSON-able ``obj`` on every rank."""
        if self.size == 1:
            return obj
        data = json.dumps(obj).encode() if self.rank == root else b""
        n = self.bcast_(np.array([len(data)], np.int64), root, what)
        buf = np.frombuffer(data, np.uint8).copy() if self.rank == root else np.empty(int(n[0]), np.uint8)
        self.bcast_(buf, root, what)
        return json.loads(buf.tobytes().decode())

    def allgather_bytes(self, data: bytes, what="allgather"):
        """Every rank's ``data`` (equal-length byte strings), as a list in rank order."""
        if self.size == 1:
            return [data]
        send = np.frombuffer(data, np.uint8).copy()
        recv = np.empty(self.size * send.size, np.uint8)
        self.wait(self.comm.Iallgather(send, recv), what)
        return [recv[i * send.size:(i + 1) * send.size].tobytes() for i in range(self.size)]

    def agree(self, flag: bool, what="stop flag") -> bool:
        """The root's ``flag`` on every rank (used for ``stop_training``)."""
        if self.size == 1:
            return bool(flag)
        return bool(self.bcast_(np.array([1 if flag else 0], np.int8), 0, what)[0])

    def barrier(self, what="barrier"):
        if self.size > 1:
            self.wait(self.comm.Ibarrier(), what)

    def check_same(self, description: dict, what: str = "the model and training configuration"):
        """Raise :class:`DistributedError` on every rank unless all ranks hold the same
        ``description`` (compared by SHA-256 of its canonical JSON)."""
        digest = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).digest()
        all_ = self.allgather_bytes(digest, "the configuration check")
        odd = [r for r, d in enumerate(all_) if d != all_[0]]
        if odd:
            raise DistributedError(f"{what} differ between ranks: rank(s) {odd} do not match rank 0; "
                                   "start every rank with the same model, data and options")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by the launcher) is gone too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


class SingleProcess(Communicator):
    """A communicator of one rank that needs no MPI: every collective is the identity. For the
    one-GPU NCCL check and for code that takes a communicator in a plain process."""

    def __init__(self, sync_batchnorm: bool = False):
        self.MPI = None
        self.comm = None
        self.rank, self.size = 0, 1
        self.timeout = DEFAULT_TIMEOUT_S
        self.sync_batchnorm = bool(sync_batchnorm)
        self.step_weight = 1.0
        self._busy = None
        self._lock = threading.Lock()
        self._watchdog = None
        self.stats = {"allreduce_wait_s": 0.0, "steps": 0, "early_buckets": 0}
        self._local_peers = []
        self.hosts = [socket.gethostname()]

    def wait(self, requests, what: str):
        pass

    def abort(self, message: str, code: int = 1):
        raise DistributedError(message)


def single_process(sync_batchnorm: bool = False) -> Communicator:
    """A one-rank :class:`Communicator` without MPI (see :class:`SingleProcess`)."""
    return SingleProcess(sync_batchnorm)


def init(comm=None, timeout: float | None = None, sync_batchnorm: bool = False) -> Communicator:
    """A :class:`Communicator` over ``MPI.COMM_WORLD`` (or the given mpi4py communicator).

    Raises ``ImportError`` with the install hint when mpi4py is missing.
    """
    if isinstance(comm, Communicator):
        return comm
    try:
        _mpi()
    except ImportError as exc:
        raise ImportError(f"distributed training needs mpi4py and an MPI library: "
                          f"pip install 'nbcnn[mpi]' ({exc})") from None
    return Communicator(comm, timeout=timeout, sync_batchnorm=sync_batchnorm)


def allreduce_mean(arrays, comm=None):
    """Average each array of ``arrays`` over the ranks, in place; returns the list.

    NumPy arrays go through MPI, CuPy arrays through MPI on a host copy (training itself
    reduces device buffers with NCCL). Integer arrays are averaged with integer division.
    """
    comm = init(comm)
    out = list(arrays)
    for a in out:
        host = a if isinstance(a, np.ndarray) else _to_host(a)
        if not host.flags.c_contiguous:
            raise ValueError("allreduce_mean needs contiguous arrays")
        comm.allreduce_(host, "allreduce_mean")
        if host.dtype.kind == "f":
            host *= host.dtype.type(1.0 / comm.size)
        else:
            host //= comm.size
        if host is not a:
            a[...] = _from_host(host, a)
    return out


def allreduce_moments(comm, count, total, total_sq):
    """Global batch statistics for synchronised batch norm: sums every rank's per-channel
    ``count``, ``sum`` and ``sum of squares`` in one allreduce and returns
    ``(count, mean, var)`` of the global batch (biased variance, as BN normalises with)."""
    comm = init(comm)
    c = total.shape[0]
    host = np.empty(2 * c + 1, np.float64)
    host[0] = float(count)
    host[1:c + 1] = _to_host(total).astype(np.float64).ravel()
    host[c + 1:] = _to_host(total_sq).astype(np.float64).ravel()
    comm.allreduce_(host, "synchronised batch norm")
    n = host[0]
    mean = host[1:c + 1] / n
    var = np.maximum(host[c + 1:] / n - mean * mean, 0.0)
    return n, mean, var


def sync_batch_norm_forward(layer, x, comm):
    """Training-mode batch norm of ``layer`` with the statistics of the global batch.

    The per-channel sums come from nbcnn's own batch-norm kernels run in inference mode
    (with zero mean and unit variance their gradients are ``sum(x*x)`` and ``sum(x)``), one
    allreduce makes them global, and the normalisation is the inference kernel with the global
    mean and variance. Moving statistics are updated with them (Keras momentum).
    """
    from . import ops

    xp = ops.array_module(x)
    dt = x.dtype
    C = x.shape[1]
    eps = layer.epsilon
    zero, one = xp.zeros(C, dt), xp.full(C, 1.0 - eps, dt)
    _, sq, s = ops.batch_norm_backward(x, x, None, eps=eps, training=False, running_mean=zero, running_var=one)
    n_local = x.size // C
    host = np.empty(2 * C + 1, np.float64)
    host[0] = n_local
    host[1:C + 1] = _to_host(s)
    host[C + 1:] = _to_host(sq)
    comm.allreduce_(host, "synchronised batch norm")
    n = host[0]
    mean = host[1:C + 1] / n
    var = np.maximum(host[C + 1:] / n - mean * mean, 0.0)
    mean_d, var_d = _from_host(mean.astype(dt), x), _from_host(var.astype(dt), x)
    g, b = layer._gamma_beta()
    y = ops.batch_norm(x, g, b, mean_d, var_d, training=False, eps=eps)
    mm, mv = layer.state
    m = dt.type(layer.momentum)
    mm *= m
    mm += (1 - m) * mean_d
    mv *= m
    mv += (1 - m) * _from_host((var * (n / max(n - 1, 1))).astype(dt), x)
    layer._ctx["sync"] = (mean, var, mean_d, var_d, n_local, comm)
    return y


def sync_batch_norm_backward(layer, gy, x):
    """Gradients of :func:`sync_batch_norm_forward`: ``gamma * invstd * (gy - mean(gy) -
    xhat * mean(gy * xhat))`` with the means over the global batch (weighted by each rank's share
    of it, as the gradients are), from one allreduce of the per-channel ``sum(gy)`` and
    ``sum(gy * xhat)``; both sums and ``gamma * invstd * gy`` come from the inference-mode
    backward kernel, the correction (affine in x per channel) from the inference-mode forward."""
    from . import ops

    mean, var, mean_d, var_d, n_local, comm = layer._ctx.pop("sync")
    xp = ops.array_module(x)
    dt = x.dtype
    C = x.shape[1]
    eps = layer.epsilon
    g, _ = layer._gamma_beta()
    gx, ggamma, gbeta = ops.batch_norm_backward(gy, x, g, eps=eps, training=False, running_mean=mean_d,
                                                running_var=var_d)
    w = comm.step_weight
    host = np.empty(2 * C, np.float64)
    host[:C] = _to_host(gbeta) * w
    host[C:] = _to_host(ggamma) * w
    comm.allreduce_(host, "synchronised batch norm")
    s1, s2 = host[:C] / n_local, host[C:] / n_local
    invstd = 1.0 / np.sqrt(var + eps)
    gamma = np.ones(C) if g is None else _to_host(g).astype(np.float64)
    a = gamma * invstd * invstd * s2
    b = gamma * invstd * (s1 - mean * invstd * s2)
    zero, one = xp.zeros(C, dt), xp.full(C, 1.0 - eps, dt)
    corr = ops.batch_norm(x, _from_host(a.astype(dt), x), _from_host(b.astype(dt), x), zero, one,
                          training=False, eps=eps)
    gx -= corr
    return gx, ggamma, gbeta


def _to_host(a):
    return a if isinstance(a, np.ndarray) else np.ascontiguousarray(a.get())


def _from_host(host, like):
    if isinstance(like, np.ndarray):
        return np.ascontiguousarray(host)
    import cupy

    return cupy.asarray(host)


# ----------------------------------------------------------------------------------------------
# sharding
# ----------------------------------------------------------------------------------------------

def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank``'s contiguous slice of ``n`` items (balanced: sizes differ by
    at most one; with ``n = size * B`` rank ``r`` gets ``[r*B, (r+1)*B)``)."""
    return rank * n // size, (rank + 1) * n // size


class ShardedBatches:
    """This rank's slices of the global batches of a source.

    ``source``: a :class:`nbcnn.datasets.BatchIterator` over the global batch (only this
    rank's rows are gathered), or any re-iterable of global ``(xb, yb)`` batches (each is
    sliced). ``self.local``/``self.total`` hold the last batch's local and global sizes.
    """

    def __init__(self, source, comm: Communicator):
        self.source, self.comm = source, comm
        self.local = self.total = 0

    def __len__(self):
        return len(self.source)

    def epoch(self, epoch: int, start: int = 0):
        src = self.source
        if hasattr(src, "order") and hasattr(src, "batch_size") and hasattr(src, "x"):
            idx = src.order(epoch)
            n, bs = len(src.x), src.batch_size
            for b in range(start, len(src)):
                glo, ghi = b * bs, min(n, (b + 1) * bs)
                lo, hi = shard_bounds(ghi - glo, self.comm.rank, self.comm.size)
                self.local, self.total = hi - lo, ghi - glo
                sel = slice(glo + lo, glo + hi) if idx is None else idx[glo + lo:glo + hi]
                yield src.x[sel], (None if src.y is None else src.y[sel])
            return
        it = iter(src)
        for _ in range(start):
            next(it, None)
        for xb, yb in it:
            total = int(xb.shape[0])
            lo, hi = shard_bounds(total, self.comm.rank, self.comm.size)
            self.local, self.total = hi - lo, total
            yield xb[lo:hi], yb[lo:hi]


# ----------------------------------------------------------------------------------------------
# gradient averaging
# ----------------------------------------------------------------------------------------------

def _buckets(spans, itemsize: int, bucket_bytes: int):
    """Group consecutive layers, from the last, into buckets of about ``bucket_bytes``:
    ``[(lo, hi, first_layer)]`` in the order backward finishes them."""
    out = []
    cur = None  # [lo, hi, first]
    for i in range(len(spans) - 1, -1, -1):
        lo, hi = spans[i]
        if hi <= lo:
            if cur is not None:
                cur[2] = i
            continue
        if cur is None:
            cur = [lo, hi, i]
        else:
            cur[0], cur[2] = lo, i
        if (cur[1] - cur[0]) * itemsize >= bucket_bytes:
            out.append(tuple(cur))
            cur = None
    if cur is not None:
        out.append(tuple(cur))
    return out


class GradientReducer:
    """Averages ``model._gflat`` over the ranks in buckets that overlap the backward pass.

    The model calls :meth:`layer_done` after each layer's backward and :meth:`finish` before
    the optimiser step. Each rank's gradient is a mean over its slice, so it is weighted by
    ``local / total`` (slice size over global batch size) before the sum: the result is the
    gradient of the mean loss over the global batch, also for an uneven last batch.
    """

    def __init__(self, comm: Communicator, model, bucket_bytes: int | None = None):
        self.comm, self.model = comm, model
        self.bucket_bytes = int(BUCKET_BYTES if bucket_bytes is None else bucket_bytes)
        self.buckets = _buckets(model._spans, model.dtype.itemsize, self.bucket_bytes)
        self.weight = 1.0 / comm.size
        self._next = 0
        self._pending = []
        self.reduce_s = 0.0     # time spent waiting for reductions (the allreduce share of a step)
        self.backend = _backend_for(comm, model)

    def begin(self, local: int, total: int):
        """Start a step whose slice has ``local`` of the global batch's ``total`` samples."""
        self.weight = local / total if total else 0.0
        self.comm.step_weight = self.weight  # synchronised batch norm weights its gradient sums with it
        self._next = 0
        self._pending = []

    def _launch(self, k):
        lo, hi, _ = self.buckets[k]
        g = self.model._gflat[lo:hi]
        w = self.weight
        if w != 1.0:
            g *= g.dtype.type(w)
        self._pending.append(self.backend.start(g))

    def layer_done(self, i: int):
        """Layer ``i`` has its gradients: launch every bucket whose first layer is ``>= i``."""
        while self._next < len(self.buckets) and self.buckets[self._next][2] >= i:
            self._launch(self._next)
            self._next += 1
            self.comm.stats["early_buckets"] += 1
        if self._pending:
            self.backend.progress(self._pending)

    def finish(self):
        """Launch what is left (frozen layers' spans too) and wait for every bucket."""
        while self._next < len(self.buckets):
            self._launch(self._next)
            self._next += 1
        t0 = time.perf_counter()
        self.backend.wait(self._pending)
        dt = time.perf_counter() - t0
        self.reduce_s += dt
        self.comm.stats["allreduce_wait_s"] += dt
        self.comm.stats["steps"] += 1
        self._pending = []

    def empty_step(self):
        """This rank has no samples in the step: contribute zeros."""
        self.model._ensure_grads()
        self.model._gflat[...] = 0
        self.begin(0, 1)
        self.finish()


class _MpiBackend:
    """Buckets reduced by ``Iallreduce`` on host buffers (device buffers are staged)."""

    name = "mpi"

    def __init__(self, comm):
        self.comm = comm

    def start(self, g):
        if self.comm.size == 1:
            return None
        if isinstance(g, np.ndarray):
            return (self.comm.comm.Iallreduce(self.comm.MPI.IN_PLACE, g, op=self.comm.MPI.SUM), None, None)
        host = np.ascontiguousarray(g.get())
        return (self.comm.comm.Iallreduce(self.comm.MPI.IN_PLACE, host, op=self.comm.MPI.SUM), host, g)

    def progress(self, pending):
        reqs = [p[0] for p in pending if p is not None]
        if reqs:
            self.comm.MPI.Request.Testall(reqs)

    def wait(self, pending):
        live = [p for p in pending if p is not None]
        self.comm.wait([p[0] for p in live], "the gradient allreduce")
        for _, host, dev in live:
            if dev is not None:
                dev.set(host)


class _NcclBackend:
    """Buckets reduced by NCCL on the device buffers, on a side stream that waits for the
    compute stream's backward (no host copies)."""

    name = "nccl"

    def __init__(self, comm, nccl):
        import cupy

        self.cupy, self.nccl = cupy, nccl
        uid = nccl.get_unique_id() if comm.is_root else None
        uid = tuple(comm.bcast_json(list(uid) if uid is not None else None, what="the NCCL id"))
        self.nc = nccl.NcclCommunicator(comm.size, uid, comm.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.codes = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        self.comm = comm

    def start(self, g):
        cp = self.cupy
        ev = cp.cuda.Event(disable_timing=True)
        ev.record(cp.cuda.get_current_stream())
        self.stream.wait_event(ev)
        self.nc.allReduce(g.data.ptr, g.data.ptr, g.size, self.codes[g.dtype], self.nccl.NCCL_SUM,
                          self.stream.ptr)
        return True

    def progress(self, pending):
        pass

    def wait(self, pending):
        if not pending:
            return
        ev = self.stream.record()
        self.cupy.cuda.get_current_stream().wait_event(ev)


def select_backend(comm, on_gpu: bool, nccl_module=None) -> str:
    """``"nccl"`` for a model on a GPU when ``cupy.cuda.nccl`` is usable, else ``"mpi"``
    (``$NBCNN_DIST_BACKEND=mpi`` forces MPI)."""
    if not on_gpu or os.environ.get("NBCNN_DIST_BACKEND", "").lower() == "mpi":
        return "mpi"
    if nccl_module is None:
        try:
            from cupy.cuda import nccl as nccl_module
        except Exception:
            return "mpi"
    return "nccl" if getattr(nccl_module, "available", True) else "mpi"


def _backend_for(comm, model):
    on_gpu = model.xp is not np
    if select_backend(comm, on_gpu) == "nccl":
        from cupy.cuda import nccl

        return _NcclBackend(comm, nccl)
    return _MpiBackend(comm)


def local_device(spec, rank: int, n_gpus: int | None = None) -> str:
    """The device rank ``rank`` should use: ``cuda:<rank % n_gpus>`` for ``"cuda"``/``"gpu"``
    (and ``"auto"`` when GPUs are visible), else ``spec`` unchanged."""
    s = (spec or "auto").strip().lower() if isinstance(spec, str) or spec is None else spec
    if not isinstance(s, str) or s not in ("cuda", "gpu", "auto"):
        return spec
    if n_gpus is None:
        from .device import gpu_status

        ok = gpu_status()[0]
        if not ok:
            return "cpu" if s == "auto" else spec
        try:
            import cupy

            n_gpus = cupy.cuda.runtime.getDeviceCount()
        except Exception:
            n_gpus = 1
    if n_gpus <= 0:
        return "cpu" if s == "auto" else spec
    return f"cuda:{rank % n_gpus}"


# ----------------------------------------------------------------------------------------------
# what Model.fit(distributed=...) calls
# ----------------------------------------------------------------------------------------------

class FitSession:
    """The distributed side of one ``fit``: setup checks and broadcasts, per-step stats,
    sharded evaluation, the exception guard. Created by :func:`attach`."""

    def __init__(self, comm: Communicator, model, reducer: GradientReducer):
        self.comm, self.model, self.reducer = comm, model, reducer
        self.is_root = comm.is_root
        self.sharded = None

    def shard(self, source):
        self.sharded = ShardedBatches(source, self.comm)
        return self.sharded

    def step(self, model, xb, yb):
        """One training step of this rank's slice: returns ``(loss, correct, n)`` of the global batch."""
        local, total = self.sharded.local, self.sharded.total
        if self.comm.sync_batchnorm and total < self.comm.size:
            raise DistributedError(f"synchronised batch norm needs at least one image per rank in every batch; "
                                   f"a batch of {total} images cannot be split over {self.comm.size} ranks")
        if local:
            self.reducer.begin(local, total)
            model._grad_hook = self.reducer
            try:
                loss, corr = model._train_step(model._to_batch(xb), model._to_labels(yb))
            finally:
                model._grad_hook = None
        else:
            self.reducer.empty_step()
            if model._ranges:
                model.optimizer.step(model._flat, model._gflat, model._ranges)
            loss, corr = 0.0, 0
        stats = np.array([loss * local, max(corr, 0), local], np.float64)
        self.comm.allreduce_(stats, "the step statistics")
        return float(stats[0] / stats[2]), int(stats[1]), int(stats[2])

    def agree_stop(self, flag: bool) -> bool:
        return self.comm.agree(flag)

    def average_state(self):
        """Average non-trainable state (moving statistics) over the ranks."""
        arrays = [s for layer in self.model.layers for s in layer.state]
        if arrays and self.comm.size > 1:
            allreduce_mean(arrays, self.comm)

    def evaluate(self, x, y, batch_size):
        """``model.evaluate`` sharded over the ranks and reduced."""
        lo, hi = shard_bounds(len(x), self.comm.rank, self.comm.size)
        stats = np.zeros(3, np.float64)
        res = {}
        if hi > lo:
            res = self.model.evaluate(x[lo:hi], y[lo:hi], batch_size=batch_size, distributed=None)
            stats[:] = res["loss"] * (hi - lo), res.get("accuracy", 0.0) * (hi - lo), hi - lo
        self.comm.allreduce_(stats, "the sharded evaluation")
        out = {"loss": float(stats[0] / stats[2])}
        if self.model.metrics:
            out["accuracy"] = float(stats[1] / stats[2])
        return out

    def guard(self, callbacks):
        """Make an exception raised by any callback hook of ``callbacks`` (a CallbackList) abort
        the job (the other ranks would wait for this one forever)."""
        call = callbacks._call

        def guarded(hook, *args):
            try:
                return call(hook, *args)
            except BaseException as exc:
                self.fail(exc)
                raise

        callbacks._call = guarded
        return callbacks

    def fail(self, exc: BaseException):
        """An exception escaped a rank's training loop: report it and abort the job (a lone
        rank leaving would leave the others waiting in a collective)."""
        if self.comm.size == 1:
            return
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        sys.stderr.write(tb)
        self.comm.abort(f"rank {self.comm.rank} of {self.comm.size} raised "
                        f"{type(exc).__name__}: {exc}")


def _describe(model, batch_size, epochs, n_samples, sync_bn) -> dict:
    return {"model": model.get_config(), "dtype": model.dtype.name, "loss": getattr(model.loss, "name", None),
            "optimizer": model.optimizer.get_config(), "metrics": list(model.metrics),
            "batch_size": int(batch_size), "epochs": int(epochs), "samples": n_samples,
            "trainable": [bool(l.trainable) for l in model.layers], "params": int(model._flat.size),
            "device_kind": model.device.kind, "sync_batchnorm": sync_bn}


def attach(model, comm, batch_size: int, epochs: int, n_samples) -> FitSession:
    """Set up ``model`` (built and compiled) for distributed ``fit``: check every rank holds the
    same model and configuration, copy rank 0's weights, state and optimiser state to all
    ranks, give each rank its own dropout stream, and create the gradient reducer."""
    comm = init(comm)
    comm.check_same(_describe(model, batch_size, epochs, n_samples, comm.sync_batchnorm))
    # rank 0's initial weights and optimizer state everywhere (host staging is fine: once per fit)
    flat = _to_host(model._flat).copy()
    comm.bcast_(flat, 0, "the initial weights")
    if model._flat is not flat:
        model._flat[...] = _from_host(flat, model._flat)
    for layer in model.layers:
        for s in layer.state:
            h = _to_host(s).copy()
            comm.bcast_(h, 0, "the layer state")
            s[...] = _from_host(h, s)
    opt = model.optimizer
    scalars = comm.bcast_json({"iterations": int(opt.iterations)}, what="the optimizer state")
    opt.iterations = int(scalars["iterations"])
    for k in sorted(opt.state):
        h = _to_host(opt.state[k]).copy()
        comm.bcast_(h, 0, "the optimizer state")
        opt.state[k][...] = _from_host(h, opt.state[k])
    prog = comm.bcast_json(dict(model.progress), what="the training position")
    model.progress = prog
    rng_state = comm.bcast_json(_jsonable(model._dropout_rng.bit_generator.state), what="the dropout stream")
    bg = model._dropout_rng.bit_generator
    bg.state = rng_state
    if comm.rank:  # a stream of its own per rank (PCG64 jump-ahead): no two ranks draw the same masks
        bg.state = bg.jumped(comm.rank).state
    for layer in model.layers:  # the synchronised batch-norm hook (layers that declare it)
        if hasattr(layer, "sync_stats"):
            layer.sync_stats = comm if comm.sync_batchnorm and comm.size > 1 else None
    model._ensure_grads()
    return FitSession(comm, model, GradientReducer(comm, model))


def _jsonable(state):
    if isinstance(state, dict):
        return {k: _jsonable(v) for k, v in state.items()}
    if isinstance(state, (np.integer,)):
        return int(state)
    return state
