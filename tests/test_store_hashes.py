"""Per-file content hashes: computed while each store file is written (no second read), recorded in
the manifests, and checked by ``verify_store`` (a flipped bit found, an older build reported as
not verified rather than passed)."""

import hashlib
import json

import numpy as np
import pytest

from ptychodata import GroupingConfig, prepare
from ptychodata.errors import StoreError
from ptychodata.store import verify_store
from ptychodata.store._files import NpyWriter, write_npy
from ptychodata.store._manifest import FrameManifest, write_manifest_last

CONFIG = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_dirs(store):
    info = store.info()
    from pathlib import Path

    return Path(info["frames_path"]), Path(info["build_path"])


@pytest.mark.parametrize("direct_io", [False, True])
def test_every_file_of_a_build_records_the_sha256_of_its_bytes(small_scan, tmp_path, direct_io):
    with prepare(small_scan, CONFIG, cache_dir=tmp_path, progress=False, materialize=True,
                 direct_io=direct_io) as store:
        for build in build_dirs(store):
            files = json.loads((build / "manifest.json").read_text())["files"]
            assert files and {name for name in files} == {p.name for p in build.glob("*.npy")}
            for name, entry in files.items():
                assert entry["sha256"] == sha256(build / name), name


@pytest.mark.parametrize("rows", [3, 200_000])  # a few bytes (hashed in line) and 3.2 MB (on the hash thread)
def test_the_writer_hashes_what_it_writes_in_pieces(tmp_path, rows):
    data = np.random.default_rng(0).random((rows, 2), dtype=np.float64)
    digests = {}
    with NpyWriter(tmp_path / "a.npy", data.shape, data.dtype, digests=digests) as writer:
        for start in range(0, rows, max(1, rows // 7)):
            writer.write(data[start : start + max(1, rows // 7)])
    assert digests == {"a.npy": sha256(tmp_path / "a.npy")}
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), data)


def test_an_abandoned_writer_records_no_hash(tmp_path):
    digests = {}
    with pytest.raises(ValueError, match="wrote 1 of 2 rows"), NpyWriter(tmp_path / "a.npy", (2, 3), np.float32,
                                                                        digests=digests) as writer:
        writer.write(np.zeros((1, 3), np.float32))
        writer.close()
    assert digests == {}


def test_a_file_written_without_a_hash_is_refused_in_the_manifest(tmp_path):
    np.save(tmp_path / "energies.npy", np.zeros(3))
    write_npy(tmp_path / "xcoords.npy", np.zeros(3), digests={})
    with pytest.raises(StoreError, match="energies.npy: written without its content hash"):
        write_manifest_last(tmp_path, FrameManifest, digests={"xcoords.npy": "00"})


def test_verify_finds_a_flipped_bit_and_quick_does_not_read_content(small_scan, tmp_path):
    with prepare(small_scan, CONFIG, cache_dir=tmp_path, progress=False) as store:
        frames, _ = build_dirs(store)
        slot = store.path.parent.parent
    assert verify_store(slot) == []
    with open(frames / "energies.npy", "r+b") as handle:
        handle.seek(-2, 2)
        byte = handle.read(1)[0]
        handle.seek(-2, 2)
        handle.write(bytes([byte ^ 0x10]))
    problems = verify_store(slot)
    assert len(problems) == 1 and "energies.npy" in problems[0] and "SHA-256" in problems[0]
    assert verify_store(slot, content=False) == []


def test_a_build_without_hashes_is_reported_not_verified(small_scan, tmp_path):
    with prepare(small_scan, CONFIG, cache_dir=tmp_path, progress=False) as store:
        frames, grouping = build_dirs(store)
        slot = store.path.parent.parent
    for build in (frames, grouping):
        values = json.loads((build / "manifest.json").read_text())
        for entry in values["files"].values():
            del entry["sha256"]
        (build / "manifest.json").write_text(json.dumps(values))
    problems = verify_store(slot)
    assert len(problems) == 2 and all("NOT verified" in problem for problem in problems)
    assert verify_store(slot, content=False) == []


@pytest.mark.parametrize("copy", [True, False])
def test_a_grouping_can_be_a_function_of_the_files_sha256(scan_file, tmp_path, copy):
    seen = []

    def grouping(digest):
        seen.append(digest)
        return GroupingConfig(gridsize=2, neighbor_count=6, seed=int(digest[:8], 16))

    expected = sha256(scan_file)
    with prepare(scan_file, grouping, cache_dir=tmp_path, progress=False, copy=copy) as store:
        assert seen == [expected]
        groups = store.groups.copy()
    seed = int(expected[:8], 16)
    plain_config = GroupingConfig(gridsize=2, neighbor_count=6, seed=seed)
    with prepare(scan_file, plain_config, cache_dir=tmp_path / "plain", progress=False, copy=copy) as plain:
        np.testing.assert_array_equal(plain.groups, groups)
    with prepare(scan_file, grouping, cache_dir=tmp_path, progress=False, copy=copy) as again:  # found: same hash
        assert seen == [expected, expected] and again.build_id == store.build_id


def test_a_grouping_by_sha256_needs_exactly_one_file(scan_file, small_scan, tmp_path):
    from ptychodata.errors import ParameterError

    for sources in ([scan_file, scan_file], small_scan):
        with pytest.raises(ParameterError, match="needs exactly one file source"):
            prepare(sources, lambda digest: CONFIG, cache_dir=tmp_path, progress=False)
