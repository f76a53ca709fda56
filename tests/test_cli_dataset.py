"""``ptychodata dataset create|add|remove|weights|info|export|import``."""

import json
import re

import pytest

from ptychodata import simulate
from ptychodata.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-scans")
    paths = []
    for seed in (1, 2, 3):
        paths.append(simulate(30, 16, seed=seed, progress=False).save(root / f"s{seed}.npz"))
    return paths


def test_create_add_info_remove(tmp_path, files, capsys):
    cache = ["--cache-dir", str(tmp_path)]
    assert main(["dataset", "create", "lab", "--gridsize", "2", "--neighbors", "5", "--seed", "3", *cache]) == 0
    assert capsys.readouterr().out.startswith("dataset lab in ")
    listing = tmp_path / "scans.txt"
    listing.write_text(f"# two scans\n{files[0]}\n{files[1]}\n")
    assert main(["dataset", "add", "lab", "--list", str(listing), "--tag", "kind=sim", "--quiet", *cache]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["dataset", "add", "lab", str(files[2]), "--quiet", *cache]) == 0
    second = capsys.readouterr().out.strip()
    assert main(["dataset", "info", "lab", "--json", *cache]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["build_id"] == second != first and info["n_scans"] == 3 and info["C"] == 4
    assert sorted(scan["tags"].get("kind", "") for scan in info["scans"]) == ["", "sim", "sim"]
    assert main(["dataset", "info", "lab", "--diff", first, *cache]) == 0
    assert [scan["name"] for scan in json.loads(capsys.readouterr().out)["added"]] == ["s3.npz"]
    assert main(["dataset", "remove", "lab", "s3.npz", *cache]) == 0
    assert capsys.readouterr().out.strip() == first


def test_bad_input_is_one_error_line_and_exit_2(tmp_path, files, capsys):
    cache = ["--cache-dir", str(tmp_path)]
    assert main(["dataset", "add", "nowhere", str(files[0]), *cache]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no dataset 'nowhere'") and err.count("\n") == 1
    assert main(["dataset", "create", "lab", *cache]) == 0
    assert main(["dataset", "add", "lab", str(tmp_path / "missing.npz"), *cache]) == 2
    assert "missing.npz: no such file" in capsys.readouterr().err
    assert main(["dataset", "add", "lab", str(files[0]), "--tag", "oops", *cache]) == 2
    assert "--tag 'oops': expected KEY=VALUE" in capsys.readouterr().err


def test_array_tasks_then_built_only_compose_what_was_built(tmp_path, files, capsys, monkeypatch):
    cache = ["--cache-dir", str(tmp_path)]
    assert main(["dataset", "create", "array", "--gridsize", "2", "--neighbors", "5", "--seed", "3", *cache]) == 0
    listing = tmp_path / "scans.txt"
    listing.write_text("\n".join(str(f) for f in files) + "\n")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert main(["prepare-scan", "--dataset", "array", "--list", str(listing), "--quiet", *cache]) == 0
    assert capsys.readouterr().out.strip().endswith(str(files[1]))
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert main(["prepare-scan", "--dataset", "array", "--list", str(listing), "--index", "0", "--quiet", *cache]) == 0
    capsys.readouterr()
    assert main(["dataset", "add", "array", "--list", str(listing), "--built-only", "--keep-going", *cache]) == 1
    captured = capsys.readouterr()
    assert "s3.npz: not built for this dataset yet" in captured.err
    serial = ["--cache-dir", str(tmp_path / "serial")]
    assert main(["dataset", "create", "array", "--gridsize", "2", "--neighbors", "5", "--seed", "3", *serial]) == 0
    assert main(["dataset", "add", "array", str(files[0]), str(files[1]), "--quiet", *serial]) == 0
    assert captured.out.strip() == capsys.readouterr().out.strip().splitlines()[-1]  # one fingerprint
    assert main(["prepare-scan", "--dataset", "array", "--list", str(listing), "--index", "3", *cache]) == 2
    assert "index=3; the list names 3 scan(s)" in capsys.readouterr().err


CLAIMER = """
import sys
from ptychodata.cli import main
sys.exit(main(["prepare-scan", "--dataset", "claims", "--list", sys.argv[1], "--claim", "--quiet",
               "--cache-dir", sys.argv[2]]))
"""


def test_workers_sharing_a_list_build_each_scan_once(tmp_path, capsys):
    import subprocess
    import sys

    from ptychodata import Dataset, GroupingConfig

    paths = [simulate(20, 16, seed=s, progress=False).save(tmp_path / f"c{s}.npz") for s in range(16)]
    listing = tmp_path / "scans.txt"
    listing.write_text("\n".join(map(str, paths)) + "\n")
    Dataset.create("claims", GroupingConfig(gridsize=1, neighbor_count=4, seed=1), cache_dir=tmp_path / "cache")
    workers = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, str(listing), str(tmp_path / "cache")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [worker.communicate(timeout=180) for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * 4, [err for _, err in outputs]
    built = [line.split(" ", 1)[1] for out, _ in outputs for line in out.splitlines()]
    assert sorted(built) == sorted(map(str, paths))  # each scan exactly once


def test_weights_info_export_and_import(tmp_path, files, capsys):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["dataset", "create", "mix", "--gridsize", "2", "--neighbors", "5", "--seed", "3", *cache]) == 0
    assert main(["dataset", "add", "mix", str(files[0]), str(files[1]), "--tag", "kind=sim", "--quiet", *cache]) == 0
    assert main(["dataset", "add", "mix", str(files[2]), "--tag", "kind=real", "--quiet", *cache]) == 0
    plain = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["dataset", "weights", "mix", "--tag", "kind=real", "0.5", "--scan", "s1.npz", "2",
                 "--batching", "stratified", *cache]) == 0
    weighted = capsys.readouterr().out.strip()
    assert weighted != plain
    assert main(["dataset", "weights", "mix", *cache]) == 0
    shown = capsys.readouterr().out
    assert "repeat: scan s1.npz=2, kind=real=0.5 (resample epoch, stratified batches)" in shown
    assert main(["dataset", "info", "mix", "--json", *cache]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["build_id"] == weighted and info["weights"]["batching"] == "stratified"
    assert {scan["name"]: scan["epoch_groups"] for scan in info["scans"]} == {"s1.npz": 60, "s2.npz": 30, "s3.npz": 15}
    assert main(["dataset", "info", "mix", *cache]) == 0
    assert "60 an epoch (scan " in capsys.readouterr().out
    assert main(["dataset", "export", "mix", str(tmp_path / "moved"), "--quiet", *cache]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "moved")
    other = ["--cache-dir", str(tmp_path / "other")]
    assert main(["dataset", "import", str(tmp_path / "moved"), "--quiet", *other]) == 0
    assert capsys.readouterr().out.strip() == weighted
    assert main(["dataset", "weights", "mix", "--clear", *cache]) == 0
    assert capsys.readouterr().out.strip() == plain


def test_bad_weights_and_imports_are_one_error_line_and_exit_2(tmp_path, files, capsys):
    cache = ["--cache-dir", str(tmp_path)]
    assert main(["dataset", "create", "bad", *cache]) == 0
    assert main(["dataset", "add", "bad", str(files[0]), "--quiet", *cache]) == 0
    capsys.readouterr()
    for argv, message in [
        (["--tag", "oops", "2"], "--tag 'oops': expected KEY=VALUE"),
        (["--scan", "nosuch.npz", "2"], "weight of 'nosuch.npz': no scan of dataset 'bad'"),
        (["--scan", "s1.npz", "two"], "weight of 's1.npz': 'two'; expected a number"),
        (["--scan", "s1.npz", "-1"], "weight of scan .*: -1.0; expected a finite number >= 0"),
        (["--tag", "kind=x", "0.7", "--tag", "kind=y", "0.7", "--mode", "proportion"], "proportion weights sum to 1.4"),
        (["--clear", "--scan", "s1.npz", "2"], "--clear with --scan or --tag"),
    ]:
        assert main(["dataset", "weights", "bad", *argv, *cache]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ")
        assert re.search(message, err), err
    assert main(["dataset", "import", str(tmp_path), *cache]) == 2
    assert "no ptychodata-export.json" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["dataset", "export", "bad", str(tmp_path / "full"), *cache]) == 2
    assert "exists and is not an empty directory" in capsys.readouterr().err
