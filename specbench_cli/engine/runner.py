"""Runs any transformers causal LM over a token tree on top of its own slot cache.

The runner keeps `length` committed tokens in the cache at slots [0, length). A forward writes its n
inputs at slots [length, length + n); `commit(indices)` then keeps the chosen inputs by moving their
K/V down to [length, length + k). Inputs form a tree: input i attends to every committed slot, to its
ancestors among the inputs and to itself, and sits at position `length + depth(i)`.
A prefill is the tree where each input's parent is the one before it.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from .kv_cache import SlotCache


def ancestor_matrix(parents: list[int]) -> np.ndarray:
    """anc[i, j] is True when input j is input i itself or one of its ancestors (parents precede children)."""
    n = len(parents)
    anc = np.zeros((n, n), dtype=bool)
    for i, p in enumerate(parents):
        if p >= 0:
            anc[i] = anc[p]
        anc[i, i] = True
    return anc


def input_depths(parents: list[int]) -> list[int]:
    depth: list[int] = []
    for p in parents:
        depth.append(0 if p < 0 else depth[p] + 1)
    return depth


class ModelRunner:
    def __init__(self, model, max_len: int):
        self.model = model
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.max_len = max_len
        self.num_layers = model.config.get_text_config().num_hidden_layers
        self.cache = SlotCache(self.num_layers, max_len)
        self.length = 0
        params = inspect.signature(model.forward).parameters
        self._takes_logits_to_keep = "logits_to_keep" in params

    def reset(self) -> None:
        self.length = 0
        self.cache.slots.length = 0

    def ensure_capacity(self, needed: int) -> None:
        """Grow the cache (eager mode only) when a prompt plus its budget does not fit."""
        if needed <= self.max_len:
            return
        assert self.length == 0, "grow the cache only between generations"
        self.max_len = max(needed, 2 * self.max_len)
        self.cache = SlotCache(self.num_layers, self.max_len)

    @torch.inference_mode()
    def forward(
        self,
        tokens: list[int],
        parents: list[int] | None = None,
        want_hidden: bool = False,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward over `tokens` (a chain when `parents` is None).

        Returns logits (n, V) in float32 (or (1, V) with last_only) and, with want_hidden, the final
        hidden states (n, H) (last row only with last_only).
        """
        n = len(tokens)
        dev = self.device
        if parents is None:
            depth = torch.arange(n, device=dev)
            visible = torch.ones(n, n, dtype=torch.bool, device=dev).tril_()
        else:
            depth = torch.tensor(input_depths(parents), device=dev)
            visible = torch.from_numpy(ancestor_matrix(parents)).to(dev)
        return self.forward_tree(tokens, self.length + depth, visible, want_hidden, last_only)

    @torch.inference_mode()
    def forward_tree(
        self,
        tokens: list[int],
        positions: torch.Tensor,
        visible: torch.Tensor,
        want_hidden: bool = False,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The primitive under `forward`: inputs placed after m pending (written, uncommitted) slots.

        `visible` is (n, m + n) bool over slots [length, length + m + n): which pending slots and new
        inputs each input attends to (its ancestors and itself); every committed slot is visible.
        A draft tree grown level by level passes the earlier levels as the pending slots.
        """
        n = len(tokens)
        start = self.length + visible.shape[1] - n
        if start + n > self.max_len:
            raise RuntimeError(f"KV cache overflow: {start} + {n} > {self.max_len}")
        dev = self.device
        # Float additive mask: 0 where attention is allowed, the dtype's minimum elsewhere.
        mask = torch.full((1, 1, n, start + n), torch.finfo(self.dtype).min, dtype=self.dtype, device=dev)
        mask[..., : self.length] = 0
        mask[0, 0, :, self.length :].masked_fill_(visible.to(dev), 0)
        slots = self.cache.slots
        slots.write = torch.arange(start, start + n, device=dev)
        slots.visible = start + n
        kwargs = {}
        if last_only and self._takes_logits_to_keep and not want_hidden:
            kwargs["logits_to_keep"] = 1
        out = self.model(
            input_ids=torch.tensor([tokens], device=dev),
            position_ids=positions.to(dev).view(1, n),
            attention_mask=mask,
            past_key_values=self.cache,
            use_cache=True,
            output_hidden_states=want_hidden,
            **kwargs,
        )
        logits = out.logits[0].float()
        hidden = out.hidden_states[-1][0] if want_hidden else None
        if last_only:
            logits = logits[-1:]
            hidden = hidden[-1:] if hidden is not None else None
        return logits, hidden

    @torch.inference_mode()  # the cache tensors were made in inference mode; update them in it too
    def commit(self, kept: list[int]) -> None:
        """Keep inputs `kept` (indices into the last forward's inputs, ascending) as committed tokens."""
        k = len(kept)
        if kept != list(range(k)):
            src = torch.tensor(kept, device=self.device) + self.length
            dst = torch.arange(self.length, self.length + k, device=self.device)
            self.cache.move(src, dst)
        self.length += k
        self.cache.slots.length = self.length

    def rewind(self, length: int) -> None:
        """Forget committed tokens past `length` (a draft model rolls back to the agreed prefix)."""
        assert 0 <= length <= self.length
        self.length = length
        self.cache.slots.length = length
