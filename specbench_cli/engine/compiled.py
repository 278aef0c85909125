"""The compiled engine: the target's forwards replayed from CUDA graphs over a static KV cache.

An eager transformers forward of a 1.5B model costs ~20 ms of Python and kernel launches for ~3.6 ms
of GPU work, and about the same for 1 or 128 tokens (../shared/notes/gpu.md), so eager timings mostly
measure overhead. `CompiledRunner` has the interface of `ModelRunner` but fixes every shape ahead of time:

- one `SlotCache` of `cache_len` slots with `slots.visible = None`: attention always spans all of it
  (masked slots cost bandwidth, not correctness). `cache_len` is `max_len` plus one bucket of spare
  slots, so padded writes and warm-up writes never touch live entries;
- the number of inputs (root + draft nodes) is padded up to a bucket (1, 16, 32, 64, max_nodes + 1).
  Pad inputs sit at depth 0, write to the free slots right after the live ones, see the committed
  prefix and themselves only (no NaN), and no live input sees them;
- per bucket, one int64 vector [tokens | parents | start] is all the host writes per step (one copy).
  Positions, write slots and the additive (bucket, cache_len) mask are derived from it on the GPU,
  inside the graph (the ancestor relation by repeated squaring of the parent matrix);
- each bucket's forward is captured once in a CUDA graph, either of the eager HF forward or of a
  torch.compile'd one (`compile_mode`); prompts longer than the largest bucket prefill eagerly into
  the same cache;
- accepted-path compaction (`commit`) replays one more captured graph (index_select + index_copy_ in
  every layer), so a step's only host round trip is the verifier reading the argmax.

Attention: transformers' SDPA path repeats every K/V head over the whole static cache when a mask is
given (6x the cache bytes per layer for Qwen2.5-1.5B). `attention="packed"` stacks the query heads of a
group along the query axis instead, and the SDPA backend is pinned (`backend`): flash attention takes
no arbitrary mask, and cuDNN's per-call planning costs milliseconds of CPU on H100 in eager mode.

Without CUDA the same static-shape code runs without graphs; the CPU tests compare it with `ModelRunner`.
"""

from __future__ import annotations

import inspect
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..types import SpecbenchError
from .kv_cache import SlotCache
from .runner import ancestor_matrix, input_depths

BUCKETS = (1, 16, 32, 64)  # input counts, root included; max_nodes + 1 is always added as the largest
PACKED_ATTENTION = "specbench_packed_sdpa"
SDPA_BACKENDS = ("efficient", "math", "cudnn", "flash")


def packed_sdpa_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA for grouped-query attention without repeating K/V: (b, Hq, q, d) -> (b, q, Hq, d).

    The g query heads sharing a K/V head become g * q query rows of that head, and the mask rows are
    tiled to match, so each layer reads the cache once instead of g times.
    """
    b, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    if groups > 1:
        query = query.reshape(b, kv_heads, groups * q_len, dim)
        if attention_mask is not None and attention_mask.shape[-2] == q_len:
            attention_mask = attention_mask.repeat(1, 1, groups, 1)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, scale=scaling
    )
    return out.reshape(b, heads, q_len, -1).transpose(1, 2).contiguous(), None


def register_packed_attention() -> None:
    """Make `PACKED_ATTENTION` a valid `config._attn_implementation` (its mask rules are SDPA's)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)


def ancestor_closure(parents: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """anc[i, j]: input j is input i or one of its ancestors; `parents` (n,) int64, -1 = root, idx = arange(n).

    Without a host loop, so that it runs inside a graph: squaring (parent | self) doubles the path
    length the relation covers; clamping keeps the entries 0/1, so float32 stays exact.
    """
    n = parents.shape[0]
    anc = (parents[:, None] == idx[None, :]) | (idx[:, None] == idx[None, :])
    if n <= 2:
        return anc
    reach = anc.float()
    for _ in range(math.ceil(math.log2(n - 1))):
        reach = (reach @ reach).clamp_(max=1.0)
    return reach > 0


@dataclass
class Bucket:
    """Static buffers (and the captured graph) for forwards of up to `size` inputs."""

    size: int
    inputs: torch.Tensor  # int64 (2 * size + 1,) on the device: tokens | parents | start
    host: torch.Tensor  # pinned twin of `inputs` that the host fills
    logits: torch.Tensor | None = None  # graph outputs, overwritten by every replay
    hidden: torch.Tensor | None = None
    graph: Any = None
    want_hidden: bool = False  # this graph also returns the final hidden states


class CompiledRunner:
    """`ModelRunner`'s interface over a static cache and per-bucket CUDA graphs."""

    def __init__(
        self,
        model: Any,
        max_len: int,
        max_nodes: int = 128,
        *,
        buckets: tuple[int, ...] = BUCKETS,
        attention: str = "packed",
        backend: str = "efficient",
        compile_mode: str | None = None,
        use_graphs: bool | None = None,
    ):
        if attention not in ("packed", "sdpa"):
            raise SpecbenchError(f"unknown attention '{attention}'; choose from: packed, sdpa")
        if backend not in SDPA_BACKENDS:
            raise SpecbenchError(f"unknown SDPA backend '{backend}'; choose from: {', '.join(SDPA_BACKENDS)}")
        self.model = model
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.max_len = max_len
        top = max_nodes + 1
        self.buckets = sorted({b for b in buckets if b < top} | {top})
        # Spare slots past max_len take the pads of the largest bucket at the last live position; a
        # multiple of 64 keeps the mask rows aligned for the memory-efficient attention kernel.
        self.cache_len = -(-(max_len + self.buckets[-1]) // 64) * 64
        self.num_layers = model.config.get_text_config().num_hidden_layers
        self._takes_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.cache = SlotCache(self.num_layers, self.cache_len)
        self.length = 0
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        self.attention, self.backend, self.compile_mode = attention, backend, compile_mode
        if attention == "packed":
            register_packed_attention()

        dev = self.device
        self._cols = torch.arange(self.cache_len, device=dev)
        self._zero = torch.zeros((), dtype=self.dtype, device=dev)
        self._masked = torch.full((), torch.finfo(self.dtype).min, dtype=self.dtype, device=dev)
        self._buckets: dict[tuple[int, bool], Bucket] = {}  # (size, want_hidden) -> bucket
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._copied = torch.cuda.Event() if dev.type == "cuda" else None  # host buffers free again
        self._move: Bucket | None = None  # inputs: src slots | dst slots (compaction graph)
        self._step = self._static_forward
        if compile_mode is not None:
            self._step = torch.compile(self._static_forward, mode=compile_mode, dynamic=False)
        # GPU time of every graph forward, read with take_forward_times() (benchmarks only).
        self.profile = False
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        # Allocate every layer's K/V now, outside any graph pool: one token into a spare slot.
        with torch.inference_mode():
            self._forward_eager([0], None, self.max_len, last_only=True)

    # -------------------------------------------------------------------------------------------
    # ModelRunner's interface

    def reset(self) -> None:
        self.length = 0
        self.cache.slots.length = 0

    def ensure_capacity(self, needed: int) -> None:
        """The cache is static (graphs point into it): a generation that does not fit is an error."""
        if needed > self.max_len:
            raise SpecbenchError(
                f"a prompt plus its token budget needs {needed} KV slots but the compiled engine's static "
                f"cache holds {self.max_len}; use a larger max_len, fewer --max-new-tokens or --engine eager"
            )

    @torch.inference_mode()
    def forward(
        self,
        tokens: list[int],
        parents: list[int] | None = None,
        want_hidden: bool = False,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same contract as `ModelRunner.forward`; the returned tensors are the caller's own."""
        n = len(tokens)
        start = self.length
        if start + n > self.max_len:
            raise RuntimeError(f"KV cache overflow: {start} + {n} > {self.max_len}")
        size = next((b for b in self.buckets if b >= n), None)
        if size is None:  # a long prompt: eager, variable length
            return self._forward_eager(tokens, parents, start, last_only, want_hidden)

        bucket = self._bucket(size, want_hidden)
        self._fill(bucket, tokens, parents, start)
        if bucket.graph is not None:
            if self.profile:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                bucket.graph.replay()
                end.record()
                self._events.append((begin, end))
            else:
                bucket.graph.replay()
            logits, hidden = bucket.logits, bucket.hidden
        else:
            with self._attention():
                logits, hidden = self._step(bucket.inputs, size, want_hidden)
        rows = slice(n - 1, n) if last_only else slice(0, n)
        # Graph outputs are overwritten by the next replay: hand out copies (cheap next to a forward).
        logits = logits[rows].clone()
        hidden = hidden[rows].clone() if want_hidden else None
        return logits, hidden

    @torch.inference_mode()
    def commit(self, kept: list[int]) -> None:
        """Keep inputs `kept` (ascending indices into the last forward's inputs) as committed tokens."""
        k = len(kept)
        if kept != list(range(k)):
            if self.use_graphs and k <= self.buckets[-1]:
                self._move_graph(kept)
            else:
                src = torch.tensor(kept, device=self.device) + self.length
                dst = torch.arange(self.length, self.length + k, device=self.device)
                self.cache.move(src, dst)
        self.length += k
        self.cache.slots.length = self.length

    def rewind(self, length: int) -> None:
        assert 0 <= length <= self.length
        self.length = length
        self.cache.slots.length = length

    # -------------------------------------------------------------------------------------------
    # Benchmark helpers

    def prepare(self, sizes: list[int] | None = None, want_hidden: bool = False) -> None:
        """Capture (and compile) buckets now, so that it happens outside any timed run."""
        for size in sizes or self.buckets:
            self._bucket(size, want_hidden)
        if self.use_graphs and self._move is None:
            self._move_graph(None)

    def take_forward_times(self) -> list[float]:
        """GPU seconds of each graph forward since the last call, in order (needs `profile = True`)."""
        if not self._events:
            return []
        self._events[-1][1].synchronize()
        times = [begin.elapsed_time(end) / 1000.0 for begin, end in self._events]
        self._events.clear()
        return times

    # -------------------------------------------------------------------------------------------
    # Internals

    @contextmanager
    def _attention(self):
        """Select our attention function and pin the SDPA backend for the duration of a forward/capture."""
        config = self.model.config
        previous = config._attn_implementation
        if self.attention == "packed":
            config._attn_implementation = PACKED_ATTENTION
        pinned = nullcontext()
        if self.device.type == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            names = {
                "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "math": SDPBackend.MATH,
                "cudnn": SDPBackend.CUDNN_ATTENTION,
                "flash": SDPBackend.FLASH_ATTENTION,
            }
            pinned = sdpa_kernel([names[self.backend]])
        try:
            with pinned:
                yield
        finally:
            config._attn_implementation = previous

    def _static_forward(
        self, inputs: torch.Tensor, size: int, want_hidden: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward of `size` inputs described by `inputs`; fixed shapes, no host sync (capturable)."""
        tokens, parents, start = inputs[:size], inputs[size : 2 * size], inputs[2 * size]
        idx = self._cols[:size]
        anc = ancestor_closure(parents, idx)
        depth = anc.sum(dim=1) - 1
        # Mask columns: committed slots [0, start) are visible to all; slot start + j follows the tree.
        rel = self._cols - start
        window = anc.index_select(1, rel.clamp(0, size - 1)) & ((rel >= 0) & (rel < size))
        allowed = window | (self._cols < start)
        mask = torch.where(allowed, self._zero, self._masked)
        self.cache.slots.write = start + idx
        self.cache.slots.visible = None
        out = self.model(
            input_ids=tokens.unsqueeze(0),
            position_ids=(start + depth).unsqueeze(0),
            attention_mask=mask[None, None],
            past_key_values=self.cache,
            use_cache=True,
            # Hidden states only in the graphs that need them: returning them installs hooks,
            # which torch.compile cannot trace through (graph breaks).
            output_hidden_states=want_hidden,
        )
        return out.logits[0].float(), (out.hidden_states[-1][0] if want_hidden else None)

    def _forward_eager(
        self,
        tokens: list[int],
        parents: list[int] | None,
        start: int,
        last_only: bool = False,
        want_hidden: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ModelRunner's variable-length forward, into this cache (prefill of long prompts)."""
        n, dev = len(tokens), self.device
        if parents is None:
            depth = torch.arange(n, device=dev)
            tree = torch.ones(n, n, dtype=torch.bool, device=dev).tril_()
        else:
            depth = torch.tensor(input_depths(parents), device=dev)
            tree = torch.from_numpy(ancestor_matrix(parents)).to(dev)
        mask = torch.full((1, 1, n, start + n), torch.finfo(self.dtype).min, dtype=self.dtype, device=dev)
        mask[..., :start] = 0
        mask[0, 0, :, start:].masked_fill_(tree, 0)
        slots = self.cache.slots
        slots.write = torch.arange(start, start + n, device=dev)
        slots.visible = start + n  # only the live prefix: a prefill needs no static shape
        # Only the last row's logits when that is all the caller wants (a long prompt's full logits
        # would be n x vocab floats).
        keep = {"logits_to_keep": 1} if last_only and not want_hidden and self._takes_logits_to_keep else {}
        try:
            with self._attention():
                out = self.model(
                    input_ids=torch.tensor([tokens], device=dev),
                    position_ids=(start + depth).unsqueeze(0),
                    attention_mask=mask,
                    past_key_values=self.cache,
                    use_cache=True,
                    output_hidden_states=want_hidden,
                    **keep,
                )
        finally:
            slots.visible = None
        logits = out.logits[0, -1:] if last_only else out.logits[0]
        hidden = out.hidden_states[-1][0] if want_hidden else None
        if last_only and hidden is not None:
            hidden = hidden[-1:]
        return logits.float(), hidden

    def _new_bucket(self, size: int, length: int) -> Bucket:
        inputs = torch.zeros(length, dtype=torch.long, device=self.device)
        if self.device.type == "cuda":
            host = torch.zeros(length, dtype=torch.long, pin_memory=True)
        else:
            host = inputs  # the CPU path reads the host buffer directly
        return Bucket(size, inputs, host)

    def _upload(self, bucket: Bucket) -> None:
        if bucket.host is not bucket.inputs:
            bucket.inputs.copy_(bucket.host, non_blocking=True)
            self._copied.record()

    def _host_view(self, bucket: Bucket) -> np.ndarray:
        # The previous asynchronous copy must have read the pinned buffer before it is rewritten.
        if self._copied is not None:
            self._copied.synchronize()
        return bucket.host.numpy()

    def _fill(self, bucket: Bucket, tokens: list[int], parents: list[int] | None, start: int) -> None:
        size, n = bucket.size, len(tokens)
        host = self._host_view(bucket)
        host[:n] = tokens
        host[n:size] = 0
        host[size : size + n] = np.arange(-1, n - 1) if parents is None else parents
        host[size + n : 2 * size] = -1  # pads: depth 0, their own slot only
        host[2 * size] = start
        self._upload(bucket)

    def _bucket(self, size: int, want_hidden: bool) -> Bucket:
        bucket = self._buckets.get((size, want_hidden))
        if bucket is None:
            bucket = self._new_bucket(size, 2 * size + 1)
            bucket.want_hidden = want_hidden
            if self.use_graphs:
                self._capture(bucket)
            self._buckets[size, want_hidden] = bucket
        return bucket

    def _capture(self, bucket: Bucket) -> None:
        """Warm up (and compile) on a side stream, then capture the forward into a CUDA graph."""
        size = bucket.size
        # A dummy step whose writes land in the spare slots past max_len, never in live entries.
        self._fill(bucket, [0] * size, [-1] * size, self.max_len)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(side), self._attention():
            for _ in range(3 if self.compile_mode else 1):
                self._step(bucket.inputs, size, bucket.want_hidden)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), self._attention(), torch.cuda.graph(graph, pool=self._pool):
            bucket.logits, bucket.hidden = self._step(bucket.inputs, size, bucket.want_hidden)
        bucket.graph = graph

    def _move_graph(self, kept: list[int] | None) -> None:
        """Compaction through a captured graph: `kept` inputs move to [length, length + k)."""
        top = self.buckets[-1]
        if self._move is None:
            move = self._new_bucket(top, 2 * top)
            self._fill_move(move, [], 0)
            with torch.inference_mode():
                src, dst = move.inputs[:top], move.inputs[top:]
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    self.cache.move(src, dst)
                torch.cuda.current_stream().wait_stream(side)
                move.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(move.graph, pool=self._pool):
                    self.cache.move(src, dst)
            self._move = move
        if kept is not None:
            self._fill_move(self._move, kept, self.length)
            self._move.graph.replay()

    def _fill_move(self, move: Bucket, kept: list[int], length: int) -> None:
        top, k = move.size, len(kept)
        host = self._host_view(move)
        host[:k] = np.asarray(kept) + length
        host[top : top + k] = np.arange(length, length + k)
        # Unused entries copy a spare slot onto itself: harmless, and all of them carry equal values.
        host[k:top] = self.max_len
        host[top + k :] = self.max_len
        self._upload(move)
