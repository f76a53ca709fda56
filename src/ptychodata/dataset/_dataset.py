"""Datasets of many scans: create one with a spec, add and remove scans, open a build of it.

Each change writes a new immutable manifest (kilobytes) that lists the scans' builds; a scan
already built is found by its file's size and modification time (a stat), a new one is
prepared once by :func:`~ptychodata.dataset.prepare_scan`. Nothing published is modified: a
failed or interrupted change leaves the dataset as it was.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ptychodata._runtime import check_int
from ptychodata.dataset._export import export_dataset, import_export
from ptychodata.dataset._jobs import claim, read_record, write_record
from ptychodata.dataset._manifest import (
    DatasetManifest,
    DatasetPaths,
    ScanEntry,
    check_name,
    write_json_atomic,
)
from ptychodata.dataset._scan_build import ScanBuild, prepare_scan, source_path
from ptychodata.dataset._spec import DatasetSpec
from ptychodata.dataset._view import DatasetStore
from ptychodata.dataset._weights import WeightRule, Weights
from ptychodata.errors import ParameterError, PtychodataError, StoreError, StoreNotFoundError
from ptychodata.grouping import GroupingConfig
from ptychodata.store import default_cache_dir, write_pins

__all__ = ["Dataset", "DatasetChange", "import_dataset", "open_dataset"]

_PUBLISH_ATTEMPTS = 20


@dataclass(frozen=True)
class DatasetChange:
    """What one :meth:`Dataset.add` or :meth:`Dataset.remove` did.

    Attributes
    ----------
    build_id : str
        The dataset's live build after the change.
    added, removed, unchanged : list of str
        Source paths.
    failed : dict of str to str
        Path → why, for sources left out with ``keep_going=True``.
    """

    build_id: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class Dataset:
    """A named, growing set of scans prepared with one :class:`DatasetSpec`, in a cache directory.

    Use :meth:`create` for a new one and :meth:`open` (or :func:`open_dataset` to read it).
    """

    def __init__(self, name: str, cache_dir: str | os.PathLike | None = None):
        self.name = check_name(name)
        self.cache_dir = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser().resolve()
        self.paths = DatasetPaths(self.cache_dir, self.name)
        if not self.paths.spec.is_file():
            raise StoreNotFoundError(_unknown(self.name, self.cache_dir))
        try:
            values = json.loads(self.paths.spec.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.paths.spec}: unreadable dataset spec ({exc})") from None
        self.spec = DatasetSpec.from_dict(values, where=f"{self.paths.spec}: ")

    @classmethod
    def open(cls, name: str, cache_dir: str | os.PathLike | None = None) -> Dataset:
        """The dataset ``name`` of ``cache_dir`` (default :func:`~ptychodata.store.default_cache_dir`)."""
        return cls(name, cache_dir)

    @classmethod
    def create(
        cls,
        name: str,
        config: GroupingConfig,
        *,
        cache_dir: str | os.PathLike | None = None,
        load_options: Mapping[str, Any] | None = None,
        intensity: bool | None = None,
        frames_dtype: str | None = None,
        copy: bool = True,
        materialize: bool = False,
    ) -> Dataset:
        """Create an empty dataset whose scans will all be prepared with these options.

        The spec is fixed here; a dataset of that name that exists with the same spec is
        opened, one with another spec is refused.
        """
        check_name(name)
        spec = DatasetSpec(config, load_options or {}, intensity, frames_dtype, copy, materialize)
        if spec.load_options.mask is not None:
            raise ParameterError("a dataset's load_options cannot hold a mask array; give it to each file's reader")
        cache = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser().resolve()
        return cls._with_spec(name, spec, cache)

    @classmethod
    def _with_spec(cls, name: str, spec: DatasetSpec, cache: Path) -> Dataset:
        """The dataset ``name`` of ``cache`` with ``spec``: created, or opened if it has that spec."""
        paths = DatasetPaths(cache, name)
        if paths.spec.is_file():
            existing = cls(name, cache)
            if existing.spec.digest() != spec.digest():
                raise ParameterError(
                    f"dataset {name!r} exists in {cache} with another spec ({existing.spec.to_dict()}); "
                    "a dataset's spec is fixed when it is created: choose another name"
                )
            return existing
        write_json_atomic(paths.spec, spec.to_dict())
        return cls(name, cache)

    # ------------------------------------------------------------------ reading
    @property
    def build_id(self) -> str | None:
        """The live build's id (None before the first scan is added)."""
        return self.paths.current_id()

    def manifest(self, build_id: str | None = None) -> DatasetManifest:
        """The manifest of build ``build_id`` (default the live one; an empty one before any add)."""
        build_id = build_id if build_id is not None else self.build_id
        if build_id is None:
            return DatasetManifest(self.name, self.spec.to_dict(), ())
        return self.paths.read(build_id)

    def scans(self) -> list[ScanBuild]:
        return [entry.build for entry in self.manifest().scans]

    def info(self) -> dict[str, Any]:
        """A JSON-ready summary: build id, spec, sizes and one entry per scan."""
        manifest = self.manifest()
        builds = [entry.build for entry in manifest.scans]
        return {
            "name": self.name,
            "cache_dir": str(self.cache_dir),
            "build_id": self.build_id,
            "spec": self.spec.to_dict(),
            "n_scans": len(builds),
            "n_patterns": sum(b.n_patterns for b in builds),
            "n_groups": sum(b.n_groups for b in builds),
            "N": builds[0].N if builds else None,
            "C": builds[0].C if builds else None,
            "bytes": sum(b.bytes for b in builds),
            "bytes_held_only_here": self._bytes_held_only_here(),
            "weights": manifest.weights.to_dict() if manifest.weights is not None else None,
            "scans": [
                {"uid": b.uid, "name": b.name, "path": b.source.path, "n_patterns": b.n_patterns,
                 "n_groups": b.n_groups, "x_scale": b.x_scale, "bytes": b.bytes, "tags": entry.tags,
                 **epoch}
                for b, entry, epoch in zip(builds, manifest.scans, _epoch_shares(manifest))
            ],
        }

    def diff(self, other_build_id: str) -> dict[str, Any]:
        """Scans in the live build and not in ``other_build_id`` (``added``), and the reverse;
        with ``weights`` (``{"before": ..., "after": ...}``) where the weights differ."""
        mine, other = self.manifest(), self.manifest(other_build_id)
        mine_uids, other_uids = set(mine.uids()), set(other.uids())

        def describe(entries: Iterable[ScanEntry], keep: set[str]) -> list[dict[str, str]]:
            return [{"uid": e.uid, "name": e.build.name, "path": e.build.source.path} for e in entries if e.uid in keep]

        changes: dict[str, Any] = {
            "added": describe(mine.scans, mine_uids - other_uids),
            "removed": describe(other.scans, other_uids - mine_uids),
        }
        if mine.weights != other.weights:
            changes["weights"] = {
                "before": None if other.weights is None else other.weights.to_dict(),
                "after": None if mine.weights is None else mine.weights.to_dict(),
            }
        return changes

    # ------------------------------------------------------------------ changing
    def add(
        self,
        sources: str | os.PathLike | Iterable[str | os.PathLike],
        *,
        tags: Mapping[str, str] | None = None,
        progress: bool = False,
        keep_going: bool = False,
        executor: int | Executor | None = None,
        built_only: bool = False,
    ) -> DatasetChange:
        """Add scan files: prepare those not built yet, then publish a new manifest.

        A file already in the dataset and unchanged is only stat-ed. A file whose content
        changed is replaced (reported as removed and added). The same bytes under two names,
        another N or another frames encoding than the dataset's scans are refused, naming the
        file. Without ``keep_going`` a failure raises (the first, in the order given) and the
        dataset stays as it was; with it, the other files are added and the failures listed.

        Parameters
        ----------
        sources : path or iterable of paths
        tags : dict of str to str, optional
            Tags of the scans added (``{"beamline": "2-ID"}``).
        progress : bool
            One progress bar of the scans prepared.
        keep_going : bool
        executor : int or concurrent.futures.Executor, optional
            Where the scans are prepared: None here, one after another; an int ``n`` in a
            ``ProcessPoolExecutor`` of ``n`` processes (spawned); any ``Executor`` (a Dask
            ``Client.get_executor()``, ``mpi4py.futures``, ...) as it is. Each task is
            :func:`prepare_scan` of one file, whose builds are the same bytes wherever it runs.
        built_only : bool
            Prepare nothing: add the files that :meth:`prepare_one` (``ptychodata prepare-scan``)
            recorded as built and that are unchanged since; the others are failures.
        """
        listed = _paths(sources)
        tags = {str(k): str(v) for k, v in (tags or {}).items()}
        first = self.manifest()
        by_path = {entry.build.source.path: entry for entry in first.scans}
        pending = [path for path in listed if not (path in by_path and by_path[path].build.source.unchanged())]
        if built_only:
            built = {path: read_record(self.paths, path) or _not_built(path) for path in pending}
        else:
            built = self._prepare_all(pending, executor, progress, keep_going)
        built.update({path: by_path[path].build for path in listed if path not in built})  # unchanged
        failures = [built[path] for path in listed if isinstance(built[path], BaseException)]
        if failures and not keep_going:
            raise failures[0]  # the first in the order given; nothing is published
        if executor is None or isinstance(executor, int):
            return _publish_change(self.name, self.cache_dir, listed, built, tags, keep_going)
        # the cache may be visible only where the executor runs: publish there too
        task = executor.submit(_publish_change, self.name, self.cache_dir, listed, built, tags, keep_going)
        change = _outcome(task, f"dataset {self.name!r}")
        if isinstance(change, BaseException):
            raise change
        return change

    def _merged(self, base, listed, built, tags, keep_going) -> tuple[tuple[ScanEntry, ...], _Plan]:
        """The scans of ``base`` with ``listed`` added (their builds in ``built``), and what changed."""
        by_path = {entry.build.source.path: entry for entry in base.scans}
        entries = {entry.uid: entry for entry in base.scans}
        change = _Plan()
        for path in listed:
            previous = by_path.get(path)
            try:
                if isinstance(built[path], BaseException):
                    raise built[path]
                self._take_build(path, built[path], previous, entries, tags, change)
            except PtychodataError as exc:
                if not keep_going:
                    raise
                change.failed[path] = str(exc)
        return tuple(entries.values()), change

    def _publish(self, apply: Callable[[DatasetManifest], tuple[tuple[ScanEntry, ...], _Plan]]) -> DatasetChange:
        """Apply a change to the live build and publish the result; where another process
        published first, apply it again to that build (no lock: an exclusive-create successor
        file per build decides who was first)."""
        for _ in range(_PUBLISH_ATTEMPTS):
            live = self.paths.current()
            base_id = live[0]
            base = self.manifest(base_id)
            scans, change = apply(base)
            weights = base.weights if change.weights is _KEEP else change.weights
            manifest = DatasetManifest(self.name, self.spec.to_dict(), scans).with_weights(weights)
            if manifest.build_id == base_id or (base_id is None and not scans and manifest.weights is None):
                build_id = base_id
            else:
                build_id = self.paths.publish(live, manifest)
                if build_id is None:
                    continue
                self._pin()
            return DatasetChange(build_id, change.added, change.removed, change.unchanged, change.failed)
        raise StoreError(f"dataset {self.name!r}: other processes kept changing it; try again")

    def prepare_one(self, source: str | os.PathLike, *, progress: bool = False) -> ScanBuild:
        """Prepare one scan with the dataset's spec and record it for :meth:`add` with
        ``built_only=True``; the dataset itself is not changed (what a job-array task does)."""
        path = source_path(source)
        recorded = read_record(self.paths, path)
        if recorded is not None and recorded.present(self.cache_dir):
            return recorded  # built before and the file unchanged: a few stats, no hashing
        build = prepare_scan(path, self.spec, cache_dir=self.cache_dir, progress=progress)
        write_record(self.paths, build)
        return build

    def claim(self, source: str | os.PathLike) -> bool:
        """Take ``source`` for this process among several sharing one list (see :func:`claim`)."""
        return claim(self.paths, source_path(source))

    def _bytes_held_only_here(self) -> int:
        """Bytes of the builds this dataset's builds list and no other holder pins: what deleting
        the dataset (and then pruning) would free."""
        pins = self.cache_dir / "pins"
        mine = pins / f"dataset-{self.name}.pins"
        if not mine.is_file():
            return 0
        others = set()
        for path in pins.glob("*.pins"):
            if path != mine:
                others.update(path.read_text().splitlines())
        total = 0
        for line in set(mine.read_text().splitlines()) - others:
            build = self.cache_dir / line
            total += sum(f.stat().st_size for f in build.glob("*") if f.is_file())
        return total

    def _pin(self) -> None:
        """Pin every build that any build of this dataset lists, so collection never deletes one."""
        builds = []
        for path in sorted((self.paths.root / "builds").glob("*.json")):
            for entry in self.paths.read(path.stem).scans:
                builds += [self.cache_dir / build for build in entry.build.build_dirs()]
        write_pins(self.cache_dir, f"dataset-{self.name}", builds)

    def _prepare_all(
        self, paths: list[str], executor: int | Executor | None, progress: bool, keep_going: bool
    ) -> dict[str, ScanBuild | BaseException]:
        """``prepare_scan`` of each path, here or on ``executor``: path -> build or the error raised.

        A file that ``prepare-scan`` recorded as built, unchanged since, is not hashed again.
        """
        results: dict[str, ScanBuild | BaseException] = {}
        tasks = [(path, read_record(self.paths, path)) for path in paths]
        bar = _Progress(self.name, paths, enabled=progress)
        if executor is None:
            with bar:
                for path, known in tasks:
                    try:
                        results[path] = prepare_scan(path, self.spec, cache_dir=self.cache_dir, known=known)
                    except PtychodataError as exc:
                        if not keep_going:
                            raise
                        results[path] = exc
                    bar.done(path)
            return results
        owned = _process_pool(executor) if isinstance(executor, int) else None
        pool = owned if owned is not None else executor
        try:
            with bar:
                futures = {
                    pool.submit(prepare_scan, path, self.spec, cache_dir=self.cache_dir, known=known): path
                    for path, known in tasks
                }
                for future in as_completed(futures):
                    path = futures[future]
                    results[path] = _outcome(future, path)
                    bar.done(path)
        finally:
            if owned is not None:
                owned.shutdown()
        return results

    def _take_build(self, path, build, previous, entries, tags, change) -> None:
        """Put ``build`` of ``path`` in ``entries``, after the checks a dataset's scans must pass."""
        if previous is not None and previous.uid == build.uid:  # touched, same bytes
            entries[build.uid] = ScanEntry(build, {**previous.tags, **tags})
            change.unchanged.append(path)
            return
        twin = entries.get(build.uid)
        if twin is not None:
            raise ParameterError(
                f"{path}: the same bytes as {twin.build.source.path}, already in dataset {self.name!r}"
            )
        _check_compatible(build, [e.build for e in entries.values() if previous is None or e.uid != previous.uid])
        if previous is not None:  # the file changed: its old build leaves the dataset
            del entries[previous.uid]
            change.removed.append(path)
        entries[build.uid] = ScanEntry(build, tags)
        change.added.append(path)

    def remove(self, sources: str | os.PathLike | Iterable[str | os.PathLike]) -> DatasetChange:
        """Remove scans, named by path, file name or uid; no pattern is touched."""
        names = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)

        def without(base: DatasetManifest) -> tuple[tuple[ScanEntry, ...], _Plan]:
            keep = {entry.uid: entry for entry in base.scans}
            change = _Plan()
            for name in names:
                entry = _find(base.scans, os.fspath(name))
                if entry is None:
                    listed = ", ".join(e.build.name for e in base.scans) or "none"
                    raise ParameterError(f"{name}: not a scan of dataset {self.name!r} (its scans: {listed})")
                keep.pop(entry.uid, None)
                change.removed.append(entry.build.source.path)
            return tuple(keep.values()), change

        return self._publish(without)

    # ------------------------------------------------------------------ moving
    def export(
        self,
        directory: str | os.PathLike,
        *,
        build_id: str | None = None,
        link: bool = True,
        progress: bool = False,
    ) -> Path:
        """Write build ``build_id`` (default the live one) to ``directory``, self-contained.

        The directory (new, or empty) holds ``ptychodata-export.json`` (the build's manifest,
        the spec and every file with its size and SHA-256, written last) and ``cache/``, a
        cache with only this build and its scans' builds: ``open_dataset(name,
        cache_dir=directory / "cache")`` reads it where it is. Paths inside are relative; files
        are hard links to the cache's where the file system allows (``link=False``: copies),
        each hashed on the way and checked against the hash its build recorded. Move it with
        ``rsync -aH`` or Globus, then :func:`import_dataset`.

        Returns
        -------
        Path
            The export directory.
        """
        manifest = self.manifest(build_id)
        if not manifest.scans:
            raise ParameterError(f"dataset {self.name!r} holds no scan yet; nothing to export")
        return export_dataset(manifest, self.spec, self.cache_dir, directory, link=link, progress=progress)

    # ------------------------------------------------------------------ weights
    @property
    def weights(self) -> Weights | None:
        """The live build's mixing weights (None: every group once an epoch)."""
        return self.manifest().weights

    def set_weights(
        self,
        weights: Mapping[str, float] | None,
        *,
        mode: str = "repeat",
        resample: str = "epoch",
        batching: str = "random",
        epoch_size: int | None = None,
    ) -> DatasetChange:
        """Set how many groups of each scan an epoch holds, and publish a new build.

        Parameters
        ----------
        weights : dict of str to number, or None
            Scan (uid, file name or path) or tag (``"KEY=VALUE"``) → weight. A scan takes its
            own weight, else the first tag weight that matches it, else the default (``1``,
            all its groups, or the share the others leave). None clears the weights: every
            group once an epoch. These replace any weights set before; a scan's weight leaves
            with the scan (a changed file is a new scan).
        mode : {"repeat", "choose", "proportion"}
            ``repeat``: multipliers (``round(w n)`` groups of a scan of ``n``). ``choose``:
            counts of groups an epoch (a tag's shared among its scans by their sizes).
            ``proportion``: shares of the epoch in [0, 1], summing to at most 1; the scans no
            weight names share ``1 - sum``.
        resample : {"epoch", "fixed"}
            Fractional parts (a scan of 10 groups weighted 1.5 has 5 groups twice): the groups
            taken are drawn anew each epoch, or the same every epoch. Either way they are a
            scan's own: adding another scan does not change them.
        batching : {"random", "stratified"}
            ``"stratified"``: each global batch holds each stratum (the scans one weight
            matched; those none matched) within one of its quota.
        epoch_size : int, optional
            Groups an epoch in ``proportion`` mode (default every group once).

        Returns
        -------
        DatasetChange
            Its ``build_id`` is the new fingerprint (weights are part of it).
        """
        if weights is not None and not isinstance(weights, Mapping):
            raise ParameterError(f"weights of type {type(weights).__name__}; expected a dict of scan or KEY=VALUE "
                                 "tag to a number, or None")

        def weighted(base: DatasetManifest) -> tuple[tuple[ScanEntry, ...], _Plan]:
            if weights is None:
                return base.scans, _Plan(weights=None)
            rules = tuple(self._weight_rule(base, str(key), value) for key, value in weights.items())
            chosen = Weights(mode, rules, resample, batching, epoch_size)
            if base.scans:
                chosen.plan(base.uids(), [e.tags for e in base.scans], [e.build.n_groups for e in base.scans]).check()
            return base.scans, _Plan(weights=chosen)

        return self._publish(weighted)

    def _weight_rule(self, base: DatasetManifest, key: str, value: float) -> WeightRule:
        entry = _find(base.scans, key)
        if entry is not None:
            return WeightRule(value, uid=entry.uid)
        tag, sep, tag_value = key.partition("=")
        if sep and tag:
            return WeightRule(value, tag=(tag, tag_value))
        listed = ", ".join(e.build.name for e in base.scans) or "none"
        raise ParameterError(
            f"weight of {key!r}: no scan of dataset {self.name!r} has that uid, file name or path, and it is not a "
            f"tag KEY=VALUE (its scans: {listed})"
        )

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, {len(self.manifest().scans)} scans, cache {str(self.cache_dir)!r})"


_KEEP = object()  # a change that leaves the weights as they are


@dataclass
class _Plan:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    weights: Any = _KEEP


def _epoch_shares(manifest: DatasetManifest) -> list[dict[str, Any]]:
    """Per scan, its groups an epoch and its stratum under the manifest's weights (nothing without)."""
    if manifest.weights is None or not manifest.scans:
        return [{} for _ in manifest.scans]
    mixing = manifest.weights.plan(
        manifest.uids(), [e.tags for e in manifest.scans], [e.build.n_groups for e in manifest.scans]
    )
    return [
        {"epoch_groups": int(count), "stratum": mixing.strata_names[stratum]}
        for count, stratum in zip(mixing.counts, mixing.strata)
    ]


def open_dataset(
    name: str, *, cache_dir: str | os.PathLike | None = None, build_id: str | None = None
) -> DatasetStore:
    """Open a build of dataset ``name`` (default the live one) for reading, like a store."""
    dataset = Dataset(name, cache_dir)
    build_id = build_id if build_id is not None else dataset.build_id
    if build_id is None:
        raise StoreError(f"dataset {name!r} holds no scan yet; add scans with Dataset.add")
    return DatasetStore(dataset.manifest(build_id), dataset.cache_dir)


def import_dataset(
    directory: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    name: str | None = None,
    link: bool = True,
    progress: bool = False,
) -> DatasetChange:
    """Import what :meth:`Dataset.export` wrote into ``cache_dir`` and publish it there.

    Every file's size and SHA-256 is checked against the export's record first; a damaged or
    incomplete export raises (``StoreCorruptError``, ``StoreNotFoundError``) naming the file,
    and nothing is published. Builds the cache lacks are hard-linked from the export where
    the file system allows (``link=False``: copied); those it has are used as they are. The
    dataset (``name``, default the exported one's) is created with the exported spec, or must
    have that spec already; the exported composition and weights become its live build (an
    earlier build stays listed, so ``diff`` shows what the import changed).

    Returns
    -------
    DatasetChange
        ``added`` and ``removed``: the scans' source paths as recorded where they were built.
    """
    cache = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser().resolve()
    name, export = import_export(directory, cache, name=name, link=link, progress=progress)
    dataset = Dataset._with_spec(name, export.spec, cache)
    scans = export.manifest.scans

    def imported(base: DatasetManifest) -> tuple[tuple[ScanEntry, ...], _Plan]:
        before, after = set(base.uids()), {entry.uid for entry in scans}
        return scans, _Plan(
            added=[e.build.source.path for e in scans if e.uid not in before],
            removed=[e.build.source.path for e in base.scans if e.uid not in after],
            unchanged=[e.build.source.path for e in scans if e.uid in before],
            weights=export.manifest.weights,
        )

    return dataset._publish(imported)


def _publish_change(name, cache_dir, listed, built, tags, keep_going) -> DatasetChange:
    """Publish the scans of ``listed`` (their builds or errors in ``built``) to dataset ``name``:
    a picklable task, so that an executor whose workers alone see the cache can run it."""
    dataset = Dataset(name, cache_dir)
    return dataset._publish(lambda base: dataset._merged(base, listed, built, tags, keep_going))


def _outcome(future: Future, what: str) -> Any:
    """A task's result, or the error it ended with; an engine's own failure (a worker lost, a
    pool broken, a task cancelled) becomes a :class:`StoreError` naming ``what`` it worked on."""
    try:
        return future.result()
    except PtychodataError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - each engine has its own exceptions for a lost worker
        error = StoreError(
            f"{what}: the worker preparing it failed ({type(exc).__name__}: {exc}); scans finished are kept, "
            "run the same command again to finish"
        )
        error.__cause__ = exc  # the engine's own report stays in the traceback
        return error


class _Progress:
    """One progress bar of the bytes of scan files prepared, with the count of scans done."""

    def __init__(self, name: str, paths: list[str], *, enabled: bool):
        self._sizes = {path: _size(path) for path in paths}
        self._count = 0
        self._bar = tqdm(total=sum(self._sizes.values()), unit="B", unit_scale=True, unit_divisor=1024,
                         desc=f"dataset {name}", disable=not enabled or not paths)
        self._bar.set_postfix_str(f"0/{len(paths)} scans")

    def done(self, path: str) -> None:
        self._count += 1
        self._bar.set_postfix_str(f"{self._count}/{len(self._sizes)} scans", refresh=False)
        self._bar.update(self._sizes[path])

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.close()


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _not_built(path: str) -> ParameterError:
    return ParameterError(f"{path}: not built for this dataset yet (or changed since); run 'ptychodata prepare-scan' on it")


def _process_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` spawned processes (a fork of a process with threads can deadlock)."""
    workers = check_int("executor", workers)
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _paths(sources: Any) -> list[str]:
    listed = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not listed:
        raise ParameterError("sources: an empty list; expected scan files to add")
    paths = [source_path(source) for source in listed]
    seen = set()
    for path in paths:
        if path in seen:
            raise ParameterError(f"{path}: listed twice")
        seen.add(path)
    return paths


def _check_compatible(build: ScanBuild, others: list[ScanBuild]) -> None:
    """Refuse a scan whose patterns cannot be batched with the dataset's others."""
    if not others:
        return
    first = others[0]
    if build.N != first.N:
        raise ParameterError(
            f"{build.source.path}: patterns of {build.N}×{build.N}, but the dataset's are {first.N}×{first.N} "
            f"({first.name}); a dataset's scans share N: create a dataset with load_options crop= or bin= that "
            "bring every scan to one N"
        )
    if build.frames_dtype != first.frames_dtype:
        raise ParameterError(
            f"{build.source.path}: patterns stored as {build.frames_dtype}, but the dataset's as "
            f"{first.frames_dtype} ({first.name}); give the dataset intensity= and frames_dtype= that fit every scan"
        )


def _find(entries: Iterable[ScanEntry], name: str) -> ScanEntry | None:
    resolved = source_path(name)
    for entry in entries:
        build = entry.build
        if name in (build.uid, build.name) or resolved == build.source.path:
            return entry
    return None


def _unknown(name: str, cache: Path) -> str:
    root = cache / "datasets"
    known = sorted(p.name for p in root.iterdir() if (p / "spec.json").is_file()) if root.is_dir() else []
    return f"no dataset {name!r} in {cache} (datasets there: {', '.join(known) or 'none'})"
