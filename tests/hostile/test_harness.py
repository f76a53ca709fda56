"""The harness itself: a hang and a crash fail instead of blocking, and the worker comes back."""

import os
import signal
import time

from ptychodata.errors import ScanDataError

from ._harness import expect_error, expect_ok, run_case


def _sleep(seconds):
    time.sleep(seconds)
    return seconds


def _die():
    os.kill(os.getpid(), signal.SIGBUS)


def _raise():
    raise ScanDataError("x.npz: key 'a' is broken")


def _allocate(n):
    return len(bytearray(n))


def test_a_hang_is_reported_and_the_next_case_runs():
    assert run_case(_sleep, 60, timeout=1.0).kind == "hang"
    assert expect_ok(run_case(_sleep, 0)) == 0


def test_a_crash_is_reported_and_the_next_case_runs():
    outcome = run_case(_die)
    assert outcome.kind == "crash"
    assert "-7" in outcome.message  # SIGBUS
    expect_error(run_case(_raise), ScanDataError, match="key 'a'")


def test_the_memory_bound_turns_a_large_allocation_into_memory_error():
    expect_error(run_case(_allocate, 4 << 30, memory=1 << 30), MemoryError)
    assert expect_ok(run_case(_allocate, 1 << 20, memory=1 << 30)) == 1 << 20
