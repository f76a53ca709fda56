"""Running hostile-input cases so that a hang fails instead of blocking, and checking what they left.

Every case runs outside the pytest process, with a time limit:

- **Library calls** go to one long-lived worker process (``multiprocessing`` spawn), which runs
  cases one after another; a case that exceeds its limit (or kills the worker: a signal, an
  abort) has the worker killed and a fresh one started for the next case. Importing numpy, h5py
  and ptychodata is paid once per worker, not once per case.
- **Command-line cases** run ``python -m ptychodata.cli ARGS`` as a real subprocess (about 1.5 s
  each: keep them few).

API (everything a test module needs)::

    from ._harness import (FULL, FUZZ, examples, run_case, expect_error, expect_ok, expect_ok_or_error,
                           run_cli, expect_cli_error, snapshot, assert_cache_intact)

    outcome = run_case(func, *args, timeout=20.0, memory=None, **kwargs)
        # func: a module-level function (pickled by reference; define it in the test module or
        # import it, e.g. ptychodata.ScanData.load). Its return value must pickle (return
        # something small: a shape, a tuple of numbers). memory: bytes of address space the
        # case may add (RLIMIT_AS), so an unbounded allocation fails fast instead of swapping.
        # -> Outcome(kind="ok"|"error"|"hang"|"crash", value, error_type, error_mro, message,
        #            traceback, warnings, seconds)
    expect_error(outcome, ScanDataError, match="regex")  # exactly that class (not a subclass),
        # message matching; fails on a hang, a crash, a success or a builtin error
    value = expect_ok(outcome)                            # the case returned; its value
    expect_ok_or_error(outcome, ScanDataError, ScanFormatError)  # returned, or raised exactly one
        # of these classes (for fuzzing: anything but a builtin error, a hang or a crash)
    result = run_cli(["inspect", path], timeout=60, env=None, cwd=None)
        # -> CliResult(returncode, stdout, stderr, seconds, timed_out)
    expect_cli_error(result, code=2, match="regex")  # one ``error: ...`` line, that exit code,
        # no traceback, not timed out
    before = snapshot(cache_dir)             # {relative path: (kind, size, sha256 or link target)}
    assert_cache_intact(before, cache_dir)   # every earlier entry unchanged, no ``.tmp-*``
        # temporaries (partial builds) left anywhere under cache_dir

With ``PTYCHODATA_HOSTILE_RECORD=FILE`` every case appends one JSON line to FILE: the test, the
outcome's kind, the error type and the seconds (for tables of outcomes before and after a change).

``FULL`` is true when ``PTYCHODATA_HOSTILE_FULL=1``: generate more cases (``examples(ci, full)``
picks a count) and run hypothesis with more examples (the ``hostile`` / ``hostile-full`` settings
profiles are registered by ``tests/hostile/conftest.py``).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FULL",
    "FUZZ",
    "CliResult",
    "Outcome",
    "assert_cache_intact",
    "examples",
    "expect_cli_error",
    "expect_error",
    "expect_ok",
    "expect_ok_or_error",
    "run_case",
    "run_cli",
    "snapshot",
]

FULL = os.environ.get("PTYCHODATA_HOSTILE_FULL", "") not in ("", "0")
DEFAULT_TIMEOUT = 30.0  # a case's bound; generous because CI machines are shared and slow
_START_TIMEOUT = 120.0  # starting a worker (imports) on a loaded machine


def examples(ci: int, full: int) -> int:
    """How many generated cases to run: ``ci`` by default, ``full`` under PTYCHODATA_HOSTILE_FULL=1."""
    return full if FULL else ci


# ------------------------------------------------------------------ library cases
@dataclass
class Outcome:
    """What one case did.

    kind : "ok" (returned ``value``), "error" (raised), "hang" (exceeded its time limit and was
    killed) or "crash" (the worker died: a signal, an abort; ``message`` says how).
    """

    kind: str
    value: Any = None
    error_type: str | None = None  # "module.QualName" of the exception raised
    error_mro: tuple[str, ...] = ()
    message: str = ""
    traceback: str = ""
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self) -> str:
        if self.kind == "ok":
            return f"returned {self.value!r} in {self.seconds:.2f} s"
        if self.kind == "error":
            return f"raised {self.error_type}: {self.message}\n{self.traceback}"
        return f"{self.kind} after {self.seconds:.2f} s: {self.message}"


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _serve(conn) -> None:
    """The worker's loop: receive (func, args, kwargs, memory), run, send back an Outcome."""
    import resource

    conn.send("ready")
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        func, args, kwargs, memory = job
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        started = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                if memory is not None:
                    limit = _address_space() + int(memory)
                    resource.setrlimit(resource.RLIMIT_AS, (limit if hard < 0 else min(limit, hard), hard))
                try:
                    value = func(*args, **kwargs)
                finally:
                    if memory is not None:
                        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
                outcome = Outcome("ok", value=value)
            except BaseException as exc:  # noqa: BLE001 - every outcome is reported, judged by the test
                outcome = Outcome(
                    "error",
                    error_type=_qualified(type(exc)),
                    error_mro=tuple(_qualified(c) for c in type(exc).__mro__),
                    message=str(exc),
                    traceback="".join(traceback.format_exception(exc)),
                )
        outcome.seconds = time.perf_counter() - started
        outcome.warnings = [f"{w.category.__name__}: {w.message}" for w in caught]
        try:
            conn.send(outcome)
        except Exception as exc:  # noqa: BLE001 - an unpicklable value
            conn.send(Outcome("ok", value=f"<unpicklable {type(outcome.value).__name__}: {exc}>",
                              seconds=outcome.seconds, warnings=outcome.warnings))


def _address_space() -> int:
    """This process's current virtual size in bytes (VmSize)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


class _Worker:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(_START_TIMEOUT) or self.conn.recv() != "ready":
            self.stop()
            raise RuntimeError("the hostile-case worker did not start")

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        self.conn.close()


_worker: _Worker | None = None


def _stop_worker() -> None:
    global _worker
    if _worker is not None:
        _worker.stop()
        _worker = None


atexit.register(_stop_worker)


def run_case(func, *args, timeout: float = DEFAULT_TIMEOUT, memory: int | None = None, **kwargs) -> Outcome:
    """Run ``func(*args, **kwargs)`` in the worker process within ``timeout`` seconds.

    A case that exceeds the limit is reported as ``kind="hang"`` (the worker is killed and
    restarted); one that kills the worker as ``kind="crash"``.
    """
    global _worker
    if _worker is None or not _worker.process.is_alive():
        _stop_worker()
        _worker = _Worker()
    started = time.perf_counter()
    _worker.conn.send((func, args, kwargs, memory))
    try:
        ready = _worker.conn.poll(timeout)
        outcome = _worker.conn.recv() if ready else None
    except (EOFError, OSError):
        outcome, ready = None, True
    seconds = time.perf_counter() - started
    if outcome is None:
        process = _worker.process
        _stop_worker()
        if not ready:
            outcome = Outcome("hang", message=f"no answer within {timeout} s; the worker was killed")
        else:
            outcome = Outcome("crash", message=f"the worker died (exit code {process.exitcode})")
        outcome.seconds = seconds
    _record(outcome.kind, outcome.error_type, outcome.seconds)
    return outcome


def _record(kind: str, error_type: str | None, seconds: float) -> None:
    target = os.environ.get("PTYCHODATA_HOSTILE_RECORD")
    if target:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
        with open(target, "a") as handle:
            handle.write(json.dumps({"test": test, "kind": kind, "error": error_type, "seconds": seconds}) + "\n")


def expect_error(outcome: Outcome, error: type[BaseException], match: str | None = None) -> Outcome:
    """Assert the case raised exactly ``error`` (not a subclass, not a builtin) with a message
    matching ``match`` (``re.search``)."""
    assert outcome.kind == "error", f"expected {error.__name__}, but the case {outcome.describe()}"
    assert outcome.error_type == _qualified(error), (
        f"expected {_qualified(error)}, but the case {outcome.describe()}"
    )
    if match is not None:
        assert re.search(match, outcome.message), f"message {outcome.message!r} does not match {match!r}"
    return outcome


def expect_ok(outcome: Outcome) -> Any:
    """Assert the case returned; its value."""
    assert outcome.kind == "ok", f"expected a result, but the case {outcome.describe()}"
    return outcome.value


def expect_ok_or_error(outcome: Outcome, *errors: type[BaseException]) -> Outcome:
    """Assert the case returned, or raised exactly one of ``errors`` (never a builtin error, a hang or
    a crash)."""
    if outcome.kind == "ok":
        return outcome
    allowed = {_qualified(error) for error in errors}
    assert outcome.kind == "error" and outcome.error_type in allowed, (
        f"expected a result or one of {sorted(allowed)}, but the case {outcome.describe()}"
    )
    return outcome


# ------------------------------------------------------------------ command-line cases
@dataclass
class CliResult:
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool


def run_cli(argv: list[str], *, timeout: float = 60.0, env: dict | None = None, cwd=None) -> CliResult:
    """Run ``python -m ptychodata.cli ARGV`` in a subprocess (killed at ``timeout``)."""
    environment = dict(os.environ)
    environment.update(env or {})
    environment.setdefault("PYTHONFAULTHANDLER", "1")
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ptychodata.cli", *map(str, argv)],
            capture_output=True, text=True, timeout=timeout, env=environment, cwd=cwd,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        def text(value):
            return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")

        _record("hang", None, time.perf_counter() - started)
        return CliResult(None, text(exc.stdout), text(exc.stderr), time.perf_counter() - started, True)
    traceback_seen = "Traceback" in done.stderr + done.stdout
    _record("cli-traceback" if traceback_seen else f"cli-exit-{done.returncode}", None, time.perf_counter() - started)
    return CliResult(done.returncode, done.stdout, done.stderr, time.perf_counter() - started, False)


def expect_cli_error(result: CliResult, code: int = 2, match: str | None = None) -> str:
    """Assert exit ``code``, no traceback, and exactly one ``error: ...`` line on stderr; that line."""
    assert not result.timed_out, f"the command did not finish within its limit; stderr: {result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout, f"traceback printed:\n{result.stderr}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, f"expected one 'error: ...' line, stderr was:\n{result.stderr}"
    assert result.returncode == code, f"exit code {result.returncode}, expected {code}; stderr:\n{result.stderr}"
    if match is not None:
        assert re.search(match, errors[0]), f"{errors[0]!r} does not match {match!r}"
    return errors[0]


# ------------------------------------------------------------------ cache state
def snapshot(root: str | os.PathLike) -> dict[str, tuple]:
    """Every entry under ``root``: files by size and SHA-256, links by target, directories by kind."""
    root = Path(root)
    found: dict[str, tuple] = {}
    if not root.exists():
        return found
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory, name)
            relative = str(path.relative_to(root))
            if path.is_symlink():
                found[relative] = ("link", os.readlink(path))
            elif path.is_dir():
                found[relative] = ("dir",)
            elif path.is_file():
                digest = hashlib.sha256()
                with open(path, "rb") as handle:
                    for block in iter(lambda handle=handle: handle.read(1 << 20), b""):
                        digest.update(block)
                found[relative] = ("file", path.stat().st_size, digest.hexdigest())
            else:
                found[relative] = ("other",)
    return found


def assert_cache_intact(before: dict[str, tuple], root: str | os.PathLike) -> None:
    """Every entry of ``before`` is still there unchanged, and no partial build (``.tmp-*``) is left."""
    after = snapshot(root)
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    assert not changed, f"earlier cache entries changed or removed under {root}: {changed[:10]}"
    partial = sorted(k for k in after if any(part.startswith(".tmp-") for part in Path(k).parts))
    assert not partial, f"partial builds left under {root}: {partial[:10]}"


# ------------------------------------------------------------------ hypothesis
def _register_profiles():
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # pragma: no cover - hypothesis is a test dependency
        return None
    common = dict(deadline=None, derandomize=not FULL, suppress_health_check=[HealthCheck.too_slow],
                  database=None)
    settings.register_profile("hostile", max_examples=15, **common)
    settings.register_profile("hostile-full", max_examples=300, **common)
    return settings.get_profile("hostile-full" if FULL else "hostile")


FUZZ = _register_profiles()
"""The hypothesis settings for fuzz tests (a decorator: ``@FUZZ``): profile ``hostile`` (15 examples,
derandomized, so CI is repeatable) or ``hostile-full`` (300, random) under PTYCHODATA_HOSTILE_FULL=1."""
