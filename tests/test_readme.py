"""README.md stays true: every Python block runs as written, and its test command is the one CI runs.

Each ```python block runs in a fresh process, in an empty folder, offline and
without ``NBCNN_DATA``, so ``datasets.load_mnist()`` returns the MNIST sample
bundled with nbcnn (5,000 training / 1,000 test images): the blocks are written
to run on it in seconds. A block that printed nothing, or whose ``# prints``
comment lines disagree with what it printed, fails too.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TIME_CAP_S = 300  # per block; the blocks take seconds with a warm kernel cache


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of every ```python block."""
    text = README.read_text()
    out = []
    for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        out.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return out


def expected_output(code: str) -> list[str]:
    """Lines after a ``# prints`` comment: ``# | text`` lines, the output the block must print."""
    return [ln.split("# |", 1)[1].strip() for ln in code.splitlines() if ln.lstrip().startswith("# |")]


BLOCKS = python_blocks()


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_block_runs_as_written(line, code, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NBCNN_DATA"}
    env.update(NBCNN_OFFLINE="1", NBCNN_CACHE_DIR=str(tmp_path / "cache"), PYTHONHASHSEED="0")
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=TIME_CAP_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the block at README.md:{line} ran longer than {TIME_CAP_S} s")
    assert proc.returncode == 0, f"README.md:{line} failed:\n{proc.stderr[-3000:]}"
    printed = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    assert printed, f"the block at README.md:{line} prints nothing"
    want = expected_output(code)
    if want:
        assert printed[:len(want)] == want, f"README.md:{line} printed:\n" + "\n".join(printed)


def test_readme_test_command_is_what_ci_runs():
    text = README.read_text()
    m = re.search(r'pip install -e "\.\[test\]"\n(.+)\n```', text)
    assert m, "README.md lost its test set-up block"
    ci = (ROOT / ".ci" / "run").read_text().rstrip().splitlines()[-1]
    assert ci == m.group(1)


def test_no_test_imports_the_tests_package():
    """A bare `pytest` from the repository root has no `tests` package on sys.path."""
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "tests").rglob("*.py"))
           for i, ln in enumerate(p.read_text().splitlines(), 1)
           if re.match(r"\s*(from|import) tests\b", ln)]
    assert not bad, f"use `from _data import ...` style imports: {bad}"
