"""The bias gradient of a convolution: per-filter sums of the output gradient.

Shared by the float64 paths (conv.py) and the Winograd weight gradient (the
implicit GEMM path fuses it into its gy re-layout instead).
"""
from __future__ import annotations

from numba import njit, prange


@njit(cache=True, fastmath=True)
def bias_grad(gy, gb):
    """gb[k] = sum of gy[:, k, :] (float64 accumulation, fixed order).

    Serial on purpose: a memory-bound pass too small to gain from threads,
    and a serial kernel compiles ~5x faster than a parallel one.
    """
    N, K, P = gy.shape
    for k in prange(K):
        s = 0.0
        for n in range(N):
            src = gy[n, k]
            for p in range(P):
                s += src[p]
        gb[k] = s
