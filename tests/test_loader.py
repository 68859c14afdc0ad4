"""Online augmentation workers: determinism, distinct RNG streams, clean shutdown."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from nbcnn.augment import parse_spec
from nbcnn.loader import AugmentedBatches, WorkerError, online_batches


class Boom:
    """A pipeline op that fails on one batch (picklable: defined at module level)."""

    def __call__(self, x, rng):
        if (x[:, 0, 0, 0] == 99).any():
            raise RuntimeError("boom in augmentation")
        return x


def _data(n=40):
    x = np.zeros((n, 1, 6, 6), np.uint8)
    x[:, 0, 0, 0] = np.arange(n)
    return x, np.arange(n)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0): look at its state
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_same_batches_for_any_worker_count_and_in_order():
    x, y = _data(50)
    spec = "rotate=20,noise=0.1"
    ref = [b for b in online_batches(x, y, 8, spec, seed=5, workers=0)]
    with online_batches(x, y, 8, spec, seed=5, workers=2) as src:
        assert len(src) == 7
        got = [b for b in src]
        got2 = [b for b in src]  # epoch 2: reshuffled, redistorted, same worker processes
    assert len(got) == 7
    for (a, ya), (b, yb) in zip(ref, got):
        assert a.dtype == np.float32 and a.shape[1:] == (1, 6, 6)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ya, yb)
    assert sorted(np.concatenate([yb for _, yb in got]).tolist()) == list(range(50))  # each image once
    assert not np.array_equal(got[0][1], got2[0][1])
    ref2 = list(online_batches(x, y, 8, spec, seed=5, workers=0))
    assert not np.array_equal(ref2[0][0], list(online_batches(x, y, 8, spec, seed=6, workers=0))[0][0])
    assert mp.active_children() == []


def test_workers_use_distinct_random_streams():
    # identical images, no shuffling: batch 0 and 1 (made by different workers) must differ
    x = np.full((16, 1, 8, 8), 128, np.uint8)
    with AugmentedBatches(x, np.zeros(16), 4, parse_spec("noise=0.2,rotate=30"), seed=1, workers=2,
                          shuffle=False, to_float=False) as src:
        batches = [b for b, _ in src]
    flat = [im.tobytes() for b in batches for im in b]
    assert len(set(flat)) == 16  # every image distorted differently


def test_consumer_exception_stops_workers():
    x, y = _data(64)
    src = online_batches(x, y, 4, "noise=0.1", seed=0, workers=2)
    with pytest.raises(KeyError):
        for i, _ in enumerate(src):
            if i == 3:
                raise KeyError("consumer failed")
    deadline = time.monotonic() + 5
    while mp.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mp.active_children() == [] and src._pool is None
    # the source is still usable afterwards (fresh workers)
    assert len(list(src)) == 16
    src.close()


def test_worker_error_is_reraised_with_its_traceback():
    x, y = _data(40)
    x[17, 0, 0, 0] = 99
    src = AugmentedBatches(x, y, 5, Boom(), seed=0, workers=2, shuffle=False)
    with pytest.raises(WorkerError, match="boom in augmentation") as ei:
        list(src)
    assert "batch 3" in str(ei.value)
    assert mp.active_children() == []


def test_dead_worker_is_detected_not_waited_for():
    x, y = _data(400)
    src = online_batches(x, y, 2, "rotate=5", seed=0, workers=2, prefetch=4)
    it = iter(src)
    next(it)
    victim = src._pool.procs[0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(5)  # dead before we go on, however fast the other worker finishes the epoch
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match="died"):
        for _ in it:
            pass
    assert time.monotonic() - t0 < 10
    assert mp.active_children() == []


SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from nbcnn.loader import online_batches
    x = np.zeros((4000, 1, 8, 8), np.uint8); y = np.zeros(4000)
    src = online_batches(x, y, 2, "rotate=5", seed=0, workers=2)
    it = iter(src)
    try:
        next(it)
        print(" ".join(str(p.pid) for p in src._pool.procs), flush=True)
        for b in it:
            time.sleep(0.01)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
""")


def test_ctrl_c_exits_cleanly_without_orphans(tmp_path):
    # unguarded script (no __main__ guard), run in its own process group, then Ctrl-C to the group
    script = tmp_path / "unguarded.py"
    script.write_text(SCRIPT)
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        pids = [int(v) for v in p.stdout.readline().split()]
        assert len(pids) == 2, p.stderr.read()
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130 and "interrupted" in out, err
    assert "Traceback" not in err  # workers ignore SIGINT: no traceback spam from them
    deadline = time.monotonic() + 5
    while any(_alive(q) for q in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(q) for q in pids)


def test_validation():
    x, y = _data(10)
    with pytest.raises(ValueError, match="10 images"):
        AugmentedBatches(x, y[:5])
    with pytest.raises(ValueError, match="batch_size"):
        AugmentedBatches(x, y, 0)
    with pytest.raises(ValueError, match="workers"):
        AugmentedBatches(x, y, 2, workers=-1)
    src = AugmentedBatches(x, y, 4, drop_last=True, workers=0)
    assert len(src) == 2 and len(AugmentedBatches(x, y, 4, workers=0)) == 3


def test_set_epoch_resumes_the_same_batches():
    x, y = _data(30)
    a = AugmentedBatches(x, y, 7, parse_spec("noise=0.1"), seed=4, workers=0)
    list(a)
    second = list(a)
    b = AugmentedBatches(x, y, 7, parse_spec("noise=0.1"), seed=4, workers=0)
    b.set_epoch(1)
    for (xa, ya), (xb, yb) in zip(second, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
