"""Run every CPU benchmark, save the JSON reports and refresh benchmarks/RESULTS.md.

Sections: ops (conv + pooling vs torch), train (LeNet-5 images/s and predict),
threads (OpenBLAS vs Numba), memory (peak RSS), startup (cold/warm). Before
each section it waits (bounded) for a quiet machine and records what it saw.
A full run takes ~5-8 minutes on 2 cores (most of it the cold compiles of the
start-up section); ``--quick`` about 2.

    python benchmarks/run_all.py                  # everything, 2 passes of ops/train
    python benchmarks/run_all.py --quick --only ops,train --no-update
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HERE = Path(__file__).resolve().parent
ALL = ("ops", "train", "threads", "memory", "startup")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    ap.add_argument("--quick", action="store_true", help="fewer, shorter rounds; one pass")
    ap.add_argument("--passes", type=int, default=None, help="passes of ops/train (default 2, quick 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-wait", type=float, default=90.0, help="seconds to wait for a quiet machine per section")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--no-update", action="store_true", help="do not touch RESULTS.md")
    ap.add_argument("--nice", type=int, default=0,
                    help="scheduling priority for this run (e.g. -5 as root on a shared machine: both "
                         "libraries get the same priority, neighbours disturb the rounds less)")
    a = ap.parse_args(argv)
    if a.nice:
        # Linux nice values are per thread and inherited at creation: set it before
        # numpy/OpenBLAS, Numba or torch start their thread pools, and before any child.
        os.setpriority(os.PRIO_PROCESS, 0, a.nice)
    import nbcnn  # noqa: F401  (first: BLAS thread policy before numpy loads)
    from nbcnn import bench
    sections = [s.strip() for s in a.only.split(",") if s.strip()]
    bad = [s for s in sections if s not in ALL]
    if bad:
        ap.error(f"unknown sections {bad}; choose from {list(ALL)}")
    passes = a.passes or (1 if a.quick else 2)

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    for sec in sections:
        say(f"== {sec} ==")
        quiet = bench.wait_for_quiet(a.max_wait, progress=say)
        if sec in ("ops", "train"):
            reps = []
            for i in range(passes):
                if passes > 1:
                    say(f"-- pass {i + 1} of {passes}")
                if i:
                    bench.wait_for_quiet(a.max_wait / 3, progress=say)
                if sec == "ops":
                    reps.append(bench.run_ops(threads=a.threads, quick=a.quick, progress=say))
                else:
                    reps.append(bench.run_train(threads=a.threads, quick=a.quick, progress=say))
            rep = bench.merge_passes(reps) if len(reps) > 1 else reps[0]
        elif sec == "threads":
            rep = bench.run_threads(seconds=1.0 if a.quick else 2.0, passes=passes, threads=a.threads, progress=say)
        elif sec == "memory":
            rep = bench.run_memory(steps=10 if a.quick else 30, threads=a.threads, progress=say)
        else:
            rep = bench.run_startup(threads=a.threads, progress=say)
        rep["quiet_check"] = quiet
        rep["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
        bench.write_json(str(a.out / f"{sec}.json"), rep)
        print(f"\n{sec}:\n{bench.format_report(rep)}\n", flush=True)
    say(f"all done in {time.perf_counter() - t0:.0f} s")
    if not a.no_update:
        import report

        results = HERE / "results"
        try:  # a sub-folder of results/ (e.g. coretype-unset) feeds the NAME@SUB blocks
            a.out.resolve().relative_to(results.resolve())
        except ValueError:
            print(f"RESULTS.md not updated: {a.out} is outside {results}")
            return 0
        print(f"RESULTS.md blocks updated: {', '.join(report.update(HERE / 'RESULTS.md', results)) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
