"""Files written by ptychodus' own writers (an independent producer), read by ptychodata and by ptychodus.

Marked ``interop`` (deselect with ``-m "not interop"``). Skipped without ptychodus
(`pip install -e ".[interop]"`, i.e. ptychodus==1.7.0): it pulls mlflow-skinny and pydantic-ai, too
heavy for the `test` extra.
"""

import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "ptychodus", reason='ptychodus is not installed: pip install -e ".[interop]" (ptychodus==1.7.0)'
)

from ptychodus.api.geometry import PixelGeometry
from ptychodus.api.io import save_product, save_ptychopinn_training_data, save_training_data
from ptychodus.api.object import Object, ObjectCenter
from ptychodus.api.probe import ProbeSequence
from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence
from ptychodus.api.product import Product, ProductMetadata
from ptychodus.api.reconstruct import ReconstructInput
from ptychodus.plugins.cxi_file import (
    CXIDiffractionFileReader,
    CXIDiffractionFileWriter,
    CXIProductFileIO,
)
from ptychodus.plugins.npz_product_file import NPZProductFileIO
from ptychodus.plugins.training_data_file import (
    TrainingDataDiffractionFileReader,
    TrainingDataProductFileReader,
)

from ptychodata import ScanData

pytestmark = pytest.mark.interop

N, M, PIXEL = 16, 20, 10e-9
CENTRE = (1.05e-6, -1.95e-6)


def quiet_load(path, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ScanData.load(path, **options)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One scan written by ptychodus as training data, PtychoPINN export, product + CXI diffraction."""
    directory = tmp_path_factory.mktemp("ptychodus")
    rng = np.random.default_rng(0)
    r2 = ((np.arange(N) - N // 2)[:, None] ** 2 + (np.arange(N) - N // 2)[None, :] ** 2).astype(float)
    counts = rng.poisson(4000 * np.exp(-r2 / 8) / np.exp(-r2 / 8).sum(), (M, N, N)).astype(np.uint16)
    bad = np.zeros((N, N), bool)
    bad[3, 5] = bad[10, 2] = True
    x_m = (np.arange(M) % 5) * 3 * PIXEL + 1e-6
    y_m = (np.arange(M) // 5) * 3 * PIXEL - 2e-6
    positions = ProbePositionSequence(
        [ProbePosition(i, float(x), float(y)) for i, (x, y) in enumerate(zip(x_m, y_m))]
    )
    probe = (rng.normal(size=(2, N, N)) + 1j).astype(np.complex64)
    metadata = ProductMetadata(
        name="t",
        comments="",
        detector_distance_m=2.0,
        photon_energy_eV=8000.0,
        probe_photon_count=0.0,
        exposure_time_s=0.0,
        mass_attenuation_m2_per_kg=0.0,
        tomography_angle_deg=0.0,
    )
    product = Product(
        metadata=metadata,
        probe_positions=positions,
        probes=ProbeSequence(probe, None, PixelGeometry(PIXEL, PIXEL)),
        object_=Object(
            np.ones((1, 60, 60), np.complex64), PixelGeometry(PIXEL, PIXEL), ObjectCenter(*CENTRE)
        ),
        losses=[],
    )
    parameters = ReconstructInput(counts, bad, product)
    names = ("train.h5", "export.npz", "product.npz", "product.h5", "product.cxi", "diff.cxi")
    paths = {name: directory / name for name in names}
    save_training_data(paths["train.h5"], parameters, inpaint_bad_pixels=False)
    save_ptychopinn_training_data(paths["export.npz"], parameters, inpaint_bad_pixels=False)
    NPZProductFileIO().write(paths["product.npz"], product)
    save_product(paths["product.h5"], product)
    CXIProductFileIO().write(paths["product.cxi"], product)
    CXIDiffractionFileWriter().write(
        paths["diff.cxi"], TrainingDataDiffractionFileReader().read(paths["train.h5"])
    )
    return paths, counts, bad, probe, x_m, y_m


def expected_patterns(counts, bad):
    return np.where(bad, 0, np.sqrt(counts.astype(np.float32)))


def test_training_data_agrees_with_ptychodus(written):
    paths, counts, bad, probe, x_m, y_m = written
    with pytest.warns(UserWarning, match="ptychodus training data hold detector counts"):
        scan = ScanData.load(paths["train.h5"])
    theirs = TrainingDataDiffractionFileReader().read(paths["train.h5"])
    their_patterns = np.concatenate([array.get_patterns() for array in theirs])
    np.testing.assert_allclose(
        scan.diffraction[:], np.where(bad, 0, np.sqrt(their_patterns.astype(np.float32)))
    )
    np.testing.assert_array_equal(scan.mask, ~theirs.get_bad_pixels())
    product = TrainingDataProductFileReader().read(paths["train.h5"])
    geometry = product.object_.get_geometry()
    np.testing.assert_allclose(
        scan.xcoords, geometry.map_probe_positions_to_object_x_px(product.probe_positions)
    )
    np.testing.assert_allclose(
        scan.ycoords, geometry.map_probe_positions_to_object_y_px(product.probe_positions)
    )
    np.testing.assert_array_equal(scan.probe, probe[0])
    assert scan.metadata["format"] == "ptychodus training data"
    assert scan.object.shape == (60, 60)


def test_ptychopinn_export_holds_counts(written):
    paths, counts, bad, probe, *_ = written
    with pytest.warns(UserWarning, match="ptychodus' PtychoPINN export writes counts under diff3d"):
        scan = ScanData.load(paths["export.npz"])
    np.testing.assert_allclose(scan.diffraction, expected_patterns(counts, bad), rtol=1e-6)
    np.testing.assert_array_equal(scan.mask, ~bad)
    train = quiet_load(paths["train.h5"])
    np.testing.assert_allclose(scan.xcoords, train.xcoords)
    np.testing.assert_allclose(scan.ycoords, train.ycoords)


@pytest.mark.parametrize("product_name", ["product.npz", "product.h5", "product.cxi"])
def test_product_with_cxi_diffraction_agrees(written, product_name):
    paths, counts, bad, probe, x_m, y_m = written
    scan = quiet_load(paths[product_name], diffraction=paths["diff.cxi"])
    train = quiet_load(paths["train.h5"])
    np.testing.assert_allclose(scan.xcoords, train.xcoords, atol=1e-9)
    np.testing.assert_allclose(scan.ycoords, train.ycoords, atol=1e-9)
    np.testing.assert_allclose(scan.diffraction[:], train.diffraction[:])
    np.testing.assert_array_equal(scan.mask, ~bad)
    # ptychodus' CXI reader of the same diffraction file: same patterns and bad pixels
    theirs = CXIDiffractionFileReader().read(Path(paths["diff.cxi"]))
    np.testing.assert_array_equal(scan.mask, ~theirs.get_bad_pixels())
    their_patterns = np.concatenate([array.get_patterns() for array in theirs])
    np.testing.assert_allclose(
        scan.diffraction[:], np.where(bad, 0, np.sqrt(their_patterns.astype(np.float32)))
    )


def test_product_without_diffraction_says_what_to_pass(written):
    paths = written[0]
    from ptychodata.errors import ScanFormatError

    with pytest.raises(
        ScanFormatError,
        match=r"product.npz: a ptychodus product file.*pass the measured patterns "
        r"as diffraction=",
    ):
        quiet_load(paths["product.npz"])


def test_cxi_positions_agree_with_ptychodus_cxi_reader(tmp_path, written):
    """A CXI file with translations: ptychodus' product reader gives +translation in metres; ours, pixels."""
    paths, counts, bad, probe, x_m, y_m = written
    import h5py

    path = tmp_path / "full.cxi"
    with h5py.File(paths["diff.cxi"]) as source, h5py.File(path, "w") as f:
        for key in ("cxi_version",):
            f[key] = source[key][()]
        source.copy("entry_1", f)
        f["/entry_1/sample_1/geometry_1/translation"] = np.stack([x_m, y_m, np.zeros(M)], axis=1)
    scan = quiet_load(path)
    theirs = CXIProductFileIO()._read_positions(h5py.File(path))
    x_their, y_their = theirs.get_coordinates_x_m(), theirs.get_coordinates_y_m()
    dx = scan.metadata["object_pixel_m"][0]
    np.testing.assert_allclose(scan.xcoords, (x_their - x_their.min()) / dx + N / 2)
    np.testing.assert_allclose(scan.ycoords, (y_their - y_their.min()) / dx + N / 2)
    # the training file's detector pixel is recovered from its object pixel, so the far-field pixel agrees
    assert dx == pytest.approx(PIXEL)


def test_convert_writes_training_data_ptychodus_reads(tmp_path, written):
    from ptychodata.cli import main

    paths, counts, bad, probe, *_ = written
    out = tmp_path / "again.h5"
    assert main(["convert", str(paths["train.h5"]), str(out)]) == 0
    theirs = TrainingDataDiffractionFileReader().read(out)
    their_patterns = np.concatenate([array.get_patterns() for array in theirs])
    np.testing.assert_allclose(their_patterns, np.where(bad, 0, counts), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(theirs.get_bad_pixels(), bad)
    assert theirs.get_metadata().photon_energy_eV == pytest.approx(8000.0)
    product = TrainingDataProductFileReader().read(out)
    original = TrainingDataProductFileReader().read(paths["train.h5"])
    np.testing.assert_allclose(
        product.probe_positions.get_coordinates_x_m(), original.probe_positions.get_coordinates_x_m()
    )
    np.testing.assert_allclose(product.probes.get_array()[0], probe[:1])
    again = quiet_load(out)
    np.testing.assert_allclose(again.diffraction[:], quiet_load(paths["train.h5"]).diffraction[:], rtol=1e-6)
