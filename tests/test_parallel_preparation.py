"""Preparing a dataset's scans in parallel: on any executor, in job-array processes, with no
file locks; a worker killed mid-scan loses nothing and a re-run finishes the job."""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest

from ptychodata import Dataset, GroupingConfig, ScanData, open_store, simulate
from ptychodata.dataset import _scan_build, prepare_scan
from ptychodata.errors import StoreError
from ptychodata.store import _frames_build, _prepare

CONFIG = GroupingConfig(gridsize=2, neighbor_count=5, seed=7)
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Four small scans and one large enough that a worker can be killed while it builds."""
    root = tmp_path_factory.mktemp("parallel")
    paths = [simulate(30 + 5 * s, 16, seed=s, progress=False).save(root / f"s{s}.npz") for s in range(4)]
    rng = np.random.default_rng(0)
    rows, cols = np.divmod(np.arange(40_000), 200)
    large = ScanData.from_arrays(
        diffraction=rng.random((40_000, 16, 16), dtype=np.float32),
        xcoords=cols * 3.0, ycoords=rows * 3.0, probe=np.ones((16, 16), np.complex64),
    )  # fmt: skip
    return paths, large.save(root / "large.npz")


def digests(cache: Path) -> dict[str, str]:
    return {p.relative_to(cache).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(cache.rglob("*.npy"))}


def _die_while_building(cache: str, *args, **kwargs):
    """Run prepare_scan in a worker that SIGKILLs itself once its build temporary exists."""

    def watch():
        mark = f"-{os.getpid()}-"
        while True:
            # os.walk passes over a directory removed while it walks (another worker's publish).
            if any(name.startswith(".tmp-") and mark in name for _, dirs, _ in os.walk(cache) for name in dirs):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.001)

    threading.Thread(target=watch, daemon=True).start()
    return prepare_scan(*args, **kwargs)


class KillsOneWorker(Executor):
    """A process pool whose worker preparing ``victim`` is killed in the middle of its build."""

    def __init__(self, pool: Executor, victim: str, cache: Path):
        self.pool, self.victim, self.cache = pool, victim, str(cache)

    def submit(self, fn, /, *args, **kwargs):
        if fn is prepare_scan and str(args[0]) == self.victim:
            return self.pool.submit(_die_while_building, self.cache, *args, **kwargs)
        return self.pool.submit(fn, *args, **kwargs)


def test_a_worker_killed_mid_scan_leaves_nothing_partial_and_a_rerun_finishes(tmp_path, scans):
    paths, large = scans
    sources = [large, *paths]
    cache = tmp_path / "cache"
    dataset = Dataset.create("killed", CONFIG, cache_dir=cache)
    pool = ProcessPoolExecutor(2, mp_context=get_context("spawn"))
    try:
        with pytest.raises(StoreError, match=r"large\.npz: the worker preparing it failed \(BrokenProcessPool"):
            dataset.add(sources, executor=KillsOneWorker(pool, str(large), cache))
    finally:
        pool.shutdown()
    assert dataset.build_id is None, "a failed add publishes nothing"
    leftovers = list(cache.rglob(".tmp-*"))
    assert leftovers, "the kill did not land in a build"
    change = dataset.add(sources, executor=2)  # the same command again
    assert len(change.added) == len(sources)
    assert not list(cache.rglob(".tmp-*")), "the re-run cleans what the killed worker left"
    serial = Dataset.create("killed", CONFIG, cache_dir=tmp_path / "serial")
    serial.add(sources)
    assert dataset.build_id == serial.build_id
    assert digests(cache) == digests(tmp_path / "serial")


class Recording(Executor):
    """Runs tasks in threads and records which functions were submitted."""

    def __init__(self):
        self.pool, self.names = ThreadPoolExecutor(2), []

    def submit(self, fn, /, *args, **kwargs):
        self.names.append(fn.__name__)
        return self.pool.submit(fn, *args, **kwargs)


def test_a_scan_file_is_hashed_once_while_its_patterns_are_copied(tmp_path, scans, monkeypatch):
    paths, _ = scans
    hashed = []
    digest = _frames_build.file_digest

    def counting(path, *args, **kwargs):
        hashed.append(Path(path).name)
        return digest(path, *args, **kwargs)

    for module in (_scan_build, _frames_build, _prepare):
        monkeypatch.setattr(module, "file_digest", counting)
    build = Dataset.create("once", CONFIG, cache_dir=tmp_path).prepare_one(paths[0])
    assert hashed == [paths[0].name]
    assert build.source.sha256 == hashlib.sha256(paths[0].read_bytes()).hexdigest()
    assert build.uid == build.source.sha256[:20]


def test_the_publish_step_runs_on_the_executor(tmp_path, scans):
    paths, _ = scans
    dataset = Dataset.create("remote", CONFIG, cache_dir=tmp_path)
    executor = Recording()
    change = dataset.add(paths[:2], executor=executor)
    executor.pool.shutdown()
    assert executor.names == ["prepare_scan", "prepare_scan", "_publish_change"]
    assert dataset.build_id == change.build_id and len(dataset.scans()) == 2


def test_prepare_scan_again_finds_its_record_without_reading_the_file(tmp_path, scans, monkeypatch):
    paths, _ = scans
    dataset = Dataset.create("resume", CONFIG, cache_dir=tmp_path)
    first = dataset.prepare_one(paths[0])

    def no_hashing(path, *args, **kwargs):
        raise AssertionError(f"{path} was hashed again")

    for module in (_scan_build, _frames_build, _prepare):
        monkeypatch.setattr(module, "file_digest", no_hashing)
    assert dataset.prepare_one(paths[0]) == first
    assert dataset.add(paths[0], built_only=True).added == [str(paths[0].resolve())]
    os.utime(paths[0], ns=(time.time_ns(), time.time_ns()))  # touched: the record no longer holds
    with pytest.raises(AssertionError, match="was hashed again"):
        dataset.prepare_one(paths[0])


RACE = """
import errno, sys
from ptychodata import GroupingConfig, prepare
from ptychodata.store import _cache_paths
if sys.argv[3] == "enosys":
    def refuse(fd, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")
    _cache_paths.fcntl.flock = refuse
with prepare(sys.argv[1], GroupingConfig(gridsize=2, neighbor_count=5, seed=7), cache_dir=sys.argv[2],
             progress=False) as store:
    print(store.frames_build_id, store.build_id)
"""


@pytest.mark.parametrize("locks", ["enosys", "off"])
def test_eight_processes_racing_without_locks_make_one_build(tmp_path, scans, locks):
    paths, _ = scans
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin", "PTYCHODATA_LOCKS": "off" if locks == "off" else "on"}
    racers = [
        subprocess.Popen([sys.executable, "-W", "error::UserWarning", "-c", RACE, str(paths[1]), str(tmp_path), locks],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    results = [racer.communicate(timeout=240) for racer in racers]
    assert [racer.returncode for racer in racers] == [0] * 8, [err for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1, "every racer serves the one build"
    frames = next(tmp_path.glob("frames-*"))
    assert [p.name for p in (frames / "builds").iterdir()] == [results[0][0].split()[0]]
    assert not list(tmp_path.rglob(".tmp-*")) and not list(tmp_path.rglob(".trash-*"))
    if locks == "enosys":
        assert all(err.count("refuses flock") <= 1 for _, err in results), "one warning per process at most"
    with open_store(next((frames / "groupings").iterdir())) as store:
        np.testing.assert_array_equal(store.patterns[:], np.load(paths[1])["diff3d"])


PREPARE_INDEX = """
import sys
from ptychodata.cli import main
sys.exit(main(["prepare-scan", "--dataset", "arrays", "--list", sys.argv[1], "--index", sys.argv[2], "--quiet",
               "--cache-dir", sys.argv[3]]))
"""


def test_array_processes_and_a_serial_add_give_the_same_bytes_and_fingerprint(tmp_path, scans):
    paths, _ = scans
    listing = tmp_path / "scans.txt"
    listing.write_text("\n".join(map(str, paths)) + "\n")
    arrays = Dataset.create("arrays", CONFIG, cache_dir=tmp_path / "arrays")
    tasks = [
        subprocess.Popen([sys.executable, "-c", PREPARE_INDEX, str(listing), str(i), str(tmp_path / "arrays")],
                         env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in range(len(paths))
    ]
    outputs = [task.communicate(timeout=240) for task in tasks]
    assert [task.returncode for task in tasks] == [0] * len(paths), [err for _, err in outputs]
    assert arrays.build_id is None, "prepare-scan builds; it publishes nothing"
    arrays.add(paths, built_only=True)
    serial = Dataset.create("arrays", CONFIG, cache_dir=tmp_path / "serial")
    serial.add(paths)
    assert arrays.build_id == serial.build_id
    assert digests(tmp_path / "arrays") == digests(tmp_path / "serial")
