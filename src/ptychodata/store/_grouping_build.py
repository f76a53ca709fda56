"""Grouping builds: groups of a frames build, their coordinates and §5 scales (from the
energies the frames build recorded), and optionally the materialized X."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ptychodata.coords import group_coords
from ptychodata.errors import ParameterError, ScanDataError
from ptychodata.grouping import GroupingConfig, group
from ptychodata.normalize import intensity_scale, scale_from_energies
from ptychodata.store._files import (
    STREAM_CHUNK_BYTES,
    NpyWriter,
    release_pages,
    rows_per_chunk,
    use_direct_io,
    write_npy,
)
from ptychodata.store._frames import FramesEncoding, decode_into, map_patterns
from ptychodata.store._layout import BuildSlot, FrameFile, GroupingFile, npy_name
from ptychodata.store._manifest import (
    ExperimentEntry,
    FrameManifest,
    GroupingManifest,
    read_manifest,
    write_manifest_last,
)

__all__ = ["build_grouping"]


def build_grouping(
    slot: BuildSlot,
    frames_slot: BuildSlot,
    frames_id: str,
    config: GroupingConfig,
    materialize: bool,
    progress: bool,
    direct_io: bool | None,
) -> str:
    """Build and publish a grouping of frames build ``frames_id``; return its build id.
    Hold the grouping slot's lock and a reader lock on the frames build."""
    frames_dir = frames_slot.build_dir(frames_id)
    frames = read_manifest(frames_dir, FrameManifest)
    if config.N is not None and config.N != frames.N:
        raise ParameterError(f"config N={config.N} but the store's patterns are {frames.N}×{frames.N}")
    x = np.load(frames_dir / npy_name(FrameFile.XCOORDS))
    y = np.load(frames_dir / npy_name(FrameFile.YCOORDS))
    energies = np.load(frames_dir / npy_name(FrameFile.ENERGIES), mmap_mode="r")
    n_groups = _split_groups(config.n_groups, [e.n_points for e in frames.experiments])
    all_groups, group_experiment, scales, photon_scales = [], [], [], []
    for experiment, count in zip(frames.experiments, n_groups):
        sl = slice(experiment.start, experiment.stop)
        experiment_config = replace(config, n_groups=count, seed=_experiment_seed(config.seed, experiment))
        where = f"{experiment.source.path or 'in-memory scan'}: "
        try:
            local = group(np.stack([x[sl], y[sl]], axis=1), experiment_config)
        except ScanDataError as exc:
            raise ScanDataError(f"{where}{exc}") from None
        # The patterns used and how often, in index order (np.unique's result, without its sort).
        multiplicity = np.bincount(local.ravel(), minlength=experiment.n_points)
        used = np.flatnonzero(multiplicity)
        scales.append(scale_from_energies(energies[used + experiment.start], multiplicity[used], N=frames.N, where=where))
        local += experiment.start
        groups = local
        nphotons = config.nphotons if config.nphotons is not None else experiment.nphotons
        photon_scales.append(intensity_scale(nphotons, frames.N))
        all_groups.append(groups)
        group_experiment.append(np.full(len(groups), experiment.experiment_id, np.int64))
    groups = np.concatenate(all_groups)
    experiment_of_group = np.concatenate(group_experiment)
    x_start = np.load(frames_dir / npy_name(FrameFile.XCOORDS_START))
    y_start = np.load(frames_dir / npy_name(FrameFile.YCOORDS_START))
    with slot.new_build() as (build_id, directory):
        write_npy(directory / npy_name(GroupingFile.GROUPS), groups)
        write_npy(directory / npy_name(GroupingFile.GROUP_EXPERIMENT), experiment_of_group)
        for (xs, ys), (offsets_stem, relative_stem) in (
            ((x, y), (GroupingFile.COORDS_OFFSETS, GroupingFile.COORDS_RELATIVE)),
            ((x_start, y_start), (GroupingFile.COORDS_START_OFFSETS, GroupingFile.COORDS_START_RELATIVE)),
        ):
            coords = group_coords(xs, ys, groups)  # (B, 1, 2, C) layout of §3
            write_npy(directory / npy_name(offsets_stem), coords.offsets[:, 0, :, 0])  # (B, 2)
            write_npy(directory / npy_name(relative_stem), coords.relative[:, 0].transpose(0, 2, 1))  # (B, C, 2)
        if materialize:
            _materialize_X(
                directory, frames_dir, frames, groups, np.asarray(scales)[experiment_of_group], progress, direct_io
            )
        write_manifest_last(
            directory,
            GroupingManifest,
            key=slot.key,
            build_id=build_id,
            frames_key=frames.key,
            frames_build_id=frames_id,
            config=config.to_dict(),
            n_groups=len(groups),
            C=int(groups.shape[1]),
            x_scale=scales,
            intensity_scale=photon_scales,
            materialized=materialize,
        )
    slot.publish(build_id)
    return build_id


def _materialize_X(
    directory: Path,
    frames_dir: Path,
    frames: FrameManifest,
    groups: np.ndarray,
    scale: np.ndarray,
    progress: bool,
    direct_io: bool | None,
):
    patterns = map_patterns(frames_dir, frames.patterns)
    encoding = FramesEncoding.of(frames.patterns)
    n_groups, C = groups.shape
    N = patterns.shape[-1]
    step = rows_per_chunk(4 * C * N * N, STREAM_CHUNK_BYTES)
    direct = use_direct_io(direct_io, n_groups * C * N * N * 4)
    with NpyWriter(directory / npy_name(GroupingFile.X), (n_groups, C, N, N), np.float32, direct=direct) as writer:
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


def _experiment_seed(seed: int | None, experiment: ExperimentEntry) -> int | None:
    """Experiment 0 uses the config's seed as is (a one-source store equals ``grouped_data``);
    the others get independent seeds derived from (seed, experiment_id)."""
    if seed is None or experiment.experiment_id == 0:
        return seed
    return int(np.random.SeedSequence([seed, experiment.experiment_id]).generate_state(1)[0])
