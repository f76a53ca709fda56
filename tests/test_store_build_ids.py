"""Build ids are deterministic: the same build has the same id everywhere, and the first of two
builders of one id to finish wins while the other discards its own temporary."""

import os
from pathlib import Path

import numpy as np

from ptychodata import GroupingConfig, prepare, simulate
from ptychodata.store._cache_paths import MANIFEST, BuildSlot, build_id_of


def _slot(tmp_path: Path) -> BuildSlot:
    return BuildSlot(tmp_path / "frames-abc", tmp_path / "locks" / "frames-abc.lock")


def _whole(directory: Path) -> bool:
    return (directory / MANIFEST).is_file() and (directory / "who").is_file()


def test_the_second_builder_to_finish_keeps_the_first_ones_build(tmp_path):
    slot = _slot(tmp_path)
    with slot.new_build({"source": 1}, sound=_whole) as (first_id, first_dir):
        (first_dir / "who").write_text("first")
        with slot.new_build({"source": 1}, sound=_whole) as (second_id, second_dir):
            (second_dir / "who").write_text("second")
            (second_dir / MANIFEST).write_text("{}")
        (first_dir / MANIFEST).write_text("{}")
    assert first_id == second_id == build_id_of(slot.key, {"source": 1})
    assert (slot.build_dir(first_id) / "who").read_text() == "second"
    assert slot.temporaries() == [] and slot.build_ids() == [first_id]


def test_another_identity_is_another_build(tmp_path):
    slot = _slot(tmp_path)
    assert build_id_of(slot.key, {"source": 1}) != build_id_of(slot.key, {"source": 2})
    assert build_id_of("abc", {"source": 1}) != build_id_of("abd", {"source": 1})


def test_one_source_prepared_in_two_caches_has_the_same_build_ids(tmp_path):
    path = simulate(40, 16, seed=3, progress=False).save(tmp_path / "scan.npz")
    config = GroupingConfig(gridsize=2, neighbor_count=5, seed=1)
    with prepare(path, config, cache_dir=tmp_path / "one", progress=False) as one:
        with prepare(path, config, cache_dir=tmp_path / "two", progress=False) as two:
            assert (one.frames_build_id, one.build_id) == (two.frames_build_id, two.build_id)
            np.testing.assert_array_equal(one.groups, two.groups)
    touched = path.stat()
    os.utime(path, ns=(touched.st_atime_ns, touched.st_mtime_ns + 1_000_000_000))
    with prepare(path, config, cache_dir=tmp_path / "one", progress=False) as changed:
        assert changed.frames_build_id != one.frames_build_id


def test_a_damaged_build_of_the_same_id_is_replaced(tmp_path):
    slot = _slot(tmp_path)
    with slot.new_build({"source": 1}, sound=_whole) as (build_id, directory):
        (directory / MANIFEST).write_text("{}")  # no "who": not whole
    with slot.new_build({"source": 1}, sound=_whole) as (again, directory):
        (directory / MANIFEST).write_text("{}")
        (directory / "who").write_text("whole")
    assert again == build_id and (slot.build_dir(build_id) / "who").read_text() == "whole"
    assert slot.temporaries() == []
