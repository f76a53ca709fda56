"""The training example runs end to end on tiny settings, its loss falls, and it writes its figure."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_minimal.py"
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)\s+train loss (\S+)\s+val loss (\S+)", re.MULTILINE)


def test_train_minimal_runs_and_learns(tmp_path):
    out = tmp_path / "figure.png"
    command = [
        sys.executable, str(EXAMPLE),
        "--epochs", "2", "--points", "200", "--N", "16", "--device", "cpu",
        "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    result = subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    epochs = EPOCH_LINE.findall(result.stdout)
    assert [(int(e), int(n)) for e, n, _, _ in epochs] == [(1, 2), (2, 2)], result.stdout
    train = [float(t) for _, _, t, _ in epochs]
    val = [float(v) for _, _, _, v in epochs]
    assert all(math.isfinite(loss) and loss > 0 for loss in train + val), result.stdout
    assert train[0] > train[-1], result.stdout

    error = re.search(r"relative error in the scanned area (\S+)", result.stdout)
    assert error is not None and math.isfinite(float(error.group(1))), result.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((tmp_path / "cache").iterdir()), "the store was not built in --cache-dir"
