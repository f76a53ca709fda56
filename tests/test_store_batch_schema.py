"""One batch schema: the host gather, the resident gather and batch_layout all follow it."""

import numpy as np
import pytest

from ptychodata import GroupingConfig, prepare, simulate
from ptychodata.errors import ParameterError
from ptychodata.store import (
    DEFAULT_SCHEMA,
    LAYOUTS,
    PTYCHO_TORCH_SCHEMA,
    BatchField,
    batch_schema,
)

CONFIG = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)
INDEX = np.array([3, 0, 7])


@pytest.fixture(scope="module")
def scan():
    return simulate(n_points=80, N=16, seed=3, pattern="jittered")


@pytest.fixture(scope="module")
def stores(scan, tmp_path_factory):
    """Stores with a probe, without one, and with a bad-pixel mask."""
    cache = tmp_path_factory.mktemp("cache")
    mask = np.ones((16, 16), bool)
    mask[2, 3] = False
    diffraction = scan.diffraction.copy()
    diffraction[:, ~mask] = 0
    return {
        "probe": prepare(scan, CONFIG, cache_dir=cache, progress=False),
        "no_probe": prepare(scan.with_(probe=None), CONFIG, cache_dir=cache, progress=False),
        "mask": prepare(scan.with_(diffraction=diffraction, mask=mask), CONFIG, cache_dir=cache, progress=False),
    }


def assert_follows(batch: dict, schema, B: int, C: int, N: int, **present) -> None:
    """Exactly the schema's keys, in its order, each of the schema's shape and dtype."""
    assert tuple(batch) == schema.keys(**present)
    for key, value in batch.items():
        field = schema.field(key)
        assert tuple(value.shape) == field.shape_for(B, C, N), key
        assert np.dtype(str(value.dtype).removeprefix("torch.")) == field.dtype, key


def test_the_default_schema_is_the_contract_batch():
    assert DEFAULT_SCHEMA.keys() == (
        "X", "coords_relative", "coords_offsets", "nn_indices", "group_index", "experiment_id", "probe",
    )
    assert DEFAULT_SCHEMA.keys(with_Y=True, probe=False, mask=True)[-2:] == ("mask", "Y")
    assert DEFAULT_SCHEMA.arrays(5, 4, 16)["coords_offsets"] == ((5, 1, 1, 2), np.dtype(np.float32))
    assert DEFAULT_SCHEMA.field("mask").dtype == np.bool_
    assert PTYCHO_TORCH_SCHEMA.keys(with_Y=True)[-2:] == ("label_amp", "label_phase")
    assert LAYOUTS == ("default", "ptycho_torch")


def test_an_unknown_layout_or_field_is_refused_by_name():
    assert batch_schema("ptycho_torch") is PTYCHO_TORCH_SCHEMA
    with pytest.raises(ParameterError, match=r"layout='tf'; expected one of 'default', 'ptycho_torch'"):
        batch_schema("tf")
    with pytest.raises(KeyError, match="'images' is not a key of the 'default' batch layout"):
        DEFAULT_SCHEMA.field("images")
    with pytest.raises(ParameterError, match="when='sometimes'"):
        BatchField("Z", ("B",), np.float32, "sometimes")


@pytest.mark.parametrize("kind", ["probe", "no_probe", "mask"])
@pytest.mark.parametrize("with_Y", [False, True])
def test_host_batches_and_batch_layout_have_exactly_the_schema_fields(stores, kind, with_Y):
    store = stores[kind]
    present = {"with_Y": with_Y, "probe": kind != "no_probe", "mask": kind == "mask"}
    batch = store.batch(INDEX, with_Y=with_Y, reuse=False)
    assert_follows(batch, DEFAULT_SCHEMA, len(INDEX), store.C, store.N, **present)
    assert store.batch_layout(len(INDEX), with_Y=with_Y) == DEFAULT_SCHEMA.arrays(
        len(INDEX), store.C, store.N, **present
    )


@pytest.mark.parametrize("with_Y", [False, True])
def test_ptycho_torch_batches_have_exactly_its_schema_fields(stores, with_Y):
    store = stores["probe"]
    batch = store.batch(INDEX, with_Y=with_Y, layout="ptycho_torch", reuse=False)
    assert_follows(batch, PTYCHO_TORCH_SCHEMA, len(INDEX), store.C, store.N, with_Y=with_Y)
    assert store.batch_layout(4, with_Y=with_Y, layout="ptycho_torch") == PTYCHO_TORCH_SCHEMA.arrays(
        4, store.C, store.N, with_Y=with_Y
    )


@pytest.mark.parametrize("kind", ["probe", "mask"])
@pytest.mark.parametrize("with_Y", [False, True])
def test_resident_batches_have_exactly_the_schema_fields(stores, kind, with_Y):
    pytest.importorskip("torch")
    from ptychodata.torch import DeviceStore

    store = stores[kind]
    resident = DeviceStore(store, "cpu")
    batch = resident.batch(INDEX, with_Y=with_Y)
    assert_follows(batch, DEFAULT_SCHEMA, len(INDEX), store.C, store.N, with_Y=with_Y, mask=kind == "mask")
    assert tuple(batch) == tuple(store.batch(INDEX, with_Y=with_Y, reuse=False))


@pytest.mark.parametrize("frames_dtype", ["float16", "bfloat16"])
def test_ptycho_torch_images_of_a_compact_store_are_unscaled_amplitudes(tmp_path, frames_dtype):
    """``images`` are the raw amplitudes whatever the stored dtype, for one experiment or several."""
    a = simulate(n_points=60, N=16, seed=1)
    b = simulate(n_points=50, N=16, seed=2)
    for sources in (a, [a, b]):
        store = prepare(sources, CONFIG, cache_dir=tmp_path, frames_dtype=frames_dtype, progress=False)
        index = np.arange(len(store))[::7]
        images = store.batch(index, layout="ptycho_torch", reuse=False)["images"]
        np.testing.assert_array_equal(images, store.amplitudes[store.groups[index].reshape(-1)].reshape(images.shape))
