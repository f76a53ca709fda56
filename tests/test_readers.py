"""Readers: formats recognised by content, units, counts, shift, mask, crop/bin, lazy HDF5, errors."""

import bz2
import gzip
import io
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from ptychodata import ScanData, ScanDataError
from ptychodata.errors import ScanFormatError
from ptychodata.io import LazyPatterns
from ptychodata.io._units import far_field_pixel, wavelength_from_energy

DATA = Path(__file__).parent / "data"
TIKE = DATA / "tike_siemens_star" / "siemens-star-small.npz.bz2"
PETRA = DATA / "cdtools_p25_nearfield" / "PETRAIII_P25_Near_Field_Ptycho.cxi"


def quiet_load(path, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ScanData.load(path, **options)


def beam_counts(M=24, N=16, seed=0, total=20000.0, shifted=True):
    """Poisson counts of a centred Gaussian beam (zero frequency in the centre unless shifted=False)."""
    rng = np.random.default_rng(seed)
    r2 = ((np.arange(N) - N // 2)[:, None] ** 2 + (np.arange(N) - N // 2)[None, :] ** 2).astype(float)
    beam = np.exp(-r2 / 8.0)
    counts = rng.poisson(total * beam / beam.sum(), (M, N, N))
    return counts if shifted else np.fft.ifftshift(counts, axes=(-2, -1))


def raster_m(M, step_m, origin=(2e-6, -3e-6)):
    side = int(np.ceil(np.sqrt(M)))
    index = np.arange(M)
    return origin[0] + (index % side) * step_m, origin[1] + (index // side) * step_m


def write_cxi(
    path,
    counts,
    x_m,
    y_m,
    *,
    energy_J=None,
    wavelength=None,
    distance=1.5,
    pixel=75e-6,
    mask=None,
    chunks=None,
    compression="gzip",
    probe=None,
):
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 160
        det = f.create_group("entry_1/instrument_1/detector_1")
        det.create_dataset(
            "data", data=counts, chunks=chunks or (4, *counts.shape[1:]), compression=compression
        )
        det["distance"], det["x_pixel_size"], det["y_pixel_size"] = distance, pixel, pixel
        if mask is not None:
            det["mask"] = mask.astype(np.uint32)
        source = f.create_group("entry_1/instrument_1/source_1")
        if energy_J is not None:
            source["energy"] = energy_J
        if wavelength is not None:
            source["wavelength"] = wavelength
        if probe is not None:
            source["illumination"] = probe
        translation = np.stack([x_m, y_m, np.zeros_like(x_m)], axis=1)
        f.create_group("entry_1/sample_1/geometry_1")["translation"] = translation
        data = f.create_group("entry_1/data_1")
        data["data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
        data["translation"] = h5py.SoftLink("/entry_1/sample_1/geometry_1/translation")
    return path


# ---------------------------------------------------------------- CXI
def test_cxi_positions_units_counts_and_mask(tmp_path):
    N, M = 16, 25
    counts = beam_counts(M, N).astype(np.int32)
    wavelength, distance, pixel = 1e-10, 1.5, 75e-6
    dx = far_field_pixel(wavelength, distance, N, pixel)  # 1.25e-7 m
    x_m, y_m = raster_m(M, 3 * dx)
    mask = np.zeros((N, N), bool)
    mask[2, 3] = True
    path = write_cxi(
        tmp_path / "scan.h5",
        counts,
        x_m,
        y_m,
        wavelength=wavelength,
        distance=distance,
        pixel=pixel,
        mask=mask,
    )
    with pytest.warns(UserWarning, match="CXI detector data are intensities; integer dtype int32"):
        scan = ScanData.load(path)
    assert isinstance(scan.diffraction, LazyPatterns)  # not read at load
    np.testing.assert_allclose(scan.xcoords - scan.xcoords.min(), (x_m - x_m.min()) / dx, atol=1e-9)
    np.testing.assert_allclose(scan.ycoords - scan.ycoords.min(), (y_m - y_m.min()) / dx, atol=1e-9)
    assert scan.xcoords.min() == pytest.approx(N / 2)
    expected = np.sqrt(counts.astype(np.float32))
    expected[:, 2, 3] = 0
    np.testing.assert_allclose(np.asarray(scan.diffraction), expected, rtol=1e-6)
    assert scan.mask.dtype == bool and not scan.mask[2, 3] and scan.mask.sum() == N * N - 1
    assert scan.metadata["object_pixel_m"] == pytest.approx([dx, dx])
    assert scan.metadata["nphotons"] == pytest.approx(
        counts.sum((1, 2)).mean() - counts[:, 2, 3].mean(), rel=0.05
    )
    assert scan.probe is None


def test_cxi_energy_in_joules_and_explicit_pixel_size(tmp_path):
    N, M = 16, 16
    energy_eV = 8000.0
    wavelength = wavelength_from_energy(energy_eV)
    dx = far_field_pixel(wavelength, 2.0, N, 75e-6)
    x_m, y_m = raster_m(M, 4 * dx)
    path = write_cxi(
        tmp_path / "e.cxi", beam_counts(M, N), x_m, y_m, energy_J=energy_eV * 1.602176634e-19, distance=2.0
    )
    scan = quiet_load(path)
    assert scan.metadata["photon_energy_eV"] == pytest.approx(energy_eV)
    assert np.median(np.diff(np.unique(scan.xcoords))) == pytest.approx(4.0)
    given = quiet_load(path, pixel_size=2 * dx)
    assert np.median(np.diff(np.unique(given.xcoords))) == pytest.approx(2.0)


def test_metre_positions_without_geometry_say_what_to_pass(tmp_path):
    N, M = 16, 16
    x_m, y_m = raster_m(M, 4e-7)
    path = write_cxi(tmp_path / "nogeo.cxi", beam_counts(M, N), x_m, y_m)  # no energy, no wavelength
    with pytest.raises(
        ScanDataError,
        match=r"nogeo.cxi: positions are in metres.*missing energy_eV= or "
        r"wavelength_m=.*pass pixel_size=",
    ):
        quiet_load(path)


def test_crop_and_bin_follow_the_geometry(tmp_path):
    N, M = 32, 16
    wavelength, distance, pixel = 1e-10, 1.5, 75e-6
    counts = beam_counts(M, N, total=1e5)
    # a beam off the detector centre; crop 16 around the centre of mass, then bin 2 -> N = 8
    counts = np.roll(counts, (3, -2), axis=(1, 2))
    dx16 = far_field_pixel(wavelength, distance, 16, pixel)
    x_m, y_m = raster_m(M, 2 * dx16)
    path = write_cxi(
        tmp_path / "c.cxi", counts, x_m, y_m, wavelength=wavelength, distance=distance, pixel=pixel
    )
    scan = quiet_load(path, crop=16, bin=2)
    assert scan.N == 8
    window = counts[:, 19 - 8 : 19 + 8, 14 - 8 : 14 + 8].astype(np.float64)
    binned = window.reshape(M, 8, 2, 8, 2).sum(axis=(2, 4))
    np.testing.assert_allclose(np.asarray(scan.diffraction), np.sqrt(binned), rtol=1e-5)
    # the object pixel follows the crop (16 detector pixels), not the binned N
    assert scan.metadata["object_pixel_m"][0] == pytest.approx(dx16)
    assert "crop 16×16 at row 11, column 6" in scan.metadata["preparation"]


def test_non_square_detector_is_cropped_square(tmp_path):
    M, H, W = 9, 20, 16
    counts = np.zeros((M, H, W), np.uint16)
    counts[:, 8:12, 6:10] = 50
    path = tmp_path / "rect.h5"
    with h5py.File(path, "w") as f:
        f["frames"] = counts
        f["x"], f["y"] = np.arange(M) * 3.0 + 10, np.arange(M) % 3 * 3.0 + 10
    with pytest.warns(UserWarning, match="frames are 20×16: cropped to 16×16"):
        scan = ScanData.load(path, keys={"diffraction": "/frames", "xcoords": "/x", "ycoords": "/y"})
    assert scan.N == 16
    assert np.asarray(scan.diffraction)[0, 6:10, 6:10].min() == pytest.approx(np.sqrt(50))


# ---------------------------------------------------------------- lazy HDF5
@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_hdf5_patterns_stream_whole_chunks(tmp_path, compression, monkeypatch):
    from ptychodata._runtime import iter_rows
    from ptychodata.io import _hdf5

    N, M = 16, 50
    counts = beam_counts(M, N)
    dx = far_field_pixel(1e-10, 1.5, N, 75e-6)
    path = write_cxi(
        tmp_path / "lazy.cxi",
        counts,
        *raster_m(M, 3 * dx),
        wavelength=1e-10,
        chunks=(8, N, N),
        compression=compression,
    )
    scan = quiet_load(path)
    reads = []
    original = _hdf5.H5Dataset.__getitem__

    def spy(self, selection):
        reads.append(selection)
        return original(self, selection)

    monkeypatch.setattr(_hdf5.H5Dataset, "__getitem__", spy)
    rows = [chunk for _, chunk in iter_rows(scan.diffraction, 5)]  # 5 rows a step cuts the 8-row chunks
    np.testing.assert_allclose(np.concatenate(rows), np.sqrt(counts.astype(np.float32)), rtol=1e-6)
    starts = [selection.start for selection in reads]
    assert all(start % 8 == 0 for start in starts)  # every read starts on a chunk boundary
    assert len(starts) == len(set(starts)) == 7  # and no chunk is decoded twice: 50 rows / 8


def test_unavailable_filter_is_named(tmp_path, monkeypatch):
    N, M = 16, 9
    path = write_cxi(tmp_path / "f.cxi", beam_counts(M, N), *raster_m(M, 4e-7), wavelength=1e-10)
    monkeypatch.setattr(h5py.h5z, "filter_avail", lambda code: code != 1)
    with pytest.raises(
        ScanFormatError,
        match=r"f.cxi: dataset '/entry_1/data_1/data': compressed with HDF5 "
        r"filter 1 \(gzip\).*pip install hdf5plugin",
    ):
        quiet_load(path)


# ---------------------------------------------------------------- the real scans
def test_tike_siemens_star_physics_and_corner_positions():
    with pytest.warns(UserWarning, match="not fftshifted") as record:
        scan = ScanData.load(TIKE)
    assert any("holds counts" in str(w.message) for w in record)
    assert scan.N == 128 and scan.n_points == 516 and scan.metadata["format"] == "tike"
    with np.load(io.BytesIO(bz2.decompress(TIKE.read_bytes()))) as raw:
        corners, counts = raw["scan"][0].astype(np.float64), raw["data"][0]
    np.testing.assert_allclose(scan.xcoords, corners[:, 1] + 64)  # x = col + N/2
    np.testing.assert_allclose(scan.ycoords, corners[:, 0] + 64)  # y = row + N/2
    np.testing.assert_allclose(scan.diffraction[7], np.sqrt(np.fft.fftshift(counts[7])), rtol=1e-6)
    # after the shift, the probe's far field matches the mean measured intensity
    far_field = np.fft.fftshift(np.abs(np.fft.fft2(scan.probe)) ** 2)
    mean_intensity = (np.asarray(scan.diffraction, np.float64) ** 2).mean(axis=0)
    assert np.corrcoef(far_field.ravel(), mean_intensity.ravel())[0, 1] > 0.75
    assert scan.metadata["nphotons"] == pytest.approx(counts.sum((1, 2)).mean(), rel=0.02)


def test_tike_without_shift_override_keeps_corners():
    scan = quiet_load(TIKE, shift=False)
    mean = (np.asarray(scan.diffraction[:50], np.float64) ** 2).mean(axis=0)
    assert mean[:4, :4].sum() > mean[62:66, 62:66].sum()


def test_petra_near_field_is_refused_then_flagged():
    with pytest.raises(
        ScanDataError,
        match=r"PETRAIII.*near-field \(Fresnel\).*median scan step is 59.8 px = "
        r"0.60 N.*near_field=True and pixel_size=",
    ):
        quiet_load(PETRA)
    with pytest.raises(ScanDataError, match="near_field=True needs pixel_size="):
        quiet_load(PETRA, near_field=True)
    scan = quiet_load(PETRA, near_field=True, pixel_size=1e-7)
    assert scan.metadata["near_field"] is True
    assert (~scan.mask).sum() == 5  # the file's mask, non-zero = bad
    with h5py.File(PETRA) as f:
        bad = f["/entry_1/instrument_1/detector_1/mask"][()] != 0
        frame = f["/entry_1/data_1/data"][3]
    np.testing.assert_array_equal(scan.mask, ~bad)
    np.testing.assert_allclose(scan.diffraction[3], np.where(bad, 0, np.sqrt(frame)), rtol=1e-6)


# ---------------------------------------------------------------- npz layouts
def test_format_is_recognised_from_content_not_suffix(tmp_path):
    counts = beam_counts(9, 16).astype(np.float32)
    scan_rc = np.stack([np.arange(9) // 3 * 4.0, np.arange(9) % 3 * 4.0], axis=1)[None]
    buffer = io.BytesIO()
    np.savez(buffer, data=counts[None], scan=scan_rc, probe=np.ones((1, 1, 1, 1, 16, 16), np.complex64))
    (tmp_path / "a.h5").write_bytes(buffer.getvalue())  # an npz named .h5
    (tmp_path / "b.dat").write_bytes(gzip.compress(buffer.getvalue()))
    (tmp_path / "c").write_bytes(bz2.compress(buffer.getvalue()))
    for name in ("a.h5", "b.dat", "c"):
        scan = quiet_load(tmp_path / name, shift=False)
        assert scan.metadata["format"] == "tike"
        np.testing.assert_allclose(scan.diffraction, np.sqrt(counts), rtol=1e-6)
    (tmp_path / "d.npz").write_bytes(b"\x00" * 64)
    with pytest.raises(ScanFormatError, match=r"d.npz: not a readable .npz, HDF5"):
        ScanData.load(tmp_path / "d.npz")


def test_ptychonn_positions_in_metres_y_x(tmp_path):
    N, M = 16, 16
    amplitudes = np.sqrt(beam_counts(M, N).astype(np.float32) + 0.5)
    x_m, y_m = raster_m(M, 5e-8)
    path = tmp_path / "ptychonn.npz"
    np.savez(path, reciprocal=amplitudes, position=np.stack([y_m, x_m], axis=1))
    with pytest.raises(ScanDataError, match="positions are in metres.*pass pixel_size="):
        quiet_load(path)
    scan = quiet_load(path, pixel_size=1e-8)
    np.testing.assert_allclose(scan.xcoords - scan.xcoords.min(), (x_m - x_m.min()) / 1e-8)
    np.testing.assert_allclose(scan.ycoords - scan.ycoords.min(), (y_m - y_m.min()) / 1e-8)
    assert scan.metadata["format"] == "PtychoNN npz"


def test_slac_npz_patterns_stored_last(tmp_path):
    N, M = 16, 20
    amplitudes = np.sqrt(beam_counts(M, N).astype(np.float32) + 0.5)
    path = tmp_path / "slac.npz"
    x = np.arange(M) % 5 * 3.0 + 20
    y = np.arange(M) // 5 * 3.0 + 20
    np.savez(
        path,
        diffraction=np.moveaxis(amplitudes, 0, 2),
        xcoords_start=x,
        ycoords_start=y,
        probeGuess=np.ones((N, N), np.complex64),
        objectGuess=np.ones((64, 64), np.complex64),
    )
    scan = quiet_load(path)
    assert scan.metadata["format"] == "SLAC npz"
    np.testing.assert_allclose(scan.diffraction, amplitudes)
    np.testing.assert_array_equal(scan.xcoords, x)


def test_key_map_hdf5_with_one_position_array_yx_corner(tmp_path):
    N, M = 16, 16
    counts = beam_counts(M, N)
    rows, cols = np.arange(M) // 4 * 3.0, np.arange(M) % 4 * 3.0
    path = tmp_path / "any.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/measurement/frames", data=counts.astype(np.uint32), chunks=(4, N, N))
        f["/measurement/pos"] = np.stack([rows, cols], axis=1)
    keys = {"diffraction": "/measurement/frames", "positions": "/measurement/pos"}
    scan = quiet_load(path, keys=keys, position_columns="yx", position_origin="corner")
    np.testing.assert_allclose(scan.xcoords, cols + N / 2)
    np.testing.assert_allclose(scan.ycoords, rows + N / 2)
    with pytest.raises(
        ScanFormatError,
        match=r"any.h5: no dataset '/measurement/nothere'; the file holds: "
        r"/measurement/frames, /measurement/pos",
    ):
        quiet_load(path, keys={**keys, "probe": "/measurement/nothere"})
    with pytest.raises(ScanFormatError, match=r"any.h5: hdf5 file of no layout.*keys=\{'diffraction'"):
        quiet_load(path)


# ---------------------------------------------------------------- conventions
def test_unshifted_patterns_are_detected_by_the_circular_centroid(tmp_path):
    N, M = 16, 16
    counts = beam_counts(M, N, shifted=False).astype(np.float32)  # whole-number floats, bright corners
    path = tmp_path / "unshifted.h5"
    with h5py.File(path, "w") as f:
        f["d"], f["x"], f["y"] = counts, np.arange(M) % 4 * 3.0 + 9, np.arange(M) // 4 * 3.0 + 9
    keys = {"diffraction": "/d", "xcoords": "/x", "ycoords": "/y"}
    with pytest.warns(
        UserWarning, match=r"not fftshifted.*circular centroid is at row -?0\.\d, column -?0\.\d"
    ):
        scan = ScanData.load(path, keys=keys, intensity=True)
    np.testing.assert_allclose(scan.diffraction[0], np.sqrt(np.fft.fftshift(counts[0])), rtol=1e-6)
    kept = quiet_load(path, keys=keys, intensity=True, shift=False)
    np.testing.assert_allclose(kept.diffraction[0], np.sqrt(counts[0]), rtol=1e-6)


def test_counts_rule_for_whole_number_floats(tmp_path):
    N, M = 16, 16
    keys = {"diffraction": "/d", "xcoords": "/x", "ycoords": "/y"}
    x, y = np.arange(M) % 4 * 3.0 + 9, np.arange(M) // 4 * 3.0 + 9

    def write(name, data):
        with h5py.File(tmp_path / name, "w") as f:
            f["d"], f["x"], f["y"] = data, x, y
        return tmp_path / name

    high = beam_counts(M, N, total=20 * N * N).astype(np.float32)  # 20 × N² per pattern: counts
    with pytest.warns(
        UserWarning,
        match=r"whole-number float32 values up to .*= (19|20)\.\d × the 256 pixels \(rule: ≥ 10×\)",
    ):
        scan = ScanData.load(write("high.h5", high), keys=keys)
    np.testing.assert_allclose(scan.diffraction, np.sqrt(high), rtol=1e-6)
    low = beam_counts(M, N, total=2 * N * N).astype(np.float32)  # 2 × N²: ambiguous, kept, said so
    with pytest.warns(
        UserWarning, match="taken as amplitudes; if they are counts at low dose, pass intensity=True"
    ):
        scan = ScanData.load(write("low.h5", low), keys=keys)
    np.testing.assert_allclose(scan.diffraction, low)
    np.testing.assert_allclose(
        quiet_load(tmp_path / "low.h5", keys=keys, intensity=True).diffraction, np.sqrt(low), rtol=1e-6
    )


def test_nan_pixels_become_the_mask(tmp_path):
    N, M = 16, 9
    data = np.sqrt(beam_counts(M, N).astype(np.float32) + 0.25)
    data[:, 4, 7] = np.nan  # a dead pixel: NaN in every frame
    path = tmp_path / "nan.h5"
    with h5py.File(path, "w") as f:
        f["d"], f["x"], f["y"] = data, np.arange(M) % 3 * 3.0 + 9, np.arange(M) // 3 * 3.0 + 9
    scan = quiet_load(path, keys={"diffraction": "/d", "xcoords": "/x", "ycoords": "/y"})
    assert not scan.mask[4, 7] and scan.mask.sum() == N * N - 1
    assert np.asarray(scan.diffraction)[:, 4, 7].max() == 0


def test_positions_in_metres_passed_as_pixels_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ScanDataError, match=r"span only 4.5e-07 px.*positions look like metres.*pixel_size="):
        ScanData.from_arrays(
            diffraction=rng.uniform(0, 1, (16, 8, 8)),
            xcoords=np.arange(16) * 3e-8,
            ycoords=np.arange(16) % 4 * 3e-8,
        )
    x = np.concatenate([np.arange(15) * 1e-4, [50.0]])  # an outlier widens the span, the steps stay tiny
    with pytest.raises(ScanDataError, match=r"median step between neighbouring positions is 0.0001 px"):
        ScanData.from_arrays(diffraction=rng.uniform(0, 1, (16, 8, 8)), xcoords=x, ycoords=np.zeros(16))


def test_probe_modes_first_by_default_all_on_request(tmp_path):
    N, M = 16, 9
    modes = (np.arange(3 * N * N).reshape(3, N, N) + 1j).astype(np.complex64)
    path = tmp_path / "modes.npz"
    np.savez(
        path,
        diffraction=np.ones((M, N, N), np.float32) * 0.5,
        xcoords=np.arange(M) * 2.0,
        ycoords=np.arange(M) % 3 * 2.0,
        probeGuess=modes,
    )
    with pytest.warns(UserWarning, match="probe has 3 modes.*probe_modes='all'"):
        scan = ScanData.load(path)
    np.testing.assert_array_equal(scan.probe, modes[0])
    every = quiet_load(path, probe_modes="all")
    np.testing.assert_array_equal(every.extras["probe_modes"], modes)


def test_lazy_scan_saves_streamed_to_our_npz(tmp_path):
    N, M = 16, 20
    counts = beam_counts(M, N)
    dx = far_field_pixel(1e-10, 1.5, N, 75e-6)
    mask = np.zeros((N, N), bool)
    mask[0, 0] = True
    path = write_cxi(tmp_path / "s.cxi", counts, *raster_m(M, 3 * dx), wavelength=1e-10, mask=mask)
    scan = quiet_load(path)
    out = scan.save(tmp_path / "out.npz")
    again = ScanData.load(out)
    np.testing.assert_allclose(again.diffraction, np.asarray(scan.diffraction))
    np.testing.assert_array_equal(again.mask, scan.mask)
    np.testing.assert_allclose(again.xcoords, scan.xcoords)
    assert again.metadata["object_pixel_m"] == pytest.approx([dx, dx])


def test_prepare_streams_a_chunked_cxi_into_a_store(tmp_path):
    from ptychodata import GroupingConfig, prepare

    N, M = 16, 36
    counts = beam_counts(M, N, total=5000)
    dx = far_field_pixel(1e-10, 1.5, N, 75e-6)
    probe = np.exp(
        -((np.arange(N) - N / 2)[:, None] ** 2 + (np.arange(N) - N / 2)[None, :] ** 2) / 20
    ).astype(np.complex64)
    path = write_cxi(
        tmp_path / "p.cxi", counts, *raster_m(M, 3 * dx), wavelength=1e-10, chunks=(5, N, N), probe=probe
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = prepare(
            path,
            GroupingConfig(gridsize=2, neighbor_count=4, seed=0),
            cache_dir=tmp_path / "cache",
            progress=False,
        )
    np.testing.assert_allclose(store.patterns, np.sqrt(counts.astype(np.float32)), rtol=1e-6)
    # counts known: the mean photons per pattern set intensity_scale = sqrt(nphotons) / (N/2)
    assert store.intensity_scale[0] == pytest.approx(
        np.sqrt(counts.sum((1, 2)).mean()) / (N / 2), rel=1e-3
    )
    np.testing.assert_allclose(store.batch([0])["probe"][0], probe)


def test_grouped_data_gathers_from_a_lazy_scan(tmp_path):
    from ptychodata import GroupingConfig, grouped_data

    N, M = 16, 30
    counts = beam_counts(M, N)
    dx = far_field_pixel(1e-10, 1.5, N, 75e-6)
    path = write_cxi(tmp_path / "g.cxi", counts, *raster_m(M, 3 * dx), wavelength=1e-10, chunks=(7, N, N))
    lazy = quiet_load(path)
    eager = lazy.with_(diffraction=np.asarray(lazy.diffraction))
    config = GroupingConfig(N=N, gridsize=2, neighbor_count=4, seed=1)
    a, b = grouped_data(lazy, config), grouped_data(eager, config)
    np.testing.assert_array_equal(a["diffraction"], b["diffraction"])
    assert a["x_scale"] == b["x_scale"]
    picked = np.array([[29, 3], [3, 0]])
    np.testing.assert_array_equal(lazy.diffraction[picked], eager.diffraction[picked])


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32])
@pytest.mark.parametrize(
    "transpose, flip_rows, flip_cols, shift, bin_",
    [
        (False, False, False, False, 1),
        (True, True, False, True, 1),
        (False, False, True, True, 2),
        (True, False, True, False, 2),
    ],
)
def test_preparation_matches_a_plain_numpy_reference(dtype, transpose, flip_rows, flip_cols, shift, bin_):
    from ptychodata.io import DetectorSteps

    rng = np.random.default_rng(5)
    raw = rng.integers(0, 50, (6, 12, 10)).astype(dtype)
    bad = np.zeros((12, 10), bool)
    bad[1, 2] = bad[7, 9] = True
    prep = DetectorSteps(
        (12, 10),
        transpose=transpose,
        flip_rows=flip_rows,
        flip_cols=flip_cols,
        shift=shift,
        crop=(1, 0, 8),
        bin=bin_,
        counts=True,
        bad=bad,
    )

    def orient(frames):
        frames = frames.swapaxes(-1, -2) if transpose else frames
        frames = frames[..., ::-1, :] if flip_rows else frames
        frames = frames[..., ::-1] if flip_cols else frames
        frames = np.fft.fftshift(frames, axes=(-2, -1)) if shift else frames
        return frames[..., 1:9, 0:8]

    values = orient(np.where(bad, 0, raw).astype(np.float64))
    values = values.reshape(6, 8 // bin_, bin_, 8 // bin_, bin_).sum(axis=(2, 4))
    bad_out = orient(bad[None])[0].reshape(8 // bin_, bin_, 8 // bin_, bin_).any(axis=(1, 3))
    expected = np.where(bad_out, 0, np.sqrt(values))
    np.testing.assert_allclose(prep.apply(raw), expected, rtol=1e-6)
    np.testing.assert_array_equal(prep.mask, ~bad_out)
    if dtype != np.uint16:
        negative = raw.copy()
        negative[4] = -2  # every pixel, so the crop keeps some
        with pytest.raises(
            ScanDataError, match=r"pattern 14 holds NaN, Inf or negative counts.*clip_negative=True"
        ):
            prep.apply(negative, first=10)


def test_errors_name_file_dataset_and_value(tmp_path):
    N = 16
    counts = beam_counts(12, N)
    x_m, y_m = raster_m(10, 4e-7)  # 10 positions for 12 patterns
    path = write_cxi(tmp_path / "short.cxi", counts, x_m, y_m, wavelength=1e-10)
    with pytest.raises(
        ScanDataError,
        match=r"short.cxi: length mismatch: key 'diffraction' has shape \(12, 16, 16\) "
        r"\(12 patterns\) but xcoords/ycoords have 10 points",
    ):
        quiet_load(path)
    flat = tmp_path / "flat.cxi"
    with h5py.File(flat, "w") as f:
        f["/entry_1/instrument_1/detector_1/data"] = np.ones((12, 256))
    with pytest.raises(
        ScanFormatError,
        match=r"flat.cxi: dataset '/entry_1/instrument_1/detector_1/data' has shape "
        r"\(12, 256\); expected \(M, H, W\)",
    ):
        quiet_load(flat)
    nopos = tmp_path / "nopos.cxi"
    with h5py.File(nopos, "w") as f:
        f["/entry_1/instrument_1/detector_1/data"] = counts
    with pytest.raises(
        ScanFormatError,
        match=r"nopos.cxi: no scan positions: neither "
        r"'/entry_1/sample_1/geometry_1/translation' nor '/entry_1/data_1/translation'",
    ):
        quiet_load(nopos)
    with pytest.raises(ScanDataError, match=r"crop size 15 is not divisible by bin=2"):
        quiet_load(path, crop=15, bin=2)
    with pytest.raises(ScanDataError, match=r"position_columns='xz'; expected one of \('xy', 'yx'\)"):
        quiet_load(path, position_columns="xz")


def test_format_convention_contradicted_by_the_data_is_not_applied_twice(tmp_path):
    """A tike file whose patterns were already fftshifted: the data win over the format's convention."""
    counts = beam_counts(9, 16).astype(np.float32)  # zero frequency in the centre
    scan_rc = np.stack([np.arange(9) // 3 * 4.0, np.arange(9) % 3 * 4.0], axis=1)[None]
    path = tmp_path / "shifted_tike.npz"
    np.savez(path, data=counts[None], scan=scan_rc, probe=np.ones((1, 1, 1, 1, 16, 16), np.complex64))
    with pytest.warns(UserWarning, match=r"tike stores patterns unshifted.*but the mean pattern's circular "
                                         r"centroid is at row 8\.\d, column 8\.\d.*kept as stored by the data"):
        scan = ScanData.load(path)
    np.testing.assert_allclose(scan.diffraction, np.sqrt(counts), rtol=1e-6)


def test_crop_centre_ignores_a_hot_bad_pixel(tmp_path):
    N, M = 32, 9
    counts = np.zeros((M, N, N), np.uint32)
    counts[:, 10:14, 18:22] = 100  # the beam, centred at row 11.5, column 19.5
    counts[:, 30, 1] = 10**7  # a hot pixel, masked
    bad = np.zeros((N, N), bool)
    bad[30, 1] = True
    path = write_cxi(tmp_path / "hot.cxi", counts, *raster_m(M, 3 * far_field_pixel(1e-10, 1.5, 8, 75e-6)),
                     wavelength=1e-10, mask=bad)
    scan = quiet_load(path, crop=8)
    assert "crop 8×8 at row 8, column 16" in scan.metadata["preparation"]
    assert np.asarray(scan.diffraction)[0, 2:6, 2:6].min() == pytest.approx(10.0)


def test_estimated_probe_when_asked_and_flagged(tmp_path, small_scan):
    path = tmp_path / "noprobe.npz"
    np.savez(path, diffraction=np.asarray(small_scan.diffraction), xcoords=small_scan.xcoords,
             ycoords=small_scan.ycoords)
    assert quiet_load(path).probe is None
    with pytest.warns(UserWarning, match=r"an ESTIMATE IFFT\(sqrt\(mean intensity\)\).*probe_estimated"):
        scan = ScanData.load(path, estimate_probe=True)
    assert "IFFT(sqrt(mean I))" in scan.metadata["probe_estimated"]
    mean_intensity = (np.asarray(small_scan.diffraction, np.float64) ** 2).mean(axis=0)
    far_field = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(scan.probe), norm="ortho"))) ** 2
    np.testing.assert_allclose(far_field, mean_intensity, rtol=1e-4, atol=1e-6 * mean_intensity.max())
    # centred in real space, like the simulator's probes
    intensity = np.abs(scan.probe) ** 2
    rows, cols = np.indices(intensity.shape)
    assert (intensity * rows).sum() / intensity.sum() == pytest.approx(small_scan.N / 2, abs=1.0)
    assert (intensity * cols).sum() / intensity.sum() == pytest.approx(small_scan.N / 2, abs=1.0)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_integers_kept_in_their_dtype_equal_the_float_frames(dtype):
    from ptychodata.io import DetectorSteps

    raw = np.random.default_rng(6).integers(0, 900, (5, 12, 10)).astype(dtype)
    bad = np.zeros((12, 10), bool)
    bad[3, 4] = True
    steps = {"transpose": True, "flip_rows": True, "shift": True, "crop": (1, 0, 8), "bad": bad}
    as_float = DetectorSteps((12, 10), **steps).apply(raw)
    kept = DetectorSteps((12, 10), keep_integers=True, **steps)
    assert kept.output_dtype(raw.dtype) == raw.dtype
    out = kept.apply(raw)
    assert out.dtype == raw.dtype and out.shape == (5, 8, 8)
    np.testing.assert_array_equal(out.astype(np.float32), as_float)
    # counts to convert, or binning, need float32 whatever keep_integers says
    assert DetectorSteps((10, 10), keep_integers=True, counts=True).output_dtype(raw.dtype) == np.float32
    assert DetectorSteps((10, 10), keep_integers=True, bin=2).output_dtype(raw.dtype) == np.float32
    if dtype == np.int32:
        raw[2, 5, 5] = -3
        with pytest.raises(ScanDataError, match=r"pattern 7 holds NaN, Inf or negative counts \(min -3\)"):
            DetectorSteps((10, 10), keep_integers=True).apply(raw[:, :10, :], first=5)
        clipped = DetectorSteps((10, 10), keep_integers=True, clip_negative=True).apply(raw[:, :10, :])
        assert clipped.min() == 0 and clipped.dtype == np.int32


def test_uint16_store_from_a_cxi_keeps_the_counts_and_serves_the_float32_stores_X(tmp_path, monkeypatch):
    from ptychodata import GroupingConfig, prepare
    from ptychodata.io import LazyPatterns

    streamed_dtypes = []
    keeping = LazyPatterns.keeping_integers

    def spy(self):
        kept = keeping(self)
        streamed_dtypes.append(kept.dtype)
        return kept

    monkeypatch.setattr(LazyPatterns, "keeping_integers", spy)

    N, M = 16, 40
    counts = beam_counts(M, N, total=5000).astype(np.uint16)
    mask = np.zeros((N, N), bool)
    mask[2, 3] = True  # CXI: non-zero = bad
    dx = far_field_pixel(1e-10, 1.5, N, 75e-6)
    path = write_cxi(tmp_path / "c.cxi", counts, *raster_m(M, 3 * dx), wavelength=1e-10, chunks=(6, N, N), mask=mask)
    config = GroupingConfig(gridsize=2, neighbor_count=4, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compact = prepare(path, config, cache_dir=tmp_path / "cache", intensity=True, frames_dtype="uint16",
                          progress=False)
        reference = prepare(path, config, cache_dir=tmp_path / "cache", intensity=True, progress=False)
    assert streamed_dtypes == [np.uint16]  # the counts reached the uint16 store as uint16
    assert compact.patterns.dtype == np.uint16
    np.testing.assert_array_equal(compact.patterns, np.where(mask, 0, counts))
    np.testing.assert_array_equal(compact.energies, reference.energies)
    every = np.arange(len(compact))
    np.testing.assert_array_equal(compact.batch(every)["X"], reference.batch(every)["X"])
