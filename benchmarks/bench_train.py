"""LeNet-5 training throughput (train_on_batch, batch 64 and 256) and predict, nbcnn vs PyTorch.

Examples:
    python benchmarks/bench_train.py
    python benchmarks/bench_train.py --quick --compare none

All options: python benchmarks/bench_train.py --help (the harness is nbcnn.bench).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import nbcnn  # noqa: E402,F401  (first: it sets the BLAS thread policy before numpy loads)
from nbcnn.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
