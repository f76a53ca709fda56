"""Sources, stores and damage for the store and command-line hostile cases, and the library calls
those cases run in the harness's worker (module-level, so they pickle by reference).

Every source here is a *version*: all its patterns equal one value, so what a store serves tells
which file (and whether one file) it was made from. The worker-side calls return small tuples.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from ptychodata import GroupingConfig, ScanData, open_store, prepare

M, N = 48, 16
BIG_M, BIG_N = 2100, 64  # 34 MB of float32 patterns: two chunks of the stream (32 MiB each)
CONFIG = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)


# ------------------------------------------------------------------ sources
def write_source(path, value: float = 1.0, *, m: int = M, n: int = N, Y: bool = False, counts: bool = False) -> Path:
    """A scan file whose patterns all equal ``value`` (amplitudes), or ``value``² whole counts
    (uint16) with ``counts``; raster positions, a probe, stored patches with ``Y``."""
    side = int(np.ceil(np.sqrt(m)))
    rows, cols = np.divmod(np.arange(m), side)
    if counts:
        patterns = np.full((m, n, n), round(value * value), np.uint16)
    else:
        patterns = np.full((m, n, n), value, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "integers: counts?" is the point of counts=True
        scan = ScanData.from_arrays(
            diffraction=patterns,
            xcoords=cols * 3.0 + 0.5,
            ycoords=rows * 3.0 + 0.5,
            probe=np.ones((n, n), np.complex64),
            Y=np.full((m, n, n), value, np.complex64) if Y else None,
            check_values=False,
        )
    return Path(scan.save(path))


def write_h5_source(path, value: float = 1.0, *, m: int = BIG_M, n: int = BIG_N) -> Path:
    """A PtychoPINN-like HDF5 file (uncompressed, chunked by 256 patterns) of amplitudes ``value``."""
    import h5py

    side = int(np.ceil(np.sqrt(m)))
    rows, cols = np.divmod(np.arange(m), side)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("diffraction", data=np.full((m, n, n), value, np.float32), chunks=(256, n, n))
        handle.create_dataset("xcoords", data=cols * 3.0 + 0.5)
        handle.create_dataset("ycoords", data=rows * 3.0 + 0.5)
        handle.create_dataset("probeGuess", data=np.ones((n, n), np.complex64))
    return Path(path)


def builds(store_path) -> tuple[Path, Path]:
    """(frames build directory, grouping build directory) of the live builds of a prepared store."""
    grouping = Path(store_path)
    grouping_id = (grouping / "current").read_text().strip()
    manifest = json.loads((grouping / "builds" / grouping_id / "manifest.json").read_text())
    frames = grouping.parent.parent / "builds" / manifest["frames_build_id"]
    return frames, grouping / "builds" / grouping_id


def edit_manifest(build: Path, edit) -> None:
    """Rewrite a build's manifest after ``edit(values)`` changed ``values`` in place (its return
    value is ignored); an ``edit`` that is a :class:`Replace` writes its text instead."""
    path = build / "manifest.json"
    values = json.loads(path.read_text())
    if isinstance(edit, Replace):
        path.write_text(edit.text(values))
        return
    edit(values)
    path.write_text(json.dumps(values))


class Replace:
    """A manifest edit that writes ``text(values)`` in place of the manifest."""

    def __init__(self, text):
        self.text = text


def flip_bit(path: Path, offset_from_end: int = 1, bit: int = 0) -> None:
    """Flip one bit of a file (counted from its end: in the data, past the header)."""
    with open(path, "r+b") as handle:
        handle.seek(-offset_from_end, os.SEEK_END)
        byte = handle.read(1)[0]
        handle.seek(-offset_from_end, os.SEEK_END)
        handle.write(bytes([byte ^ (1 << bit)]))


# ------------------------------------------------------------------ calls run in the worker
def served(store) -> tuple[int, float, float]:
    """(groups, min, max) of X over a batch of every group of an open store (its patterns times one scale)."""
    batch = store.batch(np.arange(len(store)), reuse=False)
    raw = np.asarray(store.patterns[np.unique(batch["nn_indices"])], np.float64)
    return len(store), float(raw.min()), float(raw.max())


def prepare_serving(source, cache, **kwargs) -> tuple[int, float, float]:
    """prepare, then what it serves (:func:`served`)."""
    with prepare(source, CONFIG, cache_dir=cache, progress=False, **kwargs) as store:
        return served(store)


def open_serving(path) -> tuple[int, float, float]:
    """open_store, then what it serves."""
    with open_store(path) as store:
        return served(store)


def open_build_serving(path, build_id) -> tuple[int, float, float]:
    from ptychodata.store import Store

    with Store.open_build(path, build_id) as store:
        return served(store)


def _change(path: str, how: str) -> None:
    """Change file ``path`` the way ``how`` says, as another process would."""
    size = os.path.getsize(path)
    if how == "truncate-half":
        os.truncate(path, size // 2)
    elif how == "truncate-zero":
        os.truncate(path, 0)
    elif how == "truncate-tail":
        os.truncate(path, size - 100)
    elif how in ("overwrite", "overwrite-keep-mtime"):
        before = os.stat(path)
        with open(path, "r+b") as handle:  # the same size, other bytes in the middle of the patterns
            handle.seek(size // 2)
            handle.write(b"\x00" * 4096)
        if how == "overwrite-keep-mtime":  # the modification time set back: only ctime tells
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    elif how == "append":
        with open(path, "ab") as handle:
            handle.write(b"\x00" * 4096)
    elif how == "replace":
        other = f"{path}.other"
        shutil.copyfile(path, other)
        with open(other, "r+b") as handle:
            handle.seek(size // 2)
            handle.write(b"\x00" * 4096)
        os.replace(other, path)
    elif how == "remove":
        os.unlink(path)
    else:  # pragma: no cover
        raise ValueError(how)


def prepare_changing(sources, cache, changed: str, how: str, at: int = 1, **kwargs) -> tuple[int, float, float]:
    """prepare ``sources`` while file ``changed`` is changed (``how``) by the progress callback once
    ``at`` patterns were read: a deterministic race, no sleeps."""
    done_once = []

    def progress(done: int, total: int) -> None:
        if done >= at and not done_once:
            done_once.append(done)
            _change(str(changed), how)

    with prepare(sources, CONFIG, cache_dir=cache, progress=progress, **kwargs) as store:
        return served(store)


def verify_problems(frames_dir, content: bool = True) -> list[str]:
    from ptychodata.store import verify_store

    return verify_store(Path(frames_dir), content=content)


def prune(cache) -> int:
    from ptychodata.store import prune_cache

    return prune_cache(Path(cache))


def listed(cache) -> list[tuple[str, str | None]]:
    from ptychodata.store import list_stores

    return [(s.key, s.problem) for s in list_stores(Path(cache))]


# ------------------------------------------------------------------ faults injected in the worker
@contextlib.contextmanager
def _fault(fault: str | None):
    """Inject ``fault`` for the block: ``"free=<bytes>"`` (the free space the file system reports),
    ``"ENOSPC:<file>"`` / ``"EDQUOT:<file>"`` (writes of that store file fail, buffered or direct),
    ``"ENOSPC:manifest"``, ``"ENOSPC:current"``, ``"memory"``, ``"oserror"``, ``"bug"`` (a
    command's run raises MemoryError, a bare OSError, a TypeError)."""
    from ptychodata.store import _cache_paths, _files, _manifest

    undo = []

    def patch(owner, name, value):
        undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    try:
        if fault is None:
            pass
        elif fault.startswith("free="):
            free = int(fault.split("=", 1)[1])
            real = shutil.disk_usage
            patch(shutil, "disk_usage", lambda path: real(path)._replace(free=free))
        elif fault.split(":")[1] in ("manifest", "current"):
            code = getattr(errno, fault.split(":")[0])
            if fault.endswith("manifest"):
                def write_manifest(directory, manifest):
                    raise OSError(code, os.strerror(code))

                patch(_manifest, "write_manifest", write_manifest)
            else:
                real_fsync = _cache_paths.os.fsync

                class _Os:
                    def __getattr__(self, name):
                        return getattr(os, name)

                    @staticmethod
                    def fsync(fd):
                        if ".tmp-current-" in os.readlink(f"/proc/self/fd/{fd}"):
                            raise OSError(code, os.strerror(code))
                        return real_fsync(fd)

                patch(_cache_paths, "os", _Os())
        else:
            name, target = fault.split(":")
            code = getattr(errno, name)
            buffered, direct = _files._BufferedSink.write, _files._DirectSink.write

            def failing(real):
                def write(self, data):
                    where = getattr(getattr(self, "handle", None), "name", None) or os.readlink(f"/proc/self/fd/{self.fd}")
                    if str(where).endswith(target):
                        raise OSError(code, os.strerror(code))
                    return real(self, data)

                return write

            patch(_files._BufferedSink, "write", failing(buffered))
            patch(_files._DirectSink, "write", failing(direct))
        yield
    finally:
        for owner, name, value in reversed(undo):
            setattr(owner, name, value)


def prepare_with_fault(source, cache, fault: str, **kwargs) -> tuple[int, float, float]:
    with _fault(fault):
        return prepare_serving(source, cache, **kwargs)


def cli(argv: list[str], fault: str | None = None) -> tuple[int, str, str]:
    """``ptychodata ARGV`` run in this process (its exit status, stdout, stderr), with a command's
    ``run`` raising the error ``fault`` names, or a store fault of :func:`_fault`."""
    from ptychodata.cli import _parser, main

    out, err = io.StringIO(), io.StringIO()
    raised = {"memory": MemoryError("Unable to allocate 7.28 TiB for an array"),
              "oserror": OSError(errno.EIO, "Input/output error"),
              "bug": TypeError("'NoneType' object is not subscriptable"),
              "interrupt": KeyboardInterrupt()}
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        if fault in raised:
            command = next(c for c in _parser._COMMANDS if c.__name__.endswith(f"_{argv[0]}"))
            real = command.run

            def run(args):
                raise raised[fault]

            command.run = run
            stack.callback(setattr, command, "run", real)
        else:
            stack.enter_context(_fault(fault))
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------ datasets
def dataset_serving(name: str, cache) -> int:
    """open_dataset, then how many groups it serves."""
    from ptychodata import open_dataset

    view = open_dataset(name, cache_dir=cache)
    try:
        return len(view)
    finally:
        view.close()


def forge_dataset_scan(cache, name: str, key: str, value) -> None:
    """Publish a build of dataset ``name`` whose (one) scan record has ``key`` set to ``value``,
    its id recomputed so that the manifest's own hash check passes: what a crafted file holds."""
    from ptychodata.dataset import DatasetManifest, ScanBuild, ScanEntry, SourceIdentity

    root = Path(cache) / "datasets" / name
    live, count = (root / "current").read_text().split()
    values = json.loads((root / "builds" / f"{live}.json").read_text())
    entries = []
    for entry in values["scans"]:
        build = dict(entry["build"])
        build[key] = value
        source = SourceIdentity(**build.pop("source"))
        entries.append(ScanEntry(ScanBuild(source=source, **build), entry["tags"]))
    forged = DatasetManifest(values["name"], values["spec"], tuple(entries), values["created"])
    (root / "builds" / f"{forged.build_id}.json").write_text(json.dumps(forged.to_dict()))
    (root / "current").write_text(f"{forged.build_id} {int(count) + 1}\n")


def pristine_cache(root: Path, *, materialize: bool = False, dataset: bool = False) -> tuple[Path, Path]:
    """A cache under ``root`` with one prepared store of the source ``root/scan.npz`` (version 1),
    and with ``dataset`` a dataset ``d`` of it: (root, the store's grouping path in the cache)."""
    from ptychodata import Dataset, prepare

    source, cache = root / "scan.npz", root / "cache"
    write_source(source, 1.0)
    with prepare(source, CONFIG, cache_dir=cache, progress=False, materialize=materialize) as store:
        grouping = store.path.relative_to(cache)
    if dataset:
        Dataset.create("d", CONFIG, cache_dir=cache).add([source])
    return root, grouping
