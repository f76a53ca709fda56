"""A source file held open while a build reads it: its identity compared with the one recorded
when it was first opened, its memory-mapped arrays read with ``pread`` (a file that shrank is an
error, never a SIGBUS), and ``prepare``'s progress callback, the seam that drives the race in tests."""

import os

import numpy as np
import pytest

from ptychodata import GroupingConfig, ScanData, prepare
from ptychodata.errors import SourceChangedError
from ptychodata.store._source_file import FileState, SourceFile

CONFIG = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)


def memmapped(tmp_path, rows: int = 100):
    """A (rows, 8, 8) float32 memmap of a file holding 0, 1, 2, ... row by row, its path and state."""
    path = tmp_path / "a.npy"
    np.save(path, np.repeat(np.arange(rows, dtype=np.float32), 64).reshape(rows, 8, 8))
    array = np.load(path, mmap_mode="r")
    return array, str(path.resolve()), FileState.of(os.stat(path))


def test_rows_are_read_with_pread_as_the_map_holds_them(tmp_path):
    array, path, state = memmapped(tmp_path)
    with SourceFile.open(path, state) as file:
        assert file.covers(array) and not file.covers(array[1:]) and not file.covers(np.array(array))
        out = np.empty((10, 8, 8), np.float32)
        file.read_rows(array, 45, out)
        np.testing.assert_array_equal(out, array[45:55])
        chunks = list(file.rows(array, 30))
        np.testing.assert_array_equal(np.concatenate(chunks), array)
        file.check("at the end")


def test_a_file_that_shrank_is_an_error_not_a_signal(tmp_path):
    array, path, state = memmapped(tmp_path)
    with SourceFile.open(path, state) as file:
        os.truncate(path, os.path.getsize(path) // 2)  # the map's later pages are gone: touching them is SIGBUS
        out = np.empty((10, 8, 8), np.float32)
        with pytest.raises(SourceChangedError, match=r"it shrank to \d+ bytes; rows 90\.\.99 of 100"):
            file.read_rows(array, 90, out)
        with pytest.raises(SourceChangedError, match="its size changed"):
            file.check("now")


@pytest.mark.parametrize("how, says", [
    ("rewrite", "it was rewritten"),
    ("replace", "replaced by another file"),
    ("remove", "removed"),
    ("chmod", "inode change time"),
])
def test_each_kind_of_change_is_named(tmp_path, how, says):
    array, path, state = memmapped(tmp_path)
    if how == "rewrite":
        with open(path, "r+b") as handle:
            handle.write(handle.read(8))  # the same bytes: only the times tell
        os.utime(path, ns=(state.mtime_ns + 10**9, state.mtime_ns + 10**9))
    elif how == "replace":
        os.rename(path, path + ".old")
        np.save(path, np.zeros(3))
    elif how == "remove":
        os.unlink(path)
    else:
        os.chmod(path, 0o600)
    if how in ("replace", "remove"):
        with pytest.raises(SourceChangedError, match=says):
            SourceFile.open(path, state).close()
        return
    with SourceFile.open(path, FileState.of(os.stat(path))) as file:  # opened as the file is now
        file.recorded = state  # ... but recorded before the change
        with pytest.raises(SourceChangedError, match=f"{says}.*seen at the end"):
            file.check("at the end")


def test_the_progress_callback_sees_every_chunk_and_can_stop_a_build(tmp_path):
    rows, cols = np.divmod(np.arange(2100), 50)
    ScanData.from_arrays(diffraction=np.full((2100, 64, 64), 0.5, np.float32), xcoords=cols * 3.0,
                         ycoords=rows * 3.0, check_values=False).save(tmp_path / "scan.npz")
    seen = []
    with prepare(tmp_path / "scan.npz", CONFIG, cache_dir=tmp_path / "a", progress=lambda d, t: seen.append((d, t))):
        pass
    assert seen == [(2048, 2100), (2100, 2100)]  # two 32 MiB chunks of 64×64 float32 patterns

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(tmp_path / "scan.npz", CONFIG, cache_dir=tmp_path / "b", progress=stop)
    assert not list((tmp_path / "b").glob("frames-*/builds/*")) and not list((tmp_path / "b").rglob("current"))
