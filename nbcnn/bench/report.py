"""The tables of a benchmark report, as text or Markdown, and its JSON file."""
from __future__ import annotations

import math


def _f(v, spec=".2f", none="-"):
    return none if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _target_value(t, kind: str):
    """A target as one number (an old report's dict of targets: the strictest)."""
    if isinstance(t, dict):
        vals = list(t.values())
        return (min(vals) if kind == "le" else max(vals)) if vals else None
    return t


def _target_str(t, kind: str = "le") -> str:
    t = _target_value(t, kind)
    return "-" if t is None else f"{'<=' if kind == 'le' else '>='} {t:g}"


def _met(value, t, kind: str = "le") -> str:
    t = _target_value(t, kind)
    if value is None or t is None:
        return ""
    return "met" if (value <= t if kind == "le" else value >= t) else "missed"


def _passes(values) -> str:
    """' (p1 ; p2)' for a merged row, '' otherwise."""
    if not values or len(values) < 2:
        return ""
    return " (" + " ; ".join(_f(v) for v in values) + ")"


def _table(header, rows, markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def format_table(report: dict, markdown: bool = False) -> str:
    """The summary table of one report from :func:`run_ops`, :func:`run_train`, ... as text or Markdown."""
    kind = report.get("kind")
    res = report["results"]
    if kind == "ops":
        has_t = any(r["torch_ms"] is not None for r in res)
        head = ["op", "shape", "pass", "nbcnn ms", "GFLOP/s"]
        if has_t:
            head += ["torch ms", "GFLOP/s", "ratio", "target", "status"]
        rows = []
        for r in res:
            row = [r["op"], r["shape"], r["mode"], _f(r["nbcnn_ms"], ".3g" if r["nbcnn_ms"] < 1 else ".2f"),
                   _f(r["nbcnn_gflops"], ".0f")]
            if has_t:
                row += [_f(r["torch_ms"], ".3g" if (r["torch_ms"] or 0) < 1 else ".2f"), _f(r["torch_gflops"], ".0f"),
                        _f(r["ratio"]) + _passes(r.get("ratio_passes")), _target_str(r["target"]),
                        _met(r["ratio"], r["target"])]
            rows.append(row)
        return _table(head, rows, markdown)
    if kind == "train":
        has_t = any(r["torch_ips"] is not None for r in res)
        head = ["what", "act/pool", "batch", "nbcnn img/s"]
        if has_t:
            head += ["torch img/s", "speed-up", "target", "status"]
        rows = []
        for r in res:
            row = [r["op"], f"{r['activation']}/{r['pooling']}", r["batch"], _f(r["nbcnn_ips"], ".0f")]
            if has_t:
                row += [_f(r["torch_ips"], ".0f"), _f(r["speedup"]) + _passes(r.get("speedup_passes")),
                        _target_str(r["target"], "ge"),
                        _met(r["speedup"], r["target"], "ge")]
            rows.append(row)
        return _table(head, rows, markdown)
    if kind == "startup":
        head = ["what", "cache", "import s", "to first result s", "process wall s", "peak RSS MB"]
        rows = []
        for r in res:
            if not r.get("ok"):
                rows.append([r["what"], r["phase"], "failed", r.get("error", "")[:60], "", ""])
                continue
            first = r.get("first_conv_s", r.get("first_step_s"))
            rows.append([r["what"], r["phase"], _f(r["import_s"]), _f(first), _f(r["wall_s"]),
                         _f(r.get("peak_rss_mb"), ".0f")])
        out = _table(head, rows, markdown)
        groups = [r for r in res if r.get("ok") and r.get("groups_s")]
        if groups:
            names = list(groups[0]["groups_s"])
            grows = [[g] + [_f(r["groups_s"].get(g)) for r in groups] for g in names]
            grows.append(["all of the above + the first conv"] +
                         [_f(r["first_conv_s"] - r["import_s"] + r["groups_total_s"]) for r in groups])
            out += "\n\n" + _table(["kernel group (first - second call, s)"] + [r["phase"] for r in groups],
                                   grows, markdown)
        return out
    if kind == "memory":
        head = ["library", "RSS after import MB", "RSS after build MB", "peak RSS MB", "steps/s"]
        rows = [[r["which"], _f(r.get("rss_after_import_mb"), ".0f"), _f(r.get("rss_after_build_mb"), ".0f"),
                 _f(r.get("peak_rss_mb"), ".0f"),
                 _f(r["steps"] / r["steps_s"] if r.get("steps_s") else None, ".1f")] if r.get("ok")
                else [r["which"], "failed", r.get("error", "")[:60], "", ""] for r in res]
        return _table(head, rows, markdown)
    if kind == "threads":
        head = ["config", "pass", "BLAS policy", "conv2 fwd+bwd float64 ms (median / min)", "LeNet step b64 img/s (median)"]
        rows = []
        for r in res:
            if not r.get("ok"):
                rows.append([r["config"], r["passno"], "failed", r.get("error", "")[:60], ""])
                continue
            c = r["conv2_fwd_bwd"]
            le = r.get("lenet_step_b64")
            rows.append([r["config"], r["passno"], r["blas_policy"], f"{c['median_ms']:.2f} / {c['min_ms']:.2f}",
                         _f(64 / le["median_ms"] * 1e3 if le else None, ".0f")])
        return _table(head, rows, markdown)
    raise ValueError(f"unknown report kind {kind!r}")


def format_report(report: dict, markdown: bool = False) -> str:
    """Table plus a one-line environment summary."""
    e = report.get("env", {})
    bits = [f"python {e.get('python')}", f"numpy {e.get('numpy')}", f"numba {e.get('numba')}"]
    if e.get("torch"):
        bits.append(f"torch {e['torch']} ({e.get('torch_threads')} threads)")
    bits.append(f"numba threads {e.get('numba_num_threads')}")
    if e.get("loadavg"):
        bits.append("load {:.2f} {:.2f} {:.2f}".format(*e["loadavg"]))
    return format_table(report, markdown) + "\n\n" + ", ".join(bits)


def write_json(path: str, data) -> None:
    """Atomic write, so an interrupted benchmark never leaves half a report."""
    from .._atomic import write_json as _atomic_write

    _atomic_write(path, data, indent=1, default=str)
