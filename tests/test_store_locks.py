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
    monkeypatch.setattr(_cache_paths, "_WARNED_NO_LOCKS", set())  # as in a fresh process
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


MOUNTS = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
30 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
41 30 0:50 / /gpfs/lab rw,relatime - gpfs lab rw
42 30 0:51 / /scratch rw,relatime - lustre 10.0.0.1@o2ib:/scratch rw
43 30 0:52 / /home/me/my\\040data rw,relatime - nfs4 server:/data rw
"""


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/gpfs/lab/cache", "gpfs"), ("/scratch", "lustre"), ("/home/me/my data/x", "nfs4"), ("/tmp/x", "ext4"),
     ("/gpfs/labx", "ext4")],
)
def test_the_file_system_of_a_path_is_its_longest_mount(tmp_path, path, kind):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTS)
    assert _cache_paths.file_system_type(Path(path), mountinfo=str(mountinfo)) == kind


def test_nothing_is_collected_implicitly_on_a_network_file_system(tmp_path, scan_file, monkeypatch):
    config = GroupingConfig(gridsize=2, neighbor_count=5, seed=2)
    source = tmp_path / "scan.npz"
    source.write_bytes(Path(scan_file).read_bytes())
    first = prepare(source, config, cache_dir=tmp_path / "cache", progress=False)
    first.close()
    monkeypatch.setattr(_cache_paths, "file_system_type", lambda path, **_: "nfs4")
    simulate(60, 16, seed=8, progress=False).save(source)  # changed: a new build replaces the live one
    with prepare(source, config, cache_dir=tmp_path / "cache", progress=False) as second:
        assert second.frames_build_id != first.frames_build_id
    frames = next((tmp_path / "cache").glob("frames-*"))
    assert len([p for p in (frames / "builds").iterdir() if not p.name.startswith(".")]) == 2
    monkeypatch.setattr(_cache_paths, "file_system_type", lambda path, **_: "ext4")
    simulate(60, 16, seed=9, progress=False).save(source)
    with prepare(source, config, cache_dir=tmp_path / "cache", progress=False) as third:
        kept = [p.name for p in (frames / "builds").iterdir() if not p.name.startswith(".")]
        assert kept == [third.frames_build_id]  # on a local file system the unused builds go


def test_prune_older_than_keeps_recent_unused_builds(tmp_path, scan_file):
    from ptychodata.store import prune_cache

    config = GroupingConfig(gridsize=2, neighbor_count=5, seed=2)
    source = tmp_path / "scan.npz"
    source.write_bytes(Path(scan_file).read_bytes())
    with prepare(source, config, cache_dir=tmp_path / "cache", progress=False):
        pass
    frames = next((tmp_path / "cache").glob("frames-*"))
    old = next(p for p in (frames / "builds").iterdir() if not p.name.startswith("."))
    os.environ["PTYCHODATA_LOCKS"] = "off"  # no implicit collection: the old build stays unused
    try:
        simulate(60, 16, seed=8, progress=False).save(source)
        with prepare(source, config, cache_dir=tmp_path / "cache", progress=False):
            pass
    finally:
        del os.environ["PTYCHODATA_LOCKS"]
    assert prune_cache(tmp_path / "cache", older_than_s=3600) == 0 and old.is_dir()
    an_hour_ago = time.time() - 7200
    os.utime(old / "manifest.json", (an_hour_ago, an_hour_ago))
    assert prune_cache(tmp_path / "cache", older_than_s=3600) >= 1 and not old.exists()
