"""A disk without room: too little free space before a build, or ``ENOSPC``/``EDQUOT`` while one of
its files (patterns, patches, energies, groups, X, the manifest, the ``current`` pointer) is written.

No root needed: the free space and the failing write are injected in the worker (the file
system's answer is replaced, the library's code is not). Each case raises ``DiskFullError``
naming the path and the bytes needed, removes its temporary and leaves every earlier build (and
the live pointer) as it was; on the command line it is one ``error:`` line, exit status 2.
"""

from __future__ import annotations

import errno

import pytest

from ptychodata.errors import DiskFullError

from . import _stores
from ._harness import FULL, assert_cache_intact, expect_error, expect_ok, run_case, snapshot

TIMEOUT = 30.0


@pytest.fixture
def cache_with_a_build(tmp_path):
    """A cache holding the store of version 1; the source then rewritten as version 2 (with patches)."""
    source, cache = tmp_path / "scan.npz", tmp_path / "cache"
    _stores.write_source(source, 1.0, Y=True)
    expect_ok(run_case(_stores.prepare_serving, source, cache, timeout=TIMEOUT))
    _stores.write_source(source, 2.0, Y=True)
    return source, cache, snapshot(cache)


def test_too_little_free_space_is_refused_before_anything_is_written(cache_with_a_build):
    source, cache, before = cache_with_a_build
    outcome = run_case(_stores.prepare_with_fault, source, cache, "free=1000", timeout=TIMEOUT)
    expect_error(outcome, DiskFullError, match=r"needs about .* \(\d+ bytes\) but only 1000 B is free")
    assert str(cache) in outcome.message
    assert_cache_intact(before, cache)


@pytest.mark.parametrize("fault, options", [
    ("ENOSPC:patterns.npy", {}),
    ("ENOSPC:patterns.npy", {"direct_io": True}),
    ("EDQUOT:patterns.npy", {}),
    ("ENOSPC:energies.npy", {}),
    ("ENOSPC:Y.npy", {}),
    ("ENOSPC:groups.npy", {}),
    ("ENOSPC:X.npy", {"materialize": True}),
    ("ENOSPC:manifest", {}),
    ("ENOSPC:current", {}),
])
def test_the_disk_filling_during_a_build(cache_with_a_build, fault, options):
    source, cache, before = cache_with_a_build
    outcome = run_case(_stores.prepare_with_fault, source, cache, fault, timeout=TIMEOUT, **options)
    code = fault.split(":")[0]
    expect_error(outcome, DiskFullError, match=r"the disk filled")
    assert str(cache) in outcome.message and "removed" in outcome.message
    if fault.split(":")[1] in ("groups.npy", "X.npy"):  # the frames build was complete and went live first:
        before = {k: v for k, v in before.items() if not (k.count("/") == 1 and k.endswith("/current"))}
    assert_cache_intact(before, cache)
    assert errno.errorcode[getattr(errno, code)] == code
    if FULL or fault == "ENOSPC:patterns.npy":  # once there is room again the build completes: the new version
        assert expect_ok(run_case(_stores.prepare_serving, source, cache, timeout=TIMEOUT, **options))[1:] == (2.0, 2.0)


@pytest.mark.parametrize("fault", ["free=1000", "ENOSPC:patterns.npy"])
def test_the_command_line_says_it_in_one_line(cache_with_a_build, fault):
    source, cache, before = cache_with_a_build
    code, out, err = expect_ok(run_case(_stores.cli, ["prepare", str(source), "--cache-dir", str(cache), "--quiet"],
                                        fault, timeout=TIMEOUT))
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert str(cache) in lines[0] and "bytes" in lines[0]
    assert_cache_intact(before, cache)
