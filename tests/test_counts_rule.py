"""One counts rule: ``inspect`` (describe_file, summarize_scan) and ``ScanData.load`` decide
counts or amplitudes the same way on every fixture, and inspect never calls counts what load
keeps as amplitudes."""

import warnings
from pathlib import Path

import numpy as np
import pytest

from ptychodata.io import COUNTS_TOTAL_FACTOR, CountsEvidence
from ptychodata.scan import ScanData
from ptychodata.summary import describe_file, summarize_scan

DATA = Path(__file__).parent / "data"
M, N = 24, 16


def _positions():
    rows, cols = np.mgrid[:4, :6]
    return cols.ravel() * 3.0 + 10, rows.ravel() * 3.0 + 10


def _centred(values):
    """Patterns (M, N, N) with a bright centre, so the shift rule keeps them as stored."""
    values = np.asarray(values)
    values[:, N // 2 - 1 : N // 2 + 1, N // 2 - 1 : N // 2 + 1] += values.max() * 4
    return values


def _file(tmp_path, name, patterns):
    x, y = _positions()
    path = tmp_path / f"{name}.npz"
    np.savez(path, diffraction=patterns, xcoords=x, ycoords=y, probeGuess=np.ones((N, N), np.complex64))
    return path


def _generated(tmp_path):
    rng = np.random.default_rng(5)
    pixels = N * N
    files = {
        "uint16 counts": _centred(rng.poisson(30.0, (M, N, N)).astype(np.uint16)),
        "int32 counts": _centred(rng.poisson(30.0, (M, N, N)).astype(np.int32)),
        "float amplitudes": _centred(rng.random((M, N, N)).astype(np.float32) * 3),
        "binary float": _centred(rng.integers(0, 2, (M, N, N)).astype(np.float32)),
    }
    # whole-number floats just above and just below the total the rule asks for; the maximum is
    # above 1000 in both (a threshold another rule once used)
    for label, factor in (("whole floats above the rule", 1.15), ("whole floats below the rule", 0.85)):
        patterns = np.zeros((M, N, N), np.float32)
        patterns[:, N // 2, N // 2] = round(COUNTS_TOTAL_FACTOR * pixels * factor) - 10
        patterns[:, 0, 0] = 10
        files[label] = patterns
    return {label: (_file(tmp_path, label.replace(" ", "_"), p), {}) for label, p in files.items()}


def _fixtures(tmp_path):
    fixtures = _generated(tmp_path)
    fixtures["tike Siemens star (measured)"] = (DATA / "tike_siemens_star" / "siemens-star-small.npz.bz2", {})
    fixtures["P25 near field (measured)"] = (
        DATA / "cdtools_p25_nearfield" / "PETRAIII_P25_Near_Field_Ptycho.cxi",
        {"near_field": True, "pixel_size": 1e-7},
    )
    return fixtures


def _load_converted(scan: ScanData, path: Path) -> bool:
    """Whether load converted counts: recorded in metadata, or (for a file taken as it is) the
    patterns differ from the file's."""
    record = scan.metadata.get("counts")
    if record is not None:
        return bool(record["converted"])
    stored = np.load(path)["diffraction"]
    return not np.array_equal(np.asarray(scan.diffraction), stored)


def test_inspect_and_load_decide_counts_alike_on_every_fixture(tmp_path):
    decided = {}
    for label, (path, options) in _fixtures(tmp_path).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            description = describe_file(path, **options)
            scan = ScanData.load(path, **options)
        assert description["problem"] is None, (label, description["problem"])
        by_inspect = description["evidence"]["counts"]["converted"]
        by_load = _load_converted(scan, path)
        assert by_inspect == by_load, label
        # what inspect says of the loaded patterns never contradicts load: they are amplitudes now
        assert description["looks_like_counts"] is False, (label, description["hint"])
        assert summarize_scan(scan)["looks_like_counts"] is False, label
        decided[label] = by_load
    assert decided == {
        "uint16 counts": True,
        "int32 counts": True,
        "float amplitudes": False,
        "binary float": False,
        "whole floats above the rule": True,
        "whole floats below the rule": False,
        "tike Siemens star (measured)": True,
        "P25 near field (measured)": True,
    }


@pytest.mark.parametrize(
    ("label", "counts"), [("whole floats above the rule", True), ("whole floats below the rule", False)]
)
def test_summary_of_unconverted_patterns_reads_the_rule_load_applies(tmp_path, label, counts):
    """Patterns held as they are in memory (intensity=False): inspect's verdict is the counts rule's."""
    path, _ = _generated(tmp_path)[label]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept = ScanData.load(path, intensity=False)
    summary = summarize_scan(kept)
    assert summary["looks_like_counts"] is counts
    stored = np.load(path)["diffraction"]
    evidence = CountsEvidence(
        dtype="float32",
        whole_numbers=True,
        maximum=float(stored.max()),
        mean_total=float(stored.sum(axis=(1, 2)).mean()),
        n_pixels=N * N,
    )
    assert evidence.looks_like_counts is counts
    assert ("intensity=True" in summary["hint"]) is True


def test_nan_and_negative_values_are_named_by_inspect_as_load_refuses_them(tmp_path):
    patterns = np.ones((M, N, N), np.float32)
    patterns[3, 2, 2] = np.nan
    patterns[7, 1, 1] = -2.0
    kept = ScanData.from_arrays(
        diffraction=patterns, xcoords=_positions()[0], ycoords=_positions()[1], check_values=False
    )
    summary = summarize_scan(kept)
    assert summary["diffraction"]["invalid"] == 2 and summary["diffraction"]["first_invalid"] == 3
    assert "ScanData.load refuses them" in summary["hint"]
    assert summary["diffraction"]["min"] == -2.0 and summary["diffraction"]["max"] == 1.0
