"""``ptychodata dataset create|add|remove|info``."""

import json

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
    assert "missing.npz: no such scan file" in capsys.readouterr().err
    assert main(["dataset", "add", "lab", str(files[0]), "--tag", "oops", *cache]) == 2
    assert "--tag 'oops': expected KEY=VALUE" in capsys.readouterr().err
