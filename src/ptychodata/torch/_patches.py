"""Ground-truth patches cut on the device from objects kept there (contract §4)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ptychodata.errors import ParameterError

__all__ = ["PatchExtractor"]


class PatchExtractor(torch.nn.Module):
    """Cut bilinear N×N patches centred on scan positions from objects on a device.

    Matches :func:`ptychodata.extract_patches` to float32 tolerance:
    ``patch[r, q] = O(y + r − N//2, x + q − N//2)``, zero outside the object.

    Parameters
    ----------
    objects : sequence of (H_e, W_e) complex arrays or tensors, one per experiment
    N : int
    positions : (M, 2) float64 array, optional
        Scan positions (x, y) of every pattern in the store, so patches can be asked for
        by pattern index (``nn_indices``).
    max_temp_bytes : int
        Positions are cut in chunks whose temporaries (about 40 bytes per pixel of an
        (N+1)² block) stay below this, so memory does not grow with the number of
        positions (default 1 GiB: about 6 000 positions a chunk at N 64).
    """

    def __init__(self, objects: Any, N: int, positions: Any = None, *, max_temp_bytes: int = 1 << 30):
        super().__init__()
        self.N = int(N)
        self.n_objects = len(objects)
        self.max_temp_bytes = int(max_temp_bytes)
        for e, obj in enumerate(objects):
            self.register_buffer(f"object_{e}", torch.from_numpy(np.array(obj, np.complex64)))
        if positions is not None:
            self.register_buffer("positions", torch.from_numpy(np.array(positions, np.float64)))

    @classmethod
    def from_store(cls, store: Any, device: torch.device | str = "cpu") -> PatchExtractor:
        """Objects, positions and pattern experiments of a store, moved to ``device``."""
        objects = [store.object(e) for e in range(store.n_experiments)]
        extractor = cls(objects, store.N, store.positions)
        extractor.register_buffer("experiment_of", torch.from_numpy(np.array(store.pattern_experiment)))
        return extractor.to(device)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, experiment: int = 0, *, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Patches (P, N, N) complex64 centred on (x, y), tensors of shape (P,), from one
        object; written into ``out`` when given."""
        obj = getattr(self, f"object_{experiment}")
        if out is None:
            out = torch.empty((len(x), self.N, self.N), dtype=torch.complex64, device=obj.device)
        chunk = max(1, self.max_temp_bytes // (40 * (self.N + 1) ** 2))
        for start in range(0, len(x), chunk):
            stop = start + chunk
            out[start:stop] = self._cut(obj, x[start:stop], y[start:stop])
        return out

    def _cut(self, obj: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        H, W = obj.shape
        N = self.N
        x = x.to(obj.device, torch.float64)
        y = y.to(obj.device, torch.float64)
        x0, y0 = torch.floor(x), torch.floor(y)
        fx = (x - x0).to(torch.float32)[:, None, None, None]
        fy = (y - y0).to(torch.float32)[:, None, None, None]
        offsets = torch.arange(N + 1, device=obj.device) - N // 2
        rows = y0.long()[:, None] + offsets  # (P, N+1)
        cols = x0.long()[:, None] + offsets
        inside = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]
        flat = rows.clamp(0, H - 1)[:, :, None] * W + cols.clamp(0, W - 1)[:, None, :]
        block = torch.view_as_real(obj).reshape(-1, 2)[flat] * inside[..., None]  # (P, N+1, N+1, 2)
        along_x = block[:, :, :-1] * (1 - fx) + block[:, :, 1:] * fx
        window = along_x[:, :-1] * (1 - fy) + along_x[:, 1:] * fy
        return torch.view_as_complex(window.contiguous())

    def for_members(self, nn_indices: torch.Tensor) -> torch.Tensor:
        """Y (B, C, N, N) complex64 for the members ``nn_indices`` (B, C) of a batch."""
        if not hasattr(self, "positions"):
            raise ParameterError("this extractor has no positions table; build it with PatchExtractor.from_store")
        flat = nn_indices.reshape(-1).to(self.positions.device)
        out = torch.empty((flat.numel(), self.N, self.N), dtype=torch.complex64, device=self.positions.device)
        experiment_of = self.experiment_of[flat]
        for experiment in range(self.n_objects):
            rows = (experiment_of == experiment).nonzero(as_tuple=True)[0]
            if rows.numel():
                points = flat[rows]
                out[rows] = self(self.positions[points, 0], self.positions[points, 1], experiment)
        return out.reshape(*nn_indices.shape, self.N, self.N)
