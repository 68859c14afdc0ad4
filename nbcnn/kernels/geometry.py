"""Shape arithmetic shared by the ops layer and both kernel backends (pure Python)."""
from __future__ import annotations

import math
import numbers

PADDING_STRINGS = ("valid", "same", "full")


def _is_int(v) -> bool:
    t = type(v)
    if t is int:   # the common case first: the ABC check below costs ~1 us (ops call this ~70x a LeNet step)
        return True
    return t is not bool and isinstance(v, numbers.Integral)


def as_pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints -> (a, b)."""
    if _is_int(value):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def as_stride(stride) -> tuple[int, int]:
    sh, sw = as_pair(stride, "stride")
    if sh <= 0 or sw <= 0:
        raise ValueError(f"stride must be positive, got {stride!r}")
    return sh, sw


def same_padding_1d(n: int, f: int, s: int) -> tuple[int, int]:
    """TensorFlow/PyTorch 'same': output ceil(n/s), extra padding at the end."""
    out = -(-n // s)
    total = max((out - 1) * s + f - n, 0)
    return total // 2, total - total // 2


def resolve_padding(padding, kernel: tuple[int, int], stride: tuple[int, int] = (1, 1),
                    size: tuple[int, int] | None = None,
                    dilation: tuple[int, int] = (1, 1)) -> tuple[int, int, int, int]:
    """Any accepted padding form -> (top, bottom, left, right).

    Forms: int p; (ph, pw); (top, bottom, left, right); 'valid'; 'same'
    (needs the input ``size`` when a stride is > 1); 'full' (f - 1 per side).
    'same' and 'full' use the effective kernel extent (f - 1) * d + 1 when dilated.
    """
    kh, kw = effective_kernel(kernel[0], dilation[0]), effective_kernel(kernel[1], dilation[1])
    if isinstance(padding, str):
        p = padding.lower()
        if p == "valid":
            return 0, 0, 0, 0
        if p == "full":
            return kh - 1, kh - 1, kw - 1, kw - 1
        if p == "same":
            sh, sw = stride
            if size is None:
                if sh != 1 or sw != 1:
                    raise ValueError("padding='same' with stride > 1 depends on the input size; pass it")
                size = (kh, kw)  # unused for stride 1: total = f - 1
            return (*same_padding_1d(size[0], kh, sh), *same_padding_1d(size[1], kw, sw))
        raise ValueError(f"unknown padding {padding!r}: use an int, a pair, or one of {PADDING_STRINGS}")
    if _is_int(padding):
        pads = (int(padding),) * 4
    elif isinstance(padding, (tuple, list)) and len(padding) == 2 and all(_is_int(v) for v in padding):
        pads = (int(padding[0]), int(padding[0]), int(padding[1]), int(padding[1]))
    elif isinstance(padding, (tuple, list)) and len(padding) == 4 and all(_is_int(v) for v in padding):
        pads = tuple(int(v) for v in padding)
    else:
        raise TypeError(f"padding must be an int, a pair, a 4-tuple or one of {PADDING_STRINGS}, got {padding!r}")
    if min(pads) < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    return pads  # type: ignore[return-value]


def as_dilation(dilation) -> tuple[int, int]:
    dh, dw = as_pair(dilation, "dilation")
    if dh < 1 or dw < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation!r}")
    return dh, dw


def effective_kernel(f: int, d: int = 1) -> int:
    """Extent of a kernel of f taps spaced d apart: (f - 1) * d + 1."""
    return (f - 1) * d + 1


def output_size(n: int, f: int, pad_before: int, pad_after: int, s: int, d: int = 1) -> int:
    """floor((n + pads - ((f - 1) * d + 1)) / s) + 1; <= 0 means the window does not fit."""
    return (n + pad_before + pad_after - (f - 1) * d - 1) // s + 1


def conv2d_output_hw(H: int, W: int, kernel: tuple[int, int], stride: tuple[int, int],
                     pads: tuple[int, int, int, int], dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """(Ho, Wo) of a convolution with resolved (top, bottom, left, right) padding."""
    pt, pb, pl, pr = pads
    return (output_size(H, kernel[0], pt, pb, stride[0], dilation[0]),
            output_size(W, kernel[1], pl, pr, stride[1], dilation[1]))


def phase_plane_size(n: int, pad_before: int, pad_after: int, s: int) -> int:
    """Length of each of the s stride phases of a padded axis: ceil((n + pads) / s)."""
    return -(-(n + pad_before + pad_after) // s)


def conv_output_size(n: int, f: int, padding=0, stride: int = 1, dilation: int = 1) -> int:
    """Output length of a convolution or pooling: floor((n + 2p - ((f - 1) * d + 1)) / s) + 1.

    ``padding`` may be an int, a ``(before, after)`` pair, or 'valid'/'same'/'full'
    ('full' pads the effective kernel extent minus one per side).
    """
    if not (_is_int(n) and _is_int(f) and _is_int(stride) and _is_int(dilation)):
        raise TypeError(f"n, f, stride and dilation must be ints, got n={n!r}, f={f!r}, stride={stride!r}, "
                        f"dilation={dilation!r}")
    if n <= 0 or f <= 0:
        raise ValueError(f"n and f must be positive, got n={n}, f={f}")
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    fe = effective_kernel(f, dilation)
    if isinstance(padding, str):
        p = padding.lower()
        if p == "same":
            return math.ceil(n / stride)
        if p == "valid":
            before = after = 0
        elif p == "full":
            before = after = fe - 1
        else:
            raise ValueError(f"unknown padding {padding!r}: use an int or one of {PADDING_STRINGS}")
    elif _is_int(padding):
        before = after = int(padding)
    elif isinstance(padding, (tuple, list)) and len(padding) == 2 and all(_is_int(v) for v in padding):
        before, after = int(padding[0]), int(padding[1])
    else:
        raise TypeError(f"padding must be an int, a (before, after) pair or a string, got {padding!r}")
    if before < 0 or after < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    out = output_size(n, f, before, after, stride, dilation)
    if out <= 0:
        raise ValueError(f"kernel size {f} (extent {fe} with dilation {dilation}) is larger than the "
                         f"padded input size {n + before + after}")
    return out


def check_pool_padding(size: tuple[int, int], padding: tuple[int, int]) -> None:
    """Pooling padding must lie in ``[0, size // 2]`` per axis (PyTorch's rule; more would make
    windows of padding only)."""
    (kh, kw), (ph, pw) = size, padding
    if ph < 0 or pw < 0 or ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"pooling padding must be between 0 and size // 2 = ({kh // 2}, {kw // 2}), "
                         f"got {tuple(padding)!r}")


def pool_output_size(n: int, k: int, p: int, s: int, ceil_mode: bool = False) -> int:
    """Pooling output length over ``n`` cells padded by ``p`` on both sides (PyTorch's rule).

    Floor mode: ``(n + 2p - k) // s + 1``. ``ceil_mode`` rounds up instead, but drops a
    last window that would start in the right/bottom padding (``(out - 1) * s >= n + p``).
    """
    if ceil_mode:
        out = (n + 2 * p - k + s - 1) // s + 1
        if (out - 1) * s >= n + p:
            out -= 1
        return out
    return (n + 2 * p - k) // s + 1


def pool_window_divisor(start: int, k: int, n: int, p: int, count_include_pad: bool) -> int:
    """Cells an average-pooling window starting at ``start`` (padded coordinates minus ``p``)
    divides by along one axis: the window clipped to the padded input (``[-p, n + p)``) when the
    padding counts, else clipped to the real input ``[0, n)``. Overhang past the padding never counts.
    (Pure-Python statement of the rule; the kernels inline the same arithmetic.)"""
    if count_include_pad:
        return min(start + k, n + p) - start
    return min(start + k, n) - max(start, 0)
