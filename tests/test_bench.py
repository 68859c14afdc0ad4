"""Smoke tests of the benchmark harness (nbcnn.bench): tiny shapes, one round, no PyTorch."""
from __future__ import annotations

import json
import time

import pytest

from nbcnn import bench

TINY = bench.TINY_CONV


def test_conv_shapes_are_the_classic_layers():
    s = bench.CONV_SHAPES
    assert (s["lenet_conv1"].N, s["lenet_conv1"].C, s["lenet_conv1"].k, s["lenet_conv1"].p) == (64, 1, 5, 2)
    assert s["lenet_conv1"].out_hw == (28, 28)
    assert s["lenet_conv2"].out_hw == (10, 10)
    assert s["alexnet_conv1"].out_hw == (55, 55)  # (227 - 11) / 4 + 1
    assert s["strided"].out_hw == (16, 16)
    # 2 * N * K * C * k * k * Ho * Wo, worked by hand for LeNet conv1: 2*64*6*1*25*28*28
    assert s["lenet_conv1"].flops_fwd == 15_052_800


def test_select_shapes_groups_names_and_errors():
    assert [s.name for s in bench.select_shapes("lenet")] == ["lenet_conv1", "lenet_conv2"]
    assert len(bench.select_shapes("all")) == 6
    assert [s.name for s in bench.select_shapes(["alexnet", "alexnet_conv1", TINY])] == ["alexnet_conv1", "tiny"]
    with pytest.raises(ValueError, match="unknown shape group or shape 'resnet'"):
        bench.select_shapes("resnet")


def test_interleave_ranks_a_slower_callable():
    res = bench.interleave({"slow": lambda: time.sleep(0.004), "fast": lambda: time.sleep(0.001)},
                           rounds=3, round_s=0.01, max_reps=3, min_reps=1)
    assert res["stats"]["slow"]["rounds"] == 3
    assert len(res["stats"]["fast"]["round_min_s"]) == 3
    assert res["stats"]["slow"]["min_s"] >= 0.004
    assert res["ratios"]["slow/fast"] > 1.2


def test_run_ops_tiny_without_torch():
    others = [n for n in bench.OPS if n not in ("conv", "max_pool", "avg_pool")]   # norm, act, ... rows
    rep = bench.run_ops("all", [TINY], compare=None, rounds=1, round_s=0.0, pool_shape=(2, 2, 4, 4),
                        op_shapes={n: (2, 3, 4, 4) for n in others})
    assert rep["kind"] == "ops"
    cases = [(r["op"], r["shape"], r["mode"]) for r in rep["results"]]
    assert cases == [("conv", "tiny", "fwd"), ("conv", "tiny", "fwd+bwd"),
                     ("max_pool", "pool", "fwd"), ("max_pool", "pool", "fwd+bwd"),
                     ("avg_pool", "pool", "fwd"), ("avg_pool", "pool", "fwd+bwd"),
                     *[(n, n, m) for n in others for m in ("fwd", "fwd+bwd")]]
    conv = rep["results"][1]
    assert conv["flops"] == 3 * TINY.flops_fwd and conv["nbcnn_ms"] > 0 and conv["torch_ms"] is None
    json.dumps(rep)  # the report is JSON-able as it is
    text = bench.format_table(rep)
    assert "tiny" in text and "torch" not in text
    md = bench.format_table(rep, markdown=True)
    assert md.splitlines()[1].startswith("|---")


def test_targets_and_status_marks():
    from nbcnn.bench import report, runners

    conv = bench.OPS["conv"]
    assert runners._target(conv, "fwd+bwd", "lenet_conv2") == 0.5
    assert runners._target(conv, "fwd+bwd", "vgg") == 1.0
    assert runners._target(conv, "fwd", "vgg") is None
    assert runners._target(bench.OPS["max_pool"], "fwd", "pool") == 0.3
    assert (report._met(0.29, 0.3), report._met(0.31, 0.3)) == ("met", "missed")
    assert report._met(1.6, 1.5, "ge") == "met" and report._target_str(1.5, "ge") == ">= 1.5"
    assert report._met(0.4, {"a": 0.5, "b": 0.3}) == "missed"   # an old report's several targets: the strictest


def test_every_op_of_the_table_runs_and_matches_torch():
    pytest.importorskip("torch")
    shapes = {n: (2, 3, 6, 6) for n, s in bench.OPS.items() if not s.conv_shapes}
    rep = bench.run_ops("all", [TINY], compare="torch", rounds=1, round_s=0.0, op_shapes=shapes)
    assert {r["op"] for r in rep["results"]} == set(bench.OPS)
    for r in rep["results"]:
        assert r["torch_ms"] > 0 and r["max_rel_err"], r
        assert max(r["max_rel_err"].values()) < 1e-4, r
    assert bench.op_choices()[-1] == "all" and "pool" in bench.op_choices()


def test_rel_err_flags_shape_and_nan_mismatches():
    import numpy as np

    want = np.array([1.0, -4.0, 2.0])
    assert bench.rel_err(want + np.array([0.0, 0.4, 0.0]), want) == pytest.approx(0.1)
    assert bench.rel_err(np.array([1.0, np.nan, 2.0]), want) == float("inf")   # an unwritten output
    assert bench.rel_err(want[:2], want) == float("inf")


def test_bad_arguments_are_clear(monkeypatch):
    with pytest.raises(ValueError, match="op must be conv, pool, norm, global_pool, conv_modern, act or all"):
        bench.run_ops("gemm", compare=None)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        bench.run_ops("pool", device="tpu", compare=None)
    from nbcnn.bench import peers

    monkeypatch.setattr(peers, "torch_available", lambda: False)
    with pytest.raises(bench.BenchError, match="needs PyTorch"):
        bench.run_ops("pool", compare="torch")
    assert peers.resolve_compare("auto") is None


def test_child_scripts_compile_and_run_child_plumbing(tmp_path):
    from nbcnn.bench import processes

    for name in ("_STARTUP_OPS", "_STARTUP_TRAIN", "_MEMORY", "_THREADS"):
        compile(getattr(processes, name), name, "exec")
    env = processes._child_env(2, OPENBLAS_THREAD_TIMEOUT=None)
    out = processes._run_child("import json, os, sys; print(json.dumps({'n': os.environ['NUMBA_NUM_THREADS'], "
                           "'a': sys.argv[1:]}))", env, timeout=60, args=("x", 3))
    assert out["ok"] and out["n"] == "2" and out["a"] == ["x", "3"]
    bad = processes._run_child("raise SystemExit('boom')", env, timeout=60)
    assert not bad["ok"] and "boom" in bad["error"]


def test_write_json_is_atomic_and_readable(tmp_path):
    p = tmp_path / "sub" / "r.json"
    bench.write_json(str(p), {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    assert [f.name for f in p.parent.iterdir()] == ["r.json"]


def _row(nb, th):
    r = {"op": "conv", "shape": "s", "mode": "fwd", "flops": 2_000_000, "round_min_ms": {"nbcnn": nb, "torch": th},
         "ratio": bench.median([a / b for a, b in zip(nb, th)]), "max_rel_err": {"y": 1e-7}}
    return r


def test_merge_passes_pools_rounds_and_keeps_per_pass_ratios():
    p1 = {"kind": "ops", "env": {}, "results": [_row([1.0, 2.0, 1.0], [1.0, 1.0, 2.0])]}   # ratios 1, 2, 0.5
    p2 = {"kind": "ops", "env": {}, "results": [_row([3.0, 3.0, 3.0], [1.0, 1.0, 1.0])]}   # ratios 3, 3, 3
    m = bench.merge_passes([p1, p2])["results"][0]
    assert m["ratio"] == 2.5                      # median of 0.5, 1, 2, 3, 3, 3
    assert m["ratio_passes"] == [1.0, 3.0]
    assert m["nbcnn_ms"] == 2.5 and m["torch_ms"] == 1.0 and m["nbcnn_best_ms"] == 1.0
    assert m["nbcnn_gflops"] == pytest.approx(2_000_000 / 2.5e-3 / 1e9)
    assert "2.50 (1.00 ; 3.00)" in bench.format_table({"kind": "ops", "results": [dict(m, target={})]})
    with pytest.raises(ValueError, match="one kind"):
        bench.merge_passes([p1, {"kind": "train", "results": []}])


def test_format_table_for_subprocess_reports():
    startup = {"kind": "startup", "results": [
        {"ok": True, "what": "conv", "phase": "cold", "import_s": 0.1, "first_conv_s": 3.0, "wall_s": 9.0,
         "groups_s": {"pool": 2.0}, "groups_total_s": 4.0},
        {"ok": False, "what": "train", "phase": "cold", "error": "exit 1: boom"}]}
    text = bench.format_table(startup)
    assert "boom" in text and "6.90" in text     # 3.0 - 0.1 + 4.0: every kernel group, import excluded
    mem = {"kind": "memory", "results": [{"ok": True, "which": "nbcnn", "rss_after_import_mb": 90.0,
                                          "rss_after_build_mb": 95.0, "peak_rss_mb": 120.0, "steps": 30,
                                          "steps_s": 1.5}]}
    assert "20.0" in bench.format_table(mem)      # 30 steps in 1.5 s
    thr = {"kind": "threads", "results": [{"ok": True, "config": "unprotected", "passno": 1, "blas_policy": "x",
                                           "conv2_fwd_bwd": {"median_ms": 20.0, "min_ms": 10.0},
                                           "lenet_step_b64": {"median_ms": 32.0}}]}
    assert "2000" in bench.format_table(thr)      # 64 images / 32 ms


def test_report_replaces_only_its_blocks(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "report.py"
    spec = importlib.util.spec_from_file_location("bench_report", path)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    md = tmp_path / "RESULTS.md"
    md.write_text("intro\n<!-- nbcnn.bench:memory:begin -->\nold\n<!-- nbcnn.bench:memory:end -->\n"
                  "## Accuracy\nkept as it is\n")
    res = tmp_path / "results"
    res.mkdir()
    (res / "memory.json").write_text(json.dumps({"kind": "memory", "env": {"date": "today"}, "results": [
        {"ok": True, "which": "nbcnn", "rss_after_import_mb": 90.0, "rss_after_build_mb": 95.0,
         "peak_rss_mb": 120.0, "steps": 30, "steps_s": 1.5}]}))
    assert report.update(md, res) == ["memory"]
    text = md.read_text()
    assert "old" not in text and "| nbcnn | 90 | 95 | 120 | 20.0 |" in text
    assert text.startswith("intro\n") and text.endswith("## Accuracy\nkept as it is\n")
