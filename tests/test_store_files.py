"""The store's .npy writer: buffered and O_DIRECT writes give files NumPy reads back exactly."""

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from ptychodata import GroupingConfig, prepare
from ptychodata.store import _files
from ptychodata.store._files import NpyWriter, map_npy, write_npy
from ptychodata.store._manifest import FileEntry

O_DIRECT = getattr(os, "O_DIRECT", 0)


def write_in_pieces(path: Path, array: np.ndarray, pieces: list[int], *, direct: bool) -> NpyWriter:
    with NpyWriter(path, array.shape, array.dtype, direct=direct) as writer:
        start = 0
        for rows in pieces:
            writer.write(array[start : start + rows])
            start += rows
    return writer


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize(
    ("shape", "dtype", "pieces"),
    [
        ((1000, 7, 7), np.float32, [1, 333, 666]),  # rows of 196 bytes: nothing block-aligned
        ((600, 64, 64), np.uint16, [600]),  # 4.9 MB in one write
        ((300, 64, 64), np.float32, [100, 100, 100]),  # crosses the 8 MiB staging buffer
        ((512, 64, 64), np.float32, [512]),  # exactly 8 MiB of data after the 4 KiB header
        ((1100, 64, 64), np.float32, [500, 600]),  # 18 MB: buffered writes start writeback on the way
        ((5,), np.float64, [2, 3]),
        ((0, 3, 3), np.float32, []),
    ],
)
def test_written_file_reads_back_exactly(tmp_path, direct, shape, dtype, pieces):
    rng = np.random.default_rng(1)
    array = (rng.random(shape) * 1000).astype(dtype)
    path = tmp_path / "a.npy"
    write_in_pieces(path, array, pieces, direct=direct)
    loaded = np.load(path)
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    np.testing.assert_array_equal(loaded, array)
    # The store's mapper (no header parsing: the data are the file's last bytes) agrees.
    np.testing.assert_array_equal(map_npy(path, FileEntry.of(path)), array)
    if direct:  # the header fills one block, so the data start block-aligned
        assert np.load(path, mmap_mode="r").offset == 4096 or array.size == 0


def skip_without_direct_io(directory: Path) -> None:
    if not O_DIRECT:
        pytest.skip("no O_DIRECT on this system")
    try:
        os.close(os.open(directory / "probe", os.O_WRONLY | os.O_CREAT | O_DIRECT))
    except OSError:
        pytest.skip("this file system refuses O_DIRECT")


def test_direct_write_bypasses_the_page_cache_where_the_file_system_allows(tmp_path):
    skip_without_direct_io(tmp_path)
    array = np.arange(3 * 64 * 64, dtype=np.float32).reshape(3, 64, 64)
    writer = write_in_pieces(tmp_path / "a.npy", array, [3], direct=True)
    assert writer.direct_io
    assert not write_in_pieces(tmp_path / "b.npy", array, [3], direct=False).direct_io


def test_direct_write_falls_back_to_the_page_cache_when_a_write_is_refused(tmp_path, monkeypatch):
    skip_without_direct_io(tmp_path)
    real_write = os.write
    refused = []

    def write_refusing_direct(fd, data):
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(_files.os, "write", write_refusing_direct)
    array = np.random.default_rng(2).random((700, 32, 32)).astype(np.float32)  # 2.9 MB, uneven tail
    path = tmp_path / "a.npy"
    writer = write_in_pieces(path, array, [350, 350], direct=True)
    assert refused == [2 * 1024 * 1024 + 4096 + 65536] or len(refused) == 1  # the first write, then buffered
    assert not writer.direct_io
    np.testing.assert_array_equal(np.load(path), array)


def test_unfinished_writer_raises_and_names_the_file(tmp_path):
    array = np.zeros((10, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"a\.npy: wrote 4 of 10 rows"):
        write_in_pieces(tmp_path / "a.npy", array, [4], direct=True)
    with pytest.raises(ValueError, match=r"rows of shape \(3, 5, 5\) do not fit \(10, 4, 4\)"):
        with NpyWriter(tmp_path / "b.npy", (10, 4, 4), np.float32, direct=True) as writer:
            writer.write(np.zeros((3, 5, 5), np.float32))


def test_a_zero_dimensional_array_is_refused_before_a_file_is_made(tmp_path):
    with pytest.raises(ValueError, match=r"s\.npy: a store file holds rows; got shape \(\)"):
        write_npy(tmp_path / "s.npy", np.float64(2.5))
    assert not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize("direct_io", [True, False])
def test_store_is_the_same_whichever_way_its_patterns_were_written(tmp_path, direct_io):
    from ptychodata import simulate

    source = tmp_path / "scan.npz"
    simulate(n_points=300, N=16, seed=0, out=source, progress=False)
    config = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)
    store = prepare(source, config, cache_dir=tmp_path / f"cache-{direct_io}", progress=False, direct_io=direct_io,
                    materialize=True)
    expected = np.load(source)["diff3d"].astype(np.float32)
    np.testing.assert_array_equal(store.patterns, expected)
    batch = store.batch(np.arange(len(store)))
    np.testing.assert_array_equal(batch["X"], expected[store.groups].astype(np.float32) * np.float32(store.x_scale))


def test_cli_flags_choose_how_patterns_are_written(tmp_path, monkeypatch, capsys):
    import ptychodata.store
    from ptychodata import cli, simulate

    source = tmp_path / "scan.npz"
    simulate(n_points=100, N=16, seed=0, out=source, progress=False)
    seen = []

    def recording_prepare(*args, **kwargs):
        seen.append(kwargs["direct_io"])
        return prepare(*args, **kwargs)

    monkeypatch.setattr(ptychodata.store, "prepare", recording_prepare)  # what the command imports
    for flags in ([], ["--page-cache"], ["--direct-io"]):
        assert cli.main(["prepare", str(source), "--cache-dir", str(tmp_path / "cache"), "--quiet", *flags]) == 0
    assert seen == [None, False, True]
    assert cli.main(["prepare", str(source), "--direct-io", "--page-cache"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_default_writes_past_the_cache_only_what_it_could_not_keep(monkeypatch):
    from ptychodata.store._files import use_direct_io

    assert use_direct_io(True, 1) and not use_direct_io(False, 1 << 50)
    assert not use_direct_io(None, 1 << 20)
    if Path("/proc/meminfo").exists():
        assert use_direct_io(None, 1 << 60)  # more than any machine's memory

    def unreadable(*args, **kwargs):
        raise FileNotFoundError("/proc/meminfo")

    monkeypatch.setattr("builtins.open", unreadable)
    assert not use_direct_io(None, 1 << 60)  # unknown memory: through the cache


@pytest.mark.parametrize(
    ("meminfo", "limits", "expected"),
    [
        ("MemTotal: 100 kB\nMemAvailable:    64 kB\n", {}, 64 * 1024),  # no container limit
        ("MemAvailable: 64 kB\n", {"/sys/fs/cgroup/memory.max": "8192\n"}, 8192),  # v2 limit below it
        ("MemAvailable: 64 kB\n", {"/sys/fs/cgroup/memory.max": "max\n"}, 64 * 1024),  # v2, no limit
        ("MemAvailable: 4 kB\n", {"/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712"}, 4096),  # v1
        (None, {"/sys/fs/cgroup/memory/memory.limit_in_bytes": "1048576"}, 1 << 20),
        (None, {}, None),
        ("MemAvailable: 64 kB\n", {"/sys/fs/cgroup/memory.max": "8192\n", "/sys/fs/cgroup/memory.current": "1024"},
         7168),  # v2 limit less what the container uses
    ],
)
def test_available_memory_is_capped_by_the_container_limit(monkeypatch, meminfo, limits, expected):
    import io

    from ptychodata._runtime import available_memory
    from ptychodata.store._files import use_direct_io

    files = dict(limits)
    if meminfo is not None:
        files["/proc/meminfo"] = meminfo

    def fake_open(path, *args, **kwargs):
        if str(path) in files:
            return io.StringIO(files[str(path)])
        raise FileNotFoundError(path)

    monkeypatch.setattr("builtins.open", fake_open)
    assert available_memory() == expected
    if expected is not None:
        assert use_direct_io(None, expected // 2 + 1) and not use_direct_io(None, expected // 2)


def test_buffered_writes_start_writeback_of_consecutive_ranges(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(_files, "_start_writeback", lambda fd, offset, nbytes: started.append((offset, nbytes)))
    array = np.random.default_rng(3).random((1100, 64, 64)).astype(np.float32)  # 18 MB
    path = tmp_path / "a.npy"
    write_in_pieces(path, array, [300, 300, 500], direct=False)
    size = path.stat().st_size
    assert started and started[0][0] == 0  # the header's bytes included
    for (offset, nbytes), (following, _) in zip(started, started[1:] + [(None, None)]):
        assert nbytes >= _files._WRITEBACK_BYTES
        assert following is None or following == offset + nbytes
    assert started[-1][0] + started[-1][1] == size  # the last write ended the file: all of it started
    np.testing.assert_array_equal(np.load(path), array)
