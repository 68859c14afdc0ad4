"""The OpenBLAS-vs-Numba thread fight: a GEMM-then-Numba workload (LeNet conv2 by
im2col + BLAS, and a LeNet-5 step) with nbcnn imported first, numpy first, torch
first, and with nbcnn's protection switched off (NBCNN_BLAS_THREADS=0).

Example:
    python benchmarks/threads.py

All options: python benchmarks/threads.py --help (the harness is nbcnn.bench).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import nbcnn  # noqa: E402,F401  (first: it sets the BLAS thread policy before numpy loads)
from nbcnn.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["threads", *sys.argv[1:]]))
