"""Train a physics-informed network on your own measured scan, without ground truth.

The way PtychoPINN trains: a network maps a group's measured amplitudes to object patches; the
patches times the probe, propagated to the far field, must give back the measured amplitudes.
Nothing else is needed (no object, no labels), so it trains on any scan ``ptychodata.prepare``
reads: CXI, ptychodus HDF5 or NPZ, tike, PtychoNN, PtychoPINN ``.npz``, or any ``.npz``/HDF5
through ``--key``.

What it does
------------
1. ``ptychodata.prepare`` reads the file with the reading options given on the command line
   (the same flags as ``ptychodata prepare``: ``--key``, ``--crop``, ``--bin``, ``--amplitude``,
   ``--position-unit``, ...) and groups it (gridsize 2: C = 4 neighbouring patterns per group);
   ``store.split(0.1, by="region")`` holds out tiles of the scan for a validation loss.
2. A small U-Net maps a group's normalised amplitudes X (B, C, N, N) to C complex object patches.
   The patches are averaged into one object per group where they overlap (the members'
   ``coords_relative`` place them), each member's patch is cut back out, multiplied by the
   file's probe and propagated: predicted X = |fftshift(fft2(probe · patch))|, the probe scaled
   once so that a transparent object gives the measured mean energy.
3. The loss compares the prediction with the measurement: Poisson negative log-likelihood of
   the counts (counts = (X / x_scale)², the default when the file held counts) or the mean
   absolute error of the amplitudes (``--loss amplitude``, the only choice for amplitude data).
   Pixels a bad-pixel mask marks are left out.
4. The trained network predicts every group's patches; ``ptychodata.reassemble`` stitches them
   (weighted by the probe's intensity) into the reconstruction, saved as a PNG beside the loss
   curve.

A reconstruction from patterns alone is defined up to a constant phase, and the network sees one
group at a time, so each group's phase may sit at its own offset and the stitched phase lacks its
slowest variations. On the shipped Siemens star, a nearly transparent object, the spokes show in
the phase; the amplitude carries little contrast.

Run
---
    python examples/train_own_file.py           # the shipped tike Siemens star: see the time below
    python examples/train_own_file.py scan.cxi --bin 2 --epochs 30 --out scan.png
    python examples/train_own_file.py beamline.h5 --key diffraction=/entry/data \\
        --key xcoords=/entry/x --key ycoords=/entry/y --position-unit m --pixel-size 1e-8
    python examples/train_own_file.py scan.h5 --device cuda --epochs 200   # GPU-resident batches

Default input: ``tests/data/tike_siemens_star/siemens-star-small.npz.bz2``, 516 measured
far-field patterns of a Siemens star (APS Velociprobe, from tike's test data), 128×128 counts
with a probe, read with ``--bin 2`` (the example's default) to N = 64.

Time with the defaults (10 epochs), measured: 75 s on a quiet 2-core AMD EPYC VM (epochs of
6 s), 55 s on 2 cores of a Xeon host (``taskset -c 0,1``, ``OMP_NUM_THREADS=2``; epochs of 3-5 s),
22 s on one H200 with ``--device cuda`` (100 epochs there: 53 s). The training loss falls from
38 to 24 over the 10 epochs. Where other jobs share the cores it takes longer (163 s on the same VM
at a load average of 2 to 4): see ``docs/examples.md``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

import ptychodata
import ptychodata.torch as ptychodata_torch
from ptychodata.io import LoadOptions, load_option_flags
from ptychodata.simulate import FFT_NORM  # `ptychodata.simulate` itself is the function

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "tike_siemens_star" / "siemens-star-small.npz.bz2"


# --------------------------------------------------------------------------- the network
def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
    )  # fmt: skip


class TinyUNet(nn.Module):
    """X (B, C, N, N) -> complex patches (B, C, N, N): a three-level U-Net.

    The map from a diffraction pattern to its object patch is non-local; the pooled levels give
    every output pixel a view of the whole pattern.
    """

    def __init__(self, C: int, width: int):
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
        amplitude = nn.functional.softplus(amplitude_raw + 0.5)  # about 1 at the start: a clear object
        phase = math.pi * torch.tanh(phase_raw)
        return torch.polar(amplitude, phase)


# --------------------------------------------------------------------------- the physics
def shift(images: torch.Tensor, shift_xy: torch.Tensor) -> torch.Tensor:
    """Move the content of complex ``images`` (..., H, W) by ``shift_xy`` (..., 2) pixels (x, y).

    Result(r) = images(r - shift), bilinear, zero outside (``grid_sample``).
    """
    H, W = images.shape[-2:]
    lead = torch.broadcast_shapes(images.shape[:-2], shift_xy.shape[:-1])
    flat = images.expand(*lead, H, W).reshape(-1, H, W)
    d = shift_xy.expand(*lead, 2).reshape(-1, 2, 1, 1).to(torch.float32)
    rows = torch.arange(H, dtype=torch.float32, device=images.device)[:, None]
    cols = torch.arange(W, dtype=torch.float32, device=images.device)[None, :]
    grid = torch.stack(
        torch.broadcast_tensors((cols - d[:, 0]) * (2 / (W - 1)) - 1, (rows - d[:, 1]) * (2 / (H - 1)) - 1),
        dim=-1,
    )
    channels = torch.view_as_real(flat).permute(0, 3, 1, 2)
    moved = nn.functional.grid_sample(channels, grid, mode="bilinear", align_corners=True)
    return torch.view_as_complex(moved.permute(0, 2, 3, 1).contiguous()).reshape(*lead, H, W)


def consistent_patches(patches: torch.Tensor, coords_relative: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """The overlap constraint: one object per group, each member's patch cut back out of it.

    ``coords_relative`` (B, C, 1, 2) is −(p_c − centre): moving patch c by −rel_c puts it in the
    group's frame, by +rel_c back. The group object is the mean of the moved patches weighted by
    the moved probe intensity (where the probe is weak, a patch is unconstrained).
    """
    B, C, N, _ = patches.shape
    pad = N // 4
    rel = coords_relative[:, :, 0, :]
    weight = probe.abs().square()[:, None].expand(B, C, N, N).to(patches.dtype)
    padded = nn.functional.pad(torch.stack([weight * patches, weight]), (pad,) * 4)
    numerator, denominator = shift(padded, -rel).sum(dim=2)
    group_object = numerator / (denominator.real + 1e-6 * denominator.real.amax())
    return shift(group_object[:, None], rel)[..., pad : pad + N, pad : pad + N]


def far_field(patches: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """Predicted amplitudes (B, C, N, N): |fftshift(fft2(probe · patch))| (zero frequency centred)."""
    field = torch.fft.fft2(probe[:, None] * patches, norm=FFT_NORM)
    return torch.fft.fftshift(field, dim=(-2, -1)).abs()


def loss_of(predicted: torch.Tensor, X: torch.Tensor, mask: torch.Tensor | None, kind: str, x_scale: float):
    """Mean loss over the usable pixels: Poisson NLL of the counts, or MAE of the amplitudes."""
    if kind == "poisson":
        # −log P(counts | rate) less its value at rate = counts: 0 for a perfect fit, about 1/2 a
        # pixel where the counts are many and the fit is as good as their noise allows.
        rate = (predicted / x_scale).square()
        counts = (X / x_scale).square()
        per_pixel = rate - counts - counts * (torch.log(rate + 1e-6) - torch.log(counts + 1e-6))
    else:
        per_pixel = (predicted - X).abs()
    if mask is None:
        return per_pixel.mean()
    usable = mask[:, None].expand_as(per_pixel)
    return per_pixel[usable].mean()


# --------------------------------------------------------------------------- reading options
def add_reading_flags(parser: argparse.ArgumentParser) -> None:
    """The reading flags of ``ptychodata prepare``, made from ``ptychodata.io.load_option_flags()``."""
    group = parser.add_argument_group("reading (as ptychodata prepare; see ScanData.load)")
    types = {"int": int, "float": float, "str": str, "path": Path}
    for name, default, flag in load_option_flags():
        if flag.kind == "either":
            group.add_argument(flag.flag, dest=name, action="store_const", const=True, default=default, help=flag.help)
            group.add_argument(flag.off, dest=name, action="store_const", const=False, help=flag.off_help)
        elif flag.kind == "switch":
            group.add_argument(flag.flag, dest=name, action="store_true", default=default, help=flag.help)
        elif flag.kind == "pair":
            group.add_argument(flag.flag, dest=name, nargs=2, type=float, default=default, metavar=flag.metavar)
        elif flag.kind == "keymap":
            group.add_argument(flag.flag, dest=name, action="append", metavar=flag.metavar, help=flag.help)
        elif flag.kind == "npy":
            group.add_argument(flag.flag, dest=name, type=Path, metavar=flag.metavar, help=flag.help)
        else:
            group.add_argument(flag.flag, dest=name, type=types[flag.type], choices=flag.choices, default=default,
                               metavar=flag.metavar, help=flag.help)  # fmt: skip


def reading_options(args: argparse.Namespace) -> dict:
    """The reading options given, as ``prepare(load_options=...)``: only those that differ from the defaults."""
    given = {}
    for name, _default, flag in load_option_flags():
        value = getattr(args, name)
        if flag.kind == "keymap" and value is not None:
            value = dict(item.split("=", 1) for item in value)
        elif flag.kind == "npy" and value is not None:
            value = np.load(value) != 0
        elif flag.kind == "pair" and value is not None:
            value = tuple(value)
        given[name] = value
    return LoadOptions(**given).changed()


# --------------------------------------------------------------------------- training
def run_epoch(model, loader, probe, loss_kind, x_scale, device, optimizer=None) -> float:
    """Mean loss over one pass of ``loader``; trains when an optimizer is given."""
    model.train(optimizer is not None)
    total, count = 0.0, 0
    with torch.set_grad_enabled(optimizer is not None):
        for batch in loader:
            batch = ptychodata_torch.to_device(batch, device)
            X = batch["X"]
            probes = probe.expand(len(X), -1, -1)
            patches = consistent_patches(model(X), batch["coords_relative"], probes)
            loss = loss_of(far_field(patches, probes), X, batch.get("mask"), loss_kind, x_scale)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            total += loss.item() * len(X)
            count += len(X)
    return total / count


@torch.no_grad()
def predict_all(model, store, probe, device, chunk: int = 128) -> np.ndarray:
    """Every group's overlap-consistent patches (B, C, N, N) complex64, in store order."""
    model.eval()
    out = np.empty((len(store), store.C, store.N, store.N), np.complex64)
    for start in range(0, len(store), chunk):
        index = np.arange(start, min(start + chunk, len(store)))
        batch = store.batch(index, reuse=False)
        X = torch.from_numpy(batch["X"]).to(device)
        rel = torch.from_numpy(batch["coords_relative"]).to(device)
        out[index] = consistent_patches(model(X), rel, probe.expand(len(X), -1, -1)).cpu().numpy()
    return out


def save_figure(path: Path, obj, covered, losses, title: str) -> None:
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    amp_ax, phase_ax, loss_ax = fig.subplots(1, 3)
    for ax, image, name, cmap in [
        (amp_ax, np.abs(obj), "amplitude", "gray"),
        (phase_ax, np.angle(obj), "phase (rad)", "gray"),
    ]:
        shown = np.where(covered, image, np.nan)
        vmin, vmax = np.nanpercentile(shown, [1, 99])
        im = ax.imshow(shown, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(f"reconstructed {name}", fontsize=10)
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, shrink=0.8)
    epochs = np.arange(1, len(losses["train"]) + 1)
    loss_ax.plot(epochs, losses["train"], "o-", label="train")
    loss_ax.plot(epochs, losses["val"], "s--", label="validation (held-out tiles)")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    loss_ax.set_title("loss", fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=SAMPLE, help="scan file (default: the shipped tike sample)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=16, help="channels of the first network level")
    parser.add_argument("--loss", choices=["poisson", "amplitude"], default=None,
                        help="default: poisson when the file held counts, else amplitude")  # fmt: skip
    parser.add_argument("--max-groups", type=int, default=None, help="train on at most this many groups")
    parser.add_argument("--out", type=Path, default=Path("train_own_file.png"))
    parser.add_argument("--cache-dir", type=Path, default=None, help="store location (default: a temp dir)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_reading_flags(parser)
    parser.set_defaults(bin=2)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device(args.device)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        config = ptychodata.GroupingConfig(gridsize=2, neighbor_count=6, seed=0, n_groups=args.max_groups)
        with warnings.catch_warnings(record=True) as decisions:  # what reading decided, and why
            warnings.simplefilter("always")
            store = ptychodata.prepare(
                args.path, config, cache_dir=args.cache_dir or tmp, load_options=reading_options(args), progress=False
            )
        for decision in decisions:
            print(f"note: {decision.message}")
        if not store.has_probe:
            parser.error(f"{args.path}: no probe after reading; the forward model needs one (a file with a "
                         "probe, or --estimate-probe)")  # fmt: skip
        metadata = store.info()["experiments"][0]["metadata"]
        held_counts = bool(metadata.get("counts", {}).get("converted"))
        loss_kind = args.loss or ("poisson" if held_counts else "amplitude")
        x_scale = float(store.x_scale[0])
        train, val = store.split(0.1, by="region")
        print(f"{store!r}\n{len(train)} training groups, {len(val)} validation groups; loss {loss_kind}; "
              f"read and prepared in {time.perf_counter() - started:.1f} s")  # fmt: skip

        # The probe, scaled so that a transparent object (patch = 1) gives X's mean energy Σ X² = (N/2)²
        # (the store's normalisation, §5 of the data contract; the FFT keeps the energy).
        probe = torch.from_numpy(np.array(store.probe(0))).to(device)
        probe = probe * (store.N / 2) / float(probe.abs().square().sum().sqrt())

        resident = device.type == "cuda"  # on a GPU the batches are gathered there, from resident frames
        on_device = {"resident": True, "device": device} if resident else {}
        train_loader = ptychodata_torch.make_loader(train, args.batch_size, seed=0, **on_device)
        val_loader = ptychodata_torch.make_loader(val, 128, shuffle=False, **on_device)

        model = TinyUNet(store.C, args.width).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        print(f"model: {sum(p.numel() for p in model.parameters())} weights, device {device}"
              f"{' (GPU-resident batches)' if resident else ''}")  # fmt: skip
        losses = {"train": [], "val": []}
        for epoch in range(args.epochs):
            epoch_started = time.perf_counter()
            train_loader.set_epoch(epoch)
            losses["train"].append(run_epoch(model, train_loader, probe, loss_kind, x_scale, device, optimizer))
            losses["val"].append(run_epoch(model, val_loader, probe, loss_kind, x_scale, device))
            print(f"epoch {epoch + 1}/{args.epochs}  train loss {losses['train'][-1]:.4f}  "
                  f"val loss {losses['val'][-1]:.4f}  ({time.perf_counter() - epoch_started:.1f} s)")  # fmt: skip

        patches = predict_all(model, store, probe, device)
        members = store.groups  # (B, C) pattern indices
        positions = store.positions
        N = store.N
        # Canvas: the scanned area plus half a window on each side; positions shifted into it.
        corner = positions.min(axis=0) - N / 2 - 1
        shape = tuple(int(v) for v in np.ceil(positions.max(axis=0) - corner + N / 2 + 1)[::-1])
        x, y = positions[members, 0] - corner[0], positions[members, 1] - corner[1]
        intensity = probe.abs().square().cpu().numpy()
        obj, weights = ptychodata.reassemble(
            patches, x, y, shape, channels_last=False, weight=intensity, threshold=1e-6 * intensity.max(),
            return_weights=True,
        )
        store.close()

    covered = weights > 0.1 * weights.max()
    save_figure(args.out, obj, covered, losses, f"{args.path.name}: {args.epochs} epochs, loss {loss_kind}")
    print(f"reconstruction {obj.shape[1]}×{obj.shape[0]} px; saved {args.out}; "
          f"total {time.perf_counter() - started:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
