"""A static KV cache whose write slots the engine chooses.

transformers' StaticCache appends at its own running counter and ignores the positions we pass
(checked with transformers 5.17-5.23: three calls with the same cache_position wrote three
different slot ranges), which breaks rewinding and tree verification. Here every layer
writes the new keys/values at `slots.write` (a device tensor the runner fills before each forward),
the same design as gpt-fast's KVCache(input_pos), so one captured graph per draft size can replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .compaction import torch_move

if TYPE_CHECKING:
    from .compaction import FusedMove


@dataclass
class Slots:
    write: torch.Tensor | None = None  # (n,) cache slots the current forward writes to
    visible: int | None = None  # expose only slots [0, visible) to attention; None = all (static shapes)
    length: int = 0  # committed tokens (what get_seq_length reports)


class SlotLayer(CacheLayerMixin):
    is_compileable = True
    is_sliding = False

    def __init__(self, slots: Slots, max_len: int):
        super().__init__()
        self.slots = slots
        self.max_len = max_len

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        # Allocated on first use so the shapes, dtype and device come from the model itself.
        b, h, _, dk = key_states.shape
        dv = value_states.shape[-1]
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = torch.zeros(b, h, self.max_len, dk, dtype=key_states.dtype, device=key_states.device)
        self.values = torch.zeros(
            b, h, self.max_len, dv, dtype=value_states.dtype, device=value_states.device
        )
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys.index_copy_(2, self.slots.write, key_states)
        self.values.index_copy_(2, self.slots.write, value_states)
        n = self.slots.visible
        if n is None:
            return self.keys, self.values
        return self.keys[:, :, :n], self.values[:, :, :n]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.max_len, 0

    def get_seq_length(self) -> int:
        return self.slots.length

    def get_max_length(self) -> int:
        return self.max_len


class SlotCache(Cache):
    def __init__(self, num_layers: int, max_len: int):
        self.slots = Slots()
        self.max_len = max_len
        self.fused: FusedMove | None = None  # set by the compiled runner where it can fuse moves
        super().__init__(layers=[SlotLayer(self.slots, max_len) for _ in range(num_layers)])

    def tensors(self) -> list[torch.Tensor]:
        """Every allocated layer's keys and values, in layer order."""
        return [t for layer in self.layers if layer.is_initialized for t in (layer.keys, layer.values)]

    def move(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy the K/V at slots `src` to slots `dst` in every layer (compaction of an accepted path):
        the fused kernels when the runner installed them for moves of this size, else torch ops."""
        if self.fused is not None and len(src) == self.fused.rows:
            self.fused(src, dst)
        else:
            torch_move(self.tensors(), src, dst)
