"""Cold (empty NUMBA_CACHE_DIR) and warm start-up, each in a fresh process:
import nbcnn -> first conv result (with per-kernel-group compile times), and
import nbcnn -> first LeNet-5 training step.

Example:
    python benchmarks/startup.py --json startup.json

All options: python benchmarks/startup.py --help (the harness is nbcnn.bench).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import nbcnn  # noqa: E402,F401  (first: it sets the BLAS thread policy before numpy loads)
from nbcnn.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["startup", *sys.argv[1:]]))
