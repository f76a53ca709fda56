"""The reading flags of the CLI are generated from LoadOptions: every flagged option is accepted,
reaches the library with its value, defaults are not passed on, and messages name flags."""

from pathlib import Path

import numpy as np
import pytest

from ptychodata.cli import build_parser, main
from ptychodata.cli._messages import for_the_command_line
from ptychodata.cli._options import load_options
from ptychodata.grouping import GroupingConfig
from ptychodata.io import LoadOptions, load_option_flags
from ptychodata.simulate import simulate
from ptychodata.store import prepare

READING_COMMANDS = {"inspect": ["scan.npz"], "convert": ["scan.npz", "out.npz"], "prepare": ["scan.npz"]}


def _example(name, default, flag, tmp_path):
    """(argv, value) that give option ``name`` a value other than its default."""
    if flag.kind == "switch":
        return [flag.flag], True
    if flag.kind == "pair":
        return [flag.flag, "3", "4.5"], (3.0, 4.5)
    if flag.kind == "keymap":
        argv = [flag.flag, "positions=/p", flag.flag, "diffraction=/d"]
        return argv, {"diffraction": "/d", "positions": "/p"}
    if flag.kind == "npy":
        np.save(tmp_path / "mask.npy", np.array([[0, 1], [2, 0]]))
        return [flag.flag, str(tmp_path / "mask.npy")], np.array([[False, True], [True, False]])
    if flag.choices:
        choice = next(choice for choice in flag.choices if choice != default)
        return [flag.flag, choice], choice
    return {
        "int": ([flag.flag, "3"], 3),
        "float": ([flag.flag, "2.5e-7"], 2.5e-7),
        "path": ([flag.flag, "other.h5"], "other.h5"),
        "str": ([flag.flag, "text"], "text"),
    }[flag.type]


def _cases():
    for name, default, flag in load_option_flags():
        if flag.kind == "either":
            yield pytest.param(name, [flag.flag], True, id=flag.flag)
            yield pytest.param(name, [flag.off], False, id=flag.off)
        else:
            yield pytest.param(name, (default, flag), None, id=flag.flag)


def test_every_load_option_has_a_case():
    ids = {case.id for case in _cases()}
    assert {flag.flag for _, _, flag in load_option_flags()} <= ids
    assert len(ids) >= 20  # keys, intensity/amplitude, shift/no-shift, crop, ..., near_field


@pytest.mark.parametrize("command", sorted(READING_COMMANDS))
@pytest.mark.parametrize("name, given, expected", list(_cases()))
def test_every_flagged_load_option_reaches_the_library(command, name, given, expected, tmp_path):
    if expected is None:  # not an either/or pair: make an example of the option's kind
        default, flag = given
        given, expected = _example(name, default, flag, tmp_path)
    args = build_parser().parse_args([command, *READING_COMMANDS[command], *given])
    options = load_options(args)
    assert list(options) == [name]
    if isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(options[name], expected)
    else:
        assert options[name] == expected and type(options[name]) is type(expected)


@pytest.mark.parametrize("command", sorted(READING_COMMANDS))
def test_help_lists_every_reading_flag(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    for _name, _default, flag in load_option_flags():
        assert flag.flag in out and flag.help.split()[0] in out
        if flag.off is not None:
            assert flag.off in out


def test_no_flag_passes_no_option():
    args = build_parser().parse_args(["prepare", "scan.npz"])
    assert load_options(args) == {} == LoadOptions().changed()


def test_a_flag_given_its_default_value_passes_nothing():
    args = build_parser().parse_args(["inspect", "scan.npz", "--bin", "1", "--probe-modes", "first"])
    assert load_options(args) == {}


@pytest.fixture
def scan_path(tmp_path):
    return simulate(n_points=40, N=16, seed=1).save(tmp_path / "scan.npz")


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--crop", "1"], "--crop 1"),
        (["--bin", "0"], "--bin 0"),
        (["--energy-ev", "0"], "--energy-ev 0.0"),
        (["--pixel-size", "inf"], "--pixel-size inf"),
    ],
)
@pytest.mark.parametrize("command", ["inspect", "prepare"])
def test_a_refused_load_option_is_named_by_its_flag(command, argv, flag, scan_path, tmp_path, capsys):
    extra = ["--cache-dir", str(tmp_path / "cache")] if command == "prepare" else []
    assert main([command, str(scan_path), *argv, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag}; expected") and len(err.strip().splitlines()) == 1
    python = flag.split()[0].removeprefix("--").replace("-", "_")
    assert f"{python}=" not in err.lower()
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_a_mask_that_is_not_npy_is_named_by_its_flag(scan_path, tmp_path, capsys):
    not_npy = tmp_path / "mask.npy"
    not_npy.write_text("not an array\n")
    assert main(["inspect", str(scan_path), "--mask", str(not_npy)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --mask {not_npy}: not a NumPy array file (.npy)")


def test_a_key_without_a_path_is_named_by_its_flag(scan_path, capsys):
    assert main(["inspect", str(scan_path), "--key", "positions"]) == 2
    assert "--key 'positions': expected NAME=PATH" in capsys.readouterr().err


def test_cli_and_python_prepare_the_same_store_for_the_same_options(scan_path, tmp_path, capsys):
    cache = tmp_path / "cache"
    mask = np.ones((16, 16), bool)
    mask[0, 0] = False
    np.save(tmp_path / "mask.npy", mask.astype(np.uint8))
    argv = ["prepare", str(scan_path), "--cache-dir", str(cache), "--quiet", "--amplitude", "--crop", "12",
            "--center", "8", "8", "--bin", "2", "--flip-rows", "--mask", str(tmp_path / "mask.npy")]
    assert main(argv) == 0
    from_cli = Path(capsys.readouterr().out.strip())
    options = {"crop": 12, "center": (8.0, 8.0), "bin": 2, "flip_rows": True, "mask": mask}
    config = GroupingConfig(seed=0)  # the CLI's default seed
    with prepare(str(scan_path), config, cache_dir=cache, intensity=False, load_options=options,
                 progress=False) as store:
        assert store.path == from_cli
    assert len(list(cache.glob("frames-*"))) == 1


@pytest.mark.parametrize(
    "python, flags",
    [
        ("crop=1; expected an integer pattern size >= 2", "--crop 1; expected an integer pattern size >= 2"),
        ("pass intensity=True if they are counts", "pass --intensity if they are counts"),
        ("pass intensity=False if they are amplitudes", "pass --amplitude if they are amplitudes"),
        ("pass shift=False to keep them as stored", "pass --no-shift to keep them as stored"),
        ("load with clip_negative=True)", "load with --clip-negative)"),
        ("probe_modes='all' keeps every mode", "--probe-modes all keeps every mode"),
        ("energy_eV=8000.0 given", "--energy-ev 8000.0 given"),
        ("pass crop= to choose the size", "pass --crop to choose the size"),
        ("pixel_size=, energy_eV= (or wavelength_m=)", "--pixel-size, --energy-ev (or --wavelength)"),
        ("keys= needs 'diffraction'", "--key NAME=PATH needs 'diffraction'"),
        ("(CLI: --key diffraction=/path)", "(CLI: --key diffraction=/path)"),  # a key name, not an option
        ("autocrop=3 and n_bin=2", "autocrop=3 and n_bin=2"),  # whole words only
        ("raise neighbor_count or pass enable_oversampling=True", "raise --neighbors or pass --oversample"),
    ],
)
def test_messages_name_flags(python, flags):
    assert for_the_command_line(python) == flags
