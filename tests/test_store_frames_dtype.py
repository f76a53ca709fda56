"""Same options, same store: every spelling of a frames dtype names one store."""

import numpy as np
import pytest

from ptychodata import GroupingConfig, prepare, simulate
from ptychodata.errors import ParameterError
from ptychodata.io import write_npz
from ptychodata.store._frames import canonical_frames_dtype

CONFIG = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)


@pytest.fixture(scope="module")
def scan():
    return simulate(n_points=60, N=16, seed=2)


@pytest.fixture
def counts_file(tmp_path, scan):
    counts = np.round(scan.diffraction.astype(np.float64) ** 2 * 100).astype(np.uint16)
    arrays = {"diff3d": counts, "xcoords": scan.xcoords, "ycoords": scan.ycoords, "probeGuess": scan.probe}
    return write_npz(tmp_path / "counts.npz", arrays)


@pytest.mark.parametrize(
    ("given", "name"),
    [("uint16", "uint16"), (np.uint16, "uint16"), (np.dtype("uint16"), "uint16"), ("<u2", "uint16"),
     (np.float16, "float16"), ("bfloat16", "bfloat16"), (np.dtype(np.float32), "float32"), (None, None)],
)
def test_every_spelling_has_one_canonical_name(given, name):
    assert canonical_frames_dtype(given) == name


@pytest.mark.parametrize("given", [np.int8, "float64", np.dtype(np.complex64), "halves", 3])
def test_a_dtype_a_store_cannot_hold_is_refused_naming_it_and_the_choices(given):
    with pytest.raises(ParameterError, match=r"frames_dtype=.*; expected one of \('float32', 'float16', 'bfloat16'"):
        canonical_frames_dtype(given)


def test_uint16_as_a_name_a_numpy_type_or_a_dtype_gives_the_same_store(tmp_path, counts_file):
    cache = tmp_path / "cache"
    first = prepare(counts_file, CONFIG, cache_dir=cache, intensity=True, frames_dtype="uint16", progress=False)
    for spelling in (np.uint16, np.dtype("uint16")):
        again = prepare(counts_file, CONFIG, cache_dir=cache, intensity=True, frames_dtype=spelling, progress=False)
        assert again.path == first.path
        assert (again.frames_build_id, again.build_id) == (first.frames_build_id, first.build_id)  # reused
        assert again.frames_encoding.dtype == "uint16"
    assert [p.name for p in cache.glob("frames-*")] == [first.path.parent.parent.name]


def test_float32_named_or_by_default_gives_the_same_copy(tmp_path, scan):
    cache = tmp_path / "cache"
    default = prepare(scan, CONFIG, cache_dir=cache, progress=False)
    for spelling in ("float32", np.float32, np.dtype("float32")):
        named = prepare(scan, CONFIG, cache_dir=cache, frames_dtype=spelling, progress=False)
        assert (named.path, named.frames_build_id) == (default.path, default.frames_build_id)


def test_prepare_refuses_an_unknown_dtype_before_any_work(tmp_path, scan):
    with pytest.raises(ParameterError, match=r"frames_dtype=<class 'numpy\.int8'>; expected one of"):
        prepare(scan, CONFIG, cache_dir=tmp_path / "cache", frames_dtype=np.int8, progress=False)
    assert not (tmp_path / "cache").exists()
