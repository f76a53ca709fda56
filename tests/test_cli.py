import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ptychodata import ScanData
from ptychodata.cli import main
from ptychodata.simulate import simulate
from ptychodata.summary import _sample_indices, probe_diameter, summarize_scan


def write_counts_file(path, dtype):
    """A valid scan whose diffraction holds detector-like counts (max > 1000, whole numbers)."""
    rng = np.random.default_rng(0)
    M, N = 12, 8
    counts = rng.poisson(400.0, size=(M, N, N)).astype(dtype)
    counts[:, N // 2, N // 2] = 5000
    rows, cols = np.mgrid[:4, :3]
    np.savez(
        path,
        diffraction=counts,
        xcoords=cols.ravel() * 3.0 + 10,
        ycoords=rows.ravel() * 3.0 + 10,
        probeGuess=np.ones((N, N), np.complex64),
    )
    return path


# ---------------------------------------------------------------------- parser behaviour
def test_help_prints_commands_and_returns_0(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: ptychodata" in out
    for command in ("simulate", "inspect", "demo"):
        assert command in out


def test_subcommand_help_and_version(capsys):
    assert main(["simulate", "--help"]) == 0
    assert "--nphotons" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("ptychodata ")


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "required"),
        (["simulate", "x.npz", "--overlap", "1.5"], "outside [0, 1)"),
        (["simulate", "x.npz", "--points", "0"], "expected an integer >= 1"),
        (["simulate", "x.npz", "--pattern", "spiral"], "invalid choice"),
    ],
)
def test_usage_errors_return_2(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------- simulate
def test_simulate_writes_a_file_that_loads(tmp_path, capsys):
    out = tmp_path / "sim.npz"
    argv = ["simulate", str(out), "--points", "64", "--N", "16", "--seed", "3", "--pattern", "jittered"]
    assert main([*argv, "--nphotons", "1e5", "--overlap", "0.6", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert str(out) in printed.out and "M=64" in printed.out and "N=16" in printed.out
    assert " MB in " in printed.out and len(printed.out.strip().splitlines()) == 1
    assert printed.err == ""  # --quiet: no progress bar
    scan = ScanData.load(out)
    assert (scan.n_points, scan.N) == (64, 16)
    assert scan.metadata["nphotons"] == 1e5 and scan.metadata["seed"] == 3
    assert scan.metadata["pattern"] == "jittered" and scan.metadata["overlap"] == 0.6


# ---------------------------------------------------------------------- inspect
def test_inspect_prints_the_summary(scan_file, small_scan, capsys):
    assert main(["inspect", str(scan_file)]) == 0
    out = capsys.readouterr().out
    distances, _ = cKDTree(small_scan.positions).query(small_scan.positions, k=2)
    step = np.median(distances[:, 1])
    overlap = 1 - step / probe_diameter(small_scan.probe)
    assert "M = 64" in out and "N = 16" in out
    assert f"step         {step:.3f} px" in out
    assert f"overlap      {overlap:.3f}" in out
    assert "(all 64 patterns)" in out
    assert "amplitudes by the counts rule (sqrt of counts)" in out
    for key in ("diffraction", "xcoords", "probeGuess", "objectGuess"):
        assert key in out


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_inspect_hints_raw_counts(tmp_path, capsys, dtype):
    path = write_counts_file(tmp_path / "counts.npz", dtype)
    assert main(["inspect", str(path)]) == 0
    captured = capsys.readouterr()
    assert "intensity    counts: converted to amplitude sqrt(counts)" in captured.out
    rule = "integer dtype uint16" if dtype == np.uint16 else "whole-number float32 values up to 5000"
    assert f"evidence: {rule}" in captured.out
    assert "Traceback" not in captured.err


def test_inspect_json(scan_file, capsys):
    assert main(["inspect", str(scan_file), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_points"] == 64 and summary["N"] == 16
    assert summary["file_size_bytes"] == scan_file.stat().st_size
    assert summary["arrays"]["diffraction"]["shape"] == [64, 16, 16]


def test_inspect_non_zip_file_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "notes.npz"
    path.write_text("this is not a zip archive\n")
    assert main(["inspect", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and str(path) in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err


def test_inspect_describes_a_cxi_tree_and_its_problem(capsys):
    from pathlib import Path

    petra = Path(__file__).parent / "data" / "cdtools_p25_nearfield" / "PETRAIII_P25_Near_Field_Ptycho.cxi"
    assert main(["inspect", str(petra)]) == 1  # readable, described, but not loadable as it is
    out = capsys.readouterr().out
    assert "layout       CXI 1.6" in out
    assert "/entry_1/data_1/data" in out and "chunks (25, 13, 25)  gzip  -> /entry_1/instrument_1/detector_1/data" in out
    assert "evidence: integer dtype int32" in out and "bad pixels   5" in out
    assert "PROBLEM" in out and "near-field" in out and "--near-field" in out
    assert main(["inspect", str(petra), "--near-field", "--pixel-size", "1e-7", "--json"]) == 0
    description = json.loads(capsys.readouterr().out)
    assert description["problem"] is None and description["metadata"]["near_field"] is True
    assert description["evidence"]["counts"]["converted"] is True and description["n_points"] == 200


def test_inspect_unrecognised_hdf5_says_what_to_pass(tmp_path, capsys):
    import h5py

    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["/scan/frames"] = np.ones((4, 8, 8), np.float32)
    assert main(["inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert "layout       not recognised: name the datasets with --key diffraction=PATH" in out
    assert "/scan/frames" in out and "(4, 8, 8)" in out


def test_convert_streams_a_cxi_to_our_npz(tmp_path, capsys):
    import h5py

    rng = np.random.default_rng(0)
    M, N = 16, 32
    counts = rng.poisson(5.0, (M, N, N)).astype(np.uint16)
    counts[:, 14:18, 13:17] += 400
    path = tmp_path / "raw.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/d", data=counts, chunks=(4, N, N), compression="lzf")
        f["/pos"] = np.stack([np.arange(M) % 4 * 2e-7, np.arange(M) // 4 * 2e-7], axis=1)
    out = tmp_path / "out.npz"
    argv = ["convert", str(path), str(out), "--key", "diffraction=/d", "--key", "positions=/pos",
            "--position-unit", "m", "--crop", "16", "--center", "16", "15", "--bin", "2", "--pixel-size", "1e-7"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"wrote {out}: M=16, N=8" in captured.out and "holds counts" in captured.err
    scan = ScanData.load(out)
    window = counts[:, 8:24, 7:23].astype(np.float64).reshape(M, 8, 2, 8, 2).sum(axis=(2, 4))
    np.testing.assert_allclose(scan.diffraction, np.sqrt(window), rtol=1e-5)
    np.testing.assert_allclose(np.unique(scan.xcoords), [4, 6, 8, 10])
    assert scan.metadata["preparation"][0] == "crop 16×16 at row 8, column 7"
    assert main(["convert", str(path), str(out), "--key", "diffraction"]) == 2
    assert "--key 'diffraction': expected NAME=PATH" in capsys.readouterr().err



@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_inspect_names_the_values_load_refuses_and_exits_1(tmp_path, capsys, bad):
    good = simulate(n_points=20, N=16, seed=2, progress=False).save(tmp_path / "good.npz")
    with np.load(good) as arrays:
        members = {key: arrays[key] for key in arrays.files}
    members["diff3d"][4, 3, 3] = bad  # written as a file may be: ScanData itself refuses it
    path = tmp_path / "bad.npz"
    np.savez(path, **members)
    assert main(["inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM" in out and "pattern 4" in out

def test_inspect_missing_file(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "absent.npz")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_inspect_plot_writes_a_png(scan_file, tmp_path, capsys):
    png = tmp_path / "figs" / "scan.png"
    assert main(["inspect", str(scan_file), "--plot", str(png)]) == 0
    assert f"plot: {png}" in capsys.readouterr().out
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_console_entry_point_exits_2_without_traceback(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04 truncated")
    result = subprocess.run(
        [sys.executable, "-m", "ptychodata.cli", "inspect", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and str(path) in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------- summary numbers
def test_summarize_scan_numbers(small_scan):
    summary = summarize_scan(small_scan)
    assert summary["x_range"] == [small_scan.xcoords.min(), small_scan.xcoords.max()]
    assert summary["y_range"] == [small_scan.ycoords.min(), small_scan.ycoords.max()]
    values = np.asarray(small_scan.diffraction)
    assert summary["diffraction"]["max"] == pytest.approx(values.max())
    assert summary["diffraction"]["mean"] == pytest.approx(values.mean(), rel=1e-6)
    assert summary["looks_like_counts"] is False
    json.dumps(summary)  # JSON-ready


def test_summary_reads_a_bounded_evenly_spaced_sample(small_scan):
    summary = summarize_scan(small_scan, max_patterns=10)
    assert summary["diffraction"]["n_sampled"] == 10 and summary["diffraction"]["sampled"] is True
    indices = _sample_indices(10**6, 64 * 64 * 4, 2000)
    assert len(indices) == 2000 and indices[0] == 0 and indices[-1] == 10**6 - 1
    assert np.ptp(np.diff(indices)) <= 1  # evenly spaced
    assert len(_sample_indices(10**6, 1024 * 1024 * 4, 2000)) <= 32  # large patterns: byte bound


@pytest.mark.parametrize("kind, ratio", [("disk", 0.93), ("gaussian", 1.07)])
def test_probe_diameter_and_overlap_follow_the_simulated_probe(kind, ratio):
    scan = simulate(n_points=49, N=64, probe=kind, overlap=0.6, seed=0)
    radius = scan.metadata["probe_radius"]
    assert probe_diameter(scan.probe) == pytest.approx(ratio * 2 * radius, rel=0.03)
    # the estimate of the linear overlap lands near the one asked for
    assert summarize_scan(scan)["overlap"] == pytest.approx(0.6, abs=0.05)


def test_single_point_scan_has_no_step():
    scan = ScanData.from_arrays(
        diffraction=np.ones((1, 8, 8), np.float32),
        xcoords=[5.0],
        ycoords=[5.0],
        probe=np.ones((8, 8), np.complex64),
    )
    summary = summarize_scan(scan)
    assert summary["step"] is None and summary["overlap"] is None


# ---------------------------------------------------------------------- demo
def test_demo_runs_and_saves(tmp_path, capsys, monkeypatch):
    import ptychodata.plot

    drawn = []

    def fake_plot(data, path, **kwargs):  # the figures themselves are tested in test_plot.py
        drawn.append(type(data).__name__)
        path.write_bytes(b"png")
        return path

    monkeypatch.setattr(ptychodata.plot, "plot_scan", fake_plot)
    monkeypatch.setattr(ptychodata.plot, "plot_groups", fake_plot)
    out_dir = tmp_path / "demo"
    argv = ["demo", "--points", "64", "--N", "16", "--gridsize", "2", "--neighbors", "6", "--seed", "1"]
    assert main([*argv, "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "x_scale" in out and "X_full                 (64, 16, 16, 4)" in out
    assert "(expected (N/2)² = 64; ratio 1.000000)" in out
    assert "timings   simulate" in out and "grouped_data" in out and "save+plots" in out
    assert ScanData.load(out_dir / "demo_scan.npz").n_points == 64
    assert drawn == ["ScanData", "dict"]
    assert (out_dir / "demo_scan.png").exists() and (out_dir / "demo_groups.png").exists()


def test_demo_defaults_print_the_pipeline(capsys):
    assert main(["demo", "--points", "100", "--N", "32"]) == 0
    out = capsys.readouterr().out
    assert "gridsize=2 (C=4), neighbor_count=7, seed=0 -> B=100 groups" in out
    assert "ratio 1.000000" in out and "save+plots" not in out


def test_demo_impossible_grouping_is_an_error(capsys):
    assert main(["demo", "--points", "64", "--N", "16", "--gridsize", "3", "--neighbors", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "raise --neighbors" in err and "neighbor_count" not in err
