"""``ptychodata dataset create|add|remove|weights|info|export|import``: datasets of many scans."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ptychodata._runtime import optional_import
from ptychodata.cli._arguments import add_cache_dir, number, positive_int
from ptychodata.cli._options import add_load_options, load_options
from ptychodata.cli._prepare import add_grouping, grouping_config
from ptychodata.dataset import Dataset, DatasetChange, import_dataset, read_list
from ptychodata.errors import ParameterError
from ptychodata.summary import human_size


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``dataset`` command and its actions to ``commands``; returns its parser."""
    dataset = commands.add_parser(
        "dataset",
        help="datasets of many scans: create, add, remove, weights, info, export, import",
        description="A dataset lists one immutable build per scan, all prepared with the options fixed at "
        "create. add prepares only the scans not built yet and writes a new manifest; remove writes a "
        "manifest and touches no pattern. Each composition has an id: the dataset's fingerprint.",
    )
    actions = dataset.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create an empty dataset with its grouping and reading options")
    create.add_argument("name", metavar="NAME")
    add_grouping(create)
    create.add_argument(
        "--frames-dtype",
        choices=("float32", "float16", "bfloat16", "uint16", "uint32"),
        help="how patterns are stored (default float32 amplitudes)",
    )
    create.add_argument("--materialize", action="store_true", help="also write each scan's grouped X array")
    add_load_options(create)
    add = actions.add_parser("add", help="add scan files (prepares only those not built yet)")
    add.add_argument("name", metavar="NAME")
    add.add_argument("sources", type=Path, nargs="*", metavar="SRC", help="scan files")
    add.add_argument("--list", type=Path, metavar="FILE", help="a file naming one scan file a line")
    add.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="tag the scans added")
    add.add_argument("--keep-going", action="store_true", help="add the good files, list the failures")
    add.add_argument(
        "--built-only", action="store_true", help="prepare nothing: add what 'ptychodata prepare-scan' built"
    )
    add.add_argument("--quiet", action="store_true", help="no progress bars")
    engine = add.add_mutually_exclusive_group()
    engine.add_argument("--workers", type=positive_int, metavar="N", help="prepare scans in N local processes")
    engine.add_argument(
        "--dask", metavar="ADDRESS", help="prepare scans on the Dask cluster whose scheduler is at ADDRESS"
    )
    remove = actions.add_parser("remove", help="remove scans (by path, file name or uid)")
    remove.add_argument("name", metavar="NAME")
    remove.add_argument("sources", nargs="+", metavar="SCAN")
    weights = actions.add_parser(
        "weights",
        help="set how many groups of each scan an epoch holds (no weight given: show them)",
        description="Mixing weights per scan or per tag, one mode per dataset: repeat (a multiplier), choose (a count "
        "of groups an epoch; a tag's shared among its scans) or proportion (a share of the epoch). A scan takes its "
        "own weight, else the first tag weight that matches it, else the default. Setting weights replaces those "
        "set before and publishes a new build (weights are part of the fingerprint).",
    )
    weights.add_argument("name", metavar="NAME")
    weights.add_argument("--scan", nargs=2, action="append", default=[], metavar=("SCAN", "WEIGHT"),
                         help="a scan (uid, file name or path) and its weight")
    weights.add_argument("--tag", nargs=2, action="append", default=[], metavar=("KEY=VALUE", "WEIGHT"),
                         help="the scans with this tag and their weight")
    weights.add_argument("--mode", choices=("repeat", "choose", "proportion"), default="repeat",
                         help="what a weight is (default repeat)")
    weights.add_argument("--resample", choices=("epoch", "fixed"), default="epoch",
                         help="fractional parts drawn anew each epoch or once (default epoch)")
    weights.add_argument("--batching", choices=("random", "stratified"), default="random",
                         help="stratified: each global batch holds each stratum within one of its quota")
    weights.add_argument("--epoch-size", type=positive_int, metavar="N", help="groups an epoch (proportion mode)")
    weights.add_argument("--clear", action="store_true", help="remove the weights: every group once an epoch")
    info = actions.add_parser("info", help="the live build: its id, sizes, weights and scans")
    info.add_argument("name", metavar="NAME")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--diff", metavar="ID", help="the scans added and removed since build ID")
    export = actions.add_parser(
        "export",
        help="write the dataset to a self-contained directory (to move with rsync -aH or Globus)",
        description="Writes DIR/ptychodata-export.json (the build, its spec, every file with size and SHA-256) and "
        "DIR/cache (that build and its scans' builds, relative paths; hard links to the cache's files where the "
        "file system allows). DIR must be new or empty.",
    )
    export.add_argument("name", metavar="NAME")
    export.add_argument("directory", type=Path, metavar="DIR")
    export.add_argument("--build", metavar="ID", help="a build other than the live one")
    export.add_argument("--copy", action="store_true", help="copy every file (no hard links)")
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    imported = actions.add_parser(
        "import",
        help="check an exported directory (sizes and hashes) and publish it in the cache",
        description="Checks every file of DIR against its size and SHA-256, places the builds the cache lacks (hard "
        "links where the file system allows) and makes the exported build the dataset's live build.",
    )
    imported.add_argument("directory", type=Path, metavar="DIR")
    imported.add_argument("--name", metavar="NAME", help="import under this name (default the exported one)")
    imported.add_argument("--copy", action="store_true", help="copy every file (no hard links)")
    imported.add_argument("--quiet", action="store_true", help="no progress bar")
    for parser in (create, add, remove, weights, info, export, imported):
        add_cache_dir(parser)
    return dataset


def run(args: argparse.Namespace) -> int:
    """Carry out the action; returns 0, or 1 when ``add --keep-going`` left files out."""
    if args.action == "create":
        return _create(args)
    if args.action == "import":
        return _report(import_dataset(args.directory, cache_dir=args.cache_dir, name=args.name,
                                      link=not args.copy, progress=not args.quiet))
    dataset = Dataset(args.name, args.cache_dir)
    if args.action == "weights":
        return _weights(dataset, args)
    if args.action == "export":
        path = dataset.export(args.directory, build_id=args.build, link=not args.copy, progress=not args.quiet)
        print(path)
        return 0
    if args.action == "add":
        with _executor(args) as executor:
            change = dataset.add(_sources(args), tags=_tags(args.tag), progress=not args.quiet,
                                 keep_going=args.keep_going, executor=executor, built_only=args.built_only)
        return _report(change)
    if args.action == "remove":
        return _report(dataset.remove(args.sources))
    if args.diff:
        print(json.dumps(dataset.diff(args.diff), indent=2))
        return 0
    info = dataset.info()
    print(json.dumps(info, indent=2) if args.json else _format_info(info))
    return 0


def _weights(dataset: Dataset, args: argparse.Namespace) -> int:
    """Set, clear or show the weights."""
    given = [(scan, value) for scan, value in args.scan] + [(tag, value) for tag, value in args.tag]
    for tag, _ in args.tag:
        key, sep, _value = tag.partition("=")
        if not sep or not key:
            raise ParameterError(f"--tag {tag!r}: expected KEY=VALUE, e.g. --tag beamline=2-ID 0.5")
    if args.clear and given:
        raise ParameterError("--clear with --scan or --tag; clear the weights, or set new ones (which replace them)")
    if not args.clear and not given:
        info = dataset.info()
        print(_format_weights(info))
        return 0
    weights = None
    if given:
        weights = {}
        for key, text in given:
            if key in weights:
                raise ParameterError(f"{key!r} weighted twice; expected one weight each")
            weights[key] = _weight(key, text)
    change = dataset.set_weights(weights, mode=args.mode, resample=args.resample, batching=args.batching,
                                 epoch_size=args.epoch_size)
    print(change.build_id)
    return 0


def _weight(key: str, text: str) -> float:
    try:
        return number(text)
    except argparse.ArgumentTypeError:
        raise ParameterError(f"weight of {key!r}: {text!r}; expected a number") from None


def _format_weights(info: dict) -> str:
    weights = info["weights"]
    if weights is None:
        return "weights   none: every group once an epoch"
    names = {scan["uid"]: scan["name"] for scan in info["scans"]}
    rules = ", ".join(
        f"scan {names.get(rule['scan'], rule['scan'])}={rule['value']:g}" if "scan" in rule
        else f"{rule['tag']}={rule['value']:g}"
        for rule in weights["rules"]
    )
    size = f", epoch size {weights['epoch_size']}" if weights["epoch_size"] is not None else ""
    lines = [f"weights   {weights['mode']}: {rules} (resample {weights['resample']}, {weights['batching']} batches"
             f"{size})"]
    epoch = sum(scan.get("epoch_groups", 0) for scan in info["scans"])
    lines.append(f"epoch     {epoch} groups")
    return "\n".join(lines)


def _create(args: argparse.Namespace) -> int:
    options = load_options(args)
    intensity = options.pop("intensity", None)
    dataset = Dataset.create(
        args.name,
        grouping_config(args),
        cache_dir=args.cache_dir,
        load_options=options,
        intensity=intensity,
        frames_dtype=args.frames_dtype,
        materialize=args.materialize,
    )
    print(f"dataset {dataset.name} in {dataset.cache_dir}")
    return 0


@contextlib.contextmanager
def _executor(args: argparse.Namespace) -> Iterator[Any]:
    """Where ``dataset add`` prepares scans: here, N local processes, or a Dask cluster."""
    if args.dask is None:
        yield args.workers
        return
    distributed = optional_import("distributed", purpose="--dask")
    with distributed.Client(args.dask) as client:
        yield client.get_executor()


def _sources(args: argparse.Namespace) -> list[Path]:
    sources = list(args.sources)
    if args.list is not None:
        sources += [Path(path) for path in read_list(args.list)]
    if not sources:
        raise ParameterError("dataset add needs scan files: SRC ... or --list FILE")
    return sources


def _tags(items: list[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ParameterError(f"--tag {item!r}: expected KEY=VALUE, e.g. --tag beamline=2-ID")
        tags[key] = value
    return tags


def _report(change: DatasetChange) -> int:
    for label, paths in (("added", change.added), ("removed", change.removed)):
        for path in paths:
            print(f"{label:<9} {path}", file=sys.stderr)
    if change.unchanged:
        print(f"unchanged {len(change.unchanged)} scan(s)", file=sys.stderr)
    for path, reason in change.failed.items():
        print(f"failed    {path}: {reason}", file=sys.stderr)
    print(change.build_id)
    return 1 if change.failed else 0


def _format_info(info: dict) -> str:
    lines = [
        f"dataset   {info['name']} in {info['cache_dir']}",
        f"build     {info['build_id'] or 'none (no scan yet)'}",
        f"scans     {info['n_scans']}: {info['n_patterns']} patterns, {info['n_groups']} groups of C={info['C']}, "
        f"N={info['N']}, {human_size(info['bytes'])} ({human_size(info['bytes_held_only_here'])} held by this dataset alone)",
    ]
    if info["weights"] is not None:
        lines.append(_format_weights(info))
    for scan in info["scans"]:
        tags = " ".join(f"{k}={v}" for k, v in scan["tags"].items())
        epoch = f"  {scan['epoch_groups']:>8} an epoch ({scan['stratum']})" if "epoch_groups" in scan else ""
        lines.append(f"  {scan['uid']}  {scan['n_groups']:>8} groups{epoch}  {scan['name']}  {tags}".rstrip())
    return "\n".join(lines)
