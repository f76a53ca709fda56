"""The store commands of the CLI: prepare, inspect STORE, cache list|verify|remove."""

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptychodata import open_store, simulate
from ptychodata.cli import main


@pytest.fixture
def sources(tmp_path):
    a = simulate(n_points=60, N=16, seed=1).save(tmp_path / "a.npz")
    b = simulate(n_points=40, N=16, seed=2, pattern="fermat").save(tmp_path / "b.npz")
    return a, b


def prepare_cli(capsys, *args):
    assert main(["prepare", *map(str, args), "--quiet"]) == 0
    return capsys.readouterr().out.strip()


def test_prepare_prints_the_store_path_and_reuses_it(tmp_path, sources, capsys):
    cache = tmp_path / "cache"
    path = prepare_cli(capsys, *sources, "--gridsize", 2, "--neighbors", 6, "--cache-dir", cache)
    store = open_store(path)
    assert len(store) == 100 and store.C == 4 and store.n_experiments == 2
    again = prepare_cli(capsys, *sources, "--gridsize", 2, "--neighbors", 6, "--cache-dir", cache)
    assert again == path and open_store(again).grouping.build_id == store.grouping.build_id
    other = prepare_cli(capsys, *sources, "--n-groups", 30, "--seed", 4, "--materialize", "--cache-dir", cache)
    assert len(open_store(other)) == 30 and open_store(other).grouping.materialized


def test_prepare_progress_goes_to_stderr(tmp_path, sources, capsys):
    assert main(["prepare", str(sources[0]), "--cache-dir", str(tmp_path / "c")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().endswith(open_store(captured.out.strip()).path.name)
    assert "groups of C=1" in captured.err


def test_prepare_errors_exit_2(tmp_path, sources, capsys):
    assert main(["prepare", str(tmp_path / "nothere.npz"), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "nothere.npz" in capsys.readouterr().err
    assert main(["prepare", str(sources[0]), "--gridsize", "3", "--neighbors", "4", "--cache-dir",
                 str(tmp_path / "c")]) == 2
    assert "--neighbors" in capsys.readouterr().err


def test_inspect_store_and_plot(tmp_path, sources, capsys):
    path = prepare_cli(capsys, *sources, "--gridsize", 2, "--neighbors", 6, "--cache-dir", tmp_path / "cache")
    png = tmp_path / "store.png"
    assert main(["inspect", path, "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "100 of C=4" in out and "experiment 1" in out and "x_scale" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cache_list_verify_remove(tmp_path, sources, capsys):
    cache = tmp_path / "cache"
    path = prepare_cli(capsys, sources[0], "--cache-dir", cache)
    key = open_store(path).frames.key
    assert main(["cache", "list", "--cache-dir", str(cache)]) == 0
    listing = capsys.readouterr().out
    assert key in listing and "a.npz" in listing and "60 groups of C=1" in listing
    assert main(["cache", "verify", "--cache-dir", str(cache)]) == 0
    assert f"{key}  ok" in capsys.readouterr().out
    data = dict(np.load(sources[0]))
    data["diff3d"] = data["diff3d"] * 2
    np.savez(sources[0], **data)
    assert main(["cache", "verify", "--cache-dir", str(cache)]) == 1
    assert "changed" in capsys.readouterr().out
    assert main(["cache", "remove", "--cache-dir", str(cache)]) == 2  # needs keys or --all
    capsys.readouterr()
    assert main(["cache", "remove", key, "--cache-dir", str(cache)]) == 0
    assert not list(cache.glob("frames-*/"))
    assert main(["cache", "remove", "nosuchkey", "--cache-dir", str(cache)]) == 2


def test_cache_prune_cleans_dead_builds_and_remove_all_empties(tmp_path, sources, capsys):
    cache = tmp_path / "cache"
    path = Path(prepare_cli(capsys, sources[0], "--cache-dir", cache))
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = dead.stdout.strip()
    (path.parent.parent / "builds" / f".tmp-deadbeef-{host}-{pid}-01").mkdir()  # a frames build whose process died
    (path / "builds" / f".tmp-cafe-{host}-{pid}-02").mkdir()  # and a grouping build
    (path / "builds" / ".tmp-f00d-otherhost-77-03").mkdir()  # another host's, maybe still running: kept
    assert main(["cache", "prune", "--cache-dir", str(cache)]) == 0
    assert "removed 2 " in capsys.readouterr().out
    assert [p.name for p in cache.rglob(".tmp-*")] == [".tmp-f00d-otherhost-77-03"]
    assert main(["inspect", str(path)]) == 0  # the live build is untouched
    assert main(["cache", "remove", "--all", "--cache-dir", str(cache)]) == 0
    assert not list(cache.glob("frames-*"))


def test_an_error_during_a_progress_bar_starts_its_own_line(tmp_path, capsys):
    scan = simulate(n_points=64, N=16, seed=3)
    diffraction = np.array(scan.diffraction)
    diffraction[40, 3, 3] = np.nan
    bad = scan.with_(diffraction=diffraction).save(tmp_path / "bad.npz")
    assert main(["prepare", str(bad), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "copying patterns" in err  # a bar was drawn before the error
    (line,) = [line for line in err.split("\n") if "error:" in line]
    assert line.startswith("error: ") and "pattern 40" in line and "bad.npz" in line
    assert "--intensity" in line and "intensity=True" not in line  # the flag, not the Python argument


def test_warnings_print_as_one_line(monkeypatch, capsys):
    import warnings

    from ptychodata.cli import _demo

    def warn(args):
        warnings.warn("first part\n   second part", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(_demo, "run", warn)
    assert main(["demo"]) == 0
    assert capsys.readouterr().err == "warning: first part second part\n"


@pytest.mark.parametrize(("text", "seconds"), [("14d", 14 * 86400), ("36h", 36 * 3600), ("90m", 5400), ("30s", 30),
                                               ("14", 14 * 86400), ("0.5d", 43200)])
def test_prune_ages_read_with_units(text, seconds):
    from ptychodata.cli._arguments import age

    assert age(text) == seconds


def test_prune_unreferenced_older_than_an_age_keeps_recent_builds(tmp_path, capsys):
    from ptychodata import GroupingConfig, prepare, simulate

    source = simulate(30, 16, seed=1, progress=False).save(tmp_path / "scan.npz")
    prepare(source, GroupingConfig(gridsize=1, seed=0), cache_dir=tmp_path / "cache", progress=False).close()
    simulate(30, 16, seed=2, progress=False).save(source)  # a new build; the first one is unused now
    prepare(source, GroupingConfig(gridsize=1, seed=0), cache_dir=tmp_path / "cache", progress=False).close()
    builds = sorted(p.name for p in (tmp_path / "cache").rglob("builds/*") if p.is_dir())
    argv = ["cache", "prune", "--unreferenced", "--older-than", "14d", "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0 and "removed 0 unused" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cache").rglob("builds/*") if p.is_dir()) == builds
    assert main([*argv[:3], "--older-than", "2w", *argv[5:]]) == 2
    assert "expected an age such as 14d" in capsys.readouterr().err
