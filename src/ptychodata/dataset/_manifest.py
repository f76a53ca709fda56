"""Dataset builds: immutable manifests listing scan builds, and the paths of a dataset's directory.

::

    <cache>/datasets/<name>/
      spec.json            the DatasetSpec, written once when the dataset is created
      builds/<id>.json     one immutable manifest per composition of scans (never modified)
      current              the live build's id (replaced atomically)

A manifest lists its scans sorted by uid, and the mixing weights where some are set; its id
is a hash of those and the spec, so one composition reached in any order has one id: the
dataset's fingerprint.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptychodata._runtime import canonical_json, create_exclusive, write_text_atomic
from ptychodata.dataset._scan_build import ScanBuild
from ptychodata.dataset._validate import check_scan_build
from ptychodata.dataset._weights import Weights
from ptychodata.errors import ParameterError, StoreError, StoreNotFoundError

__all__ = ["DatasetManifest", "DatasetPaths", "ScanEntry", "check_name"]

FORMAT = "ptychodata-dataset"
VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_BUILD_ID = re.compile(r"^[0-9a-f]{32}$")
# Fields of a scan build that say how a build was made, not what it holds: left out of the id.
_NOT_IDENTITY = ("seconds",)


def check_name(name: Any) -> str:
    """``name`` if it is a dataset name (letters, digits, ``.``, ``_``, ``-``; up to 64)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ParameterError(
            f"dataset name {name!r}; expected 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class ScanEntry:
    """One scan of a dataset build: its build record and the tags it was added with."""

    build: ScanBuild
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uid(self) -> str:
        return self.build.uid

    def to_dict(self) -> dict[str, Any]:
        return {"build": self.build.to_dict(), "tags": dict(sorted(self.tags.items()))}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ScanEntry:
        return cls(ScanBuild.from_dict(check_scan_build(values["build"])), {str(k): str(v) for k, v in values["tags"].items()})


@dataclass(frozen=True)
class DatasetManifest:
    """One composition of a dataset's scans, sorted by uid, and its mixing weights."""

    name: str
    spec: dict[str, Any]
    scans: tuple[ScanEntry, ...]
    created: str = ""
    weights: Weights | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scans", tuple(sorted(self.scans, key=lambda entry: entry.uid)))
        uids = [entry.uid for entry in self.scans]
        if len(set(uids)) != len(uids):
            raise ParameterError(f"dataset {self.name!r}: a scan is listed twice")

    @property
    def build_id(self) -> str:
        """The fingerprint: a hash of the spec, the scans and the weights (not of the name or the time)."""
        scans = [
            {**entry.to_dict(), "build": {k: v for k, v in entry.build.to_dict().items() if k not in _NOT_IDENTITY}}
            for entry in self.scans
        ]
        identity = {"format": FORMAT, "version": VERSION, "spec": self.spec, "scans": scans}
        if self.weights is not None:  # a dataset without weights keeps the id it had before they existed
            identity["weights"] = self.weights.to_dict()
        text = canonical_json(identity)
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    def uids(self) -> list[str]:
        return [entry.uid for entry in self.scans]

    def to_dict(self) -> dict[str, Any]:
        values = {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "build_id": self.build_id,
            "created": self.created,
            "spec": self.spec,
            "scans": [entry.to_dict() for entry in self.scans],
        }
        if self.weights is not None:
            values["weights"] = self.weights.to_dict()
        return values

    def with_weights(self, weights: Weights | None) -> DatasetManifest:
        """This composition with other weights (those of scans it lacks dropped)."""
        if weights is not None:
            weights = weights.keeping(set(self.uids()))
        return DatasetManifest(self.name, self.spec, self.scans, self.created, weights)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, where: str) -> DatasetManifest:
        try:
            if values.get("format") != FORMAT or values.get("version") != VERSION:
                raise StoreError(
                    f"{where}: format {values.get('format')!r} version {values.get('version')!r}; expected "
                    f"{FORMAT!r} version {VERSION}"
                )
            manifest = cls(
                str(values["name"]),
                dict(values["spec"]),
                tuple(ScanEntry.from_dict(entry) for entry in values["scans"]),
                str(values.get("created", "")),
                Weights.from_dict(values["weights"], where=f"{where}: weights") if values.get("weights") else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"{where}: malformed dataset manifest ({type(exc).__name__}: {exc})") from None
        if values.get("build_id") != manifest.build_id:
            raise StoreError(f"{where}: its content does not hash to the id it names; the file was edited or damaged")
        return manifest


@dataclass(frozen=True)
class DatasetPaths:
    """The directory of one dataset in a cache."""

    cache: Path
    name: str

    @property
    def root(self) -> Path:
        return self.cache / "datasets" / self.name

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    def build(self, build_id: str) -> Path:
        if not _BUILD_ID.match(build_id):
            raise ParameterError(f"build_id={build_id!r}; expected 32 hex digits")
        return self.root / "builds" / f"{build_id}.json"

    def current_id(self) -> str | None:
        return self.current()[0]

    def current(self) -> tuple[str | None, int]:
        """The live build's id (None before any) and the count of builds published so far."""
        try:
            text = (self.root / "current").read_text().split()
        except FileNotFoundError:
            return None, 0
        if not text or not _BUILD_ID.match(text[0]) or (len(text) > 1 and not text[1].isdigit()):
            raise StoreError(f"{self.root / 'current'}: {' '.join(text)[:60]!r} is not a build id; the file was damaged")
        return text[0], int(text[1]) if len(text) > 1 else 0

    def read(self, build_id: str) -> DatasetManifest:
        path = self.build(build_id)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise StoreNotFoundError(f"dataset {self.name!r} has no build {build_id} ({path})") from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: unreadable dataset manifest ({exc})") from None
        return DatasetManifest.from_dict(values, where=str(path))

    def publish(self, base: tuple[str | None, int], manifest: DatasetManifest) -> str | None:
        """Make ``manifest`` the live build if the live build is still ``base`` (id, count of
        builds published); its id, or None when another process published first.

        Who publishes the successor of the n-th build is decided by an exclusive create of
        ``successors/<n>``: exactly one publisher wins it, with no lock. A successor whose
        publisher died before moving ``current`` is rolled forward by the next publisher.
        """
        build_id = manifest.build_id
        path = self.build(build_id)
        if not path.is_file():
            stamped = DatasetManifest(manifest.name, manifest.spec, manifest.scans, _now(), manifest.weights)
            write_json_atomic(path, stamped.to_dict())
        generation = base[1]
        claim = self.root / "successors" / str(generation)
        if not create_exclusive(claim, build_id + "\n"):
            winner = claim.read_text().strip()
            if _BUILD_ID.match(winner) and self.build(winner).is_file() and self.current() == base:
                write_text_atomic(self.root / "current", f"{winner} {generation + 1}\n")  # roll forward
            return None
        write_text_atomic(self.root / "current", f"{build_id} {generation + 1}\n")
        return build_id


def write_json_atomic(path: Path, values: Any) -> None:
    write_text_atomic(path, json.dumps(values, indent=1, sort_keys=True) + "\n")



def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
