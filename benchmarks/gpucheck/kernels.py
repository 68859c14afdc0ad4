"""GPU-check sections about the kernels as programs: versions, compile time, launch overhead."""
from __future__ import annotations

import platform
import time

import numpy as np

import nbcnn
import nbcnn.ops as ops

from .context import StopCheck


def versions(ck):
    from importlib import metadata

    from nbcnn.kernels.cuda.info import cuda_info, format_cuda_info

    info = cuda_info()
    for line in format_cuda_info(info):
        print(line)
    env = {"python": platform.python_version(), "numpy": np.__version__}
    for dist in ("numba", "numba-cuda", "cupy-cuda13x", "cupy-cuda12x", "torch", "nvidia-nvvm",
                 "nvidia-cuda-nvrtc", "nvidia-nvjitlink"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    ck.results["env"] = env
    ck.results["cuda_info"] = info
    print("versions:", ", ".join(f"{k} {v}" for k, v in env.items()))
    if not ck.sim and not info["usable"]:
        raise StopCheck("GPU not usable: " + info["reason"])
    from numba import cuda, types

    from nbcnn.kernels.cuda import pad as kpad

    if not ck.sim:
        ptx, _ = cuda.compile_ptx(kpad._crop_planes.py_func, kpad._crop_planes.signature(types.float32),
                                  cc=cuda.get_current_device().compute_capability)
        ver = next((ln.split()[1] for ln in ptx.splitlines() if ln.startswith(".version")), "?")
        ck.results["ptx_isa"] = ver
        print(f"PTX ISA emitted by this NVVM: {ver} (driver {info.get('driver')}: CUDA 13.0 loads <= 9.0 "
              f"unless numba-cuda links through nvJitLink)")
        for key in ("CUDA_ENABLE_PYNVJITLINK", "CUDA_ARRAY_INTERFACE_SYNC"):
            val = getattr(__import__("numba").config, key, None)
            if val is not None:
                print(f"numba.config.{key} = {val}")
    # first call of every kernel for both dtypes (compile + load); the tour launches all kernels
    from nbcnn.kernels.cuda import runtime

    for dt in (np.float32, np.float64):
        t = time.perf_counter()
        _tour(ck, dt)
        ck.sync()
        secs = time.perf_counter() - t
        ck.results[f"first_call_s_{np.dtype(dt).name}"] = round(secs, 2)
        print(f"first call of all {len(runtime.KERNELS)} kernels, {np.dtype(dt).name}: {secs:.1f} s")
    t = time.perf_counter()
    _tour(ck, np.float32)
    ck.sync()
    print(f"same tour, warm: {1e3 * (time.perf_counter() - t):.1f} ms")


def _tour(ck, dt):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(dt)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dt)
    b = rng.standard_normal(4).astype(dt)
    gy = rng.standard_normal((2, 4, 8, 8)).astype(dt)
    gp = rng.standard_normal((2, 3, 4, 4)).astype(dt)

    def run(x, w, b, gy, gp):
        ctx = {}
        ops.conv2d(x, w, b, 1, 1, ctx=ctx)
        ops.conv2d_backward(gy, x, w, 1, 1, ctx=ctx)
        ops.pad2d_backward(ops.pad2d(x, 1), 1)
        ops.max_pool2d_backward(gp, x, 2)
        ops.avg_pool2d_backward(gp, x, 2)
        return ops.avg_pool2d(x, 2)

    ck.gpu(run, x, w, b, gy, gp)


def launch_overhead(ck):
    from nbcnn.kernels.cuda import pad as kpad

    k = kpad._crop_planes
    g = ck.to_dev(np.ones((4, 6, 6), np.float32))
    out = ck.to_dev(np.empty((4, 4, 4), np.float32))
    n = 20 if ck.sim else 500
    res = {}

    from nbcnn.kernels.cuda import runtime

    fast_default = runtime.fast_args()

    def ours():
        k.grid3(16, 4, 1, g, 1, 1, out)

    def ours_cai():
        runtime.fast_args(False)
        try:
            k.grid3(16, 4, 1, g, 1, 1, out)
        finally:
            runtime.fast_args(fast_default)

    def plain():  # kernel[grid, block](cupy arrays): Numba syncs the stream the arrays name
        k.jit[1, 256](g, 1, 1, out)

    def whole_op():  # what a layer pays: validation, allocation and the launch
        with nbcnn.using_device("cuda"):
            ops.pad2d_backward(g[None], 1)

    variants = [("nbcnn launcher", ours), ("ops.pad2d_backward", whole_op)]
    if not ck.sim:
        from numba import cuda

        dg, dout = cuda.as_cuda_array(g, sync=False), cuda.as_cuda_array(out, sync=False)

        def prepared():  # Numba device arrays made once: the floor of a Numba launch
            k.jit[1, 256](dg, 1, 1, dout)

        def per_launch():  # device arrays made at each launch from a stream-less interface
            from nbcnn.kernels.cuda.runtime import _Ref

            k.jit[1, 256](cuda.from_cuda_array_interface(_Ref(g).__cuda_array_interface__, owner=g, sync=False),
                          1, 1,
                          cuda.from_cuda_array_interface(_Ref(out).__cuda_array_interface__, owner=out, sync=False))

        variants += [("nbcnn, array interface", ours_cai), ("plain numba launch", plain),
                     ("numba device arrays", prepared), ("device arrays per launch", per_launch)]
        print(f"nbcnn launcher passes CuPy arrays as {'device-array stand-ins' if fast_default else 'interfaces'}")
    import warnings

    with warnings.catch_warnings():  # Numba's low-occupancy warnings for these 1-block launches
        warnings.simplefilter("ignore")
        for name, fn in variants:
            try:
                fn()
                ck.sync()
                t = time.perf_counter()
                for _ in range(n):
                    fn()
                host = (time.perf_counter() - t) / n
                ck.sync()
            except Exception as exc:
                print(f"{name:22s} failed: {type(exc).__name__}: {exc}"[:300])
                continue
            res[name] = round(host * 1e6, 1)
            print(f"{name:22s} {host * 1e6:8.1f} us/launch (host time)")
    ck.results["launch_us"] = res
