"""The GPU path of data-parallel training: NCCL through ``cupy.cuda.nccl`` on a K = 1 communicator.

One GPU cannot show scaling, but it runs every piece of the multi-GPU path: the backend choice,
a NCCL communicator from a broadcast unique id, bucketed ``allReduce`` on slices of the model's
flat device gradient buffer on a side stream ordered after backward, and ``fit(distributed=)``
with it. With one rank the mean of the gradients is the gradient itself, so the weights must
equal a plain ``fit``'s.
"""
from __future__ import annotations

import numpy as np

import nbcnn
from nbcnn import bench, distributed


def nccl_check(ck):
    """Section: NCCL allreduce of a device buffer, then LeNet-5 fit(distributed=) vs plain fit."""
    if ck.sim:
        print("skipped under the simulator (NCCL needs a GPU)")
        ck.results["nccl"] = {"skipped": "simulator"}
        return
    from cupy.cuda import nccl

    comm = distributed.single_process()
    backend = distributed.select_backend(comm, on_gpu=True)
    res = {"backend": backend, "nccl_version": getattr(nccl, "get_version", lambda: None)()}
    ck.results["nccl"] = res
    if backend != "nccl":
        raise RuntimeError("cupy.cuda.nccl is not usable: the multi-GPU path would reduce through the host")
    be = distributed._NcclBackend(comm, nccl)
    xp = ck.xp
    g = xp.asarray(np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32))
    want = g.copy()
    ptr = g.data.ptr
    pending = [be.start(g[: 1 << 19]), be.start(g[1 << 19:])]
    be.wait(pending)
    ck.sync()
    res["allreduce_equal"] = bool(xp.array_equal(g, want)) and g.data.ptr == ptr
    rng = np.random.default_rng(2)
    x, y = bench.lenet_data(256, rng)
    weights = []
    for dist in (None, comm):
        nbcnn.seed(4)
        with nbcnn.using_device("cuda"):
            model = nbcnn.zoo.lenet5(device="cuda")
            model.compile(optimizer=nbcnn.optim.SGD(0.05, momentum=0.9))
            model.fit(x, y, epochs=1, batch_size=32, distributed=dist, verbose=0)
            weights.append(nbcnn.to_numpy(model._flat).copy())
    res["steps_reduced"] = comm.stats["steps"]
    diff = float(np.abs(weights[0] - weights[1]).max() / np.abs(weights[0]).max())
    res["fit_rel_diff"] = diff
    print(f"backend {backend}, NCCL {res['nccl_version']}, allreduce in place {res['allreduce_equal']}, "
          f"fit(distributed=K1) vs fit: rel diff {diff:.1e} over {res['steps_reduced']} reduced steps")
    if not res["allreduce_equal"] or diff > 1e-6 or res["steps_reduced"] != 8:
        raise RuntimeError(f"NCCL path wrong: {res}")
