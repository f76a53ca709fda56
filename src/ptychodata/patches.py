"""Sub-pixel patches of an object and their reassembly (contract §4 and §9).

Coordinates are in object pixels, x = column, y = row. Patch p is the N×N window centred on
(x_p, y_p)::

    patch[p, r, q] = O(y_p + r - N//2, x_p + q - N//2)

bilinearly interpolated, with zeros outside the object: each of the four neighbours of a sample
contributes weight · value when it lies inside the object and nothing otherwise.
:func:`reassemble` applies the adjoint (bilinear splatting) and divides by the summed weights.

Both work in chunks of patches, vectorised within a chunk, at a cost independent of the object
size (the object is never padded or copied). A patch reads an (N+1)×(N+1) block of the object. For
blocks wholly inside, the block comes from a sliding-window view and the fractional weights are the
same for the whole patch, so the interpolation runs as long float32 passes over the flattened block.
Blocks that cross the border are gathered with clipped indices and their outside entries set to
zero, which is the same as giving the outside neighbours zero weight. Chunks default to about
4 MiB of block data: the scratch memory then stays in cache and is reused, not freshly allocated.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ptychodata.errors import ParameterError

__all__ = ["extract_patches", "reassemble"]

_CHUNK_BYTES = 1 << 22


def _check_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_positions(x: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.shape != ya.shape:
        raise ParameterError(f"x and y must have the same shape, got x {xa.shape} and y {ya.shape}")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise ParameterError("x and y must be finite; found NaN or Inf positions")
    return xa, ya


def _chunk(chunk_size: int | None, N: int) -> int:
    if chunk_size is None:
        return max(1, _CHUNK_BYTES // (8 * (N + 1) ** 2))
    return _check_int(chunk_size, "chunk_size")


def _split(pos: np.ndarray, N: int) -> tuple[np.ndarray, np.ndarray]:
    """First object index of each (N+1)-wide neighbourhood (P,) int64 and the fraction (P,) float32."""
    base = np.floor(pos)
    return base.astype(np.int64) - N // 2, (pos - base).astype(np.float32)


def _gather(
    obj: np.ndarray, windows: np.ndarray | None, ry: np.ndarray, cx: np.ndarray, N: int
) -> np.ndarray:
    """Blocks (k, N+1, N+1) of the zero-extended object whose top-left corners are (ry, cx)."""
    (H, W), n = obj.shape, N + 1
    inner = (ry >= 0) & (ry + N < H) & (cx >= 0) & (cx + N < W)
    if inner.all():
        return windows[ry, cx]
    blk = np.empty((ry.size, n, n), obj.dtype)
    i, o = np.flatnonzero(inner), np.flatnonzero(~inner)
    if i.size:
        blk[i] = windows[ry[i], cx[i]]
    rows, cols = ry[o, None] + np.arange(n), cx[o, None] + np.arange(n)
    edge = obj[np.clip(rows, 0, H - 1)[:, :, None], np.clip(cols, 0, W - 1)[:, None, :]]
    edge[~(((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :])] = 0
    blk[o] = edge
    return blk


def _interp(blk: np.ndarray, fy: np.ndarray, fx: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """Interpolate blocks (k, n, n) with per-patch fractions (k,) → (k, N, N) complex64 view of buf."""
    k, n = blk.shape[:2]
    N, L = n - 1, (n - 1) * 2 * n  # a row of a block is 2n floats (re, im interleaved)
    b = blk.astype(np.complex64, copy=False).reshape(k, -1).view(np.float32)
    a, c = buf[0, :k, :L], buf[1, :k, :L]
    wy, wx = fy[:, None], fx[:, None]
    np.multiply(b[:, :L], 1 - wy, out=a)  # rows r ...
    np.multiply(b[:, 2 * n :], wy, out=c)  # ... and r + 1
    a += c
    np.multiply(a[:, :-2], 1 - wx, out=c[:, :-2])  # columns q and q + 1, i.e. floats j and j + 2
    a[:, 2:] *= wx
    c[:, :-2] += a[:, 2:]
    return c.reshape(k, N, 2 * n)[:, :, : 2 * N].view(np.complex64)


def extract_patches(
    obj: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    N: int,
    *,
    out: np.ndarray | None = None,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Extract N×N patches of ``obj`` centred on sub-pixel positions (§4).

    Parameters
    ----------
    obj : ndarray of shape (H, W), complex (real is accepted)
        The object; only the blocks under the patches are read.
    x, y : ndarray of shape (P,)
        Patch centres in object pixels; x = column, y = row.
    N : int
        Patch side.
    out : ndarray of shape (P, N, N), complex, optional
        Where to write the patches: any writable view, e.g. a memmap or ``Y[..., c]`` of a
        channels-last (B, N, N, C) array. Allocated as complex64 when omitted.
    chunk_size : int, optional
        Patches processed at once; by default about 4 MiB of (N+1)² blocks (124 at N = 64).

    Returns
    -------
    ndarray of shape (P, N, N), complex64 (or ``out``)
        ``patch[p, r, q] = O(y_p + r - N//2, x_p + q - N//2)``, bilinear, zero outside the object.
    """
    obj = np.asarray(obj)
    if obj.ndim != 2 or 0 in obj.shape:
        raise ParameterError(f"obj must be a non-empty 2-D (H, W) array, got shape {obj.shape}")
    if obj.dtype == np.bool_ or not np.issubdtype(obj.dtype, np.number):
        raise ParameterError(f"obj must be numeric (complex64 expected), got dtype {obj.dtype}")
    N = _check_int(N, "N")
    chunk = _chunk(chunk_size, N)
    x, y = _check_positions(x, y)
    if x.ndim != 1:
        raise ParameterError(f"x and y must have shape (P,), got {x.shape}")
    P, (H, W), n = x.shape[0], obj.shape, N + 1
    if out is None:
        out = np.empty((P, N, N), np.complex64)
    elif not isinstance(out, np.ndarray) or out.shape != (P, N, N):
        found = getattr(out, "shape", type(out).__name__)
        raise ParameterError(f"out must have shape (P, N, N) = {(P, N, N)}, got {found}")
    elif not np.issubdtype(out.dtype, np.complexfloating) or not out.flags.writeable:
        raise ParameterError(f"out must be a writable complex array, got dtype {out.dtype}")
    windows = sliding_window_view(obj, (n, n)) if H >= n and W >= n else None
    buf = np.empty((2, min(chunk, P), N * 2 * n), np.float32)
    for s in range(0, P, chunk):
        ry, fy = _split(y[s : s + chunk], N)
        cx, fx = _split(x[s : s + chunk], N)
        out[s : s + chunk] = _interp(_gather(obj, windows, ry, cx, N), fy, fx, buf)
    return out


def _grouped_view(patches: np.ndarray, x: np.ndarray, channels_last: bool | None) -> tuple[np.ndarray, int]:
    """Patches as a (G, C, N, N) view, no copy, checked against positions x of shape (P,) or (B, C)."""
    shape = patches.shape
    if patches.ndim == 3:
        if shape[1] != shape[2] or x.shape != (shape[0],):
            raise ParameterError(f"patches (P, N, N) need x, y of shape (P,); got patches {shape}, x {x.shape}")
        return patches[:, None], 1
    if patches.ndim != 4:
        raise ParameterError(f"patches must be (P, N, N), (B, C, N, N) or (B, N, N, C), got {shape}")
    C = x.shape[1] if x.ndim == 2 else None
    first = shape[2] == shape[3] and C in (None, shape[1])
    last = shape[1] == shape[2] and C in (None, shape[3])
    if channels_last is None:
        if first and last:
            raise ParameterError(
                f"cannot tell the channel axis of patches {shape}; pass channels_last=True for "
                "(B, N, N, C) or channels_last=False for (B, C, N, N)"
            )
        channels_last = last
    if not (last if channels_last else first):
        want = "(B, N, N, C)" if channels_last else "(B, C, N, N)"
        raise ParameterError(f"patches must be {want} with C = x.shape[1]; got patches {shape}, x {x.shape}")
    view = np.moveaxis(patches, 3, 1) if channels_last else patches
    B, C = view.shape[:2]
    if x.shape not in ((B, C), (B * C,)):
        raise ParameterError(f"x and y must have shape (B, C) = {(B, C)} for patches {shape}, got {x.shape}")
    return view, C


def _splat(val: np.ndarray, fy: np.ndarray, fx: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """Adjoint of :func:`_interp`: patches (k, N, N) → blocks (k, n, n) complex64 view of buf."""
    k, N = val.shape[:2]
    n = N + 1
    L = N * 2 * n
    v, a = buf[0, :k], buf[1, :k, :L]
    vc = v[:, :L].view(np.complex64).reshape(k, N, n)
    vc[:, :, :N] = val
    vc[:, :, N] = 0
    v = v[:, :L]
    wy, wx = fy[:, None], fx[:, None]
    np.multiply(v[:, :-2], 1 - wx, out=a[:, :-2])  # columns
    a[:, -2:] = 0
    v *= wx
    a[:, 2:] += v[:, :-2]
    b = buf[0, :k]  # rows, reusing the first buffer (v has been consumed)
    np.multiply(a, 1 - wy, out=b[:, :L])
    b[:, L:] = 0
    a *= wy
    b[:, 2 * n :] += a
    return b.view(np.complex64).reshape(k, n, n)


def reassemble(
    patches: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    shape: tuple[int, int],
    *,
    channels_last: bool | None = None,
    threshold: float = 1e-3,
    return_weights: bool = False,
    chunk_size: int | None = None,
    weight: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Stitch patches onto a canvas by bilinear splatting (§9), the adjoint of extraction.

    Parameters
    ----------
    patches : ndarray of shape (P, N, N), (B, C, N, N) or (B, N, N, C), complex
        Patches, each centred on its position as in :func:`extract_patches`.
    x, y : ndarray of shape (P,) or (B, C)
        Patch centres in object pixels; x = column, y = row. Member c of group b is flat patch b·C + c.
    shape : (H, W)
        Canvas shape, normally the object's.
    channels_last : bool, optional
        Layout of 4-D patches; inferred from the shapes (and C = x.shape[1]) when unambiguous.
    threshold : float
        Canvas pixels whose summed weight is at most this are set to 0.
    return_weights : bool
        Also return the summed weights.
    chunk_size : int, optional
        Patches splatted at once; by default as in :func:`extract_patches`.
    weight : ndarray of shape (N, N), optional
        A per-pixel weight of every patch, e.g. the probe intensity |P|²: the canvas is
        then the weighted mean Σ splat(weight · patch) / Σ splat(weight), in which patch
        pixels the probe barely lit count little. Default: all ones.

    Returns
    -------
    canvas : ndarray of shape (H, W), complex64
        Σ splatted values / Σ weights where the weights exceed ``threshold``, else 0
        (accumulated in single precision).
    weights : ndarray of shape (H, W), float32
        Summed bilinear weights (of ``weight`` when given); only with ``return_weights=True``.
    """
    patches = np.asarray(patches)
    x, y = _check_positions(x, y)
    if np.ndim(shape) != 1 or len(shape) != 2:
        raise ParameterError(f"shape must be (H, W), got {shape!r}")
    H, W = (_check_int(v, "shape") for v in shape)
    view, C = _grouped_view(patches, x, channels_last)
    x, y = x.ravel(), y.ravel()
    N, P = view.shape[-1], x.size
    n, ar, chunk = N + 1, np.arange(N + 1), _chunk(chunk_size, N)
    acc = np.zeros(H * W, np.complex64)
    wsum = np.zeros(H * W, np.float32)
    if weight is not None:
        weight = np.asarray(weight, np.float32)
        if weight.shape != (N, N):
            raise ParameterError(f"weight must have the patches' shape ({N}, {N}), got {weight.shape}")
    buf = np.empty((2, min(chunk, P), n * 2 * n), np.float32)
    weight_buf = None if weight is None else np.empty_like(buf)
    for s in range(0, P, chunk):
        sel = np.arange(s, min(s + chunk, P))
        val = view[sel // C, sel % C]
        ry, fy = _split(y[sel], N)
        cx, fx = _split(x[sel], N)
        if weight is None:
            blk = _splat(val, fy, fx, buf)  # (k, n, n) as if the object extended everywhere
            wy, wx = np.ones((sel.size, n), np.float32), np.ones((sel.size, n), np.float32)
            wy[:, 0], wy[:, N], wx[:, 0], wx[:, N] = 1 - fy, fy, 1 - fx, fx
            wblk = wy[:, :, None] * wx[:, None, :]  # the splat of ones
        else:
            blk = _splat(val * weight, fy, fx, buf)
            wblk = _splat(np.broadcast_to(weight, val.shape), fy, fx, weight_buf).real  # a view; reshape below copies it
        rows, cols = ry[:, None] + ar, cx[:, None] + ar
        rin, cin = (rows >= 0) & (rows < H), (cols >= 0) & (cols < W)
        if not (rin.all() and cin.all()):  # drop what falls outside the canvas
            outside = ~(rin[:, :, None] & cin[:, None, :])
            blk[outside] = 0
            wblk[outside] = 0
            rows, cols = np.clip(rows, 0, H - 1), np.clip(cols, 0, W - 1)
        idx = ((rows * W)[:, :, None] + cols[:, None, :]).ravel()
        np.add.at(acc, idx, blk.reshape(-1))
        np.add.at(wsum, idx, wblk.reshape(-1))
    good = wsum > threshold
    canvas = np.zeros(H * W, np.complex64)
    canvas[good] = acc[good] / wsum[good]
    canvas, wsum = canvas.reshape(H, W), wsum.reshape(H, W)
    return (canvas, wsum) if return_weights else canvas
