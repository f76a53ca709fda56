"""Paths from data: pointers, build ids, keys and file names read from a store (or a dataset's
records) that hold ``..``, separators, absolute paths, binary junk or links out of the cache.

Nothing read from a store may make the library read or write outside it: each case opens with
``StoreCorruptError`` naming the file (or, for prepare, repairs what it owns and serves the
right data), and a directory outside the cache, named by the crafted value, is never touched.
"""

from __future__ import annotations

import os
import shutil

import pytest

from ptychodata.errors import StoreCorruptError, StoreError, StoreNotFoundError

from . import _stores
from ._harness import FULL, assert_cache_intact, expect_error, expect_ok, run_case, snapshot

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A cache with one prepared store (version 1) and a dataset of it, made once per module."""
    return _stores.pristine_cache(tmp_path_factory.mktemp("pristine"), dataset=True)


@pytest.fixture
def world(pristine, tmp_path):
    """A copy of the pristine cache, its source, and a decoy directory outside the cache that a
    crafted path would lead to (it must stay untouched)."""
    root, grouping = pristine
    shutil.copytree(root / "cache", tmp_path / "cache", symlinks=True)
    decoy = tmp_path / "outside"
    (decoy / "builds").mkdir(parents=True)
    (decoy / "secret.npy").write_bytes(b"not yours")
    # The source stays where it was (its path is part of the store's key); no case changes it.
    return tmp_path / "cache", tmp_path / "cache" / grouping, root / "scan.npz", decoy


POINTERS = {
    "parent": "../../../../outside",
    "absolute": "/tmp",
    "id-then-parent": "0123456789abcdef0123456789abcdef/../../outside",
    "short-hex": "0123456789abcdef",
    "upper-hex": "0123456789ABCDEF0123456789ABCDEF",
    "binary": "\x00\xff\xfe",
    "huge": "a" * (8 << 20),
    "two-ids": "0123456789abcdef0123456789abcdef\n0123456789abcdef0123456789abcdef",
}


POINTER_CASES = [(level, name) for level in ("frames", "grouping") for name in sorted(POINTERS)]
CI_POINTER_CASES = [("frames", "parent"), ("frames", "huge"), ("grouping", "parent"), ("grouping", "absolute"),
                    ("grouping", "binary"), ("grouping", "id-then-parent")]


@pytest.mark.parametrize("level, name", POINTER_CASES if FULL else CI_POINTER_CASES)
def test_a_crafted_current_pointer_is_refused_and_prepare_repairs_it(world, level, name):
    cache, grouping, source, decoy = world
    slot = grouping if level == "grouping" else grouping.parent.parent
    (slot / "current").write_bytes(POINTERS[name].encode("utf-8", "surrogateescape"))
    outside = snapshot(decoy)
    if level == "grouping":
        expect_error(run_case(_stores.open_serving, grouping, timeout=TIMEOUT), StoreCorruptError,
                     match=r"current: .* is not a build id")
    else:  # a grouping build names its frames build itself: reading never follows the frames pointer
        assert expect_ok(run_case(_stores.open_serving, grouping, timeout=TIMEOUT))[1:] == (1.0, 1.0)
    problems = expect_ok(run_case(_stores.verify_problems, grouping.parent.parent, timeout=TIMEOUT))
    assert any("is not a build id" in problem for problem in problems), problems
    assert expect_ok(run_case(_stores.prepare_serving, source, cache, timeout=TIMEOUT))[1:] == (1.0, 1.0)
    expect_ok(run_case(_stores.open_serving, grouping, timeout=TIMEOUT))  # the pointer was rewritten
    assert_cache_intact(outside, decoy)


def test_an_empty_pointer_is_no_live_build(world):
    cache, grouping, source, decoy = world
    (grouping / "current").write_text("")
    expect_error(run_case(_stores.open_serving, grouping, timeout=TIMEOUT), StoreNotFoundError, match="no live build")


def test_prune_with_crafted_pointers_deletes_nothing_outside_and_nothing_live(world):
    cache, grouping, source, decoy = world
    (grouping.parent.parent / "current").write_text("../../../outside")
    (grouping / "current").write_text("/tmp")
    (cache / "pins").mkdir(exist_ok=True)
    (cache / "pins" / "evil.pins").write_text("../outside\n/tmp\nframes-x/../../outside/builds/y\n")
    before, outside = snapshot(cache), snapshot(decoy)
    expect_ok(run_case(_stores.prune, cache, timeout=TIMEOUT))
    assert_cache_intact(before, cache)
    assert_cache_intact(outside, decoy)


MANIFEST_IDS = [
    ("grouping", "frames_build_id", "../../../../outside"),
    ("grouping", "frames_build_id", "/tmp"),
    ("grouping", "frames_build_id", "0123456789abcdef0123456789abcde/"),
    ("grouping", "frames_key", "../x"),
    ("grouping", "build_id", "../../x"),
    ("grouping", "key", "/"),
    ("frames", "build_id", "../../../outside"),
    ("frames", "key", "..\\..\\x"),
]


@pytest.mark.parametrize("level, key, value", MANIFEST_IDS)
def test_ids_in_manifests_that_lead_elsewhere(world, level, key, value):
    cache, grouping, source, decoy = world
    frames_build, grouping_build = _stores.builds(grouping)
    build = grouping_build if level == "grouping" else frames_build
    _stores.edit_manifest(build, lambda m: m.__setitem__(key, value))
    outside = snapshot(decoy)
    expect_error(run_case(_stores.open_serving, grouping, timeout=TIMEOUT), StoreCorruptError, match=key)
    assert_cache_intact(outside, decoy)


FILE_NAMES = ["../../../../outside/secret.npy", "/etc/passwd", "sub/patterns.npy", "patterns", ".npy",
              "..", "energies.npy\x00", "x" * 300 + ".npy"]


@pytest.mark.parametrize("name", FILE_NAMES)
def test_file_names_in_manifests_are_plain_names(world, name):
    cache, grouping, source, decoy = world
    frames_build, _ = _stores.builds(grouping)

    def rename(values):
        values["files"][name] = values["files"].pop("energies.npy")

    _stores.edit_manifest(frames_build, rename)
    expect_error(run_case(_stores.open_serving, grouping, timeout=TIMEOUT), StoreCorruptError, match="file name")


def test_a_store_file_that_is_a_link_out_of_the_store(world):
    cache, grouping, source, decoy = world
    frames_build, _ = _stores.builds(grouping)
    shutil.copy(frames_build / "energies.npy", decoy / "energies.npy")
    (frames_build / "energies.npy").unlink()
    os.symlink(decoy / "energies.npy", frames_build / "energies.npy")
    expect_error(run_case(_stores.open_serving, grouping, timeout=TIMEOUT), StoreCorruptError, match="symbolic link")


def test_a_build_directory_that_is_a_link_out_of_the_cache(world):
    cache, grouping, source, decoy = world
    frames_build, _ = _stores.builds(grouping)
    shutil.copytree(frames_build, decoy / "builds" / frames_build.name)
    shutil.rmtree(frames_build)
    os.symlink(decoy / "builds" / frames_build.name, frames_build)
    expect_error(run_case(_stores.open_serving, grouping, timeout=TIMEOUT), StoreCorruptError,
                 match="is a symbolic link .*lead out of the store")


@pytest.mark.parametrize("build_id", ["../../../outside", "/tmp", "", "0" * 33])
def test_a_build_id_asked_for_is_a_build_id(world, build_id):
    cache, grouping, source, decoy = world
    expect_error(run_case(_stores.open_build_serving, grouping, build_id, timeout=TIMEOUT), StoreCorruptError,
                 match="not a build id")


@pytest.mark.parametrize("value", ["scan.npz", "../scan.npz", "/etc/hostname"])
def test_source_paths_in_manifests(world, value):
    """A source path must be absolute; a zero-copy reference must be the build's own source."""
    cache, grouping, source, decoy = world
    frames_build, _ = _stores.builds(grouping)

    def point(values):
        values["experiments"][0]["source"]["path"] = value

    _stores.edit_manifest(frames_build, point)
    outcome = run_case(_stores.open_serving, grouping, timeout=TIMEOUT)
    if os.path.isabs(value):  # absolute but another file: a copy store only records it (verify reports it)
        expect_ok(outcome)
    else:
        expect_error(outcome, StoreCorruptError, match="absolute path")


def test_a_zero_copy_reference_to_another_file(tmp_path):
    source, cache = tmp_path / "scan.npz", tmp_path / "cache"
    _stores.write_source(source, 1.0)
    expect_ok(run_case(_stores.prepare_serving, source, cache, copy=False, timeout=TIMEOUT))
    grouping = next(cache.glob("frames-*/groupings/*"))
    frames_build, _ = _stores.builds(grouping)
    shutil.copy(source, tmp_path / "other.npz")
    _stores.edit_manifest(frames_build, lambda m: m["patterns"].__setitem__("file", str(tmp_path / "other.npz")))
    expect_error(run_case(_stores.open_serving, grouping, timeout=TIMEOUT), StoreCorruptError,
                 match="not the build's one source file")


DATASET_FIELDS = [
    ("grouping_path", "../../outside"),
    ("grouping_path", "/tmp"),
    ("grouping_build_id", "../../../../outside"),
    ("frames_build_id", "/tmp"),
    ("frames_key", "../x"),
    ("name", "../../x"),
]


@pytest.mark.parametrize("key, value", DATASET_FIELDS)
def test_a_dataset_record_that_leads_elsewhere(world, key, value):
    """A dataset manifest whose hash was recomputed over the crafted record (what an attacker writes)."""
    cache, grouping, source, decoy = world
    _stores.forge_dataset_scan(cache, "d", key, value)
    outside = snapshot(decoy)
    expect_error(run_case(_stores.dataset_serving, "d", cache, timeout=TIMEOUT), StoreError, match=key)
    assert_cache_intact(outside, decoy)
