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
ATTENTIONS = ("tree", "packed", "sdpa")  # graph forwards: our kernel, packed-GQA SDPA, transformers' SDPA


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


# ---------------------------------------------------------------------------------------------------
# Tree attention over the static cache: split-KV, only the live slots, mask computed in the kernel.
#
# Measured on an H200 (bench/results/h200-2026-11-21-profile-before-tree-kernel.json): with a dense mask
# over the whole static cache, SDPA's memory-efficient kernel took ~100 us per layer for ONE query token
# (2 K/V heads -> 2 thread blocks walking 2,176 keys): 2.7 of 6.4 ms per Qwen2.5-1.5B forward; cuDNN
# took half that. The kernel below splits the key range across thread blocks (flash-decoding) and stops
# at the last live slot: 4.1 ms per forward without torch.compile, 2.7 ms with it (h200-...-micro-*.json).
# Known slack: the merge kernel runs one program per (head, 64 rows) over every chunk, live or not; at
# 16+ inputs that costs ~1 ms per forward (B=16: 4.0 ms against 2.7 ms for B=1).
#
# Its mask travels as a small "tree mask" through transformers' attention_mask argument (any 4-D
# tensor reaches the attention function untouched): float32 (1, 1, B, B + 1) whose first B columns are
# the inputs' ancestor relation (1 = visible) and whose last column holds `start`, the committed length.
# Input i sees every slot < start and slot start + j when tree_mask[i, j] is 1.

TREE_ATTENTION = "specbench_tree_attention"
_TREE_OP: Any = None
_TREE_KERNELS: Any = None


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def tree_mask(anc: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """(B, B) bool ancestor relation + 0-dim start -> the (1, 1, B, B + 1) float32 tree mask."""
    size = anc.shape[0]
    return torch.cat([anc.float(), start.float().expand(size, 1)], dim=1)[None, None]


def dense_tree_mask(mask: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """The tree mask as an additive (B, length) mask (the reference path, and the CPU path)."""
    size = mask.shape[-2]
    anc, start = mask[0, 0, :, :size] > 0.5, mask[0, 0, 0, size].long()
    cols = torch.arange(length, device=mask.device)
    rel = cols - start
    window = anc.index_select(1, rel.clamp(0, size - 1)) & ((rel >= 0) & (rel < size))
    allowed = window | (cols < start)
    return torch.zeros((), dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)


def reference_tree_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """q (Hkv, R, D) with R = groups * B rows (row r is input r % B); k, v (Hkv, L, D) -> (Hkv, R, D)."""
    dense = dense_tree_mask(mask, k.shape[1], q.dtype)
    rows = dense.repeat(q.shape[1] // dense.shape[0], 1)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=rows, scale=scale)


def _build_tree_kernels() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def split_kernel(
        Q, K, V, Mask, Opart, Mpart, Lpart,
        stride_qh, stride_qr, stride_kh, stride_kn, stride_vh, stride_vn,
        R, R_PAD, HEADS, scale,
        SIZE: tl.constexpr, CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        D: tl.constexpr, IEEE: tl.constexpr,
    ):  # fmt: skip
        split, head, block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        start = tl.load(Mask + SIZE).to(tl.int32)
        live = start + SIZE
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < R
        node = rows % SIZE
        d = tl.arange(0, D)
        q = tl.load(
            Q + head * stride_qh + rows[:, None] * stride_qr + d[None, :], mask=row_ok[:, None], other=0.0
        )
        m = tl.full([BLOCK_M], float("-inf"), tl.float32)
        denom = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        lo = split * CHUNK
        hi = tl.minimum(lo + CHUNK, live)  # slots past the live ones are never read
        for n0 in range(lo, hi, BLOCK_N):
            cols = n0 + tl.arange(0, BLOCK_N)
            col_ok = cols < hi
            k = tl.load(
                K + head * stride_kh + cols[:, None] * stride_kn + d[None, :], mask=col_ok[:, None], other=0.0
            )
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            else:
                s = tl.dot(q, tl.trans(k)) * scale
            rel = cols - start
            in_tree = row_ok[:, None] & (col_ok & (rel >= 0))[None, :]
            anc = tl.load(Mask + node[:, None] * (SIZE + 1) + rel[None, :], mask=in_tree, other=0.0)
            allowed = ((cols < start)[None, :] | (anc > 0.5)) & col_ok[None, :]
            s = tl.where(allowed, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
            p = tl.exp(s - m_ref[:, None])
            alpha = tl.exp(m - m_ref)
            denom = denom * alpha + tl.sum(p, 1)
            v = tl.load(
                V + head * stride_vh + cols[:, None] * stride_vn + d[None, :], mask=col_ok[:, None], other=0.0
            )
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m = m_new
        at = (split * HEADS + head) * R_PAD + rows
        tl.store(Mpart + at, m)
        tl.store(Lpart + at, denom)
        tl.store(Opart + at[:, None] * D + d[None, :], acc)

    @triton.jit
    def merge_kernel(
        Opart, Mpart, Lpart, Out, stride_oh, stride_or, R, R_PAD, HEADS,
        SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, D: tl.constexpr,
    ):  # fmt: skip
        head, block = tl.program_id(0), tl.program_id(1)
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
        d = tl.arange(0, D)
        top = tl.full([BLOCK_M], float("-inf"), tl.float32)
        for split in range(SPLITS):
            top = tl.maximum(top, tl.load(Mpart + (split * HEADS + head) * R_PAD + rows))
        top = tl.where(top == float("-inf"), 0.0, top)  # padding rows only
        total = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        for split in range(SPLITS):
            at = (split * HEADS + head) * R_PAD + rows
            weight = tl.exp(tl.load(Mpart + at) - top)
            total += weight * tl.load(Lpart + at)
            acc += weight[:, None] * tl.load(Opart + at[:, None] * D + d[None, :])
        out = acc / tl.where(total > 0, total, 1.0)[:, None]
        row_ok = rows < R
        tl.store(
            Out + head * stride_oh + rows[:, None] * stride_or + d[None, :],
            out.to(Out.dtype.element_ty),
            mask=row_ok[:, None],
        )

    return split_kernel, merge_kernel


def triton_tree_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """`reference_tree_attention` as two Triton kernels: partial softmax per key chunk, then a merge."""
    global _TREE_KERNELS
    if _TREE_KERNELS is None:
        _TREE_KERNELS = _build_tree_kernels()
    split_kernel, merge_kernel = _TREE_KERNELS
    heads, rows, dim = q.shape
    size, length = mask.shape[-2], k.shape[1]
    block_m = 16 if rows <= 16 else 32 if rows <= 32 else 64
    blocks = cdiv(rows, block_m)
    block_n = 64
    # Enough (chunk, head, row block) programs to fill the GPU; more chunks also mean more partial
    # results to write and merge, so the chunk count falls as the row blocks grow.
    splits = max(1, min(cdiv(length, block_n), cdiv(256, heads * blocks)))
    chunk = cdiv(cdiv(length, splits), block_n) * block_n
    splits = cdiv(length, chunk)
    r_pad = blocks * block_m
    opart = torch.empty(splits * heads * r_pad, dim, dtype=torch.float32, device=q.device)
    mpart = torch.empty(splits * heads * r_pad, dtype=torch.float32, device=q.device)
    lpart = torch.empty_like(mpart)
    out = torch.empty_like(q)
    mask = mask.contiguous()
    ieee = q.dtype == torch.float32
    split_kernel[(splits, heads, blocks)](
        q, k, v, mask, opart, mpart, lpart,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        rows, r_pad, heads, scale,
        SIZE=size, CHUNK=chunk, BLOCK_M=block_m, BLOCK_N=block_n, D=dim, IEEE=ieee,
    )  # fmt: skip
    merge_kernel[(heads, blocks)](
        opart, mpart, lpart, out, out.stride(0), out.stride(1), rows, r_pad, heads,
        SPLITS=splits, BLOCK_M=block_m, D=dim,
    )  # fmt: skip
    return out


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _tree_attention_op() -> Any:
    """A torch custom op (opaque to torch.compile) that runs the Triton kernels on CUDA."""
    global _TREE_OP
    if _TREE_OP is None:

        @torch.library.custom_op("specbench::tree_attention", mutates_args=())
        def op(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
        ) -> torch.Tensor:
            dim = q.shape[-1]
            if q.is_cuda and dim & (dim - 1) == 0 and dim >= 16 and q.stride(-1) == 1 and k.stride(-1) == 1:
                return triton_tree_attention(q, k, v, mask, scale)
            return reference_tree_attention(q, k, v, mask, scale)

        @op.register_fake
        def _(q, k, v, mask, scale):
            return torch.empty_like(q)

        _TREE_OP = op
    return _TREE_OP


def tree_attention_forward(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function for the graph forwards: query (1, Hq, B, D), key/value the whole
    static cache (1, Hkv, L, D), attention_mask the tree mask -> (1, B, Hq, D)."""
    _, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(kv_heads, heads // kv_heads * q_len, dim)  # query heads of a group stacked
    scale = scaling if scaling is not None else dim**-0.5
    out = _tree_attention_op()(q, key[0], value[0], attention_mask, float(scale))
    return out.reshape(1, heads, q_len, -1).transpose(1, 2).contiguous(), None


def register_packed_attention() -> None:
    """Make our attention functions valid `config._attn_implementation`s (mask rules: SDPA's)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    AttentionInterface.register(TREE_ATTENTION, tree_attention_forward)
    AttentionMaskInterface.register(TREE_ATTENTION, sdpa_mask)


def closure_rounds(n: int) -> int:
    """Squarings that `ancestor_closure` needs for n inputs (paths up to n - 1 edges)."""
    return math.ceil(math.log2(n - 1)) if n > 2 else 0


def ancestor_closure(parents: torch.Tensor, idx: torch.Tensor, rounds: int | None = None) -> torch.Tensor:
    """anc[i, j]: input j is input i or one of its ancestors; `parents` (n,) int64, -1 = root, idx = arange(n).

    Without a host loop, so that it runs inside a graph: squaring (parent | self) doubles the path
    length the relation covers; clamping keeps the entries 0/1, so float32 stays exact. Extra rounds
    change nothing (a fixed count lets one compiled graph serve every size).
    """
    n = parents.shape[0]
    anc = (parents[:, None] == idx[None, :]) | (idx[:, None] == idx[None, :])
    if n <= 2:
        return anc
    reach = anc.float()
    for _ in range(closure_rounds(n) if rounds is None else rounds):
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
        attention: str = "tree",
        backend: str = "efficient",
        compile_mode: str | None = "default",
        use_graphs: bool | None = None,
    ):
        if attention not in ATTENTIONS:
            raise SpecbenchError(f"unknown attention '{attention}'; choose from: {', '.join(ATTENTIONS)}")
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
        self.attention, self.backend = attention, backend
        register_packed_attention()
        _tree_attention_op()  # registered now: never for the first time inside a torch.compile trace

        dev = self.device
        self._cols = torch.arange(self.cache_len, device=dev)
        self._zero = torch.zeros((), dtype=self.dtype, device=dev)
        self._masked = torch.full((), torch.finfo(self.dtype).min, dtype=self.dtype, device=dev)
        self._buckets: dict[tuple[int, bool], Bucket] = {}  # (size, want_hidden) -> bucket
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._copied = torch.cuda.Event() if dev.type == "cuda" else None  # host buffers free again
        self._move: Bucket | None = None  # inputs: src slots | dst slots (compaction graph)
        self._step = self._static_forward
        # torch.compile fuses the ~45 small kernels per layer of an eager forward into ~15 (measured
        # on an H200: 1,243 -> 462 kernels per Qwen2.5-1.5B forward). With dynamic sizes one graph
        # serves every bucket above 1 (size 1 is specialised): two compilations per model, not five.
        self.compile_mode = compile_mode if self.use_graphs else None
        self.compile_error: str | None = None
        if self.compile_mode is not None:
            import torch._dynamo as dynamo

            # Every runner (target, draft model) and graph variant recompiles this one method.
            dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
            self._step = torch.compile(self._static_forward, mode=self.compile_mode, dynamic=True)
        # GPU time of every graph forward, read with take_forward_times() (benchmarks only).
        self.profile = False
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        # Allocate every layer's K/V now, outside any graph pool: one token into a spare slot.
        with torch.inference_mode():
            self._forward_chain_or_tree([0], None, self.max_len, True, False)

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
            return self._forward_chain_or_tree(tokens, parents, start, last_only, want_hidden)

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
    def forward_tree(
        self,
        tokens: list[int],
        positions: torch.Tensor,
        visible: torch.Tensor,
        want_hidden: bool = False,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`ModelRunner.forward_tree` (inputs after m pending slots, explicit positions): eager here,
        since its shapes vary with m. Only `forward` replays graphs."""
        n = len(tokens)
        if self.length + visible.shape[1] > self.max_len:
            raise RuntimeError(
                f"KV cache overflow: {self.length + visible.shape[1] - n} + {n} > {self.max_len}"
            )
        return self._forward_eager(tokens, positions, visible, self.length, last_only, want_hidden)

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
    def _attention(self, graph: bool = True):
        """Select our attention function and pin the SDPA backend for the duration of a forward/capture.

        Graph forwards use `self.attention`; eager prefills always take packed SDPA with a dense mask
        (many queries: the memory-efficient kernel has row blocks enough to fill the GPU)."""
        config = self.model.config
        previous = config._attn_implementation
        name = {"tree": TREE_ATTENTION, "packed": PACKED_ATTENTION, "sdpa": previous}[self.attention]
        config._attn_implementation = name if graph else PACKED_ATTENTION
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
        anc = ancestor_closure(parents, idx, closure_rounds(self.buckets[-1]) if self.compile_mode else None)
        depth = anc.sum(dim=1) - 1
        # Mask columns: committed slots [0, start) are visible to all; slot start + j follows the tree.
        if self.attention == "tree":  # the kernel reads the tree and `start`, and builds the mask itself
            mask = tree_mask(anc, start)
        else:  # an additive mask over the whole static cache
            rel = self._cols - start
            window = anc.index_select(1, rel.clamp(0, size - 1)) & ((rel >= 0) & (rel < size))
            allowed = window | (self._cols < start)
            mask = torch.where(allowed, self._zero, self._masked)[None, None]
        self.cache.slots.write = start + idx
        self.cache.slots.visible = None
        out = self.model(
            input_ids=tokens.unsqueeze(0),
            position_ids=(start + depth).unsqueeze(0),
            attention_mask=mask,
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
        positions: torch.Tensor,
        visible: torch.Tensor,
        committed: int,
        last_only: bool = False,
        want_hidden: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ModelRunner.forward_tree's variable-length forward, into this cache: inputs see the
        `committed` first slots and, per `visible` (n, m + n), the m pending slots and each other."""
        n, dev = len(tokens), self.device
        start = committed + visible.shape[1] - n
        mask = torch.full((1, 1, n, start + n), torch.finfo(self.dtype).min, dtype=self.dtype, device=dev)
        mask[..., :committed] = 0
        mask[0, 0, :, committed:].masked_fill_(visible.to(dev), 0)
        slots = self.cache.slots
        slots.write = torch.arange(start, start + n, device=dev)
        slots.visible = start + n  # only the live prefix: a prefill needs no static shape
        # Only the last row's logits when that is all the caller wants (a long prompt's full logits
        # would be n x vocab floats).
        keep = {"logits_to_keep": 1} if last_only and not want_hidden and self._takes_logits_to_keep else {}
        try:
            with self._attention(graph=False):
                out = self.model(
                    input_ids=torch.tensor([tokens], device=dev),
                    position_ids=positions.to(dev).view(1, n),
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

    def _forward_chain_or_tree(
        self, tokens: list[int], parents: list[int] | None, committed: int, last_only: bool, want_hidden: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n, dev = len(tokens), self.device
        if parents is None:
            depth = torch.arange(n, device=dev)
            visible = torch.ones(n, n, dtype=torch.bool, device=dev).tril_()
        else:
            depth = torch.tensor(input_depths(parents), device=dev)
            visible = torch.from_numpy(ancestor_matrix(parents)).to(dev)
        return self._forward_eager(tokens, committed + depth, visible, committed, last_only, want_hidden)

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
            try:
                for _ in range(3 if self.compile_mode else 1):
                    self._step(bucket.inputs, size, bucket.want_hidden)
            except Exception as err:  # a model torch.compile cannot handle still gets graphs
                if self.compile_mode is None:
                    raise
                self.compile_error = f"{type(err).__name__}: {str(err)[:300]}"
                self.compile_mode, self._step = None, self._static_forward
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
