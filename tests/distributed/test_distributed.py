"""Data-parallel training with real ``mpiexec`` ranks (see conftest.py)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_two_ranks_follow_one_process_with_the_global_batch(run_worker, tmp_path):
    """K=2 x batch 32 == K=1 x batch 64, one epoch of LeNet-5 on 2,048 MNIST images."""
    _ok(run_worker(2, "equivalence", timeout=300))
    dist, single = np.load(tmp_path / "dist.npy"), np.load(tmp_path / "single.npy")
    losses = json.loads((tmp_path / "losses.json").read_text())
    assert losses["iterations"] == [32, 32]  # the schedule counts global steps
    assert _rel(dist, single) <= 1e-4
    assert abs(losses["dist"][0] - losses["single"][0]) <= 1e-4 * abs(losses["single"][0])
    init = np.abs(dist - single).max()
    assert init < np.abs(single).max()  # and the run moved the weights at all (not trivially equal)


def test_graph_model_with_buckets_reduced_during_backward(run_worker, tmp_path):
    """Residual + shared layer + concatenation, many small buckets launched as backward goes."""
    _ok(run_worker(2, "graph", timeout=240))
    assert _rel(np.load(tmp_path / "dist.npy"), np.load(tmp_path / "single.npy")) <= 1e-4
    b = json.loads((tmp_path / "buckets.json").read_text())
    assert b["buckets"] >= 3
    # all but the bucket of the first layers go out before backward ends (the overlap)
    assert b["early"] >= (b["buckets"] - 1) * b["steps"]


def test_uneven_batches_weight_the_slices(run_worker, tmp_path):
    """Global batches of 66 over 4 ranks (16/17 images each) and a last batch of one image."""
    _ok(run_worker(4, "uneven", timeout=240))
    assert _rel(np.load(tmp_path / "dist.npy"), np.load(tmp_path / "single.npy")) <= 1e-4


def test_synchronised_batch_norm_follows_one_process(run_worker, tmp_path):
    """With sync_batchnorm the 2 ranks normalise with the global batch's statistics and match one
    process (weights and moving statistics); per-rank statistics (the default) do not."""
    _ok(run_worker(2, "syncbn", timeout=240))
    r = np.load(tmp_path / "bn.npz")
    assert _rel(r["sync"], r["single"]) <= 1e-4
    assert _rel(r["perrank"], r["single"]) > 1e-3


def test_allreduce_mean_averages_in_place(run_worker, tmp_path):
    _ok(run_worker(3, "mean"))
    ranks = json.loads((tmp_path / "mean.json").read_text())
    want_a = (np.arange(6).reshape(2, 3) + 1.0).tolist()  # mean of r = 0, 1, 2 added
    for same_a, same_b, a, b in ranks:
        assert same_a and same_b  # the arrays passed in, averaged in place
        assert a == want_a
        assert b == [20] * 4


def test_fit_starts_from_rank0_weights_and_optimizer_state(run_worker, tmp_path):
    _ok(run_worker(3, "broadcast"))
    w = np.load(tmp_path / "weights.npy")
    assert w.shape[0] == 3
    assert np.array_equal(w[1], w[0]) and np.array_equal(w[2], w[0])
    assert json.loads((tmp_path / "its.json").read_text())["iterations"] == [0, 0, 0]


def test_mismatched_models_are_refused_on_every_rank(run_worker, tmp_path):
    _ok(run_worker(2, "mismatch"))
    for r in (0, 1):
        msg = (tmp_path / f"error{r}.txt").read_text()
        assert "differ between ranks" in msg and "[1]" in msg
    assert not list(tmp_path.glob("trained*"))


@pytest.mark.parametrize("how", ["kill", "raise", "exit", "early"])
def test_a_failing_rank_ends_the_job(run_worker, how):
    """Rank 1 dies mid-training (SIGKILL, an exception), never trains, or fails before MPI starts:
    the job ends non-zero,
    well within 60 s, and says why."""
    t0 = time.monotonic()
    proc = run_worker(2, f"fault-{how}", timeout=120, env={"NBCNN_MPI_TIMEOUT": "5"})
    took = time.monotonic() - t0
    assert proc.returncode != 0
    assert took < 60
    out = proc.stdout + proc.stderr
    if how == "raise":
        assert "rank 1 of 2 raised MemoryError: simulated out of memory" in out
    elif how == "exit":  # rank 1 sits in MPI_Finalize: rank 0's collective times out
        assert "rank 0 waited" in out and "another rank is stuck or gone" in out
    elif how == "early":  # rank 1 never started MPI: rank 0 gives up waiting for it
        assert "MPI did not start within 5 s" in out
    else:
        assert "BAD TERMINATION" in out or "Killed" in out or "signal 9" in out
