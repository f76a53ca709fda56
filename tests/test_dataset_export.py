"""Moving a dataset: export to a self-contained directory, import checked by size and hash."""

import json
import os

import numpy as np
import pytest

from ptychodata import Dataset, GroupingConfig, open_dataset, simulate
from ptychodata.dataset import import_dataset
from ptychodata.errors import ParameterError, StoreCorruptError, StoreNotFoundError

CONFIG = GroupingConfig(gridsize=2, neighbor_count=5, seed=7)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A weighted two-scan dataset and its export (hard links)."""
    root = tmp_path_factory.mktemp("export")
    paths = [simulate(30, 16, seed=s, progress=False).save(root / f"e{s}.npz") for s in (1, 2)]
    dataset = Dataset.create("moved", CONFIG, cache_dir=root / "cache")
    dataset.add(paths, tags={"kind": "sim"})
    dataset.set_weights({"e1.npz": 2})
    directory = dataset.export(root / "export")
    return dataset, directory


def _all_batches(data):
    return data.batch(np.arange(len(data)))


def test_an_import_is_the_same_dataset_in_another_cache(exported, tmp_path):
    dataset, directory = exported
    record = json.loads((directory / "ptychodata-export.json").read_text())
    assert record["build_id"] == dataset.build_id
    assert all(not os.path.isabs(f["path"]) for f in record["files"])
    change = import_dataset(directory, cache_dir=tmp_path)
    assert change.build_id == dataset.build_id and len(change.added) == 2
    with open_dataset("moved", cache_dir=dataset.cache_dir) as here, open_dataset("moved", cache_dir=tmp_path) as there:
        assert there.weights == here.weights
        a, b = _all_batches(here), _all_batches(there)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    with open_dataset("moved", cache_dir=directory / "cache") as in_place:  # readable where it lies
        assert in_place.fingerprint == dataset.build_id
    again = import_dataset(directory, cache_dir=tmp_path)  # builds already there: used as they are
    assert again.build_id == change.build_id and again.added == [] and len(again.unchanged) == 2


def test_exported_files_are_hard_links_or_copies(exported, tmp_path):
    dataset, directory = exported
    build = dataset.scans()[0]
    grouping = build.build_dirs()[0]
    original = dataset.cache_dir / grouping / "groups.npy"
    linked = directory / "cache" / grouping / "groups.npy"
    assert os.stat(original).st_ino == os.stat(linked).st_ino
    copied = dataset.export(tmp_path / "copy", link=False) / "cache" / grouping / "groups.npy"
    assert os.stat(copied).st_ino != os.stat(original).st_ino
    assert copied.read_bytes() == original.read_bytes()


def test_a_damaged_export_is_refused_naming_the_file_and_nothing_is_published(exported, tmp_path):
    dataset, directory = exported
    damaged = tmp_path / "damaged"
    dataset.export(damaged, link=False)
    target = next((damaged / "cache").rglob("patterns.npy"))
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    target.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptError, match=rf"{target.name}: SHA-256 [0-9a-f]{{64}}, but the export lists"):
        import_dataset(damaged, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "datasets" / "moved").exists()
    assert not list((tmp_path / "cache" / "datasets" / ".imports").iterdir())  # staging removed
    target.write_bytes(bytes(data[:-8]))
    with pytest.raises(StoreCorruptError, match=rf"{target.name}: {len(data) - 8} bytes, but the export lists "
                                                rf"{len(data)}"):
        import_dataset(damaged, cache_dir=tmp_path / "cache")
    (damaged / "ptychodata-export.json").unlink()
    with pytest.raises(StoreNotFoundError, match="no ptychodata-export.json; expected a directory written by"):
        import_dataset(damaged, cache_dir=tmp_path / "cache")


def test_export_refuses_a_used_directory_and_import_another_spec(exported, tmp_path):
    dataset, directory = exported
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(ParameterError, match="exists and is not an empty directory"):
        dataset.export(tmp_path / "used")
    assert (tmp_path / "used" / "notes.txt").read_text() == "mine"
    Dataset.create("moved", GroupingConfig(gridsize=1, neighbor_count=4, seed=1), cache_dir=tmp_path / "cache")
    with pytest.raises(ParameterError, match="exists in .* with another spec"):
        import_dataset(directory, cache_dir=tmp_path / "cache")
    change = import_dataset(directory, cache_dir=tmp_path / "cache", name="moved-too")
    assert change.build_id == dataset.build_id
