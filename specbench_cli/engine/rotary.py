"""Rotary embeddings read from a table in the compiled runner's graph forwards.

transformers computes each forward's cos/sin from the positions (an outer product with the inverse
frequencies, then cos and sin), once per forward; torch.compile then recomputes them inside every
layer's rotary kernel instead of reading them, so each of the 28 layers of Qwen2.5-1.5B evaluated cos and sin
for every query and key element. Those kernels grew from 1.9 to 4 us per layer between 1 and 96
inputs on an H200 (bench/results/2026-12-03-h200-session7/profile_step.json: 47 + 33 us per forward
at 1 input, 114 + 93 us at 96), a fifth of what a tree forward costs over a one-token one.

`RotaryTable` holds the cos/sin of every position of the static cache, computed once by the model's
own rotary module (so every RoPE variant with fixed frequencies is honoured), and a forward gathers
its rows. Each entry is an element-wise function of one position, so the table holds exactly what the
module returns for that position. Variants whose frequencies depend on the sequence length
(`dynamic`, `longrope`) keep the module. Swapped in like the fused projections (fusion.py): only
for graph forwards, the original back on exit.

Measured on an H200 with the table (bench/results/2026-12-03-h200-session10/profile_forward.json,
random weights of Qwen2.5-1.5B's shape, 1,000 live slots): the two rotary kernels take 44 + 36 us per
forward at 1 input and 52 + 48 us at 96.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class RotaryTable(nn.Module):
    """`forward(x, position_ids) -> (cos, sin)` of a transformers rotary module, from a table."""

    def __init__(self, module: nn.Module, length: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        with torch.no_grad():
            probe = torch.zeros(1, dtype=dtype, device=device)  # the module reads x's dtype and device only
            cos, sin = module(probe, torch.arange(length, device=device)[None])
        self.register_buffer("cos", cos[0].contiguous(), persistent=False)
        self.register_buffer("sin", sin[0].contiguous(), persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Clamped: a pad's position past the table must never index out of bounds inside a graph.
        at = position_ids.clamp(0, self.cos.shape[0] - 1)
        return self.cos[at], self.sin[at]


def fixed_frequencies(module: nn.Module) -> bool:
    """A rotary module whose output depends on the position alone (not on the sequence length)."""
    rope_type = getattr(module, "rope_type", None)
    return (
        isinstance(rope_type, str)
        and "dynamic" not in rope_type
        and rope_type != "longrope"
        and hasattr(module, "inv_freq")
    )


def build_rotary_tables(
    model: Any, length: int, dtype: torch.dtype, device: torch.device
) -> list[tuple[nn.Module, RotaryTable]]:
    """(parent module, table) for every `rotary_emb` child with fixed frequencies."""
    plan = []
    for parent in model.modules():
        module = getattr(parent, "rotary_emb", None)
        if isinstance(module, nn.Module) and fixed_frequencies(module):
            plan.append((parent, RotaryTable(module, length, dtype, device)))
    return plan


@contextmanager
def rotary_tables(plan: list[tuple[nn.Module, RotaryTable]]):
    """Swap the tables in for the duration of the block, then restore the modules."""
    saved = []
    try:
        for parent, table in plan:
            saved.append((parent, parent.rotary_emb))
            parent.rotary_emb = table
        yield
    finally:
        for parent, module in saved:
            parent.rotary_emb = module
