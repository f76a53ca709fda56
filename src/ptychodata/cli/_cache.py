"""``ptychodata cache list|verify|prune|remove``: look after the cached stores."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ptychodata.cli._arguments import add_cache_dir, age
from ptychodata.errors import ParameterError, StoreNotFoundError
from ptychodata.store import default_cache_dir, list_stores, prune_cache, remove_store, verify_store
from ptychodata.summary import human_size


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``cache`` command to ``commands``; returns its parser."""
    cache = commands.add_parser(
        "cache",
        help="list, verify, prune or remove cached stores",
        description="list: every store with its builds and groupings; verify: the live builds' manifests, "
        "files (sizes, headers, SHA-256 of their bytes against those recorded when written), index tables and "
        "sources (exit status 1 on a problem); prune: delete builds that are not live and that no reader holds, and leftovers of "
        "builds that died; remove: delete whole stores (refused while a reader holds one, unless --force).",
    )
    cache.add_argument("action", choices=("list", "verify", "prune", "remove"))
    cache.add_argument(
        "stores",
        nargs="*",
        metavar="KEY",
        help="frame store keys or paths (default: all for list/verify; remove needs keys or --all)",
    )
    add_cache_dir(cache)
    cache.add_argument("--all", action="store_true", help="with remove: every store")
    cache.add_argument("--force", action="store_true", help="with remove: also stores a reader holds open")
    cache.add_argument(
        "--quick", action="store_true",
        help="with verify: check manifests, sizes, headers and indices but re-hash neither the files nor the sources",
    )
    cache.add_argument(
        "--older-than", type=age, metavar="AGE",
        help="with prune: only builds made longer ago than AGE (14d, 36h, 90m, or days; on shared file systems)",
    )
    cache.add_argument(
        "--unreferenced", action="store_true",
        help="with prune: say so explicitly; prune only ever deletes builds that are not live, that no dataset "
             "lists and that no reader on this host holds",
    )
    return cache


def run(args: argparse.Namespace) -> int:
    """Carry out the action on the stores named (or all); returns 0, or 1 when verify finds a problem."""
    cache_dir = args.cache_dir or default_cache_dir()
    stores = _named(list_stores(cache_dir), args.stores, cache_dir)
    if args.action == "prune":
        print(f"removed {prune_cache(cache_dir, older_than_s=args.older_than)} unused build(s) and leftover(s)")
        return 0
    if args.action == "list":
        return _list(stores, cache_dir)
    if args.action == "verify":
        if not stores:
            print(f"{cache_dir}: no store to verify")
        return _verify(stores, quick=args.quick)
    if not args.stores and not args.all:
        raise ParameterError("cache remove needs store keys, or --all")
    return _remove(stores, force=args.force)


def _named(stores: list[Any], wanted: list[str], cache_dir: Path) -> list[Any]:
    """The stores named by key, path or directory name (all when none is named)."""
    if not wanted:
        return stores
    names = set(wanted)
    stores = [s for s in stores if s.key in names or str(s.path) in names or s.path.name in names]
    missing = names - {s.key for s in stores} - {str(s.path) for s in stores} - {s.path.name for s in stores}
    if missing:
        raise StoreNotFoundError(f"{cache_dir}: no store {', '.join(sorted(missing))}")
    return stores


def _list(stores: list[Any], cache_dir: Path) -> int:
    print(f"{cache_dir}: {len(stores)} store(s)")
    for cached in stores:
        manifest = cached.manifest
        sources = (
            ", ".join(e.source.path or "in-memory scan" for e in manifest.experiments)
            if manifest
            else f"unreadable ({cached.problem})"
        )
        print(
            f"{cached.key}  {human_size(cached.bytes_on_disk):>9}  "
            f"{manifest.created if manifest else '?'}  {len(cached.builds)} build(s)  {sources}"
        )
        for grouping, live in cached.groupings:
            what = (
                "no live build"
                if live is None
                else f"{live.n_groups} groups of C={live.C}, config {live.config}"
            )
            print(f"    {grouping.path}  {what}")
    return 0


def _verify(stores: list[Any], *, quick: bool) -> int:
    failures = 0
    for cached in stores:
        problems = verify_store(cached.path, content=not quick)
        failures += bool(problems)
        print(f"{cached.key}  " + ("ok" if not problems else "PROBLEM: " + "; ".join(problems)))
    return 1 if failures else 0


def _remove(stores: list[Any], *, force: bool) -> int:
    for cached in stores:
        remove_store(cached.path, force=force)
        print(f"removed {cached.path}")
    return 0
