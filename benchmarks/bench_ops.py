"""Conv2d and 2x2 pooling, forward and forward+backward, nbcnn vs PyTorch (issue-2 shapes).

Examples:
    python benchmarks/bench_ops.py                      # all ops, all shapes, torch when importable
    python benchmarks/bench_ops.py --op conv --shapes vgg --quick
    python benchmarks/bench_ops.py --device cuda --json gpu_ops.json

All options: python benchmarks/bench_ops.py --help (the harness is nbcnn.bench).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import nbcnn  # noqa: E402,F401  (first: it sets the BLAS thread policy before numpy loads)
from nbcnn.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["ops", *sys.argv[1:]]))
