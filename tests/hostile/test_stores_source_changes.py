"""A source that changes while it is prepared: rewritten in place, replaced, truncated, grown or
removed, in the middle of the pattern stream or after it.

The race is driven deterministically: ``prepare``'s progress callback changes the file once a
number of patterns were read (no sleeps). Each case must raise ``SourceChangedError`` (never a
torn store served, never a ``SIGBUS``), leave the cache as it was (the earlier build live, no
temporary), and a later prepare of the file as it ends up serves exactly that file.
"""

from __future__ import annotations

import pytest

from ptychodata.errors import ScanDataError, ScanFileNotFoundError, ScanFormatError, SourceChangedError

from . import _stores
from ._harness import (
    FULL,
    assert_cache_intact,
    expect_error,
    expect_ok,
    expect_ok_or_error,
    run_case,
    snapshot,
)

TIMEOUT = 60.0
STREAM_CASES = ["truncate-half", "truncate-zero", "overwrite", "replace", "append", "remove"]
SMALL_CASES = ["truncate-half", "truncate-tail", "overwrite", "overwrite-keep-mtime", "replace", "remove"]


def _earlier_build(tmp_path, m: int, n: int, **kwargs):
    """A cache holding an earlier build, and the source to prepare (version 2). The earlier build
    is of version 1 of the same (small) source, or of another small file beside a large source."""
    source, cache = tmp_path / "scan.npz", tmp_path / "cache"
    earlier = source if m == _stores.M else tmp_path / "earlier.npz"
    _stores.write_source(earlier, 1.0, **(kwargs if earlier == source else {}))
    expect_ok(run_case(_stores.prepare_serving, earlier, cache, timeout=TIMEOUT))
    _stores.write_source(source, 2.0, m=m, n=n, **kwargs)
    return source, cache, snapshot(cache)


def _afterwards(source, cache) -> None:
    """Once the change is over, prepare serves the file as it is now: version 2 throughout, or a
    named error for a file that no longer loads (a truncated or removed one)."""
    outcome = expect_ok_or_error(run_case(_stores.prepare_serving, source, cache, timeout=TIMEOUT), ScanDataError,
                                 ScanFormatError, ScanFileNotFoundError)
    if outcome.kind == "ok" and outcome.value[1] == outcome.value[2]:
        assert outcome.value[1] == 2.0, outcome.value  # a uniform store is version 2, never version 1
    elif outcome.kind == "ok":  # a file overwritten in place holds zeros where it was hit, and twos
        assert (outcome.value[1], outcome.value[2]) == (0.0, 2.0), outcome.value


STREAM = [(how, copy) for how in STREAM_CASES for copy in (True, False)]


@pytest.mark.parametrize(
    "how, copy", STREAM if FULL else [("truncate-half", True), ("truncate-half", False), ("overwrite", True),
                                      ("replace", False)]
)
def test_changed_between_two_chunks_of_the_stream(tmp_path, how, copy):
    source, cache, before = _earlier_build(tmp_path, _stores.BIG_M, _stores.BIG_N)
    outcome = run_case(_stores.prepare_changing, source, cache, source, how, at=1, copy=copy, timeout=TIMEOUT)
    expect_error(outcome, SourceChangedError, match=str(source))
    assert_cache_intact(before, cache)
    if FULL:
        _afterwards(source, cache)


@pytest.mark.parametrize("how", SMALL_CASES)
def test_changed_after_the_last_pattern_was_read(tmp_path, how):
    """One chunk: the change lands after the stream, before the positions, probe and patches are
    read from the file (memory-mapped: a truncation would be a SIGBUS there)."""
    source, cache, before = _earlier_build(tmp_path, _stores.M, _stores.N, Y=True)
    outcome = run_case(_stores.prepare_changing, source, cache, source, how, at=1, timeout=TIMEOUT)
    expect_error(outcome, SourceChangedError, match="changed while it was prepared")
    assert_cache_intact(before, cache)
    _afterwards(source, cache)


def test_verify_sees_a_rewrite_that_kept_size_and_mtime(tmp_path):
    source, cache, before = _earlier_build(tmp_path, _stores.M, _stores.N)
    outcome = run_case(_stores.prepare_changing, source, cache, source, "overwrite-keep-mtime", verify=True,
                       timeout=TIMEOUT)
    expect_error(outcome, SourceChangedError)
    assert_cache_intact(before, cache)


@pytest.mark.parametrize("frames_dtype", ["uint16", "float16"] if FULL else ["uint16"])
def test_compact_stores_refuse_a_truncated_source(tmp_path, frames_dtype):
    counts = frames_dtype == "uint16"
    source, cache, before = _earlier_build(tmp_path, _stores.BIG_M, _stores.BIG_N, counts=counts)
    options = {"frames_dtype": frames_dtype, "intensity": True} if counts else {"frames_dtype": frames_dtype}
    outcome = run_case(_stores.prepare_changing, source, cache, source, "truncate-half", timeout=TIMEOUT, **options)
    expect_error(outcome, SourceChangedError, match="size changed")
    assert_cache_intact(before, cache)


def test_the_second_source_changes_while_the_first_is_read(tmp_path):
    first, second, cache = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "cache"
    _stores.write_source(first, 1.0, m=_stores.BIG_M, n=_stores.BIG_N)
    _stores.write_source(second, 3.0, m=_stores.BIG_M // 2, n=_stores.BIG_N)
    before = snapshot(cache)
    outcome = run_case(_stores.prepare_changing, [first, second], cache, second, "truncate-half", timeout=TIMEOUT)
    expect_error(outcome, SourceChangedError, match="b.npz")
    assert_cache_intact(before, cache)


def test_an_hdf5_source_truncated_mid_stream(tmp_path):
    pytest.importorskip("h5py")
    source, cache = tmp_path / "scan.h5", tmp_path / "cache"
    _stores.write_h5_source(source, 2.0)
    keys = {"diffraction": "/diffraction", "xcoords": "/xcoords", "ycoords": "/ycoords", "probe": "/probeGuess"}
    outcome = run_case(_stores.prepare_changing, source, cache, source, "truncate-half", at=1, timeout=TIMEOUT,
                       load_options={"keys": keys})
    expect_error(outcome, SourceChangedError)
    assert_cache_intact({}, cache)
