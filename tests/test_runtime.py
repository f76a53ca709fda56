"""The runtime helpers every layer shares: argument checks, JSON sanitising, optional imports."""

import json
from pathlib import Path

import numpy as np
import pytest

from ptychodata._runtime import canonical_json, check_int, jsonable, optional_import
from ptychodata.errors import MissingDependencyError, ParameterError


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.uint8(1)])
def test_check_int_accepts_whole_numbers(value):
    assert check_int("n", value) == int(value)
    assert type(check_int("n", value)) is int


@pytest.mark.parametrize("value", [0, -1, 2.0, 2.5, "3", True, None])
def test_check_int_refuses_others_naming_the_parameter(value):
    with pytest.raises(ParameterError, match=rf"^n_groups={value!r}; expected a positive integer$"):
        check_int("n_groups", value)


def test_check_int_minimum():
    assert check_int("consumed", 0, minimum=0) == 0
    with pytest.raises(ParameterError, match="expected a non-negative integer"):
        check_int("consumed", -5, minimum=0)
    with pytest.raises(ParameterError, match="N=1; expected an integer >= 2"):
        check_int("N", 1, minimum=2)


def test_jsonable_turns_numpy_and_paths_into_plain_values():
    value = {1: np.float32(0.5), "a": (np.arange(3), Path("/x/y")), "d": np.dtype("uint16"), "t": np.float16}
    plain = jsonable(value)
    assert plain == {"1": 0.5, "a": [[0, 1, 2], "/x/y"], "d": "<u2", "t": "<f2"}
    assert json.loads(json.dumps(plain)) == plain


def test_jsonable_refuses_what_has_no_json_form():
    with pytest.raises(TypeError, match="object"):
        jsonable({"x": object()})


def test_canonical_json_is_independent_of_key_order_and_numpy_types():
    assert canonical_json({"b": 1, "a": np.int64(2)}) == canonical_json({"a": 2, "b": 1}) == '{"a":2,"b":1}'


def test_optional_import_names_the_extra():
    with pytest.raises(MissingDependencyError, match=r"pip install 'ptychodata\[interop\]'"):
        optional_import("ptychodus._no_such_module", purpose="the interop test")
    with pytest.raises(ImportError, match="needs no_such_package_xyz"):
        optional_import("no_such_package_xyz", purpose="a test")
