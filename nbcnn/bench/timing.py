"""The timing loop every benchmark case goes through: alternating rounds in one process.

A shared machine's timings jump 2-40x when a neighbour wakes up. Each round
calls each variant ``reps`` times and keeps the minimum; the reported time is
the median over rounds of those minima, and a ratio a/b is the median over
rounds of the per-round ratios, which survives most load spikes (a spike
rarely hits both halves of one round).
"""
from __future__ import annotations

import gc
import math
import statistics
import time


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def interleave(variants: dict, rounds: int = 7, round_s: float = 0.2, max_reps: int = 50,
               min_reps: int = 3, sync: dict | None = None) -> dict:
    """Time callables in alternating rounds; return per-variant stats and pairwise ratios.

    ``variants`` maps a name to a zero-argument callable; ``sync`` optionally maps
    a name to a callable run after each call (device synchronisation). Each
    variant is called twice untimed first (compilation, caches), then timed
    (best of 3) to pick how many calls fill ``round_s`` per round (at least
    ``min_reps``, at most ``max_reps``; a round stops early past ``4 * round_s``,
    so a load spike cannot stretch the run).

    Returns ``{"stats": {name: {...}}, "ratios": {"a/b": median of per-round ratios}}``;
    times in seconds.
    """
    sync = sync or {}
    names = list(variants)
    first = {}
    for n in names:
        fn, sy = variants[n], sync.get(n)
        t0 = time.perf_counter()
        fn()
        if sy:
            sy()
        first[n] = time.perf_counter() - t0
        fn()
        if sy:
            sy()
    reps = {}
    for n in names:  # best of 3 calls, so one unlucky call does not shrink the sample
        fn, sy = variants[n], sync.get(n)
        dts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            if sy:
                sy()
            dts.append(time.perf_counter() - t0)
        dt = max(min(dts), 1e-7)
        reps[n] = int(min(max_reps, max(min_reps, math.ceil(round_s / dt))))
    round_min = {n: [] for n in names}
    round_mean = {n: [] for n in names}
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            for n in order:
                fn, sy = variants[n], sync.get(n)
                ts = []
                for _ in range(reps[n]):
                    t0 = time.perf_counter()
                    fn()
                    if sy:
                        sy()
                    ts.append(time.perf_counter() - t0)
                    if sum(ts) > 4 * round_s:  # a loaded machine: keep the run bounded
                        break
                round_min[n].append(min(ts))
                round_mean[n].append(sum(ts) / len(ts))
    finally:
        if gc_was:
            gc.enable()
    stats = {n: {"first_call_s": first[n], "reps": reps[n], "rounds": rounds,
                 "min_s": min(round_min[n]), "median_s": median(round_min[n]),
                 "median_mean_s": median(round_mean[n]), "round_min_s": round_min[n]}
             for n in names}
    ratios = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ratios[f"{a}/{b}"] = median([x / y for x, y in zip(round_min[a], round_min[b])])
    return {"stats": stats, "ratios": ratios}


def settings(quick: bool, rounds, round_s):
    return (rounds or (3 if quick else 7)), (round_s or (0.05 if quick else 0.2))
