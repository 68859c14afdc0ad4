"""Element-wise activation codes shared by the CPU and CUDA kernels, and their definitions.

========== ==== =====================================================================
name       code y = f(x)
========== ==== =====================================================================
linear     0    x
relu       1    max(x, 0)
tanh       2    tanh(x)
sigmoid    3    1 / (1 + exp(-x))
leaky_relu 4    x if x > 0 else alpha * x
elu        5    x if x > 0 else alpha * (exp(x) - 1)
gelu       6    x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))                 (exact)
gelu_tanh  7    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))         (approximation)
silu       8    x * sigmoid(x)                                          (= swish)
relu6      9    min(max(x, 0), 6)
hard_sigmoid 10 relu6(x + 3) / 6                                        (PyTorch, Keras 3)
hard_swish 11   x * relu6(x + 3) / 6
========== ==== =====================================================================

Derivatives at the kinks follow PyTorch (relu, relu6 and hard_sigmoid: 0 at the ends; hard_swish:
0 up to -3, ``x/3 + 1/2`` on ``(-3, 3)``, 1 from 3 on; leaky_relu and elu: the left slope at 0).
"""
from __future__ import annotations

import math

CODES = {"linear": 0, "relu": 1, "tanh": 2, "sigmoid": 3, "leaky_relu": 4, "elu": 5, "gelu": 6,
         "gelu_tanh": 7, "silu": 8, "swish": 8, "relu6": 9, "hard_sigmoid": 10, "hard_swish": 11}
# the backward can work from the output alone (kept instead of the input by in-place layers)
FROM_OUTPUT = {"linear", "relu", "tanh", "sigmoid"}
# the default of the parameter ``alpha`` (leaky_relu: PyTorch's negative slope; elu: its alpha)
DEFAULT_ALPHA = {"leaky_relu": 0.01, "elu": 1.0}


def constants(alpha: float) -> list:
    """The kernels' constant table (cast to the data's dtype by the caller)."""
    return [alpha, 0.5, 1.0, 3.0, 6.0, 1.0 / 6.0, math.sqrt(2.0 / math.pi), 0.044715, 1.0 / math.sqrt(2.0),
            1.0 / math.sqrt(2.0 * math.pi), 0.0, 1.0 / 3.0]
