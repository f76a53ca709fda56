"""Minimal physics-informed training on a simulated scan (a PtychoPINN-style loop in PyTorch).

What it does
------------
1. ``ptychodata.simulate`` makes a jittered scan with a known probe and object.
2. ``ptychodata.prepare`` groups it (gridsize 2: C = 4 neighbouring patterns per group) into a
   store; ``store.split(0.2, by="region")`` holds out whole tiles of the scan for validation.
3. A tiny CNN maps a group's normalised amplitudes X (B, C, N, N) to C complex object patches.
   It never sees the object: the loss is physics only.

   * Overlap constraint (this is where ``coords_relative`` is used, as in PtychoPINN): the C
     patches of a group are moved into one frame centred on the group centre, averaged with
     probe-intensity weights into a single group object, and each member's patch is cut back
     out of that average. Patches that disagree where they overlap cannot all fit their
     patterns, so the network is pushed to predict one consistent object per group.
   * Forward model: predicted X_c = x_scale · |fftshift(fft2(probe · patch_c, norm="ortho"))|,
     the simulator's own forward model (``FFT_NORM`` of the module ``ptychodata.simulate``)
     times the store's normalisation factor x_scale, so it compares directly with the batch's X.
   * Loss: mean absolute error between predicted and measured normalised amplitudes.

4. After training it predicts patches for every group, stitches them with
   ``ptychodata.reassemble`` (probe-intensity weighted), removes the global phase (a
   reconstruction is only defined up to one), prints the relative error in the scanned area
   and saves a PNG of predicted and true amplitude and phase.

   Expect a low-contrast but recognisable picture after the default four epochs, the phase
   more so than the amplitude. Part of the error cannot train away: the loss sees one group
   at a time, and a group's patterns fix its patches only up to a constant phase, so the
   network cannot know how the mean phase differs from one group's area to the next; the
   stitched phase lacks its slowest variations.

Run
---
    python examples/train_minimal.py                      # about a minute on 2 CPU cores (below)
    python examples/train_minimal.py --epochs 2 --points 200 --N 16 --out /tmp/quick.png
    python examples/train_minimal.py --device cuda --N 64 --points 4096 --epochs 30

The store is built in a temporary directory unless ``--cache-dir`` is given (then a second
run reuses it in milliseconds).

Time with the defaults (2048 points, N 32, 4 epochs), measured: 51 s on a quiet 2-core AMD EPYC
VM (epochs of 9 s), 43 s on 2 cores of a Xeon host (``taskset -c 0,1``, ``OMP_NUM_THREADS=2``).
Where other jobs share the cores it takes several times longer (one epoch took 131 s at a load
average of 5). Training loss 0.048 -> 0.022; relative error in the scanned area 0.31.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

import ptychodata
import ptychodata.torch as ptd_torch
from ptychodata.simulate import FFT_NORM  # `ptychodata.simulate` itself is the function


# --------------------------------------------------------------------------- the network
def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # BatchNorm roughly halves the epochs needed here: without it the net sits for a long time
    # on the "flat object" plateau of the physics loss.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
    )  # fmt: skip


class TinyUNet(nn.Module):
    """X (B, C, N, N) -> complex patches (B, C, N, N): a three-level U-Net, ~10^5 weights.

    Diffraction-to-object is a non-local map; the pooled levels give every output pixel a
    receptive field over the whole pattern.
    """

    def __init__(self, C: int, width: int = 24):
        super().__init__()
        w = width
        self.enc1, self.enc2, self.enc3 = conv_block(C, w), conv_block(w, 2 * w), conv_block(2 * w, 2 * w)
        self.dec2, self.dec1 = conv_block(4 * w, w), conv_block(2 * w, w)
        self.head = nn.Conv2d(w, 2 * C, 1)
        self.pool, self.up = nn.MaxPool2d(2), nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up(e3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up(d2), e1], dim=1))
        amplitude_raw, phase_raw = self.head(d1).chunk(2, dim=1)
        amplitude = nn.functional.softplus(amplitude_raw)  # >= 0, no upper bound
        phase = math.pi * torch.tanh(phase_raw)  # in (-pi, pi)
        return torch.polar(amplitude, phase)


# --------------------------------------------------------------------------- the physics
def shift(images: torch.Tensor, shift_xy: torch.Tensor) -> torch.Tensor:
    """Move the content of complex ``images`` (..., H, W) by ``shift_xy`` (..., 2) pixels (x, y).

    Result(r) = images(r - shift), bilinear, zero outside (``grid_sample``). A local
    interpolation: unlike a Fourier phase ramp it cannot smear values from the unlit,
    unconstrained border of a patch into its middle.
    """
    H, W = images.shape[-2:]
    lead = torch.broadcast_shapes(images.shape[:-2], shift_xy.shape[:-1])
    flat = images.expand(*lead, H, W).reshape(-1, H, W)
    d = shift_xy.expand(*lead, 2).reshape(-1, 2, 1, 1).to(torch.float32)
    rows = torch.arange(H, dtype=torch.float32, device=images.device)[:, None]
    cols = torch.arange(W, dtype=torch.float32, device=images.device)[None, :]
    # Sample the input at (col - dx, row - dy), in grid_sample's [-1, 1] coordinates.
    grid = torch.stack(
        torch.broadcast_tensors((cols - d[:, 0]) * (2 / (W - 1)) - 1, (rows - d[:, 1]) * (2 / (H - 1)) - 1),
        dim=-1,
    )
    channels = torch.view_as_real(flat).permute(0, 3, 1, 2)  # (n, 2, H, W): real, imaginary
    moved = nn.functional.grid_sample(channels, grid, mode="bilinear", align_corners=True)  # zeros outside
    return torch.view_as_complex(moved.permute(0, 2, 3, 1).contiguous()).reshape(*lead, H, W)


def physics_forward(patches: torch.Tensor, batch: dict, x_scale: float) -> torch.Tensor:
    """Predicted normalised amplitudes (B, C, N, N) of a batch from its predicted patches.

    Overlap constraint. Patch c is centred on member c's position p_c; the group frame is
    centred on the group centre. An object point at offset u from p_c sits at u - rel_c from
    the centre, where rel_c = coords_relative[c] = -(p_c - centre). So moving patch c into the
    group frame moves its content by -rel_c, and moving it back out moves it by +rel_c. The
    group object is the average of the moved patches weighted by the moved probe intensity
    |P|^2 (where the probe is weak, the physics says little about a patch); each member's
    patch is then the group object moved back.
    """
    B, C, N, _ = patches.shape
    # The frame reaches 3N/4 from the centre, so a member's lit disc (radius ~N/4 for the
    # simulator's probe) stays inside while |rel_c| < N/2; here |rel_c| is at most ~N/3.
    pad = N // 4
    rel = batch["coords_relative"][:, :, 0, :]  # (B, C, 2), last axis (x, y)
    probe = batch["probe"][:, None]  # (B, 1, N, N), broadcast over C
    weight = probe.abs().square().expand(B, C, N, N).to(patches.dtype)
    padded = nn.functional.pad(torch.stack([weight * patches, weight]), (pad,) * 4)
    numerator, denominator = shift(padded, -rel).sum(dim=2)  # sums over members: (B, N + 2·pad, ...)
    group_object = numerator / (denominator.real + 1e-6)
    members = shift(group_object[:, None], rel)[..., pad : pad + N, pad : pad + N]
    far_field = torch.fft.fftshift(torch.fft.fft2(probe * members, norm=FFT_NORM), dim=(-2, -1))
    return x_scale * far_field.abs()


def amplitude_loss(predicted_X: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    # MAE on amplitudes, as in PtychoPINN's "mae" option: robust, and on the scale of X. For
    # photon-limited data a Poisson NLL on intensities (intensity_scale² · X²) is the
    # statistically right choice; this scan is noise-free unless --nphotons is given.
    return (predicted_X - X).abs().mean()


# --------------------------------------------------------------------------- helpers
def run_epoch(model, loader, x_scale, device, optimizer=None) -> float:
    """Mean loss over one pass of ``loader``; trains when an optimizer is given."""
    model.train(optimizer is not None)
    total, count = 0.0, 0
    with torch.set_grad_enabled(optimizer is not None):
        for batch in loader:
            batch = ptd_torch.to_device(batch, device)
            loss = amplitude_loss(physics_forward(model(batch["X"]), batch, x_scale), batch["X"])
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            total += loss.item() * len(batch["X"])
            count += len(batch["X"])
    return total / count


@torch.no_grad()
def predict_all(model, store, device, chunk: int = 256) -> np.ndarray:
    """Predicted patches (B, C, N, N) complex64 of every group of the store, in store order."""
    model.eval()
    out = np.empty((len(store), store.C, store.N, store.N), np.complex64)
    for start in range(0, len(store), chunk):
        index = np.arange(start, min(start + chunk, len(store)))
        X = torch.from_numpy(store.batch(index)["X"]).to(device)
        out[index] = model(X).cpu().numpy()
    return out


def stitch(patches, x, y, shape, probe) -> tuple[np.ndarray, np.ndarray]:
    """Stitch patches (B, C, N, N) at positions x, y (B, C) into an object; also return Σ |P|².

    The object is the probe-intensity-weighted mean Σ |P|²·patch / Σ |P|², so patch pixels
    the probe never lit (unconstrained by the physics) do not count.
    """
    intensity = np.abs(probe) ** 2
    return ptychodata.reassemble(
        patches, x, y, shape, channels_last=False, weight=intensity, threshold=1e-6 * intensity.max(),
        return_weights=True,
    )


def save_figure(path: Path, truth: np.ndarray, pred: np.ndarray, covered: np.ndarray, error: float) -> None:
    fig = Figure(figsize=(9, 7.5), layout="constrained")
    axes = fig.subplots(2, 2)
    panels = [
        (axes[0, 0], np.abs(truth), "true amplitude", "gray"),
        (axes[0, 1], np.angle(truth), "true phase (rad)", "viridis"),
        (axes[1, 0], np.where(covered, np.abs(pred), np.nan), f"predicted amplitude (rel. error {error:.3f})", "gray"),
        (axes[1, 1], np.where(covered, np.angle(pred), np.nan), "predicted phase (global phase aligned)", "viridis"),
    ]  # fmt: skip
    for ax, image, title, cmap in panels:
        # Each panel spans its own 0.5-99.5 % range in the scanned area: a short training
        # gives a low-contrast prediction, and a shared range would hide what it got right.
        vmin, vmax = np.nanpercentile(np.where(covered, image, np.nan), [0.5, 99.5])
        shown = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.contour(covered, levels=[0.5], colors="tab:orange", linewidths=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
        fig.colorbar(shown, ax=ax, shrink=0.8)
    fig.suptitle("orange: scanned area (well-illuminated pixels)")
    fig.savefig(path, dpi=100)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--points", type=int, default=2048, help="scan points")
    parser.add_argument("--N", type=int, default=32, help="pattern side in pixels")
    parser.add_argument("--nphotons", type=float, default=None, help="photons per pattern (default: none)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=24, help="channels of the first network level")
    parser.add_argument("--out", type=Path, default=Path("train_minimal.png"))
    parser.add_argument("--cache-dir", type=Path, default=None, help="store location (default: a temp dir)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device(args.device)

    # (ignore_cleanup_errors: on Windows the open memory maps of the store block the removal)
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        cache_dir = args.cache_dir if args.cache_dir is not None else tmp
        scan = ptychodata.simulate(
            n_points=args.points, N=args.N, pattern="jittered", nphotons=args.nphotons, seed=0
        )
        config = ptychodata.GroupingConfig(gridsize=2, neighbor_count=6, seed=0)
        store = ptychodata.prepare(scan, config, cache_dir=cache_dir, progress=False)
        train, val = store.split(0.2, by="region")
        x_scale = float(store.grouping.x_scale[0])
        print(f"{store!r}\ntrain groups {len(train)}, val groups {len(val)}, x_scale {x_scale:.4g}")

        train_loader = ptd_torch.make_loader(train, batch_size=args.batch_size, num_workers=0, seed=0)
        val_loader = ptd_torch.make_loader(val, batch_size=256, shuffle=False, num_workers=0)

        # The loss floor: the true patches through the same forward model (0 up to interpolation
        # error when noise-free). A check of the physics and of the coords_relative signs.
        arrays = store.batch(np.arange(min(256, len(store))), with_Y=True, reuse=False)
        sample = ptd_torch.to_device({key: torch.from_numpy(value) for key, value in arrays.items()}, device)
        floor = amplitude_loss(physics_forward(sample["Y"], sample, x_scale), sample["X"]).item()
        print(f"loss of the true patches {floor:.4f}; mean |X| {sample['X'].abs().mean().item():.4f}")

        model = TinyUNet(store.C, args.width).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        print(f"model: {sum(p.numel() for p in model.parameters())} weights, device {device}")
        for epoch in range(args.epochs):
            started = time.perf_counter()
            train_loader.set_epoch(epoch)
            train_loss = run_epoch(model, train_loader, x_scale, device, optimizer)
            val_loss = run_epoch(model, val_loader, x_scale, device)
            seconds = time.perf_counter() - started
            print(f"epoch {epoch + 1}/{args.epochs}  train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
                  f"({seconds:.1f} s)")  # fmt: skip

        # Reconstruct: every group's patches, stitched at the members' positions.
        pred = predict_all(model, store, device)
        members = store.groups  # (B, C) pattern indices, = a batch's nn_indices
        x, y = store.positions[members, 0], store.positions[members, 1]
        truth, probe = np.array(store.object(0)), np.array(store.probe(0))
        obj, illumination = stitch(pred, x, y, truth.shape, probe)

    # Scanned area: pixels lit with at least 10 % of the peak illumination.
    covered = illumination > 0.1 * illumination.max()
    # A reconstruction is defined up to a global phase (and here the scale is physical, but
    # fit it too): the complex scalar a minimising Σ |a·obj - truth|² over the scanned area.
    a = np.vdot(obj[covered], truth[covered]) / np.vdot(obj[covered], obj[covered])
    obj = obj * a
    error = float(np.linalg.norm(obj[covered] - truth[covered]) / np.linalg.norm(truth[covered]))
    print(f"global factor |a| {abs(a):.3f}, phase {np.angle(a):+.3f} rad; "
          f"relative error in the scanned area {error:.3f}")  # fmt: skip
    save_figure(args.out, truth, obj, covered, error)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
