"""A dataset's loader under torch.distributed (gloo): resumed after a scan was added, on another
number of ranks, it serves every group after the checkpoint once and none consumed before it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptychodata import Dataset, GroupingConfig, open_dataset, simulate
from ptychodata.errors import DatasetChangedError

torch = pytest.importorskip("torch")
from ptychodata.torch import make_loader  # noqa: E402

CONFIG = GroupingConfig(gridsize=2, neighbor_count=5, seed=21)

RANK = """
import itertools, json, sys, torch, torch.distributed as dist
from ptychodata import open_dataset
from ptychodata.torch import make_loader
rank, world, init, cache, state_path, out, batches, mode = sys.argv[1:9]
rank, world, batches = int(rank), int(world), int(batches)
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
with open_dataset("ddp", cache_dir=cache) as data:
    loader = make_loader(data, 6, num_workers=0, seed=5)
    loader.set_epoch(0)
    if mode != "fresh":
        loader.load_state_dict(torch.load(state_path, weights_only=False), on_dataset_change=mode)
    offsets = data.group_offsets
    seen = []
    for batch in itertools.islice(loader, batches):  # exactly that many: the state counts what was taken
        for scan, index in zip(batch["experiment_id"].tolist(), batch["group_index"].tolist()):
            seen.append([data.uids[scan], index - int(offsets[scan])])
    if mode == "fresh" and rank == 0:
        torch.save(loader.state_dict(), state_path)
json.dump(seen, open(out, "w"))
dist.destroy_process_group()
"""


def run_ranks(tmp_path: Path, phase: str, world: int, cache: Path, batches: int, mode: str) -> list[list]:
    init = f"file://{tmp_path / f'rendezvous-{phase}'}"
    outputs = [tmp_path / f"{phase}-{rank}.json" for rank in range(world)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen([sys.executable, "-c", RANK, str(rank), str(world), init, str(cache),
                          str(tmp_path / "state.pt"), str(outputs[rank]), str(batches), mode],
                         env=env, stderr=subprocess.PIPE, text=True)
        for rank in range(world)
    ]
    errors = [process.communicate(timeout=180)[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * world, errors
    return [[tuple(item) for item in json.loads(path.read_text())] for path in outputs]


def test_two_ranks_then_three_after_a_scan_was_added_serve_the_rest_once(tmp_path):
    cache = tmp_path / "cache"
    scans = [simulate(30 + 6 * k, 16, seed=40 + k, progress=False).save(tmp_path / f"s{k}.npz") for k in range(4)]
    dataset = Dataset.create("ddp", CONFIG, cache_dir=cache)
    dataset.add(scans[:3])
    with open_dataset("ddp", cache_dir=cache) as data:
        old = {(data.uids[k], g) for k in range(data.n_experiments) for g in range(len(data.stores[k]))}

    before = run_ranks(tmp_path, "before", 2, cache, batches=4, mode="fresh")
    consumed = set().union(*map(set, before))
    assert len(consumed) == 2 * 4 * 6, "two ranks, four batches of six groups each, none twice"

    dataset.add(scans[3])
    after = run_ranks(tmp_path, "after", 3, cache, batches=10**6, mode="continue")
    served = [item for share in after for item in share]
    with open_dataset("ddp", cache_dir=cache) as data:
        (new_scan,) = set(data.uids) - {uid for uid, _ in old}
    assert not consumed & set(served), "a group consumed before the checkpoint came again"
    assert old - consumed <= set(served), "an old group after the checkpoint was not served"
    assert any(uid == new_scan for uid, _ in served), "the added scan's groups after the checkpoint are served"
    assert len(served) - len(set(served)) < 3, "only padding (fewer than one group a rank) repeats"
    assert len({len(share) for share in after}) == 1, "ranks stay in step"

    with open_dataset("ddp", cache_dir=cache) as data:  # strict refuses, naming the scan added
        loader = make_loader(data, 6, num_workers=0, seed=5, distributed=False)
        state = torch.load(tmp_path / "state.pt", weights_only=False)
        with pytest.raises(DatasetChangedError, match=scans[3].name):
            loader.load_state_dict(state, on_dataset_change="strict")
