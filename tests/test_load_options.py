"""Load options: parsed at construction, one canonical identity for options that mean the same."""

import numpy as np
import pytest

from ptychodata.errors import ParameterError, ScanDataError
from ptychodata.io import LoadOptions
from ptychodata.io._options import load_option_flags


def test_options_that_mean_the_same_are_equal_with_one_identity():
    a = LoadOptions(crop=64, center=(10, 12), keys={"ycoords": "/y", "diffraction": "/d", "xcoords": "/x"})
    b = LoadOptions(crop=64.0, center=[10.0, 12.0], keys={"diffraction": "/d", "xcoords": "/x", "ycoords": "/y"})
    assert a == b and hash(a) == hash(b)
    assert a.identity() == b.identity() == {
        "center": [10.0, 12.0], "crop": 64, "keys": {"diffraction": "/d", "xcoords": "/x", "ycoords": "/y"},
    }
    assert type(b.crop) is int


def test_defaults_given_explicitly_leave_the_identity_empty():
    assert LoadOptions(bin=1, clip_negative=None, probe_modes="first", keys={}).identity() == {}
    assert LoadOptions().changed() == {}


def test_a_mask_is_identified_by_its_content():
    mask = np.ones((4, 4), bool)
    same = LoadOptions(mask=mask.astype(np.uint8)).identity()
    assert same == LoadOptions(mask=mask).identity()
    other = mask.copy()
    other[0, 0] = False
    assert LoadOptions(mask=other).identity() != same


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"crop": 1}, ScanDataError, "crop=1; expected an integer pattern size >= 2"),
        ({"crop": 63.5}, ScanDataError, "crop=63.5; expected an integer pattern size >= 2"),
        ({"bin": 0}, ScanDataError, "bin=0; expected a positive integer"),
        ({"pixel_size": -1e-8}, ScanDataError, "pixel_size=-1e-08; expected the object pixel size in metres"),
        ({"energy_eV": float("nan")}, ScanDataError, "energy_eV=nan; expected a finite number > 0"),
        ({"distance_m": "far"}, ParameterError, "distance_m='far'; expected a number > 0"),
        ({"center": (1.0,)}, ParameterError, r"center=\(1.0,\); expected \(row, col\)"),
        ({"keys": ["diffraction"]}, ParameterError, "keys=.*expected a mapping"),
        ({"transpose": "yes"}, ParameterError, "transpose='yes'; expected True or False"),
        ({"position_unit": "mm"}, ScanDataError, "position_unit='mm'; expected one of"),
        ({"mask": np.ones(4)}, ParameterError, r"mask: shape \(4,\).*expected an \(H, W\) array"),
    ],
)
def test_bad_values_are_refused_naming_the_parameter(kwargs, error, match):
    with pytest.raises(error, match=match):
        LoadOptions(**kwargs)


def test_every_option_but_internal_ones_has_one_distinct_flag():
    flags = load_option_flags()
    names = [name for name, _, _ in flags]
    assert "patterns_only" not in names and "crop" in names and "energy_eV" in names
    spelled = [flag.flag for _, _, flag in flags] + [flag.off for _, _, flag in flags if flag.off]
    assert len(spelled) == len(set(spelled))
    assert all(flag.help for _, _, flag in flags)
