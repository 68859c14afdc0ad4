"""Peak RSS of LeNet-5 training at batch 256, nbcnn vs PyTorch, each in its own process.

Example:
    python benchmarks/memory.py

All options: python benchmarks/memory.py --help (the harness is nbcnn.bench).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import nbcnn  # noqa: E402,F401  (first: it sets the BLAS thread policy before numpy loads)
from nbcnn.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["memory", *sys.argv[1:]]))
