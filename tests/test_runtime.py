"""The runtime helpers every layer shares: argument checks, JSON sanitising, optional imports."""

import json
from pathlib import Path

import numpy as np
import pytest

from ptychodata._runtime import (
    canonical_json,
    check_int,
    jsonable,
    optional_import,
    sorted_unique,
    take_into,
)
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


def _cgroup(tmp_path, files):
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
        ({"cpu.max": "garbage\n"}, None),
    ],
)
def test_cgroup_cpu_quota_in_whole_cpus(tmp_path, files, quota):
    from ptychodata._runtime import cgroup_cpu_quota

    assert cgroup_cpu_quota(_cgroup(tmp_path, files)) == quota


def test_usable_cores_honours_affinity_and_quota(tmp_path):
    import os

    from ptychodata._runtime import usable_cores

    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(cgroup_root=_cgroup(tmp_path / "none", {})) == affinity
    assert usable_cores(cgroup_root=_cgroup(tmp_path / "one", {"cpu.max": "100000 100000"})) == 1
    assert usable_cores(cgroup_root=_cgroup(tmp_path / "many", {"cpu.max": "6400000 100000"})) == affinity


def _in_cgroup(monkeypatch, proc_self_cgroup):
    """This process, as /proc/self/cgroup tells, in the cgroup(s) of ``proc_self_cgroup``."""
    import builtins
    import io

    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        if str(path) == "/proc/self/cgroup":
            return io.StringIO(proc_self_cgroup)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)


def test_a_batch_jobs_own_cgroup_limits_memory_and_cpus(tmp_path, monkeypatch):
    from ptychodata._runtime import available_memory, cgroup_cpu_quota

    job = "system.slice/slurmstepd.scope/job_7/step_0"
    root = _cgroup(tmp_path, {
        "memory.max": "max\n",  # the machine: no limit
        "system.slice/slurmstepd.scope/job_7/memory.max": str(3 << 30), "system.slice/slurmstepd.scope/job_7/"
        "memory.current": str(1 << 30),  # the job: 3 GiB, 1 GiB used
        f"{job}/memory.max": "max\n", f"{job}/memory.current": str(1 << 30),
        f"{job}/cpu.max": "400000 100000\n", "system.slice/cpu.max": "800000 100000\n",
    })
    _in_cgroup(monkeypatch, f"0::/{job}\n")
    left = available_memory(cgroup_root=root)
    assert left is not None and left <= 2 << 30  # the job's limit less its usage (or less: MemAvailable)
    assert cgroup_cpu_quota(root) == 4  # the job step's quota, the smaller one
    _in_cgroup(monkeypatch, "0::/\n")  # a container with its own namespace: its limits are the root's
    assert cgroup_cpu_quota(root) is None


def test_a_v1_memory_hierarchy_names_its_own_path(tmp_path, monkeypatch):
    from ptychodata._runtime import available_memory, cgroup_cpu_quota

    root = _cgroup(tmp_path, {
        "memory/batch/job_3/memory.limit_in_bytes": str(1 << 20), "memory/batch/job_3/memory.usage_in_bytes": "0",
        "cpu,cpuacct/batch/job_3/cpu.cfs_quota_us": "250000", "cpu,cpuacct/batch/job_3/cpu.cfs_period_us": "100000",
    })
    (tmp_path / "cpu").symlink_to(tmp_path / "cpu,cpuacct")
    _in_cgroup(monkeypatch, "12:cpu,cpuacct:/batch/job_3\n9:memory:/batch/job_3\n1:name=systemd:/batch\n")
    assert available_memory(cgroup_root=root) <= 1 << 20
    assert cgroup_cpu_quota(root) == 3


@pytest.mark.parametrize(("stat", "left"), [
    ("", 1 << 30),  # no memory.stat: the limit less the usage
    ("anon 536870912\nactive_file 1073741824\ninactive_file 536870912\n", (1 << 30) + (3 << 29)),  # v2
    ("cache 0\ntotal_active_file 268435456\ntotal_inactive_file 268435456\nactive_file 1\n", (1 << 30) + (1 << 29)),  # v1
    ("active_file 9999999999999\ninactive_file 0\n", 3 << 30),  # never more than the limit
    ("active_file many\ninactive_file 0\n", 1 << 30),  # unreadable: not counted
])
def test_a_cgroups_page_cache_counts_as_free_memory(tmp_path, stat, left):
    from ptychodata._runtime._memory import _cgroup_memory_left

    files = {"memory.max": str(3 << 30), "memory.current": str(2 << 30)}  # 3 GiB, 2 GiB used
    if stat:
        files["memory.stat"] = stat
    folder = _cgroup(tmp_path, files)
    assert _cgroup_memory_left(folder, "memory.max", "memory.current") == left


@pytest.mark.parametrize("values", [np.array([], np.int64), np.array([5]), np.array([3, 1, 3, 2, 1, 9]),
                                    np.arange(12).reshape(3, 4)[:, ::-1], np.array([7, 7, 7], np.int32)])
def test_sorted_unique_is_numpys_unique(values):
    got, expected = sorted_unique(values), np.unique(values)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("index", [[2, 0, 2, 1, 0, 2], [1], [], [0, 0, 0]])
def test_take_into_copies_a_row_per_experiment_to_the_rows_that_use_it(index):
    table = (np.arange(3 * 4 * 4).reshape(3, 4, 4) * (1 + 1j)).astype(np.complex64)
    out = np.full((len(index), 4, 4), 99, np.complex64)
    take_into(table, np.array(index, np.int64), out)
    np.testing.assert_array_equal(out, np.take(table, np.array(index, np.int64), axis=0))


@pytest.mark.parametrize("shape, index", [((5, 3, 3), [4, 0, 4, 2]), ((6,), [5, 1]), ((4, 2), []), ((3, 2, 2), [2])])
def test_take_into_writes_the_rows_into_out(shape, index):
    source = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    index = np.array(index, np.int64)
    out = np.full((len(index), *shape[1:]), -1, np.float32)
    assert take_into(source, index, out) is out
    np.testing.assert_array_equal(out, source[index])
