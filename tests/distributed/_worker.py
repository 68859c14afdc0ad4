"""Rank programs for the distributed tests, run under ``mpiexec -n K python _worker.py MODE OUT``.

Each mode writes what the test checks into the folder OUT (rank 0 unless said otherwise).
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

import nbcnn
from nbcnn import datasets, distributed, layers as L, optim, zoo


def _mnist(n):
    (x, y), _ = datasets.load_mnist()
    return x[:n], y[:n]


def _tiny(seed=0, units=16):
    nbcnn.seed(seed)
    m = nbcnn.Sequential([L.Conv2D(4, 3, activation="relu", input_shape=(1, 12, 12)), L.MaxPool2D(2),
                          L.Flatten(), L.Dense(units, activation="relu"), L.Dense(10)])
    m.compile(optimizer=optim.Adam(0.01))
    return m


def _tiny_data(n=192):
    rng = np.random.default_rng(7)
    return rng.random((n, 1, 12, 12), dtype=np.float32), rng.integers(0, 10, n)


def equivalence(comm, out):
    """One epoch of LeNet-5 on 2,048 MNIST images: K ranks x batch B, then (rank 0) one process x K*B."""
    x, y = _mnist(2048)
    b = 32

    def run(dist, batch):
        nbcnn.seed(3)
        m = zoo.lenet5()
        m.compile(optimizer=optim.SGD(0.05, momentum=0.9))
        h = m.fit(x, y, epochs=1, batch_size=batch, distributed=dist, verbose=0)
        return m, h

    m, h = run(comm, b)
    if comm.is_root:
        ref, href = run(None, b * comm.size)
        np.save(os.path.join(out, "dist.npy"), m._flat)
        np.save(os.path.join(out, "single.npy"), ref._flat)
        json.dump({"dist": h.history["loss"], "single": href.history["loss"],
                   "iterations": [m.optimizer.iterations, ref.optimizer.iterations]},
                  open(os.path.join(out, "losses.json"), "w"))


def uneven(comm, out):
    """Global batches that do not split evenly (and a last batch smaller than the rank count)."""
    x, y = _tiny_data(67)  # batches of 3 x 22 = 66 and a last one of 1 image
    m = _tiny(1)
    m.fit(x, y, epochs=2, batch_size=22, distributed=comm, verbose=0)
    if comm.is_root:
        ref = _tiny(1)
        ref.fit(x, y, epochs=2, batch_size=22 * comm.size, verbose=0)
        np.save(os.path.join(out, "dist.npy"), m._flat)
        np.save(os.path.join(out, "single.npy"), ref._flat)


def _bn_model(seed=2):
    nbcnn.seed(seed)
    m = nbcnn.Sequential([L.Conv2D(4, 3, input_shape=(1, 12, 12)), L.BatchNormalization(momentum=0.9),
                          L.Activation("relu"), L.MaxPool2D(2), L.Flatten(), L.Dense(10)])
    m.compile(optimizer=optim.SGD(0.05, momentum=0.9))
    return m


def syncbn(comm, out):
    """Batch norm: per-rank statistics (default) and synchronised ones, against one process."""
    x, y = _tiny_data(192)
    runs = {}
    for name, sync in (("perrank", False), ("sync", True)):
        c = distributed.init(sync_batchnorm=sync)
        m = _bn_model()
        m.fit(x, y, epochs=2, batch_size=16, distributed=c, verbose=0)
        runs[name] = np.concatenate([w.ravel() for w in m.get_weights()])
    if comm.is_root:
        ref = _bn_model()
        ref.fit(x, y, epochs=2, batch_size=16 * comm.size, verbose=0)
        runs["single"] = np.concatenate([w.ravel() for w in ref.get_weights()])
        np.savez(os.path.join(out, "bn.npz"), **runs)


def mean(comm, out):
    """allreduce_mean on float and integer arrays (rank r holds r + 1, r + 2, ...)."""
    r = comm.rank
    a = np.arange(6, dtype=np.float32).reshape(2, 3) + r
    b = np.full(4, 10 * (r + 1), np.int64)
    got = distributed.allreduce_mean([a, b], comm)
    allv = comm.comm.gather([got[0] is a, got[1] is b, a.tolist(), b.tolist()], root=0)
    if comm.is_root:
        json.dump(allv, open(os.path.join(out, "mean.json"), "w"))


def _residual(seed=6):
    """A small residual graph with a shared layer and a 1x1 branch (several gradient buckets)."""
    nbcnn.seed(seed)
    inp = nbcnn.Input((1, 12, 12))
    h = L.Conv2D(8, 3, padding="same", activation="relu")(inp)
    shared = L.Conv2D(8, 3, padding="same")
    r = shared(L.ReLU()(shared(h)))
    h = L.ReLU()(L.Add()([h, r]))
    h = L.Concatenate(axis=1)([h, L.Conv2D(4, 1)(h)])
    out = L.Dense(10)(L.Flatten()(L.MaxPool2D(2)(h)))
    m = nbcnn.Model(inp, out)
    m.compile(optimizer=optim.SGD(0.05, momentum=0.9))
    return m


def graph(comm, out):
    """A graph model with buckets of ~1 KiB (launched during backward): K ranks == one process."""
    distributed.BUCKET_BYTES = 1024
    x, y = _tiny_data(96)
    m = _residual()
    m.fit(x, y, epochs=2, batch_size=12, distributed=comm, verbose=0)
    if comm.is_root:
        ref = _residual()
        ref.fit(x, y, epochs=2, batch_size=12 * comm.size, verbose=0)
        np.save(os.path.join(out, "dist.npy"), m._flat)
        np.save(os.path.join(out, "single.npy"), ref._flat)
        n_buckets = len(distributed.GradientReducer(comm, m).buckets)
        json.dump({"buckets": n_buckets, "early": comm.stats["early_buckets"], "steps": comm.stats["steps"]},
                  open(os.path.join(out, "buckets.json"), "w"))


def broadcast(comm, out):
    """Ranks start from different weights and optimiser state; fit must start from rank 0's."""
    m = _tiny(0)
    x, y = _tiny_data(48)
    m.build()
    if comm.rank:
        m._flat[...] = np.random.default_rng(comm.rank).standard_normal(m._flat.size)
        m.optimizer.iterations = 99
    m.fit(x, y, epochs=0, batch_size=8, distributed=comm, verbose=0)
    allw = comm.comm.gather(m._flat.copy(), root=0)
    its = comm.comm.gather(m.optimizer.iterations, root=0)
    if comm.is_root:
        np.save(os.path.join(out, "weights.npy"), np.stack(allw))
        json.dump({"iterations": its}, open(os.path.join(out, "its.json"), "w"))


def mismatch(comm, out):
    """Rank 1 builds a different model: every rank must refuse to train."""
    m = _tiny(0, units=16 if comm.rank == 0 else 24)
    x, y = _tiny_data(48)
    try:
        m.fit(x, y, epochs=1, batch_size=8, distributed=comm, verbose=0)
    except distributed.DistributedError as exc:
        with open(os.path.join(out, f"error{comm.rank}.txt"), "w") as f:
            f.write(str(exc))
        return
    with open(os.path.join(out, f"trained{comm.rank}.txt"), "w") as f:
        f.write("trained")


def fault(comm, out, how):
    """Rank 1 fails after a few steps (``kill``: SIGKILL, ``raise``: an exception, ``exit``:
    never calls fit and leaves normally); the job must end by itself."""
    m = _tiny(0)
    x, y = _tiny_data(192)
    if how == "exit" and comm.rank == 1:
        return  # leaves without training: MPI_Finalize at exit, the others wait in fit's first collective
    steps = {"n": 0}
    if comm.rank == 1:
        train_step = m._train_step

        def failing(xb, yb):
            steps["n"] += 1
            if steps["n"] == 3:
                if how == "kill":
                    os.kill(os.getpid(), 9)
                else:
                    raise MemoryError("simulated out of memory on rank 1")
            return train_step(xb, yb)

        m._train_step = failing
    m.fit(x, y, epochs=1000, batch_size=4, distributed=comm, verbose=0)


def main():
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "fault-early" and os.environ.get("PMI_RANK") == "1":
        sys.exit(3)  # fails before it ever reaches MPI (an import error, a bad environment)
    comm = distributed.init()
    if mode.startswith("fault-"):
        fault(comm, out, mode.split("-", 1)[1])
    else:
        globals()[mode](comm, out)


if __name__ == "__main__":
    main()
