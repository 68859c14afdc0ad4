"""The GPU check's closing table (Markdown, for benchmarks/results/gpu.md)."""
from __future__ import annotations

from nbcnn.bench import format_table


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def summary(ck):
    print(f"\n== summary ({ck.elapsed():.0f} s)")
    lines = ["| check | result |", "|---|---|"]
    dev = (ck.results.get("cuda_info") or {}).get("gpus") or [{}]
    lines.append(f"| device | {'CUDA simulator' if ck.sim else dev[0].get('name', '?')}, driver "
                 f"{(ck.results.get('cuda_info') or {}).get('driver')}, PTX ISA {ck.results.get('ptx_isa', '-')} |")
    env = ck.results.get("env", {})
    lines.append("| versions | " + ", ".join(f"{k} {v}" for k, v in env.items()) + " |")
    if "first_call_s_float32" in ck.results:
        lines.append(f"| first call, all kernels | f32 {ck.results['first_call_s_float32']} s, "
                     f"f64 {ck.results.get('first_call_s_float64')} s |")
    if ck.results.get("launch_us"):
        us = ", ".join(f"{k} {v} us" for k, v in ck.results["launch_us"].items())
        lines.append(f"| launch overhead (host) | {us} |")
    corr = ck.results.get("correctness") or []
    if corr:
        bad = [c for c in corr if not c["ok"]]
        worst32 = max((c["worst_rel_err"] for c in corr if c["dtype"] == "float32"), default=None)
        worst64 = max((c["worst_rel_err"] for c in corr if c["dtype"] == "float64"), default=None)
        lines.append(f"| correctness vs CPU ({sum(c['cases'] for c in corr)} op results) | "
                     f"{'all ok' if not bad else 'FAIL: ' + ', '.join(c['op'] + ' ' + c['dtype'] for c in bad)}; "
                     f"worst rel err f32 {_fmt(worst32, '.1e')}, f64 {_fmt(worst64, '.1e')}; "
                     f"deterministic {all(ck.results.get('deterministic', [False]))} |")
    nc = ck.results.get("nccl") or {}
    if "fit_rel_diff" in nc:
        lines.append(f"| data-parallel NCCL path (K = 1) | backend {nc['backend']}, NCCL {nc['nccl_version']}, "
                     f"in-place allreduce {nc['allreduce_equal']}, fit vs plain fit rel diff "
                     f"{nc['fit_rel_diff']:.1e} |")
    if ck.results.get("pytest_gpu"):
        lines.append(f"| pytest tests/cuda on the GPU | {ck.results['pytest_gpu']['tail']} |")
    for name, sec in ck.results["sections"].items():
        if not sec["ok"]:
            lines.append(f"| section {name} | FAILED: {sec['error'][:150]} |")
    print("\n".join(lines))
    for key, title in (("speed", "ops"), ("lenet", "LeNet-5")):
        rep = ck.results.get(key)
        if rep:
            print(f"\n{title} on the GPU (nbcnn bench, alternating rounds, device sync after every call):\n")
            print(format_table(rep, markdown=True))
    if ck.results.get("lenet_losses"):
        print(f"\nLeNet-5 losses over {len(ck.results['lenet_losses'])} steps finite: "
              f"{ck.results['lenet_losses_finite']}")
    print(f"\ntotal {ck.elapsed():.0f} s")
