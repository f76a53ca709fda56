"""End to end: a PtychoPINN-sized training step fed by the resident loader, and the loader's share of it.

    python benchmarks/bench_train_step.py [--batches 64,256] [--points 16384] [--epochs 3]

Run from the repository root; the package is imported from the installed one, else from ``src/``.
It makes its own data (random patterns, N 64, gridsize 2, as float32 amplitudes and as uint16
counts) under a temporary directory and removes it.

The model is the size of PtychoPINN's: a U-Net-like CNN (encoder 32-64-128 channels at 64², 32²
and 16², a 256-channel bottleneck at 8², two decoders with skip connections for amplitude and
phase of the C = 4 object patches), then the physics layer (object patch x probe, 2-D FFT,
amplitude) and a mean absolute error against X; Adam; float32 with PyTorch's default TF32
convolutions and cuDNN autotuning. Per batch size and frames encoding it times, after a warm-up
epoch, whole epochs of:

- ``loader + step``: the training loop over ``make_loader(store, B, resident=True)``;
- ``step``: the same number of steps on one batch already on the device (no loader);
- ``loader``: the resident loader alone;
- ``host loader + step``: ``make_loader(store, B)`` (pinned memory, a background thread) with
  ``to_device(batch, "cuda", non_blocking=True)``, for comparison.

The loader's share of the step time is (loader + step - step) / (loader + step); the bound is
5 %. Each figure is the wall time of whole epochs, each synchronized at its end, per step; the four
loops take turns, one epoch each, so a drift of the machine's speed falls on all of them alike.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

try:
    import ptychodata  # noqa: F401
except ImportError:  # a bare checkout on the device machine: use its src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _common import machine
from bench_gpu import build_encoded_store

from ptychodata.torch import make_loader, to_device

SHARE_BOUND = 0.05


class Block(nn.Sequential):
    def __init__(self, inputs: int, outputs: int):
        super().__init__(
            nn.Conv2d(inputs, outputs, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(outputs, outputs, 3, padding=1), nn.ReLU(inplace=True),
        )


class Decoder(nn.Module):
    def __init__(self, widths: list[int], outputs: int):
        super().__init__()
        self.up = nn.ModuleList(nn.ConvTranspose2d(w_in, w_out, 2, stride=2)
                                for w_in, w_out in zip(widths[:0:-1], widths[-2::-1]))
        self.blocks = nn.ModuleList(Block(2 * w, w) for w in widths[-2::-1])
        self.head = nn.Conv2d(widths[0], outputs, 1)

    def forward(self, bottom: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = bottom
        for up, block, skip in zip(self.up, self.blocks, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class PtychoNet(nn.Module):
    """Diffraction amplitudes (B, C, N, N) -> C object patches -> predicted amplitudes."""

    def __init__(self, C: int, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        self.encoder = nn.ModuleList(Block(w_in, w_out) for w_in, w_out in zip((C, *widths[:-1]), widths))
        self.pool = nn.MaxPool2d(2)
        self.amplitude = Decoder(list(widths), C)
        self.phase = Decoder(list(widths), C)

    def forward(self, X: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
        skips = []
        x = X
        for number, block in enumerate(self.encoder):
            x = block(x)
            if number < len(self.encoder) - 1:
                skips.append(x)
                x = self.pool(x)
        amplitude = torch.sigmoid(self.amplitude(x, skips))
        phase = torch.pi * torch.tanh(self.phase(x, skips))
        exit_wave = torch.polar(amplitude, phase) * probe[:, None]
        return torch.fft.fft2(exit_wave, norm="ortho").abs()


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer):
    def step(batch: dict) -> None:
        predicted = model(batch["X"], batch["probe"])
        loss = (predicted - batch["X"]).abs().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(runs: list, epochs: int) -> list[float]:
    """Seconds per step of each of ``runs`` (functions of the epoch that return their number of
    steps), over whole epochs after one warm-up epoch of each, synchronized at each epoch's end;
    the runs take turns, one epoch each, so that a drift of the machine's speed falls on all alike."""
    for run in runs:
        run(0)
    torch.cuda.synchronize()
    seconds, steps = [0.0] * len(runs), [0] * len(runs)
    for epoch in range(1, epochs + 1):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            steps[i] += run(epoch)
            torch.cuda.synchronize()
            seconds[i] += time.perf_counter() - start
    return [total / n for total, n in zip(seconds, steps)]


def bench(args, workdir: Path) -> list[str]:
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    summary = []
    print(f"{'frames':<8} {'batch':>5} | {'loader+step ms':>14} {'step ms':>8} {'loader ms':>9} | "
          f"{'share':>6} {'bound':>6} | {'host loader+step ms':>19} {'share':>6} | {'groups/s':>10}")
    for encoding in args.encodings:
        store = build_encoded_store(workdir, args.points, encoding)
        for batch_size in args.batches:
            torch.manual_seed(0)
            model = PtychoNet(store.C).to(device)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            step = make_step(model, optimizer)
            resident = make_loader(store, batch_size, resident=True, device=device, seed=0, drop_last=True)
            host = make_loader(store, batch_size, seed=0, drop_last=True)
            fixed = next(iter(resident))

            def with_loader(epoch: int, loader=resident) -> int:
                loader.set_epoch(epoch)
                n = 0
                for batch in loader:
                    step(batch)
                    n += 1
                return n

            def step_alone(epoch: int, n=len(resident), batch=fixed) -> int:
                for _ in range(n):
                    step(batch)
                return n

            def loader_alone(epoch: int, loader=resident) -> int:
                loader.set_epoch(epoch)
                return sum(1 for _ in loader)

            def host_loader(epoch: int, loader=host) -> int:
                loader.set_epoch(epoch)
                n = 0
                for batch in loader:
                    step(to_device(batch, device, non_blocking=True))
                    n += 1
                return n

            full, alone, loader, on_host = timed([with_loader, step_alone, loader_alone, host_loader], args.epochs)
            share = (full - alone) / full
            host_share = (on_host - alone) / on_host
            print(f"{encoding:<8} {batch_size:>5} | {full * 1e3:>14.3f} {alone * 1e3:>8.3f} {loader * 1e3:>9.3f} | "
                  f"{share:>6.1%} {SHARE_BOUND:>6.0%} | {on_host * 1e3:>19.3f} {host_share:>6.1%} | "
                  f"{batch_size / full:>10,.0f}", flush=True)
            verdict = "met" if share <= SHARE_BOUND else "NOT met"
            summary.append(f"{encoding} frames, batch {batch_size}: resident loader {share:.1%} of the step "
                           f"(bound <= {SHARE_BOUND:.0%}: {verdict}; loader alone {loader / full:.1%}); "
                           f"host loader {host_share:.1%}")
            del model, optimizer, resident, host, fixed
            torch.cuda.empty_cache()
    n_params = sum(p.numel() for p in PtychoNet(4).parameters())
    print(f"model: PtychoNet, {n_params / 1e6:.2f} M parameters (U-Net-like encoder 32-64-128-256, two decoders, "
          "FFT physics layer), Adam, float32 (TF32 convolutions), cudnn.benchmark")
    print("ms = wall time per step over whole epochs after a warm-up epoch, each synchronized at its end, the four "
          "loops taking turns an epoch each; "
          "share = (loader+step - step) / loader+step; loader = the resident loader alone per batch; "
          "host loader = make_loader(store, B) pinned with a background thread, to_device per batch; "
          "groups/s = training throughput with the resident loader")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="64,256", help="comma-separated batch sizes (default 64,256)")
    parser.add_argument("--points", type=int, default=16384, help="random patterns in each store (default 16384)")
    parser.add_argument("--encodings", default="float32,uint16",
                        help="frames of the stores, comma-separated (default float32,uint16)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per figure (default 3)")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one under /tmp)")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.encodings = [e for e in args.encodings.split(",") if e]
    print(f"machine: {machine()}")
    if not torch.cuda.is_available():
        print("train step: no CUDA: skipped (the bound is for a training step on one GPU)")
        return
    print(f"torch {torch.__version__}; {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}")
    workdir = Path(tempfile.mkdtemp(dir=args.workdir, prefix="ptychodata-bench-train-"))
    start = time.perf_counter()
    try:
        summary = bench(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"total {time.perf_counter() - start:.0f} s")
    print("summary:\n  " + "\n  ".join(summary))


if __name__ == "__main__":
    main()
