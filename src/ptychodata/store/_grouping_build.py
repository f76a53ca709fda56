"""Grouping builds: groups of a frames build, their coordinates and §5 scales (from the
energies the frames build recorded), and optionally the materialized X."""

from __future__ import annotations

import math
from concurrent.futures import Executor, Future
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ptychodata._runtime import release_pages, rows_per_chunk
from ptychodata.coords import group_coords
from ptychodata.errors import ParameterError, ScanDataError
from ptychodata.grouping import GroupingConfig, group
from ptychodata.normalize import intensity_scale, scale_from_energies
from ptychodata.store._build_options import BuildOptions
from ptychodata.store._cache_paths import BuildSlot, FrameFile, GroupingFile, npy_name
from ptychodata.store._files import STREAM_CHUNK_BYTES, NpyWriter, use_direct_io, write_npy
from ptychodata.store._frames import FramesEncoding, decode_into, map_patterns
from ptychodata.store._manifest import (
    FrameManifest,
    GroupingManifest,
    is_sound,
    read_manifest,
    write_manifest_last,
)

__all__ = ["GroupsAhead", "build_grouping", "experiment_groups"]


def _sound_grouping(directory):
    return is_sound(directory, GroupingManifest)


def build_grouping(
    slot: BuildSlot,
    frames_slot: BuildSlot,
    frames_id: str,
    config: GroupingConfig,
    options: BuildOptions,
    ahead: GroupsAhead | None = None,
) -> str:
    """Build and publish a grouping of frames build ``frames_id``; return its build id.
    Hold the grouping slot's lock and a reader lock on the frames build. ``ahead``: groups
    computed while the frames build was written, used if made from the same positions."""
    frames_dir = frames_slot.build_dir(frames_id)
    frames = read_manifest(frames_dir, FrameManifest)
    if config.N is not None and config.N != frames.N:
        raise ParameterError(f"config N={config.N} but the store's patterns are {frames.N}×{frames.N}")
    x = np.load(frames_dir / npy_name(FrameFile.XCOORDS))
    y = np.load(frames_dir / npy_name(FrameFile.YCOORDS))
    positions = [np.stack([x[e.start : e.stop], y[e.start : e.stop]], axis=1) for e in frames.experiments]
    names = [experiment.source.path or "in-memory scan" for experiment in frames.experiments]
    local_groups = ahead.result_for(positions) if ahead is not None else None
    if local_groups is None:
        local_groups = experiment_groups(positions, names, config)
    energies = np.load(frames_dir / npy_name(FrameFile.ENERGIES), mmap_mode="r")
    groups, group_experiment, scales, photon_scales = _scaled_groups(frames, local_groups, names, energies, config)
    B, C = groups.shape
    needs = B * C * 8 * 3 + B * 8 * 5 + (B * C * frames.N * frames.N * 4 if options.materialize else 0)
    digests: dict[str, str] = {}
    with slot.new_build({"frames_build": frames_id}, sound=_sound_grouping, needs=needs) as (build_id, directory):
        write_npy(directory / npy_name(GroupingFile.GROUPS), groups, digests=digests)
        write_npy(directory / npy_name(GroupingFile.GROUP_EXPERIMENT), group_experiment, digests=digests)
        _write_coordinates(directory, frames_dir, (x, y), groups, digests)
        if options.materialize:
            scale = np.asarray(scales)[group_experiment]
            _materialize_X(directory, frames_dir, frames, groups, scale, options.progress is True, options.direct_io,
                           digests)
        write_manifest_last(
            directory,
            GroupingManifest,
            digests=digests,
            key=slot.key,
            build_id=build_id,
            frames_key=frames.key,
            frames_build_id=frames_id,
            config=config.to_dict(),
            n_groups=len(groups),
            C=int(groups.shape[1]),
            x_scale=scales,
            intensity_scale=photon_scales,
            materialized=options.materialize,
        )
    slot.publish(build_id)
    return build_id


def _scaled_groups(
    frames: FrameManifest,
    local_groups: list[np.ndarray],
    names: list[str],
    energies: np.ndarray,
    config: GroupingConfig,
) -> tuple[np.ndarray, np.ndarray, list[float], list[float | None]]:
    """Every experiment's groups as (B, C) pattern indices of the build, the experiment of
    each group, and each experiment's §5 scale (from the energies of the patterns its
    groups use, as often as they use them) and intensity scale."""
    all_groups, group_experiment, scales, photon_scales = [], [], [], []
    for experiment, local, name in zip(frames.experiments, local_groups, names):
        # The patterns used and how often, in index order (np.unique's result, without its sort).
        multiplicity = np.bincount(local.ravel(), minlength=experiment.n_points)
        used = np.flatnonzero(multiplicity)
        scales.append(
            scale_from_energies(energies[used + experiment.start], multiplicity[used], N=frames.N, where=f"{name}: ")
        )
        nphotons = config.nphotons if config.nphotons is not None else experiment.nphotons
        photon_scales.append(intensity_scale(nphotons, frames.N))
        all_groups.append(local + experiment.start)
        group_experiment.append(np.full(len(local), experiment.experiment_id, np.int64))
    return np.concatenate(all_groups), np.concatenate(group_experiment), scales, photon_scales


def _write_coordinates(
    directory: Path,
    frames_dir: Path,
    positions: tuple[np.ndarray, np.ndarray],
    groups: np.ndarray,
    digests: dict[str, str],
) -> None:
    """Each group's centre and its members' relative coordinates (§3), from the positions
    (x, y) and from the nominal positions."""
    x_start = np.load(frames_dir / npy_name(FrameFile.XCOORDS_START))
    y_start = np.load(frames_dir / npy_name(FrameFile.YCOORDS_START))
    for (xs, ys), (offsets_stem, relative_stem) in (
        (positions, (GroupingFile.COORDS_OFFSETS, GroupingFile.COORDS_RELATIVE)),
        ((x_start, y_start), (GroupingFile.COORDS_START_OFFSETS, GroupingFile.COORDS_START_RELATIVE)),
    ):
        coords = group_coords(xs, ys, groups)  # (B, 1, 2, C) layout of §3
        write_npy(directory / npy_name(offsets_stem), coords.offsets[:, 0, :, 0], digests=digests)  # (B, 2)
        relative = coords.relative[:, 0].transpose(0, 2, 1)  # (B, C, 2)
        write_npy(directory / npy_name(relative_stem), relative, digests=digests)


def _materialize_X(
    directory: Path,
    frames_dir: Path,
    frames: FrameManifest,
    groups: np.ndarray,
    scale: np.ndarray,
    progress: bool,
    direct_io: bool | None,
    digests: dict[str, str],
):
    patterns = map_patterns(frames_dir, frames.patterns)
    encoding = FramesEncoding.of(frames.patterns)
    n_groups, C = groups.shape
    N = patterns.shape[-1]
    step = rows_per_chunk(4 * C * N * N, STREAM_CHUNK_BYTES)
    direct = use_direct_io(direct_io, n_groups * C * N * N * 4)
    with NpyWriter(directory / npy_name(GroupingFile.X), (n_groups, C, N, N), np.float32, direct=direct,
                   digests=digests) as writer:
        for start in tqdm(range(0, n_groups, step), disable=not progress, desc="materializing X", unit="chunk"):
            if encoding.is_identity:
                block = patterns[groups[start : start + step].ravel()].reshape(-1, C, N, N)
                block *= scale[start : start + step, None, None, None].astype(np.float32)
            else:
                members = groups[start : start + step]
                block = np.empty((len(members), C, N, N), np.float32)
                factor = np.repeat(scale[start : start + step].astype(np.float32), C)[:, None, None]
                decode_into(encoding, patterns[members.ravel()], block.reshape(-1, N, N), factor)
            writer.write(block)
            release_pages(patterns)


def _split_groups(n_groups: int | None, sizes: list[int]) -> list[int | None]:
    """Share ``n_groups`` among experiments in proportion to their sizes (largest remainder)."""
    if n_groups is None:
        return [None] * len(sizes)
    total = sum(sizes)
    exact = [n_groups * size / total for size in sizes]
    counts = [math.floor(value) for value in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: n_groups - sum(counts)]:
        counts[i] += 1
    return [max(1, count) for count in counts]


def experiment_groups(positions: list[np.ndarray], names: list[str], config: GroupingConfig) -> list[np.ndarray]:
    """Each experiment's groups (B_e, C) of its own pattern indices, from its (M_e, 2)
    positions: ``config.n_groups`` shared in proportion to the experiments' sizes, one
    seed per experiment. A ``ScanDataError`` names the experiment's source."""
    counts = _split_groups(config.n_groups, [len(p) for p in positions])
    groups = []
    for experiment_id, (points, count, name) in enumerate(zip(positions, counts, names)):
        experiment_config = replace(config, n_groups=count, seed=_experiment_seed(config.seed, experiment_id))
        try:
            groups.append(group(points, experiment_config))
        except ScanDataError as exc:
            raise ScanDataError(f"{name}: {exc}") from None
    return groups


@dataclass(frozen=True)
class GroupsAhead:
    """:func:`experiment_groups` of the sources' positions, computed on another thread while
    their frames build is written (grouping needs positions only; the §5 scales wait for the
    energies)."""

    positions: list[np.ndarray]
    future: Future

    @classmethod
    def start(cls, pool: Executor, positions: list[np.ndarray], names: list[str], config: GroupingConfig) -> GroupsAhead:
        return cls(positions, pool.submit(experiment_groups, positions, names, config))

    def result_for(self, positions: list[np.ndarray]) -> list[np.ndarray] | None:
        """The groups, if they were made from exactly these positions (else None: another
        process may have published a frames build of a changed source meanwhile)."""
        if len(positions) != len(self.positions) or not all(
            np.array_equal(mine, theirs) for mine, theirs in zip(self.positions, positions)
        ):
            return None
        return self.future.result()


def _experiment_seed(seed: int | None, experiment_id: int) -> int | None:
    """Experiment 0 uses the config's seed as is (a one-source store equals ``grouped_data``);
    the others get independent seeds derived from (seed, experiment_id)."""
    if seed is None or experiment_id == 0:
        return seed
    return int(np.random.SeedSequence([seed, experiment_id]).generate_state(1)[0])
