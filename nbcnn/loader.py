"""Online augmentation: worker processes distort mini-batches while the model trains.

Design (each point answers a classic data-loader failure):

* Workers are **spawned**, never forked: ``fork`` after Numba's OpenMP runtime
  has run makes the children abort and the parent wait forever.
* The images live once in **shared memory** (or, for a data set larger than
  memory, in a cache file each worker reads its own rows from: an
  :class:`nbcnn.imagefolder.ImageArray`); a task is just (epoch, batch,
  indices). Finished batches come back through a queue, and at most
  ``prefetch`` batches are in flight, so memory stays bounded.
* **Randomness per batch**: batch b of epoch e is distorted with the
  generator of ``SeedSequence(seed, spawn_key=(e, b))``. No worker shares a
  stream with another (the bug where every forked worker made the same
  distortions), and the result depends on the seed only: the same batches
  for 0, 1 or 8 workers. Batches are delivered in order.
* **Clean shutdown**: workers ignore SIGINT (``Ctrl-C`` reaches the main
  process only, which then stops them); an epoch abandoned by the consumer
  (exception, ``break``, ``KeyboardInterrupt``) stops the workers; a worker
  that raises reports its traceback and the main process re-raises it; a
  worker that dies is noticed within a fraction of a second; workers exit by
  themselves when the main process disappears. No queue is ever joined
  while it may hold data, so no shutdown path can deadlock.
"""
from __future__ import annotations

import atexit
import contextlib
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import traceback
import weakref
from multiprocessing import shared_memory

import numpy as np

from .augment import Pipeline, _check_batch, batch_rng, parse_spec

__all__ = ["AugmentedBatches", "WorkerError", "online_batches"]

_POLL_S = 0.2


class WorkerError(RuntimeError):
    """A worker process failed; the message carries its traceback."""


def _file_backed(a) -> bool:
    """An array read from a file row by row (``ImageArray``): never copied into shared memory."""
    return hasattr(a, "view") and hasattr(a, "path") and not isinstance(a, np.ndarray)


def _make_batch(xs, ys, idx, pipeline, seed, epoch, b, to_float):
    xb = xs[idx]
    if len(pipeline):
        xb = pipeline(xb, batch_rng(seed, epoch, b))
    if to_float and xb.dtype == np.uint8:
        xb = xb.astype(np.float32) * np.float32(1.0 / 255.0)
    return xb, ys[idx]


def _attach(spec):
    if spec[0] == "file":  # a file-backed array: the worker reads its own rows
        return None, spec[1]
    name, shape, dtype = spec
    shm = shared_memory.SharedMemory(name=name)
    return shm, np.ndarray(shape, dtype=np.dtype(dtype), buffer=shm.buf)


def _worker_main(wid, xspec, yspec, pipeline, seed, to_float, threads, tasks, results, parent_pid):
    """Loop: take (epoch, batch, indices), put (epoch, batch, x, y) or (epoch, batch, None, traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's business
    results.cancel_join_thread()  # never block exit on unread results
    try:
        import numba
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    except Exception:  # pragma: no cover - numba always there in practice
        pass
    shm_x, xs = _attach(xspec)
    shm_y, ys = _attach(yspec)
    try:
        while True:
            try:
                task = tasks.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent_pid:  # orphaned: the main process is gone
                    return
                continue
            if task is None:
                return
            epoch, b, idx = task
            try:
                xb, yb = _make_batch(xs, ys, idx, pipeline, seed, epoch, b, to_float)
                results.put((epoch, b, xb, yb))
            except BaseException:
                results.put((epoch, b, None, f"worker {wid}, batch {b}:\n{traceback.format_exc()}"))
    finally:
        del xs, ys
        for shm in (shm_x, shm_y):
            if shm is not None:
                shm.close()


@contextlib.contextmanager
def _main_module_hidden(payload):
    """Keep spawned workers from re-running the user's ``__main__`` script.

    ``spawn`` re-imports the main script in every child: an unguarded script
    (no ``if __name__ == "__main__":``, common in notebooks-turned-scripts)
    would redo its work in each worker and fail. The workers need nothing
    from ``__main__`` unless the pipeline holds objects defined there, so
    unless it does, the main module's path is hidden while they start.
    """
    main = sys.modules.get("__main__")
    if main is None or b"__main__" in pickle.dumps(payload):
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.update(saved)


class _Pool:
    """The worker processes, their queues and the shared copies of x and y."""

    def __init__(self, x, y, pipeline, seed, to_float, workers, threads):
        ctx = mp.get_context("spawn")
        self.shms = []
        self.procs = []
        self.tasks = ctx.Queue()
        self.results = ctx.Queue()
        try:
            specs = []
            for a in (x, y):
                if _file_backed(a):
                    specs.append(("file", a))
                    continue
                shm = shared_memory.SharedMemory(create=True, size=max(1, a.nbytes))
                self.shms.append(shm)
                np.ndarray(a.shape, a.dtype, buffer=shm.buf)[...] = a
                specs.append((shm.name, a.shape, a.dtype.str))
            with _main_module_hidden(pipeline):
                for w in range(workers):
                    p = ctx.Process(target=_worker_main, name=f"nbcnn-augment-{w}", daemon=True,
                                    args=(w, specs[0], specs[1], pipeline, seed, to_float, threads,
                                          self.tasks, self.results, os.getpid()))
                    p.start()
                    self.procs.append(p)
        except BaseException:
            self.close()
            raise

    def _check_alive(self):
        for p in self.procs:
            if p.exitcode is not None:
                raise WorkerError(f"augmentation worker {p.name} (pid {p.pid}) died with exit code {p.exitcode}")

    def get(self, timeout=None):
        """Next result. A worker that died (killed, out of memory, crashed) raises WorkerError,
        even while the others keep delivering: a lost batch would otherwise hang the epoch, and
        silently running on fewer workers hides the problem."""
        waited = 0.0
        while True:
            self._check_alive()
            try:
                return self.results.get(timeout=_POLL_S)
            except queue.Empty:
                waited += _POLL_S
                if timeout is not None and waited >= timeout:
                    self._check_alive()
                    raise WorkerError(f"no batch from the augmentation workers in {timeout:g} s") from None

    def close(self, grace=2.0):
        procs, self.procs = self.procs, []
        for _ in procs:
            try:
                self.tasks.put_nowait(None)
            except Exception:
                pass
        # drain results so no worker blocks on a full pipe while we wait for it
        import time
        deadline = time.monotonic() + grace
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
            try:
                self.results.get(timeout=0.05)
            except (queue.Empty, OSError, EOFError, ValueError):
                pass
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(1.0)
            if p.is_alive():  # pragma: no cover - SIGTERM ignored
                p.kill()
                p.join(1.0)
        for q in (self.tasks, self.results):
            try:
                q.cancel_join_thread()
                q.close()
            except Exception:
                pass
        for shm in self.shms:
            try:
                shm.close()
                shm.unlink()
            except FileNotFoundError:
                pass
        self.shms = []


_LIVE = weakref.WeakSet()


@atexit.register
def _close_all():  # pragma: no cover - exercised at interpreter exit
    for src in list(_LIVE):
        src.close()


class AugmentedBatches:
    """Re-iterable source of ``(xb, yb)`` mini-batches, augmented on the fly.

    Each ``iter()`` is one epoch (shuffled by ``SeedSequence(seed,
    spawn_key=(epoch,))``); ``len()`` is the number of batches per epoch.
    ``workers=0`` makes every batch in this process (same batches as with
    workers). Workers start at the first epoch and stay up until
    :meth:`close`, the end of a ``with`` block, an abandoned epoch, or exit.
    """

    def __init__(self, x, y, batch_size=32, pipeline=None, *, seed=0, workers=2, shuffle=True,
                 to_float=True, prefetch=None, drop_last=False, threads_per_worker=1, timeout=None):
        self.x = x if _file_backed(x) else _check_batch(x)
        self.y = np.ascontiguousarray(np.asarray(y))
        if self.y.shape[:1] != self.x.shape[:1]:
            raise ValueError(f"x has {self.x.shape[0]} images but y has shape {self.y.shape}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(workers) < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.batch_size = int(batch_size)
        if pipeline is None:
            pipeline = Pipeline()
        elif not isinstance(pipeline, Pipeline):
            pipeline = Pipeline([pipeline])  # any picklable callable (x, rng) -> x
        self.pipeline = pipeline
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self.workers = int(workers)
        self.shuffle = bool(shuffle)
        self.to_float = bool(to_float)
        self.prefetch = int(prefetch) if prefetch else max(2, 2 * self.workers)
        self.drop_last = bool(drop_last)
        self.threads = int(threads_per_worker)
        self.timeout = timeout
        self.epoch = 0
        self._pool = None
        _LIVE.add(self)

    def __len__(self):
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch):
        """Make the next ``iter()`` epoch ``epoch`` (to resume a run)."""
        self.epoch = int(epoch)

    def _batches(self, epoch):
        n = self.x.shape[0]
        if self.shuffle:
            order = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(epoch,))).permutation(n)
        else:
            order = np.arange(n)
        return [order[s:s + self.batch_size] for s in range(0, len(self) * self.batch_size, self.batch_size)]

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        batches = self._batches(epoch)
        if self.workers == 0:
            return (_make_batch(self.x, self.y, idx, self.pipeline, self.seed, epoch, b, self.to_float)
                    for b, idx in enumerate(batches))
        return self._iter_workers(epoch, batches)

    def _iter_workers(self, epoch, batches):
        if self._pool is None:
            self._pool = _Pool(self.x, self.y, self.pipeline, self.seed, self.to_float, self.workers,
                               self.threads)
        pool = self._pool
        nb = len(batches)
        sent = done = 0
        ready = {}
        finished = False
        try:
            while done < nb:
                while sent < nb and sent - done < self.prefetch:
                    pool.tasks.put((epoch, sent, batches[sent]))
                    sent += 1
                while done not in ready:
                    e, b, xb, yb = pool.get(self.timeout)
                    if e != epoch:
                        continue
                    if xb is None:
                        raise WorkerError(f"augmentation failed in {yb}")
                    ready[b] = (xb, yb)
                yield ready.pop(done)
                done += 1
            finished = True
        finally:
            if not finished:  # abandoned mid-epoch: stop the workers, start afresh next time
                self.close()

    def close(self):
        """Stop the workers (if any) and free the shared memory. Safe to call twice."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def online_batches(x, y, batch_size=32, augment="", *, seed=0, workers=2, shuffle=True,
                   to_float=True, prefetch=None, drop_last=False):
    """A re-iterable source of augmented ``(xb, yb)`` mini-batches for ``Sequential.fit``.

    ``augment`` is a spec string or a :class:`Pipeline`; ``workers=0`` distorts in
    this process; ``workers>=1`` uses that many worker processes (spawned, so
    safe after Numba's OpenMP runtime has started). ``len()`` is the number of
    batches per epoch. Call ``.close()`` (or use ``with``) to stop the workers
    early; they also stop at interpreter exit.
    """
    return AugmentedBatches(x, y, batch_size=batch_size, pipeline=parse_spec(augment), seed=seed,
                            workers=workers, shuffle=shuffle, to_float=to_float, prefetch=prefetch,
                            drop_last=drop_last)
