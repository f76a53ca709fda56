"""Stores edited by hand or damaged: manifests of the wrong shape, type or size, files truncated,
re-headed or with a flipped bit, index tables out of range.

Opening one raises ``StoreCorruptError`` naming the file (never a raw IndexError, KeyError or
TypeError, never rows of another file served); ``cache verify`` names what is wrong (a flipped
bit included: every file's SHA-256 is recorded when it is written); fuzzed manifests open or
raise a store error, nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ptychodata.errors import StoreCorruptError, StoreError, StoreNotFoundError

from . import _stores
from ._harness import FUZZ, expect_error, expect_ok, expect_ok_or_error, run_case

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A cache with one prepared store (version 1, materialized X), made once per module."""
    return _stores.pristine_cache(tmp_path_factory.mktemp("pristine"), materialize=True)


def _copy(pristine, target: Path):
    root, grouping = pristine
    shutil.copytree(root / "cache", target / "cache", symlinks=True)
    frames, group = _stores.builds(target / "cache" / grouping)
    return target / "cache" / grouping, frames, group


@pytest.fixture
def store(pristine, tmp_path):
    """(grouping path, frames build, grouping build) of a fresh copy of the pristine store."""
    return _copy(pristine, tmp_path)


def _halve_rows(values):
    """Every row count of the frames manifest halved, consistently: the files are untouched."""
    half = values["n_patterns"] // 2
    values["n_patterns"] = half
    values["patterns"]["shape"][0] = half
    values["experiments"][0]["stop"] = half
    for entry in values["files"].values():
        if entry["shape"] and entry["shape"][0] == 2 * half:
            entry["shape"][0] = half


FRAMES_EDITS = {
    "n_patterns-halved": (lambda m: m.__setitem__("n_patterns", m["n_patterns"] // 2), "n_patterns"),
    "rows-halved-everywhere": (_halve_rows, "holds shape"),
    "n_patterns-text": (lambda m: m.__setitem__("n_patterns", "48"), "n_patterns"),
    "n_patterns-negative": (lambda m: m.__setitem__("n_patterns", -1), "n_patterns"),
    "n_patterns-float": (lambda m: m.__setitem__("n_patterns", 48.0), "n_patterns"),
    "n_patterns-missing": (lambda m: m.pop("n_patterns"), "n_patterns"),
    "N-changed": (lambda m: m.__setitem__("N", 8), "patterns.shape"),
    "N-bool": (lambda m: m.__setitem__("N", True), "'N'"),
    "experiments-empty": (lambda m: m.__setitem__("experiments", []), "experiments"),
    "experiments-not-list": (lambda m: m.__setitem__("experiments", {"0": 1}), "experiments"),
    "experiment-stop-beyond": (lambda m: m["experiments"][0].__setitem__("stop", 1000), "experiments"),
    "experiment-source-missing": (lambda m: m["experiments"][0].pop("source"), "source"),
    "experiment-object-shape-3d": (lambda m: m["experiments"][0].__setitem__("object_shape", [1, 2, 3]), "object_shape"),
    "patterns-dtype-unknown": (lambda m: m["patterns"].__setitem__("dtype", "float64"), "frames_dtype"),
    "patterns-storage-object": (lambda m: m["patterns"].__setitem__("storage", "|O"), "storage"),
    "patterns-storage-other": (lambda m: m["patterns"].__setitem__("storage", "<f2"), "patterns"),
    "patterns-shape-2d": (lambda m: m["patterns"].__setitem__("shape", [48, 256]), "shape"),
    "file-dtype-object": (lambda m: m["files"]["energies.npy"].__setitem__("dtype", "|O"), "dtype"),
    "file-dtype-structured": (lambda m: m["files"]["energies.npy"].__setitem__("dtype", "[('a', '<f8')]"), "dtype"),
    "file-dtype-changed": (lambda m: m["files"]["energies.npy"].__setitem__("dtype", "<f4"), "energies.npy"),
    "file-shape-negative": (lambda m: m["files"]["energies.npy"].__setitem__("shape", [-48]), "shape"),
    "file-bytes-changed": (lambda m: m["files"]["energies.npy"].__setitem__("bytes", 4), "bytes"),
    "file-missing-entry": (lambda m: m["files"].pop("xcoords.npy"), "missing xcoords.npy"),
    "file-extra-entry": (lambda m: m["files"].__setitem__("extra.npy", m["files"]["energies.npy"]), "extra.npy"),
    "files-a-list": (lambda m: m.__setitem__("files", []), "files"),
    "unknown-key": (lambda m: m.__setitem__("surprise", 1), "surprise"),
    "format-other": (lambda m: m.__setitem__("format", "ptychodata-grouping"), "format"),
    "array-instead": (_stores.Replace(lambda m: json.dumps([m])), "JSON list"),
    "nested-deep": (_stores.Replace(lambda m: "[" * 5000 + "]" * 5000), "not JSON|JSON list"),
}

GROUPING_EDITS = {
    "n_groups-halved": (lambda m: m.__setitem__("n_groups", m["n_groups"] // 2), "groups.npy"),
    "C-changed": (lambda m: m.__setitem__("C", 9), "groups.npy"),
    "x_scale-empty": (lambda m: m.__setitem__("x_scale", []), "x_scale"),
    "x_scale-negative": (lambda m: m.__setitem__("x_scale", [-1.0]), "x_scale"),
    "x_scale-text": (lambda m: m.__setitem__("x_scale", ["1"]), "x_scale"),
    "x_scale-two": (lambda m: m.__setitem__("x_scale", [1.0, 1.0]), "x_scale"),
    "intensity_scale-short": (lambda m: m.__setitem__("intensity_scale", []), "intensity_scale"),
    "materialized-without-X": (lambda m: m["files"].pop("X.npy"), "X.npy"),
    "not-materialized-with-X": (lambda m: m.__setitem__("materialized", False), "X.npy"),
    "config-a-list": (lambda m: m.__setitem__("config", [1]), "config"),
    "frames_key-of-another": (lambda m: m.__setitem__("frames_key", "0" * 20), "frames_key"),
}


@pytest.mark.parametrize("name", sorted(FRAMES_EDITS))
def test_frames_manifest_edits(store, name):
    grouping, frames, _ = store
    edit, match = FRAMES_EDITS[name]
    _stores.edit_manifest(frames, edit)
    outcome = expect_error(run_case(_stores.open_serving, grouping, timeout=TIMEOUT), StoreCorruptError, match=match)
    assert str(frames) in outcome.message and "cache verify" in outcome.message  # the file, and what to do


@pytest.mark.parametrize("name", sorted(GROUPING_EDITS))
def test_grouping_manifest_edits(store, name):
    grouping, _, group = store
    edit, match = GROUPING_EDITS[name]
    _stores.edit_manifest(group, edit)
    expect_error(run_case(_stores.open_serving, grouping, timeout=TIMEOUT), StoreCorruptError, match=match)


@pytest.mark.parametrize("content, match", [
    (b"\x00\xffnot json", "not JSON"),
    (b"", "not JSON"),
    (b'{"schema_version": 3, "format": "ptychodata-frames", "n": NaN}', "not JSON"),
    (b"[" * 100_000, "not JSON"),
])
def test_manifests_that_are_not_json(store, content, match):
    grouping, frames, _ = store
    (frames / "manifest.json").write_bytes(content)
    expect_error(run_case(_stores.open_serving, grouping, timeout=TIMEOUT), StoreCorruptError, match=match)


def test_a_huge_manifest_is_not_read(store):
    grouping, frames, _ = store
    with open(frames / "manifest.json", "ab") as handle:
        handle.write(b" " * (65 << 20))
    expect_error(run_case(_stores.open_serving, grouping, timeout=TIMEOUT, memory=512 << 20), StoreCorruptError,
                 match="larger than")


def test_an_older_schema_asks_for_a_new_prepare(store):
    grouping, frames, _ = store
    _stores.edit_manifest(frames, lambda m: m.__setitem__("schema_version", 2))
    expect_error(run_case(_stores.open_serving, grouping, timeout=TIMEOUT), StoreError, match="schema version 2")


def test_a_manifest_that_is_a_directory(store):
    grouping, frames, _ = store
    (frames / "manifest.json").unlink()
    (frames / "manifest.json").mkdir()
    expect_error(run_case(_stores.open_serving, grouping, timeout=TIMEOUT), StoreCorruptError, match="directory")


def _write_range(path: Path, values: np.ndarray) -> None:
    """Overwrite the last bytes of a store file (its data) with ``values``: size and header kept."""
    with open(path, "r+b") as handle:
        handle.seek(-values.nbytes, os.SEEK_END)
        handle.write(values.tobytes())


@pytest.mark.parametrize("stem, value, match", [
    ("groups", 10_000, "pattern indices"),
    ("groups", -1, "pattern indices"),
    ("group_experiment", 3, "experiment indices"),
])
def test_index_tables_out_of_range(store, stem, value, match):
    grouping, _, group = store
    _write_range(group / f"{stem}.npy", np.array([value], np.int64))
    expect_error(run_case(_stores.open_serving, grouping, timeout=TIMEOUT), StoreCorruptError, match=match)
    problems = expect_ok(run_case(_stores.verify_problems, grouping.parent.parent, timeout=TIMEOUT))
    assert any(f"{stem}.npy" in problem for problem in problems), problems


def test_pattern_experiments_out_of_range(store):
    grouping, frames, _ = store
    _write_range(frames / "experiment_id.npy", np.array([7], np.int64))
    expect_error(run_case(_stores.open_serving, grouping, timeout=TIMEOUT), StoreCorruptError, match="experiment_id")


@pytest.mark.parametrize("how", ["truncated", "grown", "emptied", "header-shape", "header-dtype", "header-fortran",
                                 "pickled", "missing"])
def test_damaged_pattern_files(store, how):
    grouping, frames, _ = store
    path = frames / "patterns.npy"
    original = np.load(path)
    if how == "truncated":
        os.truncate(path, path.stat().st_size - 64)
    elif how == "grown":
        with open(path, "ab") as handle:
            handle.write(b"\x00" * 64)
    elif how == "emptied":
        os.truncate(path, 0)
    elif how == "missing":
        path.unlink()
    else:  # a file of the same size whose header says something else
        with open(path, "r+b") as handle:
            head = handle.read(128)
        text = head.decode("latin1")
        if how == "header-shape":
            text = text.replace(f"({len(original)}, ", f"({len(original) // 2}, ", 1)
        elif how == "header-dtype":
            text = text.replace("'<f4'", "'<i4'", 1)
        elif how == "header-fortran":
            text = text.replace("False", "True ", 1)
        else:
            text = text.replace("'<f4'", "'|O' ", 1)
        with open(path, "r+b") as handle:
            handle.write(text.encode("latin1"))
    expected = StoreError if how == "missing" else StoreCorruptError
    expect_error(run_case(_stores.open_serving, grouping, timeout=TIMEOUT), expected, match="patterns.npy")


@pytest.mark.parametrize("file, level", [("patterns.npy", "frames"), ("energies.npy", "frames"),
                                         ("xcoords.npy", "frames"), ("X.npy", "grouping"),
                                         ("coords_relative.npy", "grouping")])
def test_a_flipped_bit_is_found_by_verify(store, file, level):
    grouping, frames, group = store
    _stores.flip_bit((frames if level == "frames" else group) / file, offset_from_end=3, bit=6)
    problems = expect_ok(run_case(_stores.verify_problems, grouping.parent.parent, timeout=TIMEOUT))
    assert any(file in problem and "SHA-256" in problem for problem in problems), problems
    quick = expect_ok(run_case(_stores.verify_problems, grouping.parent.parent, False, timeout=TIMEOUT))
    assert quick == []  # --quick reads no content: sizes and headers are whole


def test_a_build_of_an_older_version_is_not_passed_as_verified(store):
    grouping, frames, group = store
    for build in (frames, group):
        _stores.edit_manifest(build, lambda m: [entry.pop("sha256") for entry in m["files"].values()])
    assert expect_ok(run_case(_stores.open_serving, grouping, timeout=TIMEOUT))[1:] == (1.0, 1.0)
    problems = expect_ok(run_case(_stores.verify_problems, grouping.parent.parent, timeout=TIMEOUT))
    assert problems and all("NOT verified" in problem for problem in problems), problems


# ------------------------------------------------------------------ fuzzing the manifests' fields
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _leaves(values, prefix=()):
    """Every path (tuple of keys and indices) into a JSON value, containers included."""
    yield prefix
    if isinstance(values, dict):
        for key, value in values.items():
            yield from _leaves(value, (*prefix, key))
    elif isinstance(values, list):
        for index, value in enumerate(values):
            yield from _leaves(value, (*prefix, index))


def _set(values, path, new):
    if not path:
        return new
    target = values
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return values


@FUZZ
@given(data=st.data())
def test_fuzzed_manifest_fields_open_or_raise_a_store_error(pristine, data):
    target = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        grouping, frames, group = _copy(pristine, target)
        build = data.draw(st.sampled_from([frames, group]), label="build")
        values = json.loads((build / "manifest.json").read_text())
        path = data.draw(st.sampled_from(sorted(_leaves(values), key=repr)), label="field")
        new = data.draw(JSON_VALUES, label="value")
        (build / "manifest.json").write_text(json.dumps(_set(values, path, new)))
        outcome = expect_ok_or_error(run_case(_stores.open_serving, grouping, timeout=TIMEOUT),
                                     StoreCorruptError, StoreError, StoreNotFoundError)
        if outcome.kind == "ok":  # an edit the schema allows: the patterns served are still the store's own
            assert outcome.value[1:] == (1.0, 1.0), outcome.value
    finally:
        shutil.rmtree(target, ignore_errors=True)
