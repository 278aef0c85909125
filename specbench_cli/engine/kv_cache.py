"""A static KV cache whose write slots the engine chooses.

transformers' StaticCache appends at its own running counter and ignores the positions we pass
(checked with transformers 5.17-5.23: three calls with the same cache_position wrote three
different slot ranges), which breaks rewinding and tree verification. Here every layer
writes the new keys/values at `slots.write` (a device tensor the runner fills before each forward),
the same design as gpt-fast's KVCache(input_pos), so one captured graph per draft size can replay.

All layers' keys and values are views of one tensor (`KVPool`) when their shapes agree, as they do
in every decoder-only model we run: compacting an accepted path (`move`) is then one gather and one
scatter for the whole model instead of four small kernels per layer. On an H200 the per-layer moves
of Qwen2.5-Coder-1.5B (112 kernels) cost ~0.35 ms a step, as much as a tenth of a tree step
(bench/results/2026-12-03-h200-head-methods: `t_other` 0.42-0.46 ms for tree drafts against 0.08 ms
for chains, whose accepted path needs no move).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


@dataclass
class Slots:
    write: torch.Tensor | None = None  # (n,) cache slots the current forward writes to
    visible: int | None = None  # expose only slots [0, visible) to attention; None = all (static shapes)
    length: int = 0  # committed tokens (what get_seq_length reports)


class KVPool:
    """One (layers, 2, batch, heads, max_len, dim) tensor whose slices are the layers' keys and values.

    Made when the first layer asks (the shapes, dtype and device come from the model itself). A layer
    whose keys or values do not fit that shape gets tensors of its own, and `shared` turns False, so
    `SlotCache.move` falls back to moving layer by layer."""

    def __init__(self, num_layers: int, max_len: int):
        self.num_layers, self.max_len = num_layers, max_len
        self.data: torch.Tensor | None = None
        self.shared = True

    def views(
        self, index: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, _, dk = keys.shape
        k_shape, v_shape = (b, h, self.max_len, dk), (b, h, self.max_len, values.shape[-1])
        fits = k_shape == v_shape and keys.dtype == values.dtype
        if fits and self.data is None:
            self.data = torch.zeros((self.num_layers, 2, *k_shape), dtype=keys.dtype, device=keys.device)
        data = self.data
        if fits and data is not None and data.shape[2:] == k_shape and data.dtype == keys.dtype:
            return data[index, 0], data[index, 1]
        self.shared = False
        return (
            torch.zeros(k_shape, dtype=keys.dtype, device=keys.device),
            torch.zeros(v_shape, dtype=values.dtype, device=values.device),
        )


class SlotLayer(CacheLayerMixin):
    is_compileable = True
    is_sliding = False

    def __init__(self, slots: Slots, max_len: int, pool: KVPool | None = None, index: int = 0):
        super().__init__()
        self.slots = slots
        self.max_len = max_len
        self.pool, self.index = pool or KVPool(1, max_len), index

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys, self.values = self.pool.views(self.index, key_states, value_states)
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
        self.pool = KVPool(num_layers, max_len)
        super().__init__(layers=[SlotLayer(self.slots, max_len, self.pool, i) for i in range(num_layers)])

    def move(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy the K/V at slots `src` to slots `dst` in every layer (compaction of an accepted path)."""
        data = self.pool.data
        if self.pool.shared and data is not None:  # every layer, keys and values: one gather, one scatter
            data.index_copy_(4, dst, data.index_select(4, src))
            return
        for layer in self.layers:
            if layer.is_initialized:
                layer.keys.index_copy_(2, dst, layer.keys.index_select(2, src))
                layer.values.index_copy_(2, dst, layer.values.index_select(2, src))
