"""The training examples run end to end on tiny settings, their loss falls, and they write their figure."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)\s+train loss (\S+)\s+val loss (\S+)", re.MULTILINE)
PNG = b"\x89PNG\r\n\x1a\n"


def _run(script: str, args: list[str], cwd: Path) -> str:
    command = [sys.executable, str(EXAMPLES / script), *args]
    result = subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _losses(stdout: str, epochs: int) -> tuple[list[float], list[float]]:
    found = EPOCH_LINE.findall(stdout)
    assert [(int(e), int(n)) for e, n, _, _ in found] == [(k, epochs) for k in range(1, epochs + 1)], stdout
    train = [float(t) for _, _, t, _ in found]
    val = [float(v) for _, _, _, v in found]
    assert all(math.isfinite(loss) and loss >= 0 for loss in train + val), stdout
    return train, val


def test_train_minimal_runs_and_learns(tmp_path):
    out = tmp_path / "figure.png"
    stdout = _run(
        "train_minimal.py",
        ["--epochs", "2", "--points", "200", "--N", "16", "--device", "cpu",
         "--out", str(out), "--cache-dir", str(tmp_path / "cache")],
        tmp_path,
    )  # fmt: skip
    train, _ = _losses(stdout, 2)
    assert train[0] > train[-1], stdout
    error = re.search(r"relative error in the scanned area (\S+)", stdout)
    assert error is not None and math.isfinite(float(error.group(1))), stdout
    assert out.read_bytes()[:8] == PNG
    assert any((tmp_path / "cache").iterdir()), "the store was not built in --cache-dir"


def test_train_own_file_on_the_shipped_measured_scan(tmp_path):
    """The default input (the tike Siemens star, counts with a probe): Poisson loss, binned to N 64."""
    out = tmp_path / "own.png"
    stdout = _run(
        "train_own_file.py",
        ["--epochs", "2", "--max-groups", "32", "--width", "8", "--device", "cpu", "--out", str(out)],
        tmp_path,
    )
    assert "loss poisson" in stdout and "N=64" in stdout, stdout
    assert "note: " in stdout and "holds counts" in stdout, stdout  # the reading decisions are shown
    train, _ = _losses(stdout, 2)
    assert train[0] > train[-1], stdout
    assert out.read_bytes()[:8] == PNG


def test_train_own_file_on_any_readable_file_with_reading_flags(tmp_path):
    """Another file and layout, with a reading flag (--bin 1): amplitudes, so the amplitude loss."""
    import ptychodata

    ptychodata.simulate(n_points=80, N=32, seed=3, progress=False).save(tmp_path / "scan.npz")
    out = tmp_path / "own.png"
    stdout = _run(
        "train_own_file.py",
        [str(tmp_path / "scan.npz"), "--bin", "1", "--epochs", "2", "--width", "8", "--device", "cpu",
         "--out", str(out), "--cache-dir", str(tmp_path / "cache")],
        tmp_path,
    )  # fmt: skip
    assert "loss amplitude" in stdout and "N=32" in stdout, stdout
    train, _ = _losses(stdout, 2)
    assert train[0] > train[-1], stdout
    assert out.read_bytes()[:8] == PNG
    assert any((tmp_path / "cache").iterdir()), "the store was not built in --cache-dir"
