"""What a store reads from disk is checked before use: ids, keys and file names against one
pattern, manifest fields by type, ``.npy`` headers against the manifest, the free space before a
build and a disk that fills during one."""

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ptychodata import GroupingConfig, open_store, prepare
from ptychodata.errors import DiskFullError, StoreCorruptError, StoreError
from ptychodata.store import check_build_id, check_key, is_build_id, is_key
from ptychodata.store._cache_paths import BuildSlot, check_free_space
from ptychodata.store._files import map_npy, write_npy
from ptychodata.store._ids import check_store_file_name
from ptychodata.store._manifest import FileEntry, FrameManifest, GroupingManifest
from ptychodata.store._schema import Fields

CONFIG = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)
BUILD_ID = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("value, ok", [
    (BUILD_ID, True), (BUILD_ID.upper(), False), (BUILD_ID[:-1], False), (BUILD_ID + "0", False),
    ("../" + BUILD_ID[3:], False), ("/" + BUILD_ID[1:], False), (BUILD_ID[:-1] + "\n", False), (None, False),
    (int("1" * 32), False),
])
def test_build_ids_are_exactly_32_lowercase_hex_digits(value, ok):
    assert is_build_id(value) is ok
    if ok:
        assert check_build_id(value, "here") == value
    else:
        with pytest.raises(StoreCorruptError, match="here: .* is not a build id"):
            check_build_id(value, "here")


def test_keys_are_exactly_20_lowercase_hex_digits():
    assert is_key("0123456789abcdef0123") and not is_key("0123456789abcdef012/")
    with pytest.raises(StoreCorruptError, match="not a store key"):
        check_key("..", "here")


@pytest.mark.parametrize("name", ["patterns.npy", "object_12.npy", "X.npy"])
def test_store_file_names_that_are_plain(name):
    assert check_store_file_name(name, "here") == name


@pytest.mark.parametrize("name", ["../patterns.npy", "/patterns.npy", "a/b.npy", "patterns", "_x.npy", "p.npy.txt",
                                  "", ".npy", "x\x00.npy", 3])
def test_store_file_names_that_are_not(name):
    with pytest.raises(StoreCorruptError, match="file name"):
        check_store_file_name(name, "here")


def test_fields_name_the_key_what_was_found_and_what_was_expected():
    fields = Fields({"n": "12", "flag": 1, "shape": [2, -1], "dtype": "|O"}, "m.json", "patterns.")
    with pytest.raises(StoreCorruptError, match=r"m.json: key 'patterns.n': found '12' \(str\); expected an integer"):
        fields.integer("n")
    with pytest.raises(StoreCorruptError, match="key 'patterns.flag': found 1 .*expected true or false"):
        fields.boolean("flag")
    with pytest.raises(StoreCorruptError, match="expected a shape"):
        fields.shape("shape")
    with pytest.raises(StoreCorruptError, match="numbers only"):
        fields.dtype("dtype")
    with pytest.raises(StoreCorruptError, match="key 'patterns.missing' is missing"):
        fields.integer("missing")
    with pytest.raises(StoreCorruptError, match="unexpected key"):
        Fields({"x": 1}, "m.json", known=("y",))


def test_manifests_read_back_as_written(small_scan, tmp_path):
    with prepare(small_scan, CONFIG, cache_dir=tmp_path, progress=False, materialize=True) as store:
        for kind, directory in ((FrameManifest, store.info()["frames_path"]), (GroupingManifest,
                                                                                store.info()["build_path"])):
            values = json.loads((Path(directory) / "manifest.json").read_text())
            assert kind.from_dict(values, "m.json").to_dict() == values


def test_map_npy_checks_the_header_against_the_manifest(tmp_path):
    write_npy(tmp_path / "a.npy", np.arange(12, dtype=np.float64).reshape(6, 2))
    entry = FileEntry.of(tmp_path / "a.npy")
    np.testing.assert_array_equal(map_npy(tmp_path / "a.npy", entry), np.arange(12.0).reshape(6, 2))
    # Same size, same number of bytes of data: only the header tells the rows apart.
    for shape, dtype in (([3, 4], "<f8"), ([6, 2], "<i8"), ([12, 1], "<f8")):
        with pytest.raises(StoreCorruptError, match=r"a.npy: holds shape \[6, 2\], dtype <f8; the manifest says"):
            map_npy(tmp_path / "a.npy", FileEntry(shape, dtype, entry.bytes))
    os.symlink(tmp_path / "a.npy", tmp_path / "b.npy")
    with pytest.raises(StoreCorruptError, match="symbolic link"):
        map_npy(tmp_path / "b.npy", entry)
    (tmp_path / "c.npy").write_bytes(b"\x93NUMPY\x02\x00\xff\xff\xff\x7f" + bytes(entry.bytes - 12))
    with pytest.raises(StoreCorruptError, match="header of 2147483647 bytes"):
        map_npy(tmp_path / "c.npy", entry)


def test_the_free_space_is_checked_before_a_build(monkeypatch, tmp_path):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=5 << 20))
    check_free_space(tmp_path, 0)  # nothing known, nothing checked
    with pytest.raises(DiskFullError, match=r"needs about 100\.0 MiB \(104857600 bytes\) but only 5\.0 MiB") as error:
        check_free_space(tmp_path / "not" / "yet", 100 << 20)
    assert error.value.errno == errno.ENOSPC and isinstance(error.value, OSError)


def test_a_disk_that_fills_during_a_build_removes_its_temporary(tmp_path):
    slot = BuildSlot(tmp_path / "slot", tmp_path / "slot.lock")
    with pytest.raises(DiskFullError, match=r"the disk filled writing .*x.npy \(No space left on device\); the "
                                            r"build needs about 1\.0 KiB") as error:
        with slot.new_build({"a": 1}, sound=lambda path: True, needs=1024) as (_, directory):
            raise OSError(errno.ENOSPC, "No space left on device", str(directory / "x.npy"))
    assert error.value.errno == errno.ENOSPC
    assert not list((tmp_path / "slot" / "builds").iterdir())


def test_a_pointer_is_read_bounded_and_checked(small_scan, tmp_path):
    with prepare(small_scan, CONFIG, cache_dir=tmp_path, progress=False) as store:
        path = store.path
    (path / "current").write_text("f" * 10_000_000)
    with pytest.raises(StoreCorruptError, match=r"current: 'f{64}\.\.\.' is not a build id"):
        open_store(path)


def test_a_store_error_stays_an_os_error_and_a_value_error(small_scan, tmp_path):
    with prepare(small_scan, CONFIG, cache_dir=tmp_path, progress=False) as store:
        frames = Path(store.info()["frames_path"])
        path = store.path
    values = json.loads((frames / "manifest.json").read_text())
    values["N"] = "sixteen"
    (frames / "manifest.json").write_text(json.dumps(values))
    for caught in (StoreError, OSError, ValueError):
        with pytest.raises(caught, match="key 'N'"):
            open_store(path)
