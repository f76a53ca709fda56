"""Block order, for stores larger than the page cache: every group once an epoch, read in long
runs of neighbouring groups, resumable like the full permutation."""

from pathlib import Path

import numpy as np
import pytest

from ptychodata.errors import GroupIndexError, ParameterError

torch = pytest.importorskip("torch")
from ptychodata.torch import GroupSampler, block_order, make_loader  # noqa: E402


@pytest.mark.parametrize(("n", "block", "window"), [(1000, 64, 4), (1001, 64, 4), (10, 64, 16), (0, 8, 2), (97, 1, 1)])
def test_every_group_once_an_epoch(n, block, window):
    order = block_order(n, 3, 1, block=block, window=window)
    assert order.dtype == np.int64 and np.array_equal(np.sort(order), np.arange(n))


def test_a_window_of_the_order_holds_whole_blocks_and_is_shuffled():
    block, window = 50, 4
    order = block_order(10_000, 7, 0, block=block, window=window)
    for begin in range(0, 10_000, block * window):
        run = order[begin : begin + block * window]
        blocks = np.unique(run // block)
        assert len(blocks) == window and len(run) == block * window  # whole blocks, nothing else
        assert not np.all(np.diff(run) > 0), "the groups of a window are shuffled"
    jumps = np.count_nonzero(np.abs(np.diff(np.sort(order[: block * window]))) > 1)
    assert jumps <= window, "a window reads at most `window` runs of the file"


def test_the_order_depends_on_seed_and_epoch_only():
    a = block_order(500, 1, 2, block=20, window=3)
    assert np.array_equal(a, block_order(500, 1, 2, block=20, window=3))
    assert not np.array_equal(a, block_order(500, 1, 3, block=20, window=3))
    assert not np.array_equal(a, block_order(500, 2, 2, block=20, window=3))


@pytest.mark.parametrize(("before", "after"), [(2, 3), (1, 2)])
def test_a_block_ordered_run_resumes_with_exactly_the_rest(before, after):
    n = 203
    first = [GroupSampler(n, 4, seed=5, block=16, window=2, num_replicas=before, rank=r) for r in range(before)]
    used = set()
    for sampler in first:
        for batch, _ in zip(sampler, range(5)):
            used.update(batch)
    state = first[0].state_dict(batches_done=5)
    assert state["block"] == [16, 2]
    resumed = [GroupSampler(n, 8, seed=0, num_replicas=after, rank=r) for r in range(after)]  # no block given
    rest = []
    for sampler in resumed:
        sampler.load_state_dict(state)
        rest += [i for batch in sampler for i in batch]
    assert set(rest) == set(range(n)) - used and not set(rest) & used
    assert np.array_equal(resumed[0].global_order(), block_order(n, 5, 0, block=16, window=2))


def test_block_order_is_refused_where_it_has_no_meaning(tmp_path):
    from ptychodata import GroupingConfig, prepare, simulate
    from ptychodata.dataset import GroupKeys, Mixing

    plain = GroupKeys.of(["aa"], np.zeros(10, np.int64), np.arange(10), "f")
    mixing = Mixing(np.array([10]), np.zeros(1, np.int64), ("aa",), batching="stratified", description="by beamline")
    keys = GroupKeys.of(["aa"], np.zeros(10, np.int64), np.arange(10), "f", mixing=mixing)
    with pytest.raises(ParameterError, match=r"block=8 with stratified batches \(by beamline\); block order needs "
                                             "random batching"):
        GroupSampler(10, 2, keys=keys, block=8)
    with pytest.raises(ParameterError, match="block=8 with stratified batches"):
        keys.epoch(0, 0, block=8)
    assert len(GroupSampler(10, 2, keys=plain, block=8).global_order()) == 10
    with pytest.raises(ParameterError, match="block=0"):
        GroupSampler(10, 2, block=0)
    store = prepare(simulate(30, 16, seed=1, progress=False), GroupingConfig(gridsize=1, seed=0),
                    cache_dir=tmp_path, progress=False)
    with store:
        with pytest.raises(ParameterError, match="block=8 with resident=True"):
            make_loader(store, 4, resident=True, device="cpu", block=8)
        with pytest.raises(ParameterError, match="window=8 without block="):
            make_loader(store, 4, window=8)
        loader = make_loader(store, 4, block=8, background=0)
        served = [i for batch in loader for i in batch["group_index"].tolist()]
        assert sorted(served) == list(range(len(store)))
        narrow = make_loader(store, 4, block=4, window=2, seed=3, background=0).sampler
        np.testing.assert_array_equal(narrow.global_order(), block_order(len(store), 3, 0, block=4, window=2))
        with pytest.raises(ParameterError, match="window=0"):
            make_loader(store, 4, block=4, window=0)


def test_each_window_is_read_ahead_once_before_it_is_served():
    n, block, window = 1000, 25, 2
    sampler = GroupSampler(n, 10, seed=2, block=block, window=window, num_replicas=1, rank=0)
    calls = []
    sampler.read_ahead = lambda groups: calls.append((len(served), groups.copy()))
    served = []
    for batch in sampler:
        served.extend(batch)
    run = block * window
    assert [start for start, _ in calls] == [0] + [w * run for w in range(n // run - 1)]  # one window ahead
    for w, (_, groups) in enumerate(calls):
        np.testing.assert_array_equal(groups, sampler.global_order()[w * run : (w + 1) * run])


def test_a_store_reads_the_patterns_of_groups_ahead(tmp_path):
    from ptychodata import GroupingConfig, prepare, simulate

    with prepare(simulate(40, 16, seed=3, progress=False), GroupingConfig(gridsize=2, seed=0), cache_dir=tmp_path,
                 progress=False) as store:
        store.read_ahead(np.arange(len(store)))  # asks the OS; nothing to see but no error
        store.read_ahead([])
        with pytest.raises(GroupIndexError, match=f"group index {len(store)} out of range"):
            store.read_ahead([len(store)])


def test_a_store_reads_rows_ahead_on_its_own_thread_in_order_in_pieces(tmp_path, monkeypatch):
    import os
    import threading

    from ptychodata import GroupingConfig, prepare, simulate
    from ptychodata.store import _threads

    with prepare(simulate(40, 16, seed=3, progress=False), GroupingConfig(gridsize=1, seed=0), cache_dir=tmp_path,
                 progress=False) as store:
        row = store.patterns[:1].nbytes
        path = next(tmp_path.rglob("patterns.npy"))
        offset = path.stat().st_size - store.patterns.nbytes
        release, calls, pread = threading.Event(), [], os.preadv

        def slow_pread(fd, buffers, at):  # a disk that takes its time
            calls.append((threading.current_thread().name, at, sum(len(b) for b in buffers)))
            release.wait(10)
            return pread(fd, buffers, at)

        monkeypatch.setattr(_threads.os, "preadv", slow_pread)
        monkeypatch.setattr(_threads, "_READ_AHEAD_PIECE", 5 * row)
        first_rows = np.argsort(store.groups[:, 0])[:12]  # the groups of rows 0..11: one run
        reading = store.read_ahead(first_rows)
        assert not reading.done()  # returned while the first piece is still being read
        release.set()
        reading.result(timeout=10)
        monkeypatch.undo()
        assert [call[1:] for call in calls] == [(offset, 5 * row), (offset + 5 * row, 5 * row),
                                                (offset + 10 * row, 2 * row)]
        assert all(name.startswith("ptychodata-read-ahead") for name, *_ in calls)
    assert store.read_ahead.__self__._reading_ahead.submit(path, [(0, row)]).done()  # closed: reads nothing


def test_a_window_is_served_only_once_it_is_read():
    import threading
    import time
    from concurrent.futures import Future

    sampler = GroupSampler(100, 10, seed=2, block=10, window=2, num_replicas=1, rank=0)
    reads: list[Future] = []

    def read_ahead(groups):
        reads.append(Future())
        return reads[-1]

    sampler.read_ahead = read_ahead
    served: list[list[int]] = []
    thread = threading.Thread(target=lambda: [served.append(batch) for batch in sampler], daemon=True)

    def settled(batches: int, asked: int) -> bool:  # the thread got that far (and no further, briefly)
        deadline = time.monotonic() + 10
        while (len(served), len(reads)) != (batches, asked) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        return (len(served), len(reads)) == (batches, asked)

    thread.start()
    assert settled(0, 2)  # waits for window 0 while window 1 is being read
    reads[0].set_result(None)
    assert settled(2, 3)  # window 0 served; waits for window 1, window 2 asked for
    for w in range(1, 5):
        reads[w].set_result(None)
        assert settled(2 * (w + 1), min(w + 3, 5))
    thread.join(10)
    assert not thread.is_alive()
    assert sorted(i for batch in served for i in batch) == list(range(100))


def test_a_read_ahead_cancelled_by_a_closed_store_does_not_stop_the_epoch():
    from concurrent.futures import Future

    def cancelled(groups):
        reading = Future()
        reading.cancel()
        return reading

    sampler = GroupSampler(100, 10, seed=2, block=10, window=2, num_replicas=1, rank=0)
    sampler.read_ahead = cancelled
    assert sorted(i for batch in sampler for i in batch) == list(range(100))


def test_a_window_is_released_once_the_next_one_is_served():
    n, block, window, batch = 1000, 25, 2, 10
    sampler = GroupSampler(n, batch, seed=2, block=block, window=window, num_replicas=1, rank=0)
    events = []
    sampler.read_ahead = lambda groups: events.append(("read", groups.copy()))
    sampler.release = lambda groups: events.append(("release", len(served), groups.copy()))
    served = []
    for indices in sampler:
        served.extend(indices)
    run, order = block * window, sampler.global_order()
    released = [event[1:] for event in events if event[0] == "release"]
    assert [at for at, _ in released] == [w * run for w in range(n // run)]  # at each window's first batch
    # First the whole order, before anything is read: what an earlier use left mapped goes.
    np.testing.assert_array_equal(released[0][1], order)
    assert events[0][0] == "release"
    for w, (_, groups) in enumerate(released[1:]):
        np.testing.assert_array_equal(groups, order[w * run : (w + 1) * run])  # the window before, once
    reads = [i for i, event in enumerate(events) if event[0] == "read"]
    releases = [i for i, event in enumerate(events) if event[0] == "release"][1:]
    # Window w is dropped once window w+1 is served (read before), before window w+2 is asked for.
    assert all(reads[w + 1] < releases[w] < reads[w + 2] for w in range(len(releases) - 1))


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "zero-copy"])
def test_a_released_window_drops_its_file_ranges_and_reads_the_same_again(tmp_path, monkeypatch, copy):
    import mmap

    from ptychodata import GroupingConfig, prepare, simulate
    from ptychodata.store import _threads

    source = simulate(40, 16, seed=3, progress=False).save(tmp_path / "scan.npz")
    with prepare(source, GroupingConfig(gridsize=1, seed=0), cache_dir=tmp_path / "cache", copy=copy,
                 progress=False) as store:
        before = store.batch(np.arange(len(store)))["X"].copy()
        row = store.patterns[:1].nbytes
        if copy:
            path = next(tmp_path.rglob("patterns.npy"))
            offset = path.stat().st_size - store.patterns.nbytes
        else:
            path, offset = source, store.frames.patterns.offset
        advised, mapped, fadvise = [], [], getattr(_threads.os, "posix_fadvise", None)
        forget = _threads.ReadAheadThread._forget

        def record(fd, at, nbytes, advice):
            advised.append((at, nbytes, advice))
            if fadvise is not None:
                fadvise(fd, at, nbytes, advice)

        def spy(where, ranges, mapping, page_cache):
            mapped.append(mapping)
            forget(where, ranges, mapping, page_cache)

        monkeypatch.setattr(_threads.os, "posix_fadvise", record, raising=False)
        monkeypatch.setattr(_threads.os, "POSIX_FADV_DONTNEED", getattr(_threads.os, "POSIX_FADV_DONTNEED", 4),
                            raising=False)
        monkeypatch.setattr(_threads.ReadAheadThread, "_forget", staticmethod(spy))
        store.release(np.arange(len(store)), page_cache=False).result(timeout=10)
        assert advised == [] and len(mapped) == 1  # unmapped from this process only
        store.release(np.arange(len(store))).result(timeout=10)
        monkeypatch.undo()
        assert advised == [(offset, len(store.patterns) * row, _threads.os.POSIX_FADV_DONTNEED)]
        (mapping, start), _ = mapped  # the mmap the store reads its patterns from, and its file offset
        assert isinstance(mapping, mmap.mmap)
        at = offset + 7 * row - start
        assert mapping[at : at + row] == store.patterns[7].tobytes() == Path(path).read_bytes()[at + start :][:row]
        np.testing.assert_array_equal(store.batch(np.arange(len(store)))["X"], before)  # read again from the file
        assert store.release([]).result(timeout=10) is None
        with pytest.raises(GroupIndexError, match=f"group index {len(store)} out of range"):
            store.release([len(store)])


def test_pages_dropped_from_a_mapping_read_the_file_again(tmp_path):
    import mmap

    from ptychodata.store._threads import ReadAheadThread

    path = tmp_path / "rows.bin"
    data = np.random.default_rng(0).integers(0, 255, 5 * mmap.PAGESIZE + 100, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(mapped, np.uint8)
    assert view.sum() == data.sum()  # every page mapped
    thread = ReadAheadThread()
    thread.forget(str(path), [(100, 4 * mmap.PAGESIZE)], (mapped, 0)).result(timeout=10)  # pages 1-3 whole
    np.testing.assert_array_equal(view, data)
    thread.close()
    del view
    mapped.close()


def test_make_loader_releases_served_windows_only_of_a_store_larger_than_memory(tmp_path, monkeypatch):
    from ptychodata import GroupingConfig, prepare, simulate
    from ptychodata.torch import _loader

    with prepare(simulate(30, 16, seed=1, progress=False), GroupingConfig(gridsize=1, seed=0), cache_dir=tmp_path,
                 progress=False) as store:
        monkeypatch.setattr(_loader, "available_memory", lambda: store.patterns.nbytes)
        assert make_loader(store, 4, block=8, background=0).sampler.release is None  # it fits
        monkeypatch.setattr(_loader, "available_memory", lambda: store.patterns.nbytes - 1)
        with pytest.warns(UserWarning, match="block=8, window=16: two windows"):  # 30 groups: one window
            loader = make_loader(store, 4, block=8, background=0)
        assert loader.sampler.release == store.release
        served = [i for batch in loader for i in batch["group_index"].tolist()]
        assert sorted(served) == list(range(len(store)))
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # rank 0 of 2
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
        with pytest.warns(UserWarning, match="two windows"):
            release = make_loader(store, 4, block=8, background=0).sampler.release
        assert release.func == store.release and release.keywords == {"page_cache": False}  # shared by the ranks
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
        monkeypatch.setattr(_loader, "available_memory", lambda: None)  # nothing known: nothing dropped
        assert make_loader(store, 4, block=8, background=0).sampler.release is None
        monkeypatch.setattr(_loader, "available_memory", lambda: 0)
        with pytest.warns(UserWarning, match="two windows"):
            assert make_loader(store, 4, block=8, num_workers=1).sampler.release is None  # workers map their pages


def test_make_loader_warns_of_an_order_that_would_read_a_store_larger_than_memory_at_random(tmp_path, monkeypatch):
    import warnings

    from ptychodata import GroupingConfig, prepare, simulate
    from ptychodata.torch import _loader

    with prepare(simulate(400, 16, seed=1, progress=False), GroupingConfig(gridsize=1, seed=0), cache_dir=tmp_path,
                 progress=False) as store:
        nbytes = store.patterns.nbytes
        monkeypatch.setattr(_loader, "available_memory", lambda: nbytes // 2)
        with pytest.warns(UserWarning, match=r"patterns \(400\.00 KiB \(409600 bytes\)\) are more than the memory this process may use \(200\.00 KiB \(204800 bytes\)\).*block=4096"):
            make_loader(store, 4, background=0)
        with pytest.warns(UserWarning, match=r"block=8, window=16: two windows hold about 256\.00 KiB \(262144 bytes\) of patterns, more than 1/4 of the memory this process may use \(200\.00 KiB \(204800 bytes\)\); .* read again; window=3 keeps them within it"):
            make_loader(store, 4, block=8, background=0)  # two windows: 256 of 400 groups
        with pytest.warns(UserWarning, match=r"block=64, window=16: two windows hold about 400\.00 KiB .* a smaller block \(and window\) keeps"):
            make_loader(store, 4, block=64, background=0)  # two windows: the whole store
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            make_loader(store, 4, block=8, window=3, background=0)  # two windows of 48 KiB: within 50 KiB
            make_loader(store, 4, block=2, window=4, background=0)
            make_loader(store, 4, shuffle=False, background=0)  # in file order: read in runs anyway
            monkeypatch.setattr(_loader, "available_memory", lambda: nbytes)
            make_loader(store, 4, background=0)  # it fits


def test_a_resumed_pass_releases_the_whole_order_then_the_windows_it_serves():
    n, block, window, batch = 1000, 25, 2, 10
    first = GroupSampler(n, batch, seed=2, block=block, window=window, num_replicas=1, rank=0)
    state = first.state_dict(batches_done=12)  # resumes inside the third window (groups 120 onwards)
    sampler = GroupSampler(n, batch, seed=2, block=block, window=window, num_replicas=1, rank=0)
    sampler.load_state_dict(state)
    released = []
    sampler.read_ahead = lambda groups: None
    sampler.release = lambda groups: released.append(groups.copy())
    served = [i for indices in sampler for i in indices]
    run, order = block * window, sampler.global_order()
    np.testing.assert_array_equal(served, order[120:])
    np.testing.assert_array_equal(released[0], order)
    assert [list(groups) for groups in released[1:]] == [list(order[w * run : (w + 1) * run]) for w in range(2, n // run - 1)]


def test_a_pass_left_before_its_end_has_its_reads_ahead_cancelled_by_the_next():
    import pickle
    from concurrent.futures import Future

    asked: list[Future] = []

    def read_ahead(groups):
        asked.append(Future())
        if len(asked) in (1, 3):  # the first window of each pass is read; the next ones never
            asked[-1].set_result(None)
        return asked[-1]

    sampler = GroupSampler(100, 10, seed=2, block=10, window=2, num_replicas=1, rank=0)
    sampler.read_ahead = read_ahead
    first = sampler.iter_arrays()
    next(first)  # window 0 served, window 1 asked for
    assert len(asked) == 2 and not asked[1].cancelled()
    second = iter(sampler)  # a new pass: window 1 of the first is served by no one
    next(second)
    assert asked[1].cancelled() and not asked[3].cancelled()
    sampler.read_ahead = None  # (a local function does not pickle; a store's method does)
    copy = pickle.loads(pickle.dumps(sampler))  # futures stay in this process
    assert copy._reading == [] and len(sampler._reading) == 2


def test_cancelling_a_datasets_read_ahead_cancels_its_scans_reads_not_yet_started():
    from concurrent.futures import Future

    from ptychodata.dataset._view import _all_of

    parts = [Future() for _ in range(3)]
    combined = _all_of(parts)
    parts[0].set_running_or_notify_cancel()  # being read: it goes on
    assert combined.cancel()
    assert [part.cancelled() for part in parts] == [False, True, True]
    parts = [Future() for _ in range(2)]
    combined = _all_of(parts)
    parts[0].set_result(None)
    assert not combined.done()
    parts[1].set_result(None)
    assert combined.done() and combined.result() is None
    assert _all_of([]).done()
