"""Tests of sub-pixel patch extraction and reassembly (contract §4 and §9)."""

import numpy as np
import pytest

from ptychodata.patches import extract_patches, reassemble


def random_object(rng, shape=(40, 50)):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def ramp(shape=(96, 112)):
    """A complex object linear in x (column) and y (row): bilinear interpolation is exact on it."""
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    return (1 + 0.5 * cols + 0.25 * rows + 1j * (3 - 0.125 * cols + 0.75 * rows)).astype(np.complex64)


def reference(obj, x, y, N):
    """Per-patch, per-neighbour bilinear extraction from the zero-extended object (the contract's words)."""
    H, W = obj.shape
    out = np.zeros((len(x), N, N), np.complex128)
    offsets = np.arange(N) - N // 2
    for p in range(len(x)):
        for dy, dx in [(0, 0), (0, 1), (1, 0), (1, 1)]:
            yy, xx = y[p] + offsets[:, None], x[p] + offsets[None, :]
            r, c = np.floor(yy).astype(int) + dy, np.floor(xx).astype(int) + dx
            weight = (1 - abs(yy - r)) * (1 - abs(xx - c))  # 1 - f or f along each axis
            inside = (r >= 0) & (r < H) & (c >= 0) & (c < W)
            out[p] += np.where(inside, weight * obj[np.clip(r, 0, H - 1), np.clip(c, 0, W - 1)], 0)
    return out


def test_integer_positions_equal_slicing(rng):
    obj = random_object(rng)
    N = 8
    x, y = np.array([4, 20, 45, 0]), np.array([4, 30, 35, 39])
    patches = extract_patches(obj, x, y, N)
    assert patches.shape == (4, N, N) and patches.dtype == np.complex64
    padded = np.pad(obj, N)
    for p in range(4):
        r0, c0 = y[p] - N // 2 + N, x[p] - N // 2 + N
        np.testing.assert_array_equal(patches[p], padded[r0 : r0 + N, c0 : c0 + N])


@pytest.mark.parametrize("N", [7, 8])
def test_subpixel_matches_reference_including_border(rng, N):
    obj = random_object(rng)
    x = np.concatenate([rng.uniform(-6, 56, 60), [-30.5, 12.25]])  # some cross the border, one is outside
    y = np.concatenate([rng.uniform(-6, 46, 60), [10.0, 80.75]])
    patches = extract_patches(obj, x, y, N)
    np.testing.assert_allclose(patches, reference(obj, x, y, N), atol=2e-6)
    assert not patches[-2:].any()


def test_object_smaller_than_patch(rng):
    obj = random_object(rng, (5, 6))
    x, y = rng.uniform(-2, 7, 9), rng.uniform(-2, 6, 9)
    np.testing.assert_allclose(extract_patches(obj, x, y, 8), reference(obj, x, y, 8), atol=2e-6)


def test_real_and_complex128_objects(rng):
    obj = random_object(rng)
    x, y = rng.uniform(0, 50, 10), rng.uniform(0, 40, 10)
    expected = extract_patches(obj, x, y, 6)
    np.testing.assert_allclose(extract_patches(obj.astype(np.complex128), x, y, 6), expected, atol=1e-6)
    real = extract_patches(obj.real, x, y, 6)
    assert real.dtype == np.complex64
    np.testing.assert_allclose(real, expected.real, atol=1e-6)


def test_half_pixel_shift_of_ramp_gives_midpoints():
    obj = ramp()
    N = 16
    x, y = np.array([30.5, 40.0]), np.array([20.5, 50.5])
    patches = extract_patches(obj, x, y, N)
    rows, cols = np.mgrid[:N, :N] - N // 2
    for p in range(2):
        yy, xx = y[p] + rows, x[p] + cols
        expected = 1 + 0.5 * xx + 0.25 * yy + 1j * (3 - 0.125 * xx + 0.75 * yy)
        np.testing.assert_allclose(patches[p], expected, rtol=1e-6)
    # the midpoint of the four pixels around the centre of the first patch
    centre = obj[20:22, 30:32].mean()
    np.testing.assert_allclose(patches[0, N // 2, N // 2], centre, rtol=1e-6)


def test_out_writes_into_channels_last_slice(rng):
    obj = random_object(rng)
    B, C, N = 5, 4, 6
    x, y = rng.uniform(-3, 53, (B, C)), rng.uniform(-3, 43, (B, C))
    Y = np.zeros((B, N, N, C), np.complex64)
    for c in range(C):
        returned = extract_patches(obj, x[:, c], y[:, c], N, out=Y[..., c], chunk_size=2)
        assert np.shares_memory(returned, Y)
    flat = extract_patches(obj, x.ravel(), y.ravel(), N).reshape(B, C, N, N)
    np.testing.assert_array_equal(np.moveaxis(Y, 3, 1), flat)
    wide = np.zeros((B * C, N, N), np.complex128)
    extract_patches(obj, x.ravel(), y.ravel(), N, out=wide)
    np.testing.assert_array_equal(wide, flat.reshape(-1, N, N))


def test_chunk_size_does_not_change_results(rng):
    obj = random_object(rng)
    x, y = rng.uniform(-5, 55, 37), rng.uniform(-5, 45, 37)
    full = extract_patches(obj, x, y, 8)
    for chunk in (1, 3, 36, 1000):
        np.testing.assert_array_equal(extract_patches(obj, x, y, 8, chunk_size=chunk), full)
    canvas = reassemble(full, x, y, obj.shape)
    for chunk in (1, 5, 1000):
        np.testing.assert_allclose(reassemble(full, x, y, obj.shape, chunk_size=chunk), canvas, atol=1e-5)


def test_reassemble_is_the_adjoint_of_extract(rng):
    """<extract(o), v> = <o, splat(v)>, with splat(v) = canvas · weights."""
    obj = random_object(rng)
    x, y = rng.uniform(-5, 55, 30), rng.uniform(-5, 45, 30)
    v = rng.standard_normal((30, 7, 7)) + 1j * rng.standard_normal((30, 7, 7))
    canvas, weights = reassemble(v, x, y, obj.shape, threshold=0, return_weights=True)
    assert canvas.dtype == np.complex64 and weights.shape == obj.shape
    np.testing.assert_allclose(
        np.vdot(canvas * weights, obj), np.vdot(v, extract_patches(obj, x, y, 7)), rtol=1e-5
    )
    ones = reassemble(np.ones((30, 7, 7)), x, y, obj.shape, threshold=0, return_weights=True)[1]
    np.testing.assert_allclose(weights, ones)
    np.testing.assert_allclose(
        weights.sum(), extract_patches(np.ones(obj.shape), x, y, 7).real.sum(), rtol=1e-5
    )


def dense_scan(rng, shape, N, subpixel=True):
    """Positions on a grid of step N/4 over the object, with random sub-pixel offsets."""
    gy, gx = np.mgrid[0 : shape[0] : N // 4, 0 : shape[1] : N // 4].astype(np.float64)
    if subpixel:
        gx, gy = gx + rng.uniform(0, 1, gx.shape), gy + rng.uniform(0, 1, gy.shape)
    return gx.ravel(), gy.ravel()


def stitch(obj, x, y, N):
    """reassemble(extract(obj)) and the covered interior (weight > 1, N pixels from the edges)."""
    canvas, weights = reassemble(extract_patches(obj, x, y, N), x, y, obj.shape, return_weights=True)
    away = np.zeros(obj.shape, bool)
    away[N:-N, N:-N] = True
    assert (weights > 1)[away].all()
    assert not canvas[weights <= 1e-3].any()
    return canvas, away


def test_reassemble_of_extract_at_integer_positions_returns_the_object(rng):
    obj, N = random_object(rng, (80, 96)), 16
    x, y = dense_scan(rng, obj.shape, N, subpixel=False)
    canvas, inner = stitch(obj, x, y, N)
    np.testing.assert_allclose(canvas[inner], obj[inner], rtol=1e-5)


def test_reassemble_of_extract_of_a_constant_is_exact(rng):
    obj, N = np.full((80, 96), 2 - 1j, np.complex64), 16
    x, y = dense_scan(rng, obj.shape, N)
    canvas, inner = stitch(obj, x, y, N)
    np.testing.assert_allclose(canvas[inner], obj[inner], rtol=1e-5)


def gaussian_window(N, sigma):
    r = np.arange(N) - N // 2
    return np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2)).astype(np.float32)


def test_weighted_reassemble_is_the_weighted_mean(rng):
    obj, N = random_object(rng, (80, 96)), 16
    x, y = dense_scan(rng, obj.shape, N)  # sub-pixel positions, patches crossing the border
    patches = extract_patches(obj, x, y, N)
    window = gaussian_window(N, 3.0)
    canvas, weights = reassemble(patches, x, y, obj.shape, weight=window, threshold=1e-6, return_weights=True)
    # Σ splat(w·p) / Σ splat(w) from two unweighted reassemblies over the same positions
    numerator, count = reassemble(patches * window, x, y, obj.shape, threshold=0, return_weights=True)
    denominator = reassemble(np.broadcast_to(window, patches.shape).astype(np.complex64), x, y, obj.shape,
                             threshold=0).real
    np.testing.assert_allclose(weights, denominator * count, rtol=1e-4, atol=1e-6)
    lit = weights > 1e-6
    np.testing.assert_allclose(canvas[lit], (numerator / denominator)[lit], rtol=1e-3, atol=1e-4)
    assert not canvas[~lit].any()
    # at integer positions a weighted mean of copies of the object is the object
    xi, yi = dense_scan(rng, obj.shape, N, subpixel=False)
    exact, lit = reassemble(extract_patches(obj, xi, yi, N), xi, yi, obj.shape, weight=window, return_weights=True)
    np.testing.assert_allclose(exact[lit > 0.5], obj[lit > 0.5], rtol=1e-4)
    # ones as the weight is the unweighted reassembly
    np.testing.assert_allclose(reassemble(patches, x, y, obj.shape, weight=np.ones((N, N))),
                               reassemble(patches, x, y, obj.shape), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="weight must have"):
        reassemble(patches, x, y, obj.shape, weight=np.ones((N, N + 1)))


@pytest.mark.parametrize("smooth", [True, False])
def test_reassemble_of_extract_is_within_interpolation_error(rng, smooth):
    """Sub-pixel: each canvas pixel is a convex mix of the object over its 3×3 neighbourhood."""
    rows, cols = np.mgrid[:80, :96]
    if smooth:
        obj = np.exp(-((rows - 40) ** 2 + (cols - 44) ** 2) / 2000 + 1j * cols / 20).astype(np.complex64)
    else:
        obj = random_object(rng, (80, 96))
    x, y = dense_scan(rng, obj.shape, 16)
    canvas, inner = stitch(obj, x, y, 16)
    padded = np.pad(obj, 1, mode="edge")
    spread = np.max(
        [np.abs(padded[1 + dy : 81 + dy, 1 + dx : 97 + dx] - obj) for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
        axis=0,
    )
    error = np.abs(canvas - obj)[inner]
    assert (error <= spread[inner] + 1e-5).all()
    if smooth:  # first-order interpolation error: well under the pixel-to-pixel variation
        assert error.max() < 0.1 * spread[inner].max() and error.mean() < 0.05 * spread[inner].mean()


def test_grouped_layouts_give_the_same_canvas(rng):
    obj = random_object(rng)
    B, C, N = 6, 4, 8
    x, y = rng.uniform(0, 50, (B, C)), rng.uniform(0, 40, (B, C))
    flat = extract_patches(obj, x.ravel(), y.ravel(), N)
    first = flat.reshape(B, C, N, N)
    last = np.ascontiguousarray(np.moveaxis(first, 1, 3))
    expected = reassemble(flat, x.ravel(), y.ravel(), obj.shape)
    np.testing.assert_array_equal(reassemble(first, x, y, obj.shape), expected)
    np.testing.assert_array_equal(reassemble(last, x, y, obj.shape), expected)
    np.testing.assert_array_equal(
        reassemble(last, x.ravel(), y.ravel(), obj.shape, channels_last=True), expected
    )


def test_ambiguous_layout_needs_channels_last(rng):
    x, y = rng.uniform(0, 20, (2, 4)), rng.uniform(0, 20, (2, 4))
    patches = np.ones((2, 4, 4, 4), np.complex64)
    with pytest.raises(ValueError, match="channels_last"):
        reassemble(patches, x, y, (20, 20))
    a = reassemble(patches, x, y, (20, 20), channels_last=True)
    np.testing.assert_array_equal(a, reassemble(patches, x, y, (20, 20), channels_last=False))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"obj": np.zeros(10, np.complex64)},
            r"obj must be a non-empty 2-D \(H, W\) array, got shape \(10,\)",
        ),
        ({"obj": np.zeros((4, 4), bool)}, "obj must be numeric"),
        ({"x": np.zeros(3)}, r"x and y must have the same shape, got x \(3,\) and y \(5,\)"),
        ({"x": np.zeros((5, 1)), "y": np.zeros((5, 1))}, r"x and y must have shape \(P,\)"),
        ({"x": np.array([0, 1, np.nan, 3, 4])}, "x and y must be finite"),
        ({"N": 0}, "N must be an integer >= 1"),
        ({"N": 4.0}, "N must be an integer"),
        (
            {"out": np.zeros((5, 4, 5), np.complex64)},
            r"out must have shape \(P, N, N\) = \(5, 4, 4\), got \(5, 4, 5\)",
        ),
        ({"out": np.zeros((5, 4, 4), np.float32)}, "out must be a writable complex array"),
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1"),
    ],
)
def test_extract_rejects_bad_arguments(kwargs, match):
    args = {"obj": np.zeros((10, 10), np.complex64), "x": np.zeros(5), "y": np.zeros(5), "N": 4} | kwargs
    with pytest.raises(ValueError, match=match):
        extract_patches(args.pop("obj"), args.pop("x"), args.pop("y"), args.pop("N"), **args)


@pytest.mark.parametrize(
    "patches, xy_shape, kwargs, match",
    [
        ((5, 4, 3), (5,), {}, r"patches \(P, N, N\) need x, y of shape \(P,\)"),
        ((5, 4, 4), (6,), {}, r"need x, y of shape \(P,\); got patches \(5, 4, 4\), x \(6,\)"),
        ((5, 4), (5,), {}, r"patches must be \(P, N, N\), \(B, C, N, N\) or \(B, N, N, C\), got \(5, 4\)"),
        ((2, 3, 4, 4), (2, 5), {}, r"patches must be \(B, C, N, N\) with C = x.shape\[1\]"),
        ((2, 3, 4, 4), (2, 3), {"channels_last": True}, r"patches must be \(B, N, N, C\)"),
        ((2, 3, 4, 4), (7,), {}, r"x and y must have shape \(B, C\) = \(2, 3\)"),
        ((5, 4, 4), (5,), {"shape": (10,)}, r"shape must be \(H, W\)"),
        ((5, 4, 4), (5,), {"shape": (10, 0)}, "shape must be an integer >= 1"),
    ],
)
def test_reassemble_rejects_bad_arguments(patches, xy_shape, kwargs, match):
    shape = kwargs.pop("shape", (10, 10))
    with pytest.raises(ValueError, match=match):
        reassemble(np.zeros(patches, np.complex64), np.zeros(xy_shape), np.zeros(xy_shape), shape, **kwargs)
