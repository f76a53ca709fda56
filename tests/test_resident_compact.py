"""Compact resident frames: float16, bfloat16 and uint16 counts held on the device and
decoded inside the gather, against the host loader of a store of the same encoding."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ptychodata import GroupingConfig, prepare, simulate  # noqa: E402
from ptychodata.errors import FramesRangeError, ParameterError, ScanDataError  # noqa: E402
from ptychodata.io import write_npz  # noqa: E402
from ptychodata.store import FramesEncoding  # noqa: E402
from ptychodata.torch import DeviceStore, make_loader  # noqa: E402
from ptychodata.torch._held_frames import convert_rows  # noqa: E402

CONFIG = GroupingConfig(gridsize=2, neighbor_count=6, seed=0)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TRITON = pytest.mark.skipif(
    not torch.cuda.is_available() or not __import__("importlib").util.find_spec("triton"), reason="needs CUDA and Triton"
)
# (device, kernel): the host's decoding on CPU tensors; on a GPU the fused Triton kernel and the torch ops.
KERNELS = [("cpu", "numpy"), pytest.param("cuda", "triton", marks=TRITON), pytest.param("cuda", "torch", marks=CUDA)]


@pytest.fixture(scope="module")
def scan():
    return simulate(n_points=120, N=16, seed=6, pattern="jittered")


@pytest.fixture(scope="module")
def counts_file(tmp_path_factory, scan):
    """Whole counts up to a few thousand, some pixels 0, as uint32 in an NPZ file."""
    counts = np.round(scan.diffraction.astype(np.float64) ** 2 * 400).astype(np.uint32)
    assert 1000 < counts.max() <= 65535 and (counts == 0).any()
    arrays = {"diff3d": counts, "xcoords": scan.xcoords, "ycoords": scan.ycoords, "probeGuess": scan.probe,
              "objectGuess": scan.object}
    return write_npz(tmp_path_factory.mktemp("counts") / "counts.npz", arrays)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, scan, counts_file):
    """One store per encoding: float32, float16 and bfloat16 amplitudes of ``scan``; uint16
    and uint32 copies of the counts."""
    cache = tmp_path_factory.mktemp("cache")
    made = {}
    for dtype in ("float32", "float16", "bfloat16"):
        made[dtype] = prepare(scan, CONFIG, cache_dir=cache, frames_dtype=dtype, progress=False)
    for dtype in ("uint16", "uint32"):
        made[f"counts {dtype}"] = prepare(counts_file, CONFIG, cache_dir=cache, intensity=True, frames_dtype=dtype,
                                          progress=False)
    return made


def assert_batches_equal(got: dict, expected: dict, device: str) -> None:
    """Same keys in order, same dtypes and shapes, same bits, each tensor contiguous on ``device``."""
    assert list(got) == list(expected)
    for key, value in expected.items():
        tensor = got[key]
        value = torch.as_tensor(value)
        assert tensor.device.type == device and tensor.is_contiguous(), key
        assert tensor.dtype == value.dtype and tensor.shape == value.shape, key
        assert torch.equal(tensor.cpu(), value), f"{key} differs from the host loader's"


@pytest.mark.parametrize("device, kernel", KERNELS)
@pytest.mark.parametrize("encoding", ["float16", "bfloat16", "counts uint16"])
def test_a_compact_store_is_held_compact_and_serves_the_host_batches_bit_for_bit(stores, encoding, device, kernel):
    """Default frames=None keeps the store's 2-byte encoding on the device; every batch of two
    epochs (runs of batches gathered at once and a short last one) is the host loader's."""
    store = stores[encoding]
    held = DeviceStore(store, device, kernel=kernel, gather_bytes=1 << 20)
    assert held.frames.element_size() == 2 and held.frames.shape == (store.n_patterns, store.N, store.N)
    assert held.encoding == store.frames_encoding and not held.prescaled
    assert held.batches_per_gather(16) > 1
    no_float_frames = [t for t in (held._table,) if t.dtype == torch.float32]
    assert not no_float_frames  # no full-precision copy of the frames on the device
    host = make_loader(store, 16, seed=4, pin_memory=False)
    resident = make_loader(held, 16, seed=4, resident=True)
    served = 0
    for epoch in (0, 1):
        host.set_epoch(epoch)
        resident.set_epoch(epoch)
        for expected, got in zip(host, resident, strict=True):
            assert_batches_equal(got, expected, device)
            served += len(got["X"])
    assert served == 2 * len(store)


@pytest.mark.parametrize("device, kernel", KERNELS)
def test_uint32_counts_held_as_uint16_serve_their_own_batches(stores, device, kernel):
    """frames='uint16' of counts stored as uint32 (all below 65536): half the bytes, the
    counts of a uint16 store, and the same X as the uint32 store's host gather."""
    reference = stores["counts uint16"]
    index = np.random.default_rng(1).permutation(len(reference))[:37]
    store = stores["counts uint32"]
    held = DeviceStore(store, device, frames="uint16", kernel=kernel)
    assert held.encoding == FramesEncoding("uint16", "counts") and held.frames.element_size() == 2
    np.testing.assert_array_equal(held.frames.cpu().numpy().view(np.uint16), reference.patterns)
    assert_batches_equal(held.batch(index), store.batch(index, reuse=False), device)
    assert DeviceStore(stores["counts uint32"], device).encoding.is_identity  # not compacted unless asked


@pytest.mark.parametrize("device, kernel", KERNELS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_amplitudes_rounded_on_the_device_match_a_store_of_that_encoding(stores, dtype, device, kernel):
    """frames='bfloat16' (or 'float16') of a float32 store holds exactly the bits that
    prepare(frames_dtype=...) stores, and X is the float32 store's to within the rounding."""
    float32, compact = stores["float32"], stores[dtype]
    held = DeviceStore(float32, device, frames=dtype, kernel=kernel)
    bits = held.frames.cpu().view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bits, compact.patterns.view(np.uint16))
    index = np.arange(len(float32))
    got = held.batch(index)["X"].cpu().numpy()
    exact = float32.batch(index, reuse=False)["X"]
    relative = 2.0**-8 if dtype == "bfloat16" else 2.0**-10  # rounding, plus a float32 product
    tiny = float32.x_scale[0] * 2.0**-14  # float16's smallest normal number, scaled
    assert np.all(np.abs(got - exact) <= relative * np.abs(exact) + tiny)
    assert not np.array_equal(got, exact)  # the rounding is there
    # Against the host loader of the compact store: the same amplitudes, scaled by its own x_scale.
    ratio = np.float32(float32.x_scale[0]) / np.float32(compact.x_scale[0])
    np.testing.assert_allclose(got, compact.batch(index, reuse=False)["X"] * ratio, rtol=2e-7, atol=0)


def test_counts_that_do_not_fit_uint16_are_refused_never_clipped(tmp_path, scan):
    counts = np.round(scan.diffraction.astype(np.float64) ** 2 * 400).astype(np.uint32)
    counts[37, 3, 4] = 70_000
    arrays = {"diff3d": counts, "xcoords": scan.xcoords, "ycoords": scan.ycoords, "probeGuess": scan.probe}
    path = write_npz(tmp_path / "bright.npz", arrays)
    store = prepare(path, CONFIG, cache_dir=tmp_path / "cache", intensity=True, frames_dtype="uint32", progress=False)
    with pytest.raises(FramesRangeError, match=r"pattern 37 holds counts in \[0, 70000\]; frames='uint16' holds whole "
                                               r"counts in \[0, 65535\] and never clips") as caught:
        DeviceStore(store, "cpu", frames="uint16")
    assert str(store.path) in str(caught.value)
    assert isinstance(caught.value, ScanDataError) and isinstance(caught.value, OverflowError)
    held = DeviceStore(store, "cpu")  # the default holds float32 amplitudes, every count kept
    index = np.arange(len(store))
    assert_batches_equal(held.batch(index), store.batch(index, reuse=False), "cpu")


def test_a_split_holding_only_its_patterns_names_the_store_pattern_that_does_not_fit(tmp_path, scan):
    """The check names the pattern's index in the store, also where only some are held."""
    counts = np.round(scan.diffraction.astype(np.float64) ** 2 * 400).astype(np.uint32)
    arrays = {"diff3d": counts, "xcoords": scan.xcoords, "ycoords": scan.ycoords, "probeGuess": scan.probe}
    store = prepare(write_npz(tmp_path / "c.npz", arrays), CONFIG, cache_dir=tmp_path / "cache", intensity=True,
                    frames_dtype="uint32", progress=False)
    _, val = store.split(0.3, by="region", seed=0)
    used = np.unique(val.groups)
    assert len(used) < store.n_patterns
    counts[used[-1], 0, 0] = 1 << 17
    bright = prepare(write_npz(tmp_path / "c2.npz", {**arrays, "diff3d": counts}), CONFIG, cache_dir=tmp_path / "cache",
                     intensity=True, frames_dtype="uint32", progress=False)
    with pytest.raises(FramesRangeError, match=f"pattern {used[-1]} holds counts in \\[0, {1 << 17}\\]"):
        DeviceStore(bright.subset(np.flatnonzero(np.isin(bright.group_indices, val.group_indices))), "cpu",
                    frames="uint16")


def test_fractional_negative_and_nonfinite_counts_are_refused():
    held = FramesEncoding("uint16", "counts")
    stored = FramesEncoding("float32", "counts")
    rows = np.full((3, 4, 4), 7.0, np.float32)
    np.testing.assert_array_equal(convert_rows(stored, held, rows, np.array([5, 6, 7]), "s"), rows.astype(np.uint16))
    for value, message in [(2.5, "pattern 6 holds 2.5, not a whole count"), (np.nan, "pattern 6 holds nan"),
                           (-1.0, r"pattern 6 holds counts in \[-1, 7\]")]:
        bad = rows.copy()
        bad[1, 2, 2] = value
        with pytest.raises(FramesRangeError, match=message):
            convert_rows(stored, held, bad, np.array([5, 6, 7]), "s")


def test_amplitudes_beyond_float16_are_refused_and_bfloat16_holds_them(tmp_path, scan):
    import dataclasses

    bright = dataclasses.replace(scan, diffraction=scan.diffraction * np.float32(1e5 / scan.diffraction.max()))
    store = prepare(bright, CONFIG, cache_dir=tmp_path, progress=False)
    peaks = store.patterns.reshape(store.n_patterns, -1).max(axis=1)
    first = int(np.argmax(peaks > 65504))  # the first pattern float16 cannot hold
    assert first > 0 and peaks[first] > 65504
    with pytest.raises(FramesRangeError, match=f"pattern {first} has amplitude {peaks[first]:g}, beyond float16's "
                                               "largest 65504"):
        DeviceStore(store, "cpu", frames="float16")
    assert DeviceStore(store, "cpu", frames="bfloat16").frames.dtype == torch.bfloat16


def test_frames_options_that_cannot_apply_are_refused(stores, tmp_path, scan):
    with pytest.raises(ParameterError, match="frames='uint16' holds detector counts, but this store holds amplitudes"):
        DeviceStore(stores["float32"], "cpu", frames="uint16")
    with pytest.raises(ParameterError, match=r"frames='int8'; expected one of \('float32', 'float16', 'bfloat16', "
                                             r"'uint16'\)"):
        DeviceStore(stores["float32"], "cpu", frames="int8")
    materialized = prepare(scan, CONFIG, cache_dir=tmp_path, progress=False, materialize=True)
    with pytest.raises(ParameterError, match="holds its X materialized as float32"):
        DeviceStore(materialized, "cpu", frames="bfloat16")
    with pytest.raises(ParameterError, match="kernel='triton' on cpu"):
        DeviceStore(stores["float16"], "cpu", kernel="triton")
    with pytest.raises(ParameterError, match="kernel='fast'; expected one of"):
        DeviceStore(stores["float16"], "cpu", kernel="fast")


def test_float32_frames_of_a_compact_store_are_the_old_float32_path(stores):
    """frames='float32' decodes on the host once and holds pre-scaled float32 (twice the bytes)."""
    store = stores["bfloat16"]
    compact, full = DeviceStore(store, "cpu"), DeviceStore(store, "cpu", frames="float32")
    assert full.frames.dtype == torch.float32 and full.prescaled
    assert full.frames.numel() == compact.frames.numel()
    assert full.nbytes - compact.nbytes >= compact.frames.numel() * 2
    index = np.arange(len(store))[::-2]
    assert_batches_equal(full.batch(index), compact.batch(index).copy(), "cpu")
