"""The command line under bad input: one ``error: ...`` line and exit status 2 (a finding of
``cache verify``: 1), never a traceback unless ``--debug``; a memory error, an OS error without a
path and an unexpected exception are one line too, naming the files the command was given.

Real subprocesses for what the user types (a few: each starts Python), the worker for errors
that must be injected.
"""

from __future__ import annotations

import shutil

import pytest

from . import _stores
from ._harness import FULL, expect_cli_error, expect_ok, run_case, run_cli

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return _stores.pristine_cache(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def world(pristine, tmp_path):
    root, grouping = pristine
    shutil.copytree(root / "cache", tmp_path / "cache", symlinks=True)
    return root / "scan.npz", tmp_path / "cache", tmp_path / "cache" / grouping


USAGE = [
    ([], "required: COMMAND"),
    (["transmogrify"], "invalid choice"),
    (["prepare", "{source}", "--gridsize", "0"], "--gridsize: 0 is too small"),
    (["prepare", "{source}", "--neighbors", "many"], "--neighbors: 'many' is not an integer"),
    (["cache", "explode"], "invalid choice"),
    (["prepare"], "required: SRC"),
]


@pytest.mark.parametrize("argv, match", USAGE if FULL else USAGE[:3])
def test_usage_errors(world, argv, match):
    source, cache, grouping = world
    result = run_cli([a.format(source=source) for a in argv])
    expect_cli_error(result, 2, match=match)
    assert result.stdout == ""


def test_a_missing_source(world):
    source, cache, grouping = world
    result = run_cli(["prepare", str(source.parent / "nowhere.npz"), "--cache-dir", str(cache), "--quiet"])
    expect_cli_error(result, 2, match="nowhere.npz: no such file")


def test_a_cache_dir_that_is_a_file(world, tmp_path):
    source, cache, grouping = world
    (tmp_path / "a-file").write_text("")
    result = run_cli(["prepare", str(source), "--cache-dir", str(tmp_path / "a-file"), "--quiet"])
    expect_cli_error(result, 2, match="a-file")


def test_inspect_a_damaged_store(world):
    source, cache, grouping = world
    frames, _ = _stores.builds(grouping)
    _stores.edit_manifest(frames, lambda m: m.__setitem__("n_patterns", "many"))
    expect_cli_error(run_cli(["inspect", str(grouping)]), 2, match="n_patterns.*cache verify")


def test_cache_verify_names_a_flipped_bit_with_exit_1(world):
    source, cache, grouping = world
    frames, _ = _stores.builds(grouping)
    _stores.flip_bit(frames / "patterns.npy")
    result = run_cli(["cache", "verify", "--cache-dir", str(cache)])
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "PROBLEM" in result.stdout and "patterns.npy" in result.stdout and "SHA-256" in result.stdout


@pytest.mark.skipif(not FULL, reason="more command-line subprocesses under PTYCHODATA_HOSTILE_FULL=1")
def test_cache_list_prune_and_remove_with_damaged_stores(world):
    source, cache, grouping = world
    (grouping / "current").write_text("../../../../etc")
    listed = run_cli(["cache", "list", "--cache-dir", str(cache)])
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    pruned = run_cli(["cache", "prune", "--cache-dir", str(cache)])
    assert pruned.returncode == 0 and "Traceback" not in pruned.stderr
    verified = run_cli(["cache", "verify", "--cache-dir", str(cache)])
    assert verified.returncode == 1 and "is not a build id" in verified.stdout
    expect_cli_error(run_cli(["cache", "remove", "no-such-key", "--cache-dir", str(cache)]), 2, match="no store")


def test_debug_shows_the_traceback(world):
    source, cache, grouping = world
    result = run_cli(["--debug", "prepare", str(source.parent / "nowhere.npz"), "--cache-dir", str(cache)])
    assert result.returncode == 2 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


# ------------------------------------------------------------------ injected in the worker
@pytest.mark.parametrize("fault, code, match", [
    ("memory", 2, r"^error: out of memory while working on .*scan\.npz.*: Unable to allocate 7\.28 TiB"),
    ("oserror", 2, r"^error: Input/output error \[Errno 5\] \(working on .*scan\.npz"),
    ("bug", 2, r"^error: unexpected TypeError \(working on .*scan\.npz.*\): .*--debug"),
    ("interrupt", 130, r"^error: interrupted$"),
])
def test_errors_that_are_not_the_library_s_are_one_line(world, fault, code, match):
    import re

    source, cache, grouping = world
    exit_code, out, err = expect_ok(run_case(_stores.cli, ["prepare", str(source), "--cache-dir", str(cache)], fault,
                                             timeout=TIMEOUT))
    assert exit_code == code and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and re.search(match, err.strip()), err


def test_debug_anywhere_prints_the_traceback_of_an_unexpected_error(world):
    source, cache, grouping = world
    exit_code, out, err = expect_ok(run_case(_stores.cli, ["prepare", str(source), "--debug"], "bug", timeout=TIMEOUT))
    assert exit_code == 2 and "Traceback" in err and "TypeError" in err
    assert err.strip().splitlines()[-1].startswith("error: unexpected TypeError")
