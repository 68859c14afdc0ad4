"""The parts of nbcnn.distributed that need no MPI job: slicing, buckets, device and backend choice."""
from __future__ import annotations

import types

import numpy as np
import pytest

from nbcnn import distributed as D


@pytest.mark.parametrize("n,k", [(64, 2), (66, 4), (1, 3), (7, 7), (5, 1)])
def test_shard_bounds_cover_the_batch_in_order(n, k):
    bounds = [D.shard_bounds(n, r, k) for r in range(k)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(k - 1))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1
    if n % k == 0:
        assert bounds == [(r * (n // k), (r + 1) * (n // k)) for r in range(k)]


def test_buckets_are_whole_layers_from_the_output_end():
    # layer spans of a flat buffer: 100, 0 (no params), 50, 400, 10 floats
    spans = [(0, 100), (100, 100), (100, 150), (150, 550), (550, 560)]
    b = D._buckets(spans, 4, 1000)  # 1000 bytes = 250 floats
    assert b == [(150, 560, 3), (0, 150, 0)]  # the last two layers, then the rest (incl. the empty one)
    covered = sorted((lo, hi) for lo, hi, _ in b)
    assert covered[0][0] == 0 and covered[-1][1] == 560
    assert all(covered[i][1] == covered[i + 1][0] for i in range(len(covered) - 1))
    assert D._buckets(spans, 4, 1 << 30) == [(0, 560, 0)]


@pytest.mark.parametrize("spec,rank,n,want", [("cuda", 0, 2, "cuda:0"), ("cuda", 3, 2, "cuda:1"),
                                              ("gpu", 5, 4, "cuda:1"), ("auto", 2, 1, "cuda:0"),
                                              ("auto", 1, 0, "cpu"), ("cpu", 1, 4, "cpu"),
                                              ("cuda:1", 0, 4, "cuda:1")])
def test_rank_r_uses_gpu_r_mod_n(spec, rank, n, want):
    assert D.local_device(spec, rank, n_gpus=n) == want


def test_backend_choice():
    comm = types.SimpleNamespace(rank=0, size=2)
    nccl = types.SimpleNamespace(available=True)
    assert D.select_backend(comm, on_gpu=False, nccl_module=nccl) == "mpi"
    assert D.select_backend(comm, on_gpu=True, nccl_module=nccl) == "nccl"
    assert D.select_backend(comm, on_gpu=True, nccl_module=types.SimpleNamespace(available=False)) == "mpi"


def test_backend_choice_can_be_forced_to_mpi(monkeypatch):
    monkeypatch.setenv("NBCNN_DIST_BACKEND", "mpi")
    assert D.select_backend(None, on_gpu=True, nccl_module=types.SimpleNamespace(available=True)) == "mpi"


def test_mpi_library_is_reported_or_explained():
    ok, what = D.mpi_available()
    assert isinstance(what, str) and what
    if ok:
        assert "mpi4py" in what


def test_moving_statistics_layout_of_allreduce_moments_single_rank():
    """With one rank the global moments are the local ones (checked against NumPy)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3))
    n, mean, var = D.allreduce_moments(_Single(), 10, x.sum(0), (x * x).sum(0))
    assert n == 10
    np.testing.assert_allclose(mean, x.mean(0))
    np.testing.assert_allclose(var, x.var(0))


class _Single(D.Communicator):
    """A one-rank stand-in (no MPI initialisation in the test process)."""

    def __init__(self):
        self.rank, self.size = 0, 1

    def allreduce_(self, a, what="allreduce"):
        return a


def test_fit_on_a_one_rank_communicator_equals_plain_fit():
    """The whole distributed fit path (sharding, bucket reducer, stats, stop agreement, sharded
    validation) with one rank and no MPI: the same weights and history as a plain fit."""
    import nbcnn
    from nbcnn import layers as L, optim

    rng = np.random.default_rng(3)
    x = rng.random((70, 1, 10, 10), dtype=np.float32)
    y = rng.integers(0, 5, 70)
    runs = []
    for dist in (None, D.single_process()):
        nbcnn.seed(9)
        m = nbcnn.Sequential([L.Conv2D(3, 3, activation="relu", input_shape=(1, 10, 10)), L.Flatten(),
                              L.Dense(5)])
        m.compile(optimizer=optim.SGD(0.1, momentum=0.9))
        h = m.fit(x, y, epochs=2, batch_size=16, validation_split=0.2, distributed=dist, verbose=0)
        runs.append((m.get_weights(), h.history, m.optimizer.iterations))
        if dist is not None:
            assert dist.stats["steps"] == 8  # 56 training images / 16 = 4 steps x 2 epochs
    (w0, h0, i0), (w1, h1, i1) = runs
    assert i0 == i1 == 8
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b)
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(h1[k], h0[k], rtol=1e-12)
