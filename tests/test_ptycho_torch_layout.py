"""make_loader(layout="ptycho_torch"): ptycho_torch's batch tuple (fields, probe, probe_scaling).

Definitions checked here, as ptycho_torch's ``PtychoDataset`` makes them (its dataloader and
``get_relative_coords`` with the TF sign): ``coords_global`` = the members' positions (x, y);
``coords_center`` = their mean; ``coords_relative`` = −(coords_global − coords_center); the
``coords_start_*`` the same from the nominal positions; the constants are means over all of
an experiment's patterns; the probe is normalised by ``normalize_probe_like_tf``.
"""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tensordict = pytest.importorskip("tensordict")

from ptychodata import GroupingConfig, ScanData, prepare, simulate  # noqa: E402
from ptychodata.errors import ParameterError  # noqa: E402
from ptychodata.normalize import normalize_probe  # noqa: E402
from ptychodata.torch import GroupedDataset, GroupSampler, make_loader, to_device  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "data" / "ptychopinn_parity" / "ptychopinn_parity.npz"
FIELD_KEYS = {
    "images", "coords_global", "coords_center", "coords_relative", "coords_start_center",
    "coords_start_relative", "nn_indices", "experiment_id", "rms_scaling_constant",
    "physics_scaling_constant",
}


@pytest.fixture(scope="module")
def scans():
    """Two experiments: a noise-free jittered scan, and the same physics 3× brighter (diffraction
    and probe ×3, so its constants and probe factor differ by exactly 3)."""
    first = simulate(n_points=120, N=16, seed=11, pattern="jittered")
    second = dataclasses.replace(first, diffraction=first.diffraction * 3, probe=first.probe * 3, source=None)
    return first, second


@pytest.fixture(scope="module")
def store(scans, tmp_path_factory):
    config = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)
    return prepare(list(scans), config, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def batches_of(loader) -> list[tuple]:
    """Each batch as (fields dict, probe, probe_scaling) NumPy copies."""
    out = []
    for fields, probe, probe_scaling in loader:
        out.append(({key: value.numpy().copy() for key, value in fields.items()},
                    probe.numpy().copy(), probe_scaling.numpy().copy()))
    return out


def assert_same_batches(got: list[tuple], expected: list[tuple]) -> None:
    assert len(got) == len(expected)
    for (fields, probe, scaling), (fields_e, probe_e, scaling_e) in zip(got, expected):
        assert fields.keys() == fields_e.keys()
        for key in fields:
            np.testing.assert_array_equal(fields[key], fields_e[key], err_msg=key)
        np.testing.assert_array_equal(probe, probe_e)
        np.testing.assert_array_equal(scaling, scaling_e)


# ---------------------------------------------------------------------- structure
@pytest.mark.parametrize("with_Y", [False, True])
def test_batch_tuple_keys_shapes_dtypes(store, with_Y):
    B, C, N = 8, store.C, store.N
    loader = make_loader(store, B, layout="ptycho_torch", with_Y=with_Y, seed=1)
    batch = next(iter(loader))
    assert isinstance(batch, tuple) and len(batch) == 3
    fields, probe, probe_scaling = batch
    assert isinstance(fields, tensordict.TensorDict)
    assert tuple(fields.batch_size) == (B,)
    assert set(fields.keys()) == FIELD_KEYS | ({"label_amp", "label_phase"} if with_Y else set())
    expected = {
        "images": ((B, C, N, N), torch.float32),
        "coords_global": ((B, C, 1, 2), torch.float32),
        "coords_center": ((B, 1, 1, 2), torch.float32),
        "coords_relative": ((B, C, 1, 2), torch.float32),
        "coords_start_center": ((B, 1, 1, 2), torch.float32),
        "coords_start_relative": ((B, C, 1, 2), torch.float32),
        "nn_indices": ((B, C), torch.int64),
        "experiment_id": ((B,), torch.int64),
        "rms_scaling_constant": ((B, 1, 1, 1), torch.float32),
        "physics_scaling_constant": ((B, 1, 1, 1), torch.float32),
        "label_amp": ((B, C, N, N), torch.float32),
        "label_phase": ((B, C, N, N), torch.float32),
    }
    for key in fields.keys():
        shape, dtype = expected[key]
        assert (tuple(fields[key].shape), fields[key].dtype) == (shape, dtype), key
    assert (tuple(probe.shape), probe.dtype) == ((B, C, 1, N, N), torch.complex64)
    assert (tuple(probe_scaling.shape), probe_scaling.dtype) == ((B, 1, 1, 1), torch.float32)


def test_images_are_the_raw_stored_patterns_of_the_members(store):
    for fields, _, _ in make_loader(store, 16, layout="ptycho_torch", seed=2):
        members = fields["nn_indices"].numpy()
        np.testing.assert_array_equal(fields["images"].numpy(), store.patterns[members])
    assert min(store.x_scale) != pytest.approx(1.0)  # so unscaled and §7-scaled X differ


def test_coordinate_keys_are_ptycho_torchs_definitions(store, scans):
    """Recomputed here from the scans' own positions, by ptycho_torch's definitions."""
    offsets = np.cumsum([0] + [scan.n_points for scan in scans])
    x = np.concatenate([scan.xcoords for scan in scans])
    y = np.concatenate([scan.ycoords for scan in scans])
    x0 = np.concatenate([scan.xcoords_start for scan in scans])
    y0 = np.concatenate([scan.ycoords_start for scan in scans])
    assert np.abs(x - x0).max() > 0.01  # jittered: measured and nominal positions differ
    for fields, _, _ in make_loader(store, 32, layout="ptycho_torch", seed=4):
        members = fields["nn_indices"].numpy()
        experiment = fields["experiment_id"].numpy()
        assert np.all((members >= offsets[experiment, None]) & (members < offsets[experiment + 1, None]))
        for (xs, ys), centre_key, relative_key, global_key in (
            ((x, y), "coords_center", "coords_relative", "coords_global"),
            ((x0, y0), "coords_start_center", "coords_start_relative", None),
        ):
            positions = np.stack([xs[members], ys[members]], axis=-1)[:, :, None, :]  # (B, C, 1, 2)
            centre = positions.mean(axis=1, keepdims=True)  # (B, 1, 1, 2)
            np.testing.assert_allclose(fields[centre_key].numpy(), centre, rtol=0, atol=2e-5)
            np.testing.assert_allclose(fields[relative_key].numpy(), -(positions - centre), rtol=0, atol=2e-5)
            if global_key:
                np.testing.assert_allclose(fields[global_key].numpy(), positions, rtol=0, atol=2e-5)
        # ptycho_torch's own check of its sign: coords_relative = -(coords_global - coords_center)
        torch.testing.assert_close(
            fields["coords_relative"], -(fields["coords_global"] - fields["coords_center"]), rtol=0, atol=2e-5
        )


def test_constants_and_probe_per_experiment(store, scans):
    """Each group gets its experiment's constants: means over ALL of that scan's patterns."""
    expected = []
    for scan in scans:
        amplitudes = scan.diffraction.astype(np.float64)
        energy = (amplitudes**2).sum(axis=(1, 2)).mean()
        probe, factor = normalize_probe(scan.probe, 4.0, rule="ptycho_torch")
        physics = 1 / amplitudes.sum(axis=(1, 2)).mean()
        expected.append((np.sqrt(scan.N**2 / energy), physics, probe, 1 / factor))
    (rms0, phys0, _, scale0), (rms1, phys1, _, scale1) = expected
    assert rms0 == pytest.approx(3 * rms1) and phys0 == pytest.approx(3 * phys1)
    assert scale0 == pytest.approx(3 * scale1)
    seen = set()
    for fields, probe, probe_scaling in make_loader(store, 32, layout="ptycho_torch", seed=5):
        for b, e in enumerate(fields["experiment_id"].tolist()):
            rms, physics, normalised, scaling = expected[e]
            assert fields["rms_scaling_constant"][b].item() == pytest.approx(rms, rel=1e-6)
            assert fields["physics_scaling_constant"][b].item() == pytest.approx(physics, rel=1e-6)
            assert probe_scaling[b].item() == pytest.approx(scaling, rel=1e-6)
            for c in range(store.C):
                np.testing.assert_allclose(probe[b, c, 0].numpy(), normalised, rtol=1e-6, atol=1e-7)
            seen.add(e)
    assert seen == {0, 1}


def test_a_subset_keeps_the_constants_of_the_whole_experiment(store):
    whole = store.ptycho_torch_constants()
    part = store.subset(np.arange(10)).ptycho_torch_constants()
    np.testing.assert_array_equal(part.rms_scaling_constant, whole.rms_scaling_constant)
    np.testing.assert_array_equal(part.physics_scaling_constant, whole.physics_scaling_constant)


def test_labels_and_probe_reproduce_the_images_by_physics(store):
    """A ptycho_torch-style forward model on the batch: |FFT((probe / probe_scaling) · Y_c)| with
    Y_c = label_amp · exp(i label_phase) reproduces image c (noise-free simulation, unitary FFT).
    Checks channel order, probe, probe_scaling, labels and raw images together."""
    loader = make_loader(store, 16, layout="ptycho_torch", with_Y=True, seed=6)
    fields, probe, probe_scaling = next(iter(loader))
    obj = torch.polar(fields["label_amp"], fields["label_phase"])  # (B, C, N, N)
    physical_probe = probe[:, :, 0] / probe_scaling  # (B, C, N, N): undo the normalisation
    far_field = torch.fft.fftshift(torch.fft.fft2(physical_probe * obj, norm="ortho").abs(), dim=(-2, -1))
    images = fields["images"]
    assert float(images.amax()) > 0.1
    torch.testing.assert_close(far_field, images, rtol=0, atol=2e-4 * float(images.amax()))


def test_a_ptycho_torch_style_training_step_consumes_the_batch(store):
    """ptycho_torch's ``compute_loss`` reads: batch[0]['images'], ['coords_relative'],
    ['rms_scaling_constant'], ['physics_scaling_constant'], ['experiment_id'], batch[1] (probe)
    and batch[2] (probe_scaling), with output scale sqrt(1 / (probe_scaling² · physics))."""
    torch.manual_seed(0)
    C, N = store.C, store.N

    class TinyPINN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Conv2d(C + 2 * C, 2 * C, 3, padding=1)

        def forward(self, x, positions, probe, input_scale, output_scale):
            B = x.shape[0]
            grid = positions.reshape(B, 2 * C, 1, 1).expand(B, 2 * C, N, N)
            amp_phase = self.net(torch.cat([x * input_scale, grid], dim=1))
            obj = torch.polar(torch.sigmoid(amp_phase[:, :C]), np.pi * torch.tanh(amp_phase[:, C:]))
            wave = probe[:, :, 0] * obj  # probe (B, C, 1, N, N): one mode
            return torch.fft.fftshift(torch.fft.fft2(wave, norm="ortho").abs(), dim=(-2, -1)) * output_scale

    model = TinyPINN()
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3)
    loader = make_loader(store, 8, layout="ptycho_torch", seed=7)
    for step, batch in zip(range(2), loader):
        batch = to_device(batch, "cpu")
        x = batch[0]["images"]
        output_scale = torch.sqrt(1 / (batch[2] ** 2 * batch[0]["physics_scaling_constant"] + 1e-9))
        pred = model(x, batch[0]["coords_relative"], batch[1], batch[0]["rms_scaling_constant"], output_scale)
        loss = (pred - x).abs().mean() / (x.mean() + 1e-8)
        optimiser.zero_grad()
        loss.backward()
        gradient = model.net.weight.grad
        assert torch.isfinite(loss) and float(gradient.abs().sum()) > 0
        optimiser.step()
    assert batch[0]["experiment_id"].dtype == torch.int64


# ---------------------------------------------------------------------- sampler, resume, workers
def test_two_workers_give_the_main_process_batches(store):
    main = batches_of(make_loader(store, 16, layout="ptycho_torch", with_Y=True, seed=8, num_workers=0))
    workers = batches_of(make_loader(store, 16, layout="ptycho_torch", with_Y=True, seed=8, num_workers=2))
    assert_same_batches(workers, main)
    order = GroupSampler(len(store), 16, seed=8, num_replicas=1, rank=0)
    expected_members = [store.groups[batch] for batch in order]
    for (fields, _, _), members in zip(main, expected_members):
        np.testing.assert_array_equal(fields["nn_indices"], members)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_gives_the_remaining_batches(store, num_workers):
    uninterrupted = batches_of(make_loader(store, 16, layout="ptycho_torch", seed=9, num_workers=num_workers))
    loader = make_loader(store, 16, layout="ptycho_torch", seed=9, num_workers=num_workers)
    taken = []
    for fields, probe, scaling in loader:
        fields = {key: value.numpy().copy() for key, value in fields.items()}
        taken.append((fields, probe.numpy().copy(), scaling.numpy().copy()))
        if len(taken) == 3:
            break
    state = loader.state_dict()
    resumed = make_loader(store, 16, layout="ptycho_torch", seed=9, num_workers=num_workers)
    resumed.load_state_dict(state)
    assert_same_batches(taken + batches_of(resumed), uninterrupted)


DDP_SCRIPT = """
import sys, json, torch.distributed as dist
from ptychodata import open_store
from ptychodata.torch import make_loader
rank, world, init, store_path, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
loader = make_loader(open_store(store_path), 16, num_workers=0, seed=9, layout="ptycho_torch")
members = [fields["nn_indices"].tolist() for fields, probe, scaling in loader]
json.dump(members, open(out, "w"))
dist.destroy_process_group()
"""


def test_ddp_ranks_get_their_shards(store, tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    outputs = [tmp_path / f"rank{r}.json" for r in range(2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", DDP_SCRIPT, str(r), "2", init, str(store.path), str(outputs[r])], env=env
        )
        for r in range(2)
    ]
    for process in processes:
        assert process.wait(timeout=120) == 0
    for rank, path in enumerate(outputs):
        got = json.loads(path.read_text())
        shard = GroupSampler(len(store), 16, seed=9, num_replicas=2, rank=rank)
        assert got == [store.groups[batch].tolist() for batch in shard]


# ---------------------------------------------------------------------- arguments
def test_unknown_layout_and_device_Y_are_refused(store):
    with pytest.raises(ParameterError, match="layout='ptycho'.*expected one of 'default', 'ptycho_torch'"):
        make_loader(store, 8, layout="ptycho")
    with pytest.raises(ParameterError, match="layout='ptycho'"):
        store.batch([0], layout="ptycho")
    with pytest.raises(ParameterError, match="with_Y='device' with layout='ptycho_torch'"):
        GroupedDataset(store, with_Y="device", layout="ptycho_torch")
    with pytest.raises(ParameterError, match="as_tensordict=True with layout='ptycho_torch'; expected False"):
        GroupedDataset(store, as_tensordict=True, layout="ptycho_torch")


def test_indexing_the_dataset_gives_one_group_without_the_batch_axis(store):
    dataset = GroupedDataset(store, layout="ptycho_torch", with_Y=True)
    fields, probe, probe_scaling = dataset[5]
    assert tuple(fields.batch_size) == ()
    assert tuple(fields["images"].shape) == (store.C, store.N, store.N)
    np.testing.assert_array_equal(fields["images"].numpy(), store.patterns[store.groups[5]])
    assert tuple(probe.shape) == (store.C, 1, store.N, store.N) and tuple(probe_scaling.shape) == (1, 1, 1)
    whole = dataset.finish(dataset.__getitems__([5, 6]))
    assert dataset.finish(whole) is whole  # a finished batch passes through
    np.testing.assert_array_equal(whole[0]["label_amp"][0].numpy(), fields["label_amp"].numpy())


def test_default_layout_is_unchanged(store):
    batch = next(iter(make_loader(store, 8, seed=1)))
    assert isinstance(batch, dict)
    assert set(batch) == {
        "X", "coords_relative", "coords_offsets", "nn_indices", "group_index", "experiment_id", "probe",
    }


# ---------------------------------------------------------------------- PtychoPINN's own numbers
def test_constants_and_probe_equal_ptycho_torchs_outputs(tmp_path):
    with np.load(FIXTURE) as data:
        reference = {key: data[key] for key in data.files}
    path = tmp_path / "ptychopinn_scan.npz"
    members = {key[len("scan_"):]: value for key, value in reference.items() if key.startswith("scan_")}
    np.savez_compressed(path, **members, _metadata=np.array(json.dumps({}), dtype=object))
    scan = ScanData.load(path)
    config = GroupingConfig(N=64, gridsize=2, neighbor_count=7, seed=0)
    store = prepare(scan, config, cache_dir=tmp_path / "cache", progress=False)
    loader = make_loader(store, 64, layout="ptycho_torch", seed=0)
    n = 0
    for fields, probe, probe_scaling in loader:
        np.testing.assert_allclose(fields["rms_scaling_constant"].numpy(),
                                   float(reference["torch_rms_scaling_constant"]), rtol=1e-6)
        np.testing.assert_allclose(fields["physics_scaling_constant"].numpy(),
                                   float(reference["torch_physics_scaling_constant"]), rtol=1e-6)
        np.testing.assert_allclose(probe_scaling.numpy(), float(reference["torch_probe_scaling"]), rtol=1e-6)
        expected_probe = np.broadcast_to(reference["torch_probe_normalised"], probe.shape)
        np.testing.assert_allclose(probe.numpy(), expected_probe, rtol=1e-6, atol=1e-7)
        raw = reference["scan_diff3d"][fields["nn_indices"].numpy()]
        np.testing.assert_array_equal(fields["images"].numpy(), raw)
        n += len(fields["images"])
    assert n == len(store)
