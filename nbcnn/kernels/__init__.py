"""Compute kernels: ``cpu`` (Numba ``@njit(parallel=True)``) and ``cuda`` (Numba ``@cuda.jit``).

Both backends expose the same *kernel contract*, already validated and
normalised by :mod:`nbcnn.ops` (C-contiguous arrays of one float dtype,
padding as ``(top, bottom, left, right)``, stride as ``(sh, sw)``)::

    conv2d_forward(x, w, b, stride, pads, ctx, dilation=(1, 1), groups=1) -> y
    conv2d_backward(gy, x, w, stride, pads, need_gx, ctx, dilation=(1, 1), groups=1) -> (gx | None, gw, gb)
    pad2d(x, pads) -> xp ;  pad2d_backward(gy, pads) -> gx
    max_pool2d_forward(x, size, stride, pads, ctx) -> y
    max_pool2d_backward(gy, x, size, stride, pads, ctx) -> gx
    avg_pool2d_forward(x, size, stride, pads) -> y
    avg_pool2d_backward(gy, x_shape, size, stride, pads) -> gx

``ctx`` is an optional dict owned by the caller (a layer): the forward may
store what its backward can reuse (the padded input, argmax indices). Its
contents are private to the backend. Callers pass the backward the very
same ``x`` object the forward got. Every backend reuses ctx only through
:func:`nbcnn.kernels.saved.saved_for` (same key *and* ``ctx["x"] is x``) and
otherwise recomputes, so a stale ctx costs time, never a wrong gradient. Empty batches never reach the kernels
(the ops layer answers them).
Shape arithmetic shared by both backends lives in :mod:`nbcnn.kernels.geometry`.
The ``cuda`` package is imported lazily, only when a CUDA device is used.
"""
