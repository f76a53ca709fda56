"""How a :class:`~ptychodata.torch.DeviceStore` holds its frames, and the gather that decodes them.

A device holds each frame once, in one of these encodings (``DeviceStore(frames=...)``):

========= ===================================== ======= =======================================
frames    held as                               B/pixel X of a batch (float32)
========= ===================================== ======= =======================================
float32   float32 amplitudes, pre-scaled by     4       the rows as they are (one index_select)
          their experiment's x_scale (default)
float32   float32 amplitudes (prescale=False)   4       A · scale
float16   float16 amplitudes                    2       float32(A) · scale (exact widening)
bfloat16  bfloat16 amplitudes                   2       float32(A) · scale (exact widening)
uint16    whole detector counts                 2       sqrt(float32(counts)) · scale
========= ===================================== ======= =======================================

``scale`` is the §5 ``x_scale`` of the group's experiment; each step is one IEEE float32
operation in the order of :func:`ptychodata.store.decode_into` (convert, square root of
counts, multiply), so X is the host gather's bit for bit for a store of the same encoding.
Held compact, frames take half the device memory, and no float32 copy of them exists
there: each batch's rows are decoded as they are gathered.

On a GPU with Triton the gather, the decoding and the batch's probes are one kernel launch
per run of batches (:func:`gather_decode`, ``kernel="triton"``); without it, an
``index_select`` of the stored rows then the decoding in torch (``"torch"``); on the CPU,
an ``index_select`` then :func:`~ptychodata.store.decode_into` in place (``"numpy"``).

Converting to a held encoding that differs from the store's (``frames="uint16"`` for a
store of uint32 or float32 counts, ``"float16"`` or ``"bfloat16"`` for any store) checks
every frame it holds: counts that do not fit, negative or fractional counts, and
amplitudes beyond float16's range raise :class:`~ptychodata.errors.FramesRangeError`
naming the pattern; nothing is clipped.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import numpy as np
import torch

from ptychodata._runtime import is_installed
from ptychodata.errors import FramesRangeError, ParameterError
from ptychodata.store import FramesEncoding, decode_into

__all__ = ["HELD_FRAMES", "KERNELS", "choose_kernel", "convert_rows", "gather_decode", "held_encoding", "to_torch"]

HELD_FRAMES = ("float32", "float16", "bfloat16", "uint16")
KERNELS = ("auto", "triton", "torch", "numpy")
_KIND = {"float32": 0, "float16": 1, "bfloat16": 2, "uint16": 3}  # the kernel's decode, by held dtype


def held_encoding(stored: FramesEncoding, frames: str | None, *, materialized: bool, where: str) -> FramesEncoding:
    """The encoding a DeviceStore holds for a store of encoding ``stored``.

    ``frames=None`` keeps a compact store compact (float16, bfloat16 or uint16 counts as
    stored) and holds float32 amplitudes otherwise (float32 stores, uint32 and float32
    counts). ``"uint16"`` needs counts; ``"float16"`` and ``"bfloat16"`` take any store.
    """
    if frames is None:
        compact = stored.dtype in ("float16", "bfloat16") or stored.dtype == "uint16"
        return stored if compact and not materialized else FramesEncoding()
    if frames not in HELD_FRAMES:
        raise ParameterError(f"frames={frames!r}; expected one of {HELD_FRAMES} or None (the store's own when compact)")
    if materialized and frames != "float32":
        raise ParameterError(f"{where}: frames={frames!r}, but this store holds its X materialized as float32 "
                             "(prepare it without materialize=True to hold compact frames)")
    if frames == "uint16":
        if stored.values != "counts":
            raise ParameterError(f"{where}: frames='uint16' holds detector counts, but this store holds amplitudes "
                                 f"({stored.dtype}); use frames='float16', 'bfloat16' or 'float32'")
        return FramesEncoding("uint16", "counts")
    return FramesEncoding(frames, "amplitude")


def to_torch(held: FramesEncoding, rows: np.ndarray) -> torch.Tensor:
    """Host rows in ``held``'s storage dtype as a tensor of the dtype held on the device
    (sharing memory): float32, float16, bfloat16, or int16 bits of uint16 counts."""
    if held.dtype == "uint16":
        return torch.from_numpy(rows.view(np.int16))
    if held.dtype == "bfloat16":
        return torch.from_numpy(rows.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(rows)


def convert_rows(
    stored: FramesEncoding, held: FramesEncoding, raw: np.ndarray, patterns: np.ndarray, where: str
) -> np.ndarray:
    """Rows ``raw`` (P, N, N) of a store of encoding ``stored`` (its patterns ``patterns``,
    for errors) in the encoding ``held``, in its storage dtype; the values are checked.

    Raises
    ------
    FramesRangeError
        Counts beyond uint16 (saturation), negative, fractional or not finite; amplitudes
        beyond float16's largest finite value. Nothing is ever clipped.
    """
    if held == stored:
        return raw
    amplitude = None
    if held.values != "counts":
        amplitude = np.empty(raw.shape, np.float32)
        decode_into(stored, raw, amplitude)
        if held.is_identity:
            return amplitude
    problem = held.unencodable(raw, amplitude)
    if problem is not None:
        bad, found = problem
        wider = "'bfloat16' or 'float32'" if held.dtype == "float16" else "'float32'"
        raise FramesRangeError(
            f"{where}: pattern {int(patterns[bad])} {found}; frames='{held.dtype}' {held.holds} and never "
            f"clips; hold the frames as frames={wider}"
        )
    return held.stored_form(raw, amplitude)


def choose_kernel(kernel: str, device: torch.device) -> str:
    """The gather used for compact or unscaled frames: ``kernel`` checked, ``"auto"`` resolved."""
    if kernel not in KERNELS:
        raise ParameterError(f"kernel={kernel!r}; expected one of {KERNELS}")
    if kernel == "auto":
        if device.type != "cuda":
            return "numpy"
        return "triton" if is_installed("triton") else "torch"
    if kernel == "triton" and device.type != "cuda":
        raise ParameterError(f"kernel='triton' on {device}; the Triton kernel runs on CUDA devices (use 'numpy' here)")
    if kernel == "triton" and not is_installed("triton"):
        raise ParameterError("kernel='triton', but triton is not installed; use kernel='torch'")
    if kernel == "numpy" and device.type != "cpu":
        raise ParameterError(f"kernel='numpy' on {device}; it decodes CPU tensors (use 'triton' or 'torch')")
    return kernel


def gather_decode(
    kernel: str,
    held: FramesEncoding,
    table: torch.Tensor,
    rows: torch.Tensor,
    scale: torch.Tensor | None,
    C: int,
    X: torch.Tensor,
    probes: torch.Tensor,
    experiment: torch.Tensor,
    probe_out: torch.Tensor,
) -> None:
    """``X[r] = decode(table[rows[r]]) · scale[r // C]`` and ``probe_out[g] = probes[experiment[g]]``.

    Parameters
    ----------
    kernel : {"triton", "torch", "numpy"}
    held : FramesEncoding
        What ``table`` holds.
    table : torch.Tensor of shape (M, N, N)
        The held frames (int16 bits for uint16 counts).
    rows : torch.Tensor of shape (n·C,) int64
        Table rows, group after group.
    scale : torch.Tensor of shape (n,) float32, or None
        Each group's scale (None: the frames are pre-scaled float32, copied as they are).
    X : torch.Tensor of shape (n·C, N, N) float32, contiguous, written
    probes : torch.Tensor of shape (E, N, N) complex64
    experiment : torch.Tensor of shape (n,) int64
    probe_out : torch.Tensor of shape (n, N, N) complex64, contiguous, written
    """
    if kernel == "triton":
        _gather_triton(held, table, rows, scale, C, X, probes, experiment, probe_out)
        return
    torch.index_select(probes, 0, experiment, out=probe_out)
    if held.is_identity and scale is None:
        torch.index_select(table, 0, rows, out=X)
        return
    stored = table.index_select(0, rows)
    if kernel == "numpy":
        host = stored.view(torch.int16).numpy().view(held.storage) if held.dtype in ("uint16", "bfloat16") \
            else stored.numpy()
        per_row = None if scale is None else np.repeat(scale.numpy(), C)[:, None, None]
        decode_into(held, host, X.numpy(), per_row)
        return
    if held.dtype == "uint16":
        X.copy_(stored.view(torch.uint16))
        X.sqrt_()
    else:
        X.copy_(stored)
    if scale is not None:
        X.view(len(scale), -1).mul_(scale[:, None])


def _gather_triton(
    held: FramesEncoding,
    table: torch.Tensor,
    rows: torch.Tensor,
    scale: torch.Tensor | None,
    C: int,
    X: torch.Tensor,
    probes: torch.Tensor,
    experiment: torch.Tensor,
    probe_out: torch.Tensor,
) -> None:
    """One launch: program (r, j) writes block j of X's row r (r < n·C) or of the probes'
    float32 row r - n·C (two per group: a complex64 (N, N) probe is two float32 (N, N) rows)."""
    n_x = rows.numel()
    row = X[0].numel() if n_x else probes[0].numel()
    block = min(_BLOCK, triton_next_pow2(row))
    n_probe_rows = 2 * experiment.numel()
    if n_x + n_probe_rows == 0:
        return
    grid = (n_x + n_probe_rows, -(-row // block))
    _kernel()[grid](
        table, rows, X if scale is None else scale, X,
        torch.view_as_real(probes), experiment, torch.view_as_real(probe_out),
        n_x, C=C, ROW=row, BLOCK=block, EVEN=row % block == 0, KIND=_KIND[held.dtype], SCALED=scale is not None,
        num_warps=_WARPS,
    )


_BLOCK = 4096  # elements of a row one program writes
_WARPS = 8


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@functools.cache
def _kernel() -> Any:
    """The Triton kernel, compiled on first use (Triton is imported only here)."""
    triton = importlib.import_module("triton")
    tl = importlib.import_module("triton.language")

    @triton.jit
    def gather_decode_kernel(table, rows, scale, X, probes, experiment, probe_out, n_x,
                             C: tl.constexpr, ROW: tl.constexpr, BLOCK: tl.constexpr, EVEN: tl.constexpr,
                             KIND: tl.constexpr, SCALED: tl.constexpr):
        r = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        if r < n_x:
            frame = table + tl.load(rows + r) * ROW + cols
            if EVEN:
                value = tl.load(frame)
            else:
                value = tl.load(frame, mask=cols < ROW, other=0)
            if KIND == 3:  # uint16 counts, held as int16 bits
                value = tl.sqrt_rn(value.to(tl.uint16, bitcast=True).to(tl.float32))
            else:
                value = value.to(tl.float32)
            if SCALED:
                value = value * tl.load(scale + r // C)
            if EVEN:
                tl.store(X + r * ROW + cols, value)
            else:
                tl.store(X + r * ROW + cols, value, mask=cols < ROW)
        else:
            q = r - n_x
            probe_row = probes + (tl.load(experiment + q // 2) * 2 + q % 2) * ROW + cols
            if EVEN:
                tl.store(probe_out + q * ROW + cols, tl.load(probe_row))
            else:
                tl.store(probe_out + q * ROW + cols, tl.load(probe_row, mask=cols < ROW), mask=cols < ROW)

    return gather_decode_kernel
