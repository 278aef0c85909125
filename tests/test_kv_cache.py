"""The slot cache: layers write where the engine says, and compaction moves every layer's K/V,
whether the layers share one pooled tensor (uniform shapes) or not."""

from __future__ import annotations

import pytest
import torch

from specbench_cli.engine.kv_cache import SlotCache


def filled_cache(head_dims: list[int], max_len: int = 12) -> tuple[SlotCache, list[tuple]]:
    """A cache whose layer i holds random K/V (1 batch, 2 heads, head_dims[i]) in every slot."""
    cache = SlotCache(len(head_dims), max_len)
    cache.slots.write = torch.arange(max_len)
    gen = torch.Generator().manual_seed(0)
    written = []
    for layer, dim in zip(cache.layers, head_dims, strict=True):
        k = torch.randn(1, 2, max_len, dim, generator=gen)
        v = torch.randn(1, 2, max_len, dim, generator=gen)
        layer.update(k, v)
        written.append((k, v))
    return cache, written


@pytest.mark.parametrize("head_dims", [[4, 4, 4], [4, 6, 4]], ids=["pooled", "mixed"])
def test_move_copies_the_chosen_slots_in_every_layer(head_dims):
    cache, written = filled_cache(head_dims)
    assert cache.pool.shared == (len(set(head_dims)) == 1)
    if cache.pool.shared:  # the layers are views of the one tensor that `move` indexes
        assert all(
            layer.keys.data_ptr() == cache.pool.data[i, 0].data_ptr() for i, layer in enumerate(cache.layers)
        )
    src, dst = torch.tensor([7, 9, 11]), torch.tensor([3, 4, 5])
    cache.move(src, dst)
    for layer, (k, v) in zip(cache.layers, written, strict=True):
        want_k, want_v = k.clone(), v.clone()
        want_k[:, :, dst], want_v[:, :, dst] = k[:, :, src], v[:, :, src]
        torch.testing.assert_close(layer.keys, want_k, rtol=0, atol=0)
        torch.testing.assert_close(layer.values, want_v, rtol=0, atol=0)
