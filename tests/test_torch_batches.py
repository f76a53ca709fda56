"""Batches of every store kind through the torch layer: masks in shared buffers, compact
frames held on a device."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ptychodata import GroupingConfig, prepare, simulate  # noqa: E402
from ptychodata.errors import ParameterError  # noqa: E402
from ptychodata.torch import DeviceStore, SharedBatch, make_loader  # noqa: E402
from ptychodata.torch._dtypes import torch_dtype  # noqa: E402

CONFIG = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)


@pytest.fixture(scope="module")
def scan():
    return simulate(n_points=70, N=16, seed=6, pattern="jittered")


@pytest.fixture(scope="module")
def masked(scan, tmp_path_factory):
    mask = np.ones((16, 16), bool)
    mask[4, 4] = False
    diffraction = scan.diffraction.copy()
    diffraction[:, ~mask] = 0
    return prepare(scan.with_(diffraction=diffraction, mask=mask), CONFIG,
                   cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def test_a_masked_batch_fits_one_shared_buffer(masked):
    batch = SharedBatch.empty(masked.batch_layout(3, with_Y=True))
    assert batch["mask"].dtype == torch.bool and batch["mask"].shape == (3, 16, 16)
    out = {key: value.numpy() for key, value in batch.items()}
    expected = masked.batch([0, 5, 2], with_Y=True, reuse=False)
    masked.batch([0, 5, 2], with_Y=True, out=out)
    for key, value in expected.items():
        np.testing.assert_array_equal(batch[key].numpy(), value, err_msg=key)


def test_a_worker_serves_the_batches_of_a_masked_store(masked):
    loader = make_loader(masked, 8, shuffle=False, num_workers=1, pin_memory=False)
    first = next(iter(loader))
    assert isinstance(first, SharedBatch)
    expected = masked.batch(np.arange(8), reuse=False)
    assert list(first) == list(expected)
    np.testing.assert_array_equal(first["mask"].numpy(), expected["mask"])


def test_a_dtype_no_batch_holds_is_refused_by_name():
    assert torch_dtype(np.bool_) is torch.bool
    with pytest.raises(ParameterError, match="a batch array of dtype float16; expected one of float32, complex64"):
        torch_dtype(np.float16)


@pytest.mark.parametrize(("frames_dtype", "intensity"), [("float16", None), ("bfloat16", None), ("uint16", True)])
@pytest.mark.parametrize("prescale", [True, False])
def test_a_compact_store_on_a_device_serves_the_host_batches_bit_for_bit(tmp_path, scan, frames_dtype, intensity,
                                                                          prescale):
    source = scan.with_(diffraction=np.round(scan.diffraction**2 * 50)) if intensity else scan
    store = prepare(source, CONFIG, cache_dir=tmp_path, frames_dtype=frames_dtype, intensity=intensity,
                    progress=False)
    resident = DeviceStore(store, "cpu", prescale=prescale)
    index = np.array([4, 0, 9, 3])
    got = resident.batch(index)
    expected = store.batch(index, reuse=False)
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], torch.from_numpy(value)), key
