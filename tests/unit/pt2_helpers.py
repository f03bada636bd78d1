"""Tiny `torch.export` programs for the `.pt2` tests: one module, exported with and without a
dynamic batch dimension."""

from __future__ import annotations

from pathlib import Path

import torch


class Scorer(torch.nn.Module):
    """Two inputs, two outputs (returned as a dict): scores and a per-row sum."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, features: torch.Tensor, bias: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scores": torch.relu(self.linear(features)) + bias,
                "total": features.sum(dim=1)}


def eager() -> Scorer:
    return Scorer().eval()


def example(rows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(rows, 4), torch.zeros(rows, 3)


def export(path: Path, dynamic: bool = True, max_rows: int = 16) -> Path:
    """The module saved with torch.export.save; the batch dimension dynamic up to `max_rows`."""
    shapes = None
    if dynamic:
        batch = torch.export.Dim("batch", max=max_rows)
        shapes = {"features": {0: batch}, "bias": {0: batch}}
    with torch.no_grad():
        program = torch.export.export(eager(), example(), dynamic_shapes=shapes)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path
