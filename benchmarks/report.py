"""Render benchmarks/results/*.json into the generated blocks of benchmarks/RESULTS.md.

Only the text between ``<!-- nbcnn.bench:NAME:begin -->`` and
``<!-- nbcnn.bench:NAME:end -->`` is replaced; everything else in RESULTS.md
(the prose and the hand-written tables, e.g. Accuracy) is left
as it is. A block whose JSON is missing keeps its old text.

    python benchmarks/report.py            # update RESULTS.md in place
    python benchmarks/report.py --print    # print the blocks instead
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nbcnn.bench import format_table  # noqa: E402

HERE = Path(__file__).resolve().parent
SECTIONS = ("environment", "ops", "train", "threads", "memory", "startup")


def _load(folder: Path, name: str):
    p = folder / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _when(rep: dict) -> str:
    e = rep.get("env", {})
    bits = [f"measured {e.get('date', '?')}"]
    la = e.get("loadavg")
    if la:
        bits.append("load average at start {:.2f} / {:.2f} / {:.2f}".format(*la))
    lb = e.get("loadavg_after")
    if lb:
        bits.append("at end {:.2f} / {:.2f} / {:.2f}".format(*lb))
    q = rep.get("quiet_check")
    if q and q.get("busy") is not None:
        state = "quiet" if q.get("quiet") else "still busy"
        bits.append(f"CPU busy before start {q['busy'][-1]:.0%} ({state} after {q['waited_s']:.0f} s)")
    if rep.get("nice"):
        bits.append(f"run at nice {rep['nice']}")
    s = rep.get("settings") or {}
    if s.get("rounds"):
        p = len(rep.get("passes", [])) or 1
        bits.append(f"{p} pass(es) x {s['rounds']} alternating rounds, ~{s['round_s']:g} s per variant per round, "
                    f"{s.get('threads')} threads each")
    if e.get("wall_s"):
        bits.append(f"{e['wall_s']:.0f} s per pass")
    return "*" + "; ".join(bits) + ".*"


def render_environment(rep: dict) -> str:
    e = rep["env"]
    rows = [("machine", f"{e.get('cpu')}, {e.get('cpus')} logical CPUs, {e.get('platform')}"),
            ("python", e.get("python")), ("nbcnn", e.get("nbcnn")), ("numpy", e.get("numpy")),
            ("numba / llvmlite", f"{e.get('numba')} / {e.get('llvmlite')}"),
            ("numba threading layer / threads", f"{e.get('numba_threading_layer')} / {e.get('numba_num_threads')}"),
            ("nbcnn BLAS policy", e.get("blas_policy"))]
    if e.get("malloc_policy"):
        rows.append(("nbcnn malloc policy", e["malloc_policy"]))
    if e.get("env_vars") is not None:
        rows.append(("environment variables", ", ".join(f"`{k}={v}`" for k, v in sorted(e["env_vars"].items()))
                     or "none of OPENBLAS_*, OMP_*, MKL_*, NUMBA_*, NBCNN_*"))
    for p in e.get("threadpools") or []:
        if p.get("user_api") == "blas":
            rows.append((f"BLAS ({p.get('internal_api')})",
                         f"{os.path.basename(p.get('filepath') or '')} {p.get('version')}, "
                         f"architecture {p.get('architecture')}, {p.get('num_threads')} threads"))
        elif p.get("user_api") == "openmp":
            rows.append(("OpenMP runtime", f"{os.path.basename(p.get('filepath') or '')}, "
                                           f"{p.get('num_threads')} threads"))
    if e.get("torch"):
        rows.append(("torch", f"{e['torch']}, {e.get('torch_threads')} threads"))
        info = [ln.strip() for ln in e.get("torch_parallel_info") or [] if ln.strip()]
        keep = [ln for ln in info if ln.startswith(("ATen parallel backend", "at::get_num_threads",
                                                     "OpenMP", "MKL", "std::thread"))]
        if keep:
            rows.append(("torch parallel info", "; ".join(keep)))
    out = ["| what | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out)


def render(name: str, rep: dict) -> str:
    if name == "environment":
        return render_environment(rep)
    return format_table(rep, markdown=True) + "\n\n" + _when(rep)


def _replace_block(text: str, name: str, body: str) -> tuple[str, bool]:
    pat = re.compile(rf"(<!-- nbcnn\.bench:{name}:begin -->\n).*?(\n<!-- nbcnn\.bench:{name}:end -->)", re.S)
    if not pat.search(text):
        return text, False
    return pat.sub(lambda m: m.group(1) + body + m.group(2), text), True


def update(results_md: Path, folder: Path) -> list[str]:
    """Refresh every marked block: ``NAME`` from ``folder/NAME.json``, and ``NAME@SUB``
    (e.g. ``ops@coretype-unset``, a re-run in another environment) from ``folder/SUB/NAME.json``."""
    text = results_md.read_text()
    done = []
    for name, sub in sorted(set(re.findall(r"<!-- nbcnn\.bench:(\w+)@([\w.-]+):begin -->", text))):
        rep = _load(folder / sub, "ops" if name == "environment" else name)
        if rep is not None:
            text, ok = _replace_block(text, re.escape(f"{name}@{sub}"), render(name, rep))
            if ok:
                done.append(f"{name}@{sub}")
    for name in SECTIONS:
        src = "ops" if name == "environment" else name
        rep = _load(folder, src)
        if rep is None:
            continue
        text, ok = _replace_block(text, name, render(name, rep))
        if ok:
            done.append(name)
    fd, tmp = tempfile.mkstemp(dir=results_md.parent, prefix=".RESULTS-", suffix=".md")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, results_md)
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=HERE / "results", help="folder of the JSON reports")
    ap.add_argument("--md", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--print", action="store_true", help="print the rendered blocks, change nothing")
    a = ap.parse_args(argv)
    if a.print:
        for name in SECTIONS:
            rep = _load(a.results, "ops" if name == "environment" else name)
            if rep is not None:
                print(f"### {name}\n\n{render(name, rep)}\n")
        return 0
    done = update(a.md, a.results)
    print(f"updated blocks: {', '.join(done) or 'none'} in {a.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
