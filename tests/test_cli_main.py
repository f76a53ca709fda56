"""The entry point: library errors, memory errors and warnings as one line each, naming flags."""

import warnings

import pytest

from ptychodata.cli import _demo, main
from ptychodata.errors import ScanDataError


@pytest.mark.parametrize(
    "error, line",
    [
        (MemoryError(), "out of memory"),
        (MemoryError("Unable to allocate\n 8.00 GiB"), "out of memory: Unable to allocate 8.00 GiB"),
        (ScanDataError("crop=300 exceeds the frame 256×256"), "--crop 300 exceeds the frame 256×256"),
        (PermissionError(13, "Permission denied", "/x.npz"), "/x.npz: Permission denied [Errno 13]"),
        (OSError(28, "No space left on device"), "No space left on device [Errno 28]"),
    ],
)
def test_errors_print_one_line_and_exit_2(monkeypatch, capsys, error, line):
    def fail(args):
        raise error

    monkeypatch.setattr(_demo, "run", fail)
    assert main(["demo"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {line}\n" and captured.out == ""


def test_warnings_name_flags(monkeypatch, capsys):
    def warn(args):
        warnings.warn("counts; pass intensity=False if they are amplitudes", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(_demo, "run", warn)
    assert main(["demo"]) == 0
    assert capsys.readouterr().err == "warning: counts; pass --amplitude if they are amplitudes\n"
