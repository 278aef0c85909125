"""Fused projections for the compiled runner: q/k/v as one GEMM, gate/up as one GEMM.

At batch 1 a decoder layer's projections are memory-bound GEMVs so small that kernel latency, not
weight bandwidth, sets their cost. Profiled on an H200 (Qwen2.5-Coder-1.5B, one token, CUDA graphs):
q, k and v took 6.8 + 4.9 + 4.9 us per layer for 6.3 MB of weights, gate and up 9.9 + 9.9 us for
55 MB. Reading each group's weights in one GEMM removes three kernels per layer and their tails.

transformers' attention and MLP forwards call `q_proj`, `k_proj`, `v_proj` (and `gate_proj`, `up_proj`)
in that order on the same input, so `fused(model)` swaps in, for the duration of a forward:
- on the first projection, a `FusedProjection` that runs the concatenated weight once, returns its
  own slice and hands the others to
- `StashedProjection`s on the later ones, which return the slice left for them.
The original modules come back on exit, so eager forwards, transformers' own `generate` baselines and
any code that reads the weights see the model exactly as loaded. A CUDA graph captured inside the
context keeps replaying the fused kernels after it. The fused weights are built once per model.

Only modules that match the expected layout are fused (no LoRA wrappers, equal input sizes, bias on
all or none); anything else is left alone, so a model we have not seen just runs unfused.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("mlp", ("gate_proj", "up_proj")))


class StashedProjection(nn.Module):
    """Returns what the group's `FusedProjection` computed for it (the input is the same tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, self.value = self.value, None
        assert value is not None, "fused projection called out of order"
        return value


class FusedProjection(nn.Module):
    """One GEMM over the concatenated weights; returns the first slice and stashes the rest."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, sizes: list[int]) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.sizes = sizes
        self.later = [StashedProjection() for _ in sizes[1:]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, *rest = torch.nn.functional.linear(x, self.weight, self.bias).split(self.sizes, dim=-1)
        for stash, part in zip(self.later, rest):
            stash.value = part
        return first


def _fusable(linears: list[Any]) -> bool:
    if not all(type(m) is nn.Linear for m in linears):
        return False
    if len({m.in_features for m in linears}) != 1:
        return False
    return len({m.bias is None for m in linears}) == 1


@torch.no_grad()
def build_fusions(model: Any) -> list[tuple[Any, tuple[str, ...], list[nn.Module]]]:
    """(parent module, names, replacement modules) for every fusable group; weights concatenated once."""
    plan = []
    for module in model.modules():
        for child, names in GROUPS:
            parent = getattr(module, child, None)
            if parent is None or not all(isinstance(getattr(parent, n, None), nn.Module) for n in names):
                continue
            if any(p is parent for p, _, _ in plan):
                continue
            linears = [getattr(parent, n) for n in names]
            if not _fusable(linears):
                continue
            weight = torch.cat([m.weight for m in linears], dim=0)
            bias = None if linears[0].bias is None else torch.cat([m.bias for m in linears], dim=0)
            fused = FusedProjection(weight, bias, [m.out_features for m in linears])
            plan.append((parent, names, [fused, *fused.later]))
    return plan


@contextmanager
def fused(plan: list[tuple[Any, tuple[str, ...], list[nn.Module]]]):
    """Swap the fused modules in for the duration of the block, then restore the originals."""
    saved = []
    try:
        for parent, names, replacements in plan:
            saved.append((parent, names, [getattr(parent, n) for n in names]))
            for name, replacement in zip(names, replacements):
                setattr(parent, name, replacement)
        yield
    finally:
        for parent, names, originals in saved:
            for name, original in zip(names, originals):
                setattr(parent, name, original)
