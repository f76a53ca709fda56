"""Special files where a scan file is expected: a FIFO, a socket, a device, a directory, symlink loops.

Each is refused by name at once, without opening it (a FIFO would block the reader forever; /dev/zero
would feed it without end), by every entry point that takes a path: load, inspect, prepare and
prepare_scan, and on the command line inspect, convert and prepare. A dangling link is a missing file;
an empty file is a file of no format. A refused prepare leaves the cache as it was.
"""

from __future__ import annotations

import os
import re
import socket

import pytest

from ptychodata.errors import ScanDataError, ScanFileNotFoundError, ScanFormatError

from . import _files
from ._harness import assert_cache_intact, expect_cli_error, expect_error, run_case, run_cli, snapshot

TIMEOUT = 20.0  # refusing needs no reading at all; a blocked open would hit this


def _make(kind: str, directory) -> str:
    path = os.path.join(directory, f"{kind}.npz")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.close()  # the socket's file stays
    elif kind == "dev_zero":
        os.symlink("/dev/zero", path)
    elif kind == "dev_null":
        path = "/dev/null"
    elif kind == "directory":
        os.mkdir(path)
    elif kind == "loop":
        os.symlink(os.path.join(directory, "other.npz"), path)
        os.symlink(path, os.path.join(directory, "other.npz"))
    elif kind == "self_loop":
        os.symlink(path, path)
    elif kind == "link_to_fifo":
        os.mkfifo(os.path.join(directory, "target"))
        os.symlink(os.path.join(directory, "target"), path)
    elif kind == "dangling":
        os.symlink(os.path.join(directory, "nothing-here.npz"), path)
    elif kind == "empty":
        open(path, "wb").close()
    else:  # pragma: no cover
        raise ValueError(kind)
    return path


# kind -> (error, what the message says)
SPECIAL = {
    "fifo": (ScanDataError, "FIFO"),
    "socket": (ScanDataError, "socket"),
    "dev_zero": (ScanDataError, "character device"),
    "dev_null": (ScanDataError, "character device"),
    "directory": (ScanDataError, "directory"),
    "loop": (ScanDataError, "symbolic link"),
    "self_loop": (ScanDataError, "symbolic link"),
    "link_to_fifo": (ScanDataError, "FIFO"),
    "dangling": (ScanFileNotFoundError, "no such file"),
    "empty": (ScanFormatError, "empty"),
}


@pytest.fixture(scope="module")
def earlier_build(tmp_path_factory):
    """A cache holding one finished build, which no refused prepare may touch."""
    directory = tmp_path_factory.mktemp("earlier")
    path, options = _files.write("npz", directory)
    cache = directory / "cache"
    assert run_case(_files.prepare, str(path), str(cache), options).kind == "ok"
    return cache


@pytest.mark.parametrize("kind", list(SPECIAL))
@pytest.mark.parametrize("entry", ["load", "describe", "prepare", "prepare_scan"])
def test_a_special_file_is_refused_by_name_at_once(entry, kind, tmp_path, earlier_build):
    path = _make(kind, tmp_path)
    error, says = SPECIAL[kind]
    if entry in ("prepare", "prepare_scan"):
        before = snapshot(earlier_build)
        outcome = run_case(getattr(_files, entry), path, str(earlier_build), timeout=TIMEOUT)
    else:
        outcome = run_case(getattr(_files, entry), path, timeout=TIMEOUT)
    expect_error(outcome, error, match=says)
    assert os.path.basename(path) in outcome.message
    if entry in ("prepare", "prepare_scan"):
        assert_cache_intact(before, earlier_build)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "directory"])
def test_a_special_diffraction_file_of_a_product_is_refused(kind, tmp_path):
    import numpy as np

    product = tmp_path / "product.npz"
    x, y = _files.raster()
    np.savez(product, probe_position_x_m=x * 1e-7, probe_position_y_m=y * 1e-7,
             probe=np.ones((1, 16, 16), np.complex64), object=np.ones((1, 64, 64), np.complex64),
             object_pixel_width_m=1e-7, object_pixel_height_m=1e-7)
    outcome = run_case(_files.load, str(product), {"diffraction": _make(kind, tmp_path)}, timeout=TIMEOUT)
    expect_error(outcome, ScanDataError, match=SPECIAL[kind][1])


@pytest.mark.parametrize(
    "command",
    [
        ["inspect", "{path}"],
        ["convert", "{path}", "{out}"],
        ["prepare", "{path}", "--cache-dir", "{cache}", "--quiet"],
        ["convert", "{good}", "{out}", "--mask", "{path}"],
    ],
    ids=["inspect", "convert", "prepare", "convert-mask"],
)
def test_the_command_line_refuses_a_fifo_in_one_line(command, tmp_path, request):
    path = _make("fifo", tmp_path)
    good, _ = _files.write("npz", tmp_path)
    cache = tmp_path / "cache"
    argv = [part.format(path=path, out=tmp_path / "out.npz", cache=cache, good=good) for part in command]
    result = run_cli(argv, timeout=60)
    line = expect_cli_error(result, code=2, match="FIFO")
    assert "fifo.npz" in line
    assert not (tmp_path / "out.npz").exists()
    assert not any(part.startswith(".tmp-") for _, dirs, _ in os.walk(tmp_path) for part in dirs)


# ------------------------------------------------------------------ HDF5 links and storage outside the file
def _cxi_with_patterns_elsewhere(directory, how: str) -> str:
    """A CXI file whose patterns are an external link, external raw storage or a virtual dataset whose
    file is a FIFO or /dev/zero (HDF5 would open the FIFO and block, or read the device)."""
    import h5py
    import numpy as np

    path, _ = _files.write("cxi", directory)
    target = os.path.join(directory, "elsewhere.h5")
    if how.endswith("fifo"):
        os.mkfifo(target)
    else:
        os.symlink("/dev/zero", target)
    key = "/entry_1/instrument_1/detector_1/data"
    with h5py.File(path, "a") as f:
        del f[key]
        if how.startswith("link"):
            f[key] = h5py.ExternalLink("elsewhere.h5", "/data")
        elif how.startswith("storage"):
            f.create_dataset(key, shape=(_files.M, 16, 16), dtype=np.float32,
                             external=[("elsewhere.h5", 0, h5py.h5f.UNLIMITED)])
        else:
            layout = h5py.VirtualLayout(shape=(_files.M, 16, 16), dtype=np.float32)
            layout[:] = h5py.VirtualSource("elsewhere.h5", "/data", shape=(_files.M, 16, 16))
            f.create_virtual_dataset(key, layout)
    return str(path)


HDF5_ELSEWHERE = {"link-fifo": "FIFO", "link-device": "character device", "storage-fifo": "FIFO",
                  "storage-device": "character device", "virtual-fifo": "FIFO"}


@pytest.mark.parametrize("how", list(HDF5_ELSEWHERE))
@pytest.mark.parametrize("entry", ["load", "describe"])
def test_hdf5_data_in_a_special_file_is_refused_without_opening_it(entry, how, tmp_path):
    path = _cxi_with_patterns_elsewhere(tmp_path, how)
    outcome = run_case(getattr(_files, entry), path, timeout=TIMEOUT)
    if entry == "describe" and outcome.kind == "ok":  # inspect reports it as the problem (exit status 1)
        assert re.search(HDF5_ELSEWHERE[how], outcome.value or ""), outcome.value
        assert "elsewhere.h5" in outcome.value
        return
    expect_error(outcome, ScanDataError, match=HDF5_ELSEWHERE[how])
    assert "elsewhere.h5" in outcome.message


def test_a_loop_of_external_links_is_a_missing_dataset(tmp_path):
    import h5py

    path, _ = _files.write("cxi", tmp_path)
    key = "/entry_1/instrument_1/detector_1/data"
    with h5py.File(path, "a") as f:
        del f[key]
        f[key] = h5py.ExternalLink("other.h5", "/data")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = h5py.ExternalLink(str(path), key)
    outcome = run_case(_files.load, str(path), timeout=TIMEOUT)
    expect_error(outcome, ScanFormatError)
