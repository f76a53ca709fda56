"""Builds stay correct without file locks: deterministic ids and atomic renames, clean-up that
removes only dead builders' leftovers, and one warning where the file system has no flock."""

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ptychodata import GroupingConfig, open_store, prepare, simulate
from ptychodata.store import _cache_paths

CONFIG = GroupingConfig(gridsize=2, neighbor_count=5, seed=2)


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    return simulate(60, 16, seed=4, progress=False).save(tmp_path_factory.mktemp("locks") / "scan.npz")


def test_a_file_system_without_flock_gives_one_warning_and_a_correct_store(tmp_path, scan_file, monkeypatch):
    def refuse(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(_cache_paths.fcntl, "flock", refuse)
    with pytest.warns(RuntimeWarning, match="refuses flock .*going on without locks"):
        store = prepare(scan_file, CONFIG, cache_dir=tmp_path, progress=False)
    with store, open_store(store.path) as again:
        np.testing.assert_array_equal(again.groups, store.groups)


RACE = """
import sys
from ptychodata import GroupingConfig, prepare
with prepare(sys.argv[1], GroupingConfig(gridsize=2, neighbor_count=5, seed=2), cache_dir=sys.argv[2],
             progress=False) as store:
    print(store.build_id, store.frames_build_id)
"""


def test_processes_racing_without_locks_make_one_build(tmp_path, scan_file):
    env = {**os.environ, "PTYCHODATA_LOCKS": "off"}
    racers = [
        subprocess.Popen([sys.executable, "-c", RACE, str(scan_file), str(tmp_path)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0] * 4, [err for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1
    frames = next(tmp_path.glob("frames-*"))
    assert len(list((frames / "builds").iterdir())) == 1
    with open_store(next((frames / "groupings").iterdir())) as store:
        np.testing.assert_array_equal(store.patterns[:], np.load(scan_file)["diff3d"])


def test_clean_up_removes_only_dead_builders_leftovers(tmp_path):
    slot = _cache_paths.BuildSlot(tmp_path / "frames-k", tmp_path / "locks" / "frames-k.lock")
    builds = tmp_path / "frames-k" / "builds"
    builds.mkdir(parents=True)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    dead = builds / f".tmp-{'a' * 32}-{host}-{finished.stdout.strip()}-0001"
    alive_here = builds / f".tmp-{'b' * 32}-{host}-{os.getppid()}-0002"
    other_host = builds / f".tmp-{'c' * 32}-elsewhere-{os.getpid()}-0003"
    stale = builds / f".tmp-{'d' * 32}-elsewhere-1-0004"
    for path in (dead, alive_here, other_host, stale):
        path.mkdir()
    old = time.time() - 2 * _cache_paths.TEMPORARY_EXPIRY_S
    os.utime(stale, (old, old))
    assert slot.remove_temporaries() == 2
    assert sorted(p.name for p in builds.iterdir()) == sorted([alive_here.name, other_host.name])


def test_locks_off_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("PTYCHODATA_LOCKS", "off")
    assert _cache_paths.locks_enabled() is False
    monkeypatch.setenv("PTYCHODATA_LOCKS", "on")
    assert _cache_paths.locks_enabled() is True
    assert Path(_cache_paths.__file__).name == "_cache_paths.py"
