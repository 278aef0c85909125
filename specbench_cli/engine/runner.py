"""Runs any transformers causal LM over a token tree on top of its own slot cache.

The runner keeps `length` committed tokens in the cache at slots [0, length). A forward writes its n
inputs after them; `commit(indices)` then keeps the chosen inputs by moving their K/V down to
[length, length + k). Inputs form a tree: input i attends to every committed slot, to its ancestors
among the inputs and to itself, and sits at position `length + depth(i)`. A prefill is the tree where
each input's parent is the one before it.

A draft tree grown level by level (sps-tree) runs each level after the levels before it, which stay
written but uncommitted ("pending"): `forward(tokens, parents)` with `len(parents) > len(tokens)` says
so. The first `len(parents) - len(tokens)` entries describe the pending slots [length, length + m), the
rest the new inputs, which are written at [length + m, length + m + n).

`forward_tensors(tokens, parents)` is the same forward with both lists as tensors on the model's
device: a drafter that picks the next level's tokens on the GPU (`dynamic_tree.grow_tree`) hands them
over without reading them back. The compiled runner writes them straight into its graph inputs, so a
tree grows with no host round trip per level; the eager runner reads them back (one sync a level).

`Runner` holds what every runner shares (the cache, commit, rewind and the variable-length forward);
`ModelRunner` is the eager runner, `compiled.CompiledRunner` the static-shape, CUDA-graph one.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext

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


class Runner:
    """A model and its slot cache of `cache_len` slots, of which `max_len` may hold live tokens."""

    def __init__(self, model, max_len: int, cache_len: int | None = None):
        self.model = model
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.max_len = max_len
        self.num_layers = model.config.get_text_config().num_hidden_layers
        self.cache = SlotCache(self.num_layers, cache_len or max_len)
        self.length = 0
        # The inputs of each forward, while a list (the decode loop sets one per step for draft
        # runners: the report prices each draft forward at its own size).
        self.forward_log: list[int] | None = None
        self.captures = 0  # buckets made so far (compiled runners; a CUDA graph each): none on the clock
        self._takes_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    def _log_forward(self, inputs: int) -> None:
        if self.forward_log is not None:
            self.forward_log.append(inputs)

    move_kind = "per layer"  # how commit moves an accepted path's K/V (compiled runners may fuse it)

    def max_graph_inputs(self) -> int | None:
        """The most inputs one forward runs from a captured graph (None: no graphs, any length runs
        alike). A caller that splits a long run of forwards itself can cut it to this size."""
        return None

    def reset(self) -> None:
        self.length = 0
        self.cache.slots.length = 0

    def prepare_seen(self) -> None:
        """Make now whatever a later forward of a kind already seen would make lazily (compiled
        runners: every bucket of each forward variant); eager runners have nothing to make."""

    def rewind(self, length: int) -> None:
        """Forget committed tokens past `length` (a draft model rolls back to the agreed prefix)."""
        assert 0 <= length <= self.length
        self.length = length
        self.cache.slots.length = length

    @torch.inference_mode()  # the cache tensors were made in inference mode; update them in it too
    def commit(self, kept: list[int]) -> None:
        """Keep inputs `kept` (indices into the last forward's inputs, ascending) as committed tokens."""
        k = len(kept)
        if kept != list(range(k)):
            self._move(kept)
        self.length += k
        self.cache.slots.length = self.length

    def _move(self, kept: list[int]) -> None:
        src = torch.tensor(kept, device=self.device) + self.length
        dst = torch.arange(self.length, self.length + len(kept), device=self.device)
        self.cache.move(src, dst)

    def _check_room(self, pending: int, n: int) -> None:
        if self.length + pending + n > self.max_len:
            raise RuntimeError(f"KV cache overflow: {self.length + pending} + {n} > {self.max_len}")

    def _eager_context(self):
        """What wraps a variable-length forward (the compiled runner pins its attention here)."""
        return nullcontext()

    def _eager_forward(
        self,
        tokens: list[int],
        parents: list[int] | None,
        want_hidden: bool,
        last_only: bool,
        all_hidden: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward of any length over the live prefix of the cache, with a dense additive mask."""
        n, dev = len(tokens), self.device
        self._log_forward(n)
        if parents is None:
            parents = list(range(-1, n - 1))
        pending = len(parents) - n
        committed, start = self.length, self.length + pending
        anc = torch.from_numpy(ancestor_matrix(parents)[pending:]).to(dev)  # (n, pending + n)
        positions = committed + torch.tensor(input_depths(parents)[pending:], device=dev)
        # Float additive mask: 0 where attention is allowed, the dtype's minimum elsewhere.
        mask = torch.full((1, 1, n, start + n), torch.finfo(self.dtype).min, dtype=self.dtype, device=dev)
        mask[..., :committed] = 0
        mask[0, 0, :, committed:].masked_fill_(anc, 0)
        slots = self.cache.slots
        slots.write = torch.arange(start, start + n, device=dev)
        slots.visible = start + n  # only the live prefix: a variable-length forward needs no static shape
        # Only the last row's logits when that is all the caller wants (a long prompt's full logits
        # would be n x vocab floats); hidden states are the model's outputs, every row regardless.
        keep = {"logits_to_keep": 1} if last_only and self._takes_logits_to_keep else {}
        try:
            with self._eager_context():
                out = self.model(
                    input_ids=torch.tensor([tokens], device=dev),
                    position_ids=positions.view(1, n),
                    attention_mask=mask,
                    past_key_values=self.cache,
                    use_cache=True,
                    output_hidden_states=want_hidden,
                    **keep,
                )
        finally:
            slots.visible = self._static_visible
        logits = out.logits[0, -1:] if last_only else out.logits[0]
        hidden = out.hidden_states[-1][0] if want_hidden else None
        if last_only and hidden is not None and not all_hidden:
            hidden = hidden[-1:]
        return logits.float(), hidden

    _static_visible: int | None = None  # what attention sees between forwards (None = the whole cache)

    def forward_tensors(
        self, tokens: torch.Tensor, parents: torch.Tensor, want_hidden: bool = False, copy: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`forward(tokens, parents, want_hidden)` with both as 1-D integer tensors (see the module doc);
        `copy` as in `forward` (here the outputs are always the caller's own)."""
        return self.forward(tokens.tolist(), parents.tolist(), want_hidden=want_hidden)


class ModelRunner(Runner):
    """The eager runner: every forward is a plain transformers forward of its own length."""

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
        all_hidden: bool = False,
        copy: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward over `tokens` (a chain when `parents` is None; see the module doc for pending slots).

        Returns logits (n, V) in float32 (or (1, V) with last_only; a compiled target's graph forwards
        keep the model's dtype, `CompiledRunner.float_logits`) and, with want_hidden, the final
        hidden states (n, H) (last row only with last_only, unless all_hidden). `copy=False` allows the
        outputs to be overwritten by the runner's next forward (compiled runners); here they never are.
        """
        self._check_room(0 if parents is None else len(parents) - len(tokens), len(tokens))
        return self._eager_forward(tokens, parents, want_hidden, last_only, all_hidden)
