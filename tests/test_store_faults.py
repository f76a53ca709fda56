"""The store under faults: killed builds, readers racing rebuilds, removal racing preparation.

Every source here is a *version*: patterns all equal to v + 1 and a probe equal to v + 1.
A batch then tells which build it came from (its probe) and whether its parts came from
one build: X = patterns · x_scale is exactly 1/2 only when the scale (grouping build) and
the patterns (frames build) belong together.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ptychodata import GroupingConfig, ScanData, StoreError, open_store, prepare
from ptychodata.store._cache import remove_store
from ptychodata.store._cache_paths import BUILDS, MANIFEST

CONFIG = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)
SRC = str(Path(__file__).resolve().parents[1] / "src")


def write_version(path: Path, version: int, side: int, N: int = 64) -> Path:
    rows, cols = np.divmod(np.arange(side * side), side)
    scan = ScanData.from_arrays(
        diffraction=np.full((side * side, N, N), version + 1, np.float32),
        xcoords=cols * 4.0 + 0.3,
        ycoords=rows * 4.0 + 0.6,
        probe=np.full((N, N), version + 1, np.complex64),
    )
    time.sleep(0.01)  # a new modification time
    return scan.save(path)


def version_of(store, rng: np.random.Generator) -> int:
    """The source version a store serves; fails the test if a batch mixes builds."""
    index = rng.choice(len(store), size=min(32, len(store)), replace=False)
    batch = store.batch(index, reuse=False)
    versions = np.unique(batch["probe"].real) - 1
    assert len(versions) == 1, f"a batch with probes of versions {versions}"
    np.testing.assert_allclose(batch["X"], 0.5, rtol=1e-5, err_msg="patterns and scale of different builds")
    np.testing.assert_array_equal(store.patterns[batch["nn_indices"]], versions[0] + 1)
    return int(versions[0])


def assert_every_build_complete(cache: Path) -> None:
    """Every directory under builds/ with a final name has its manifest and its files."""
    for build in cache.glob(f"frames-*/**/{BUILDS}/*"):
        if not build.name.startswith("."):
            assert (build / MANIFEST).is_file(), f"incomplete build {build}"


def temporaries_of(process: subprocess.Popen, cache: Path) -> list[Path]:
    """The build temporaries a process made (their names carry its pid). ``os.walk`` passes
    over a directory removed while it walks (a build removes what killed builds left)."""
    return [Path(folder, name) for folder, dirs, files in os.walk(cache) for name in dirs + files
            if name.startswith(".tmp-") and f"-{process.pid}-" in name]


def own_temporary_appears(process: subprocess.Popen, cache: Path, timeout: float = 120.0) -> float:
    """Wait until ``process`` has created a build temporary under ``cache``; the time it was seen."""
    deadline = time.monotonic() + timeout
    while not temporaries_of(process, cache):
        assert process.poll() is None, f"the build ended before a temporary was seen: {process.stderr.read()}"
        assert time.monotonic() < deadline, "no build temporary appeared"
        time.sleep(0.002)
    return time.perf_counter()


PREPARE = textwrap.dedent(
    """
    import sys
    from ptychodata import GroupingConfig, prepare
    config = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)
    print("ready", flush=True)  # imports done: what follows is the build
    store = prepare(sys.argv[1], config, cache_dir=sys.argv[2], progress=False, materialize=True)
    print(store.frames_build_id, store.build_id, flush=True)
    """
)


def run(script: str, *args: object) -> subprocess.Popen:
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_sigkill_while_a_changed_source_replaces_a_store(tmp_path):
    source, cache = tmp_path / "scan.npz", tmp_path / "cache"
    write_version(source, 0, side=80)  # 6400 patterns, 100 MB
    with prepare(source, CONFIG, cache_dir=cache, progress=False, materialize=True) as store:
        path = store.path
        assert version_of(store, np.random.default_rng(0)) == 0
    write_version(source, 1, side=80)
    timing = run(PREPARE, source, tmp_path / "timing")
    start = own_temporary_appears(timing, tmp_path / "timing")
    _, err = timing.communicate(timeout=300)
    assert timing.returncode == 0, err
    build = time.perf_counter() - start  # from the temporary's creation to the published build
    rng = np.random.default_rng(1)
    mid_build, served = 0, set()
    fractions = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    for kill, fraction in enumerate(fractions):
        version = 1 + kill % 2
        if kill:
            write_version(source, version, side=80)  # a new source identity: a build not yet published
        process = run(PREPARE, source, cache)
        own_temporary_appears(process, cache)
        time.sleep(build * fraction)
        process.send_signal(signal.SIGKILL)
        process.wait()
        mid_build += bool(temporaries_of(process, cache))
        assert_every_build_complete(cache)
        try:
            with open_store(path) as store:
                served.add(version_of(store, rng))  # the old build or the new one, never a mix
        except StoreError:
            served.add("StoreError")
    print(f"{mid_build} of 9 kills landed in a build; served {served}")
    assert mid_build >= 4, f"only {mid_build} of 9 kills landed in a build"
    assert served <= {0, 1, 2, "StoreError"}
    with prepare(source, CONFIG, cache_dir=cache, progress=False, materialize=True) as store:
        assert version_of(store, rng) == version  # the next prepare serves the newest source
    assert not list(cache.rglob(".tmp-*")), "the next build cleans what killed builds left"
    assert_every_build_complete(cache)


READER = textwrap.dedent(
    """
    import json, sys, time, traceback
    from pathlib import Path
    import numpy as np
    from ptychodata import StoreError, open_store
    path, stop = sys.argv[1], Path(sys.argv[2])
    rng = np.random.default_rng(0)
    versions, errors, batches = set(), 0, 0
    try:
        while not stop.exists():
            try:
                with open_store(path) as store:
                    for _ in range(5):
                        index = rng.choice(len(store), size=32, replace=False)
                        batch = store.batch(index)
                        probe = np.unique(batch["probe"].real)
                        assert len(probe) == 1, f"mixed probes {probe}"
                        assert np.allclose(batch["X"], 0.5, rtol=1e-5), "patterns and scale of different builds"
                        versions.add(int(probe[0]) - 1)
                        batches += 1
            except StoreError:
                errors += 1
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
    print(json.dumps({"versions": sorted(versions), "store_errors": errors, "batches": batches}))
    """
)


def test_a_reader_never_sees_a_mixed_or_broken_build_while_another_process_rebuilds(tmp_path):
    source, cache = tmp_path / "scan.npz", tmp_path / "cache"
    write_version(source, 0, side=24)
    path = prepare(source, CONFIG, cache_dir=cache, progress=False).path
    stop = tmp_path / "stop"
    reader = run(READER, path, stop)
    time.sleep(1.0)  # let the reader start batching
    try:
        for version in range(1, 7):
            write_version(source, version, side=24)
            rebuilt = run(PREPARE.replace(", materialize=True", ""), source, cache)
            _, err = rebuilt.communicate(timeout=120)
            assert rebuilt.returncode == 0, err
            time.sleep(0.2)
    finally:
        stop.touch()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    result = json.loads(out)
    assert result["batches"] > 20
    assert len(result["versions"]) >= 2, result  # it did read across rebuilds


def test_dataloader_workers_serve_the_build_their_loader_was_made_with(tmp_path):
    torch = pytest.importorskip("torch")
    from ptychodata.torch import make_loader

    source, cache = tmp_path / "scan.npz", tmp_path / "cache"
    write_version(source, 0, side=20)
    store = prepare(source, CONFIG, cache_dir=cache, progress=False)
    loader = make_loader(store, 16, num_workers=2, seed=0)
    write_version(source, 1, side=20)
    prepare(source, CONFIG, cache_dir=cache, progress=False).close()  # rebuilt before the workers start
    probes = []
    for step, batch in enumerate(loader):
        if step == 3:  # and again mid-epoch
            write_version(source, 2, side=20)
            prepare(source, CONFIG, cache_dir=cache, progress=False).close()
        assert torch.allclose(batch["X"], torch.tensor(0.5), rtol=1e-5)
        probes.append(torch.unique(batch["probe"].real).tolist())
    assert len(probes) == len(loader) and all(p == [1.0] for p in probes)  # version 0 throughout
    with open_store(store.path) as fresh:
        assert version_of(fresh, np.random.default_rng(0)) == 2


REMOVER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ptychodata import StoreError
    from ptychodata.store._cache import remove_store
    cache, rounds = Path(sys.argv[1]), int(sys.argv[2])
    removed = refused = 0
    for _ in range(rounds):
        for slot in cache.glob("frames-*"):
            try:
                remove_store(slot, force=True)
                removed += 1
            except StoreError:
                refused += 1
        time.sleep(0.15)
    print(removed, refused)
    """
)

PREPARER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from ptychodata import GroupingConfig, StoreError, prepare
    source, cache, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)
    served = failed = 0
    for _ in range(rounds):
        try:
            with prepare(source, config, cache_dir=cache, progress=False) as store:
                batch = store.batch(np.arange(len(store)), reuse=False)
                assert np.allclose(batch["X"], 0.5, rtol=1e-5)
                served += 1
        except StoreError:
            failed += 1
    print(served, failed)
    """
)


def test_removing_and_preparing_the_same_store_at_once(tmp_path):
    source, cache = tmp_path / "scan.npz", tmp_path / "cache"
    write_version(source, 0, side=40)
    prepare(source, CONFIG, cache_dir=cache, progress=False).close()
    preparers = [run(PREPARER, source, cache, 10) for _ in range(2)]
    remover = run(REMOVER, cache, 25)
    counts = []
    for process in (*preparers, remover):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err  # only StoreError may reach the callers: counted, not raised
        counts.append([int(n) for n in out.split()])
    print("prepared/failed, prepared/failed, removed/refused:", counts)
    assert counts[2][0] >= 2, counts  # the remover did remove the store under the preparers
    assert all(served >= 1 for served, _ in counts[:2]), counts
    assert_every_build_complete(cache)
    with prepare(source, CONFIG, cache_dir=cache, progress=False) as store:
        assert version_of(store, np.random.default_rng(0)) == 0
    remove_store(store.path.parent.parent)
    assert not list(cache.glob("frames-*"))
