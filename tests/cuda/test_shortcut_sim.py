"""The option-A shortcut's CUDA kernels (simulated) give the CPU kernels' results exactly."""
from __future__ import annotations

import numpy as np
import pytest

from nbcnn.device import using_device
from nbcnn.kernels.cuda import runtime
from nbcnn.ops import shortcut as sc


@pytest.mark.parametrize("shape,s,k", [((2, 3, 5, 5), 2, 6), ((1, 1, 3, 4), 1, 1), ((1, 2, 7, 5), 3, 5)])
def test_cuda_shortcut_matches_cpu(shape, s, k):
    r = np.random.default_rng(0)
    x = r.normal(0, 1, shape)
    y = sc.shortcut(x, s, k)
    gy = r.normal(0, 1, y.shape)
    gx = sc.shortcut_backward(gy, shape, s)
    before = runtime.launches["_shortcut_fwd"], runtime.launches["_shortcut_bwd"]
    with using_device("cuda"):
        yc = sc.shortcut(x, s, k)
        gxc = sc.shortcut_backward(gy, shape, s)
    assert (runtime.launches["_shortcut_fwd"], runtime.launches["_shortcut_bwd"]) == (before[0] + 1, before[1] + 1)
    np.testing.assert_array_equal(yc, y)
    np.testing.assert_array_equal(gxc, gx)
