"""What ONNX import and export share: the error type, the opset range, the lazy ``onnx`` import.

The ``onnx`` package (protobuf parsing, the checker, ``numpy_helper``) is an
optional extra: nbcnn never parses protobuf itself. Without it the functions
say how to install it instead of failing on an import.
"""
from __future__ import annotations

__all__ = ["OnnxError", "require_onnx", "MIN_OPSET", "MAX_OPSET", "DEFAULT_OPSET"]

MIN_OPSET = 7
MAX_OPSET = 21
DEFAULT_OPSET = 17


class OnnxError(ValueError):
    """An ONNX file nbcnn cannot read or a model it cannot write: the message names the node and op."""


def require_onnx():
    """The ``onnx`` module, or an :class:`OnnxError` telling the user how to get it."""
    try:
        import onnx
    except ImportError:
        raise OnnxError('ONNX support needs the onnx package: pip install "nbcnn[onnx]"') from None
    return onnx
