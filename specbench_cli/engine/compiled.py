"""The compiled runner: a model's forwards replayed from CUDA graphs over a static KV cache.

An eager transformers forward of a 1.5B model costs ~20 ms of Python and kernel launches for ~3.6 ms
of GPU work, and about the same for 1 or 128 tokens, so eager timings mostly measure overhead.
`CompiledRunner` has the interface of `ModelRunner` but fixes every shape ahead of time. The target
and every draft model get one (the engine's runner factory decides), so a draft model's chain steps,
the levels of a dynamic draft tree and its catch-up forwards all replay graphs too.

- one `SlotCache` of `cache_len` slots with `slots.visible = None`: attention always spans all of it
  (masked slots cost bandwidth, not correctness). `cache_len` is `max_len` plus one bucket of spare
  slots, so padded writes and warm-up writes never touch live entries;
- the number of inputs is padded up to a bucket B (1, 16, 32, 48, 64, 81, 96, max_nodes + 1). A forward after m
  pending slots (a tree level) also gets a window of W >= m + B slots, a bucket too; a plain forward has
  W = B. Pad inputs sit at depth 0, write to free slots after the live ones, see the committed prefix and
  themselves only (no NaN), and no live input sees them;
- per (B, W), one int64 vector [tokens (B) | window parents (W) | start | m] is all the host writes per
  step (one copy). Positions, write slots and the mask are derived from it on the GPU, inside the graph
  (the ancestor relation by pointer jumping over the parents);
- each (B, W)'s forward is captured once in a CUDA graph, either of the eager HF forward or of a
  torch.compile'd one (`compile_mode`). A chain longer than the largest bucket (a prompt) runs as
  consecutive forwards of that bucket, each after the ones before it (`_chunked_forward`); only
  longer chains and trees wider than every bucket run eagerly into the same cache;
- accepted-path compaction (`commit`) replays one more captured graph (the fused Triton move of
  compaction.py, else index_select + index_copy_ in every layer), so a step's only host round trip is
  the verifier reading the argmax.

Attention (`attention.py`): the Triton tree kernel by default; `packed` is SDPA with grouped query heads
stacked, `sdpa` transformers' own. The SDPA backend is pinned (`backend`): flash attention takes no
arbitrary mask, and cuDNN's per-call planning costs milliseconds of CPU in eager mode.

Without CUDA the same static-shape code runs without graphs; the CPU tests compare it with `ModelRunner`.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..types import SpecbenchError
from .attention import PACKED_ATTENTION, TREE_ATTENTION, register_attention, tree_mask
from .compaction import fused_move
from .events import EventPool
from .fusion import build_fusions, fused
from .rotary import build_rotary_tables, rotary_tables
from .runner import Runner

# Input counts, root included; max_nodes + 1 is always added as the largest. 81 is Token Recycling's
# official 80-node tree (SAM's default fallback) plus the root: in the 96 bucket those steps paid for 15
# pad inputs. On an H200 a forward of 96 inputs cost 0.12 ms more than one of 80 at 512 live slots
# (bench/results/2026-12-03-h200-fast-repeats-8, forward_costs: 2.394 against 2.278 ms) and 0.19 ms at
# 1,000 (2026-12-03-h200-session10/profile_forward.json), of which ~0.17 ms is the tree attention: 14.7
# us a layer for 480 query rows against 20.8 for 576 (2026-12-03-h200-kernels/attention-sweep-2x6x128.json).
BUCKETS = (1, 16, 32, 48, 64, 81, 96)
# A chain of up to this many largest buckets (4,128 tokens with 128 draft nodes) is run chunk by chunk
# through the graphs instead of eagerly. Measured on an H200 (bench/results/2026-12-03-h200-fast-repeats-7,
# prefill_time of ar): prompts that fit a bucket took 2.6-2.9 ms, longer ones 24-60 ms eagerly, that is
# ~27 ms of Python and launches plus ~3 ms per 129 tokens, about what a 129-token graph forward costs.
# Past a few thousand tokens each chunk's attention reads a long prefix and one eager forward may win.
# Chunked, ar's mean prefill per turn went from 33.2 to 5.1 ms on the 20 HumanEval prompts and from 20.7
# to 7.4 ms on the 48 Spec-Bench questions (bench/results/2026-12-03-h200-fast-repeats-8, `prefill_ms`).
CHUNKED_PREFILL_MAX = 32
SDPA_BACKENDS = ("efficient", "math", "cudnn", "flash")
ATTENTIONS = ("tree", "packed", "sdpa")  # graph forwards: our kernel, packed-GQA SDPA, transformers' SDPA

# Architectures whose transformers forward the compiled runner has been checked on (CPU tests on Llama,
# GPU runs on Qwen2 and Llama): they take our cache, position ids and 4-D masks unchanged.
COMPILED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral")


JUMP_BASE = 4  # levels a round of `ancestor_closure` multiplies its reach by


def closure_rounds(n: int) -> int:
    """Rounds `ancestor_closure` needs for n inputs: each covers JUMP_BASE times the levels of the
    last, from one (the input itself), until they reach n (paths of up to n - 1 edges)."""
    rounds, levels = 0, 1
    while levels < n:
        rounds, levels = rounds + 1, levels * JUMP_BASE
    return rounds


def ancestor_closure(parents: torch.Tensor, idx: torch.Tensor, rounds: int | None = None) -> torch.Tensor:
    """anc[i, j]: input j is input i or one of its ancestors; `parents` (n,) int64, -1 = root, idx = arange(n).

    Without a host loop, so that it runs inside a graph, by pointer jumping: `reach[i]` holds i's
    ancestors less than L levels up and `jump[i]` the one exactly L up (a root stands in for anything
    above it); a round adds the reach of the nodes L, 2L and 3L levels up, so L grows JUMP_BASE-fold.
    Row gathers and ORs of booleans, exact on any device, that torch.compile fuses into a few small
    kernels. It replaced squaring the (parent | self) matrix in float32: seven 129 x 129 matrix
    products (38 us per 129-input forward on an H200, bench/results/2026-12-04-h200-session14/
    profile.json) in every bucket but the 1-input one. Extra rounds change nothing (a fixed count
    lets one compiled graph serve every size).
    """
    n = parents.shape[0]
    if n <= 2:  # (parent | self) is the whole relation; no round in the 1-input graph
        return (parents[:, None] == idx[None, :]) | (idx[:, None] == idx[None, :])
    # Anything but a window index is a root, as it was for the matrix product: an index past the window
    # would make a gather read out of bounds inside a graph.
    jump = torch.where((parents < 0) | (parents >= n), idx, parents)
    reach = idx[:, None] == idx[None, :]
    for _ in range(closure_rounds(n) if rounds is None else rounds):
        hop = jump
        levels_up = reach
        for _ in range(JUMP_BASE - 1):
            levels_up = levels_up | reach.index_select(0, hop)
            hop = jump.index_select(0, hop)
        reach, jump = levels_up, hop
    return reach


@dataclass
class Bucket:
    """Static buffers (and the captured graph) for forwards of up to `size` inputs in a `width` window."""

    size: int
    width: int
    inputs: torch.Tensor  # int64 on the device: tokens (size) | parents (width) | start | pending
    host: torch.Tensor  # pinned twin of `inputs` that the host fills
    logits: torch.Tensor | None = None  # graph outputs, overwritten by every replay
    hidden: torch.Tensor | None = None
    graph: Any = None
    want_hidden: bool = False  # this graph also returns the final hidden states
    # What `forward_tensors` last wrote into `inputs` with device copies: ((inputs, window slots used),
    # the two destination views) and (start, pending). Kept so that a run of forwards with the same
    # layout (a tree's levels, a draft chain's tokens) writes only what changed. A host fill resets it.
    device_layout: tuple[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] | None = None
    device_scalars: tuple[int, int] | None = None


class CompiledRunner(Runner):
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
        fuse: bool = True,
        float_logits: bool = True,
    ):
        if attention not in ATTENTIONS:
            raise SpecbenchError(f"unknown attention '{attention}'; choose from: {', '.join(ATTENTIONS)}")
        if backend not in SDPA_BACKENDS:
            raise SpecbenchError(f"unknown SDPA backend '{backend}'; choose from: {', '.join(SDPA_BACKENDS)}")
        top = max_nodes + 1
        sizes = sorted({b for b in buckets if b < top} | {top})
        # Spare slots past max_len take the pads of the largest bucket at the last live position; a
        # multiple of 64 keeps the mask rows aligned for the memory-efficient attention kernel.
        super().__init__(model, max_len, -(-(max_len + sizes[-1]) // 64) * 64)
        self.buckets = sizes
        self.cache_len = self.cache.max_len
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        self.attention, self.backend = attention, backend
        # False: logits in the model's dtype. The target's are read by argmax, top-k and softmax, which
        # take them as they are or cast the rows they use (the same values: a bf16 logit is exactly a
        # float32 one); a float32 copy of every row cost the graph a (N, 152k) conversion kernel that
        # grows with N (117 MB of traffic at 129 inputs). Draft runners keep float32 log-probabilities.
        self.float_logits = float_logits
        register_attention()
        # q/k/v and gate/up as one GEMM each in graph forwards (fusion.py): a copy of those weights.
        self.fusions = build_fusions(model) if fuse else []
        # cos/sin of every cache position, gathered instead of recomputed in every layer (rotary.py).
        self.rotary = build_rotary_tables(model, self.cache_len, self.dtype, self.device) if fuse else []
        # A model that reads side inputs by input row (an EAGLE head's features) takes each forward whole.
        self.chunkable = not getattr(model, "reads_inputs_by_row", False)

        dev = self.device
        self._cols = torch.arange(self.cache_len, device=dev)
        self._zero = torch.zeros((), dtype=self.dtype, device=dev)
        self._masked = torch.full((), torch.finfo(self.dtype).min, dtype=self.dtype, device=dev)
        self._buckets: dict[tuple[int, int, bool], Bucket] = {}  # (size, width, want_hidden) -> bucket
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._copied = torch.cuda.Event() if dev.type == "cuda" else None  # host buffers free again
        self._move_bucket: Bucket | None = None  # inputs: src slots | dst slots (compaction graph)
        self._inputs, self._model_step = self._static_inputs, self._static_model
        # torch.compile fuses the ~45 small kernels per layer of an eager forward into ~15 (measured
        # on an H200: 1,243 -> 462 kernels per Qwen2.5-1.5B forward). With dynamic sizes one graph
        # serves every bucket above 1 (size 1 is specialised): two compilations per model, not five.
        # The positions and the mask are compiled on their own, so the model's graph takes them as
        # inputs: compiled together, inductor recomputed the tree depths (the ancestor closure's row
        # sums) inside every layer's rotary kernel, ~0.15 ms per forward of 64 inputs on an H200
        # (bench/results/2026-12-03-h200-kernels/profile.txt: a 28x kernel with gt/clamp/index_select).
        self.compile_mode = compile_mode if self.use_graphs else None
        self.compile_error: str | None = None
        if self.compile_mode is not None:
            import torch._dynamo as dynamo

            # Every runner (target, draft model) and graph variant recompiles these two methods.
            dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
            self._inputs = torch.compile(self._static_inputs, mode=self.compile_mode, dynamic=True)
            self._model_step = torch.compile(self._static_model, mode=self.compile_mode, dynamic=True)
        # GPU time of every graph forward, read with take_forward_times() (benchmarks, and the decode
        # loop for draft runners: t_draft_forward).
        self.profile = False
        # A begin and an end event per timed forward, recorded again once read (events.py).
        self._timing = EventPool()
        # Allocate every layer's K/V now, outside any graph pool: one token into a spare slot.
        with torch.inference_mode():
            self.length = self.max_len
            self._eager_forward([0], None, False, True)
            self.length = 0

    # -------------------------------------------------------------------------------------------
    # ModelRunner's interface

    def ensure_capacity(self, needed: int) -> None:
        """The cache is static (graphs point into it): a generation that does not fit is an error."""
        if needed > self.max_len:
            raise SpecbenchError(
                f"a prompt plus its token budget needs {needed} KV slots but the compiled engine's static "
                f"cache holds {self.max_len}; use a larger max_len, fewer --max-new-tokens or --engine eager"
            )

    def max_graph_inputs(self) -> int | None:
        return self.buckets[-1]

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
        """Same contract as `ModelRunner.forward`; the returned tensors are the caller's own, unless
        `copy=False`: then a graph forward returns views of the bucket's outputs, valid until this
        runner's next forward (the decode loop's verification: its logits are read before the next
        one, and a copy of an 80-node tree's (81, 152k) float32 logits moves 98 MB per step)."""
        n = len(tokens)
        pending = 0 if parents is None else len(parents) - n
        self._check_room(pending, n)
        size, width = self._shape(n, pending)
        if (
            size is None
            and parents is None
            and self.chunkable
            and n <= CHUNKED_PREFILL_MAX * self.buckets[-1]
        ):
            return self._chunked_forward(tokens, want_hidden, last_only, all_hidden)
        if size is None or width is None:  # a very long prompt or a wide tree: eager, variable length
            return self._eager_forward(tokens, parents, want_hidden, last_only, all_hidden)

        bucket = self._bucket(size, width, want_hidden)
        self._log_forward(n)
        self._fill(bucket, tokens, parents, self.length, pending)
        logits, hidden = self._run_bucket(bucket, size, width, want_hidden)
        rows = slice(n - 1, n) if last_only else slice(0, n)
        logits = logits[rows]
        hidden = hidden[slice(0, n) if all_hidden else rows] if want_hidden else None
        if not copy or bucket.graph is None:  # without graphs every forward's outputs are new tensors
            return logits, hidden
        # Graph outputs are overwritten by the next replay: hand out copies.
        return logits.clone(), hidden.clone() if hidden is not None else None

    def _chunked_forward(
        self, tokens: list[int], want_hidden: bool, last_only: bool, all_hidden: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`forward` of a chain longer than the largest bucket: chunks of that size, each written after
        the ones before it and seeing them as its committed prefix. Nothing is committed here (the
        caller commits the whole chain, as after one forward)."""
        top, base = self.buckets[-1], self.length
        parts = []
        try:
            for start in range(0, len(tokens), top):
                self.length = base + start
                parts.append(
                    self.forward(tokens[start : start + top], None, want_hidden, last_only, all_hidden)
                )
        finally:
            self.length = base
        logits = parts[-1][0] if last_only else torch.cat([part[0] for part in parts])
        if not want_hidden:
            return logits, None
        every_row = all_hidden or not last_only
        return logits, torch.cat([part[1] for part in parts]) if every_row else parts[-1][1]

    @torch.inference_mode()
    def forward_tensors(
        self, tokens: torch.Tensor, parents: torch.Tensor, want_hidden: bool = False, copy: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`forward` for inputs that live on the device: written into the bucket's inputs by device
        copies (stream-ordered after whatever computed them), so nothing waits for the GPU here.
        `copy=False` as in `forward`: views of the graph's outputs, valid until its next replay (a
        caller that turns them into something else right away, a log-softmax or an argmax)."""
        n = tokens.shape[0]
        pending = parents.shape[0] - n
        self._check_room(pending, n)
        size, width = self._shape(n, pending)
        if size is None or width is None:  # as in forward: the eager path (it reads the tensors back)
            return super().forward_tensors(tokens, parents, want_hidden)
        bucket = self._bucket(size, width, want_hidden)
        self._log_forward(n)
        self._fill_on_device(bucket, tokens, parents, pending)
        logits, hidden = self._run_bucket(bucket, size, width, want_hidden)
        if not copy or bucket.graph is None:  # without graphs every forward's outputs are new tensors
            return logits[:n], hidden[:n] if want_hidden else None
        return logits[:n].clone(), hidden[:n].clone() if want_hidden else None

    def _fill_on_device(
        self, bucket: Bucket, tokens: torch.Tensor, parents: torch.Tensor, pending: int
    ) -> None:
        """Write device inputs into the bucket as `_fill` writes host ones, with the fewest calls: each
        is host time on the clock, and a tree's levels, queued back to back, run no faster than the host
        feeds them. The pads stay as the last fill of the same layout left them, and the two scalars
        are rewritten only when they change (both ride in the fill kernels' arguments)."""
        n, size, width = tokens.shape[0], bucket.size, bucket.width
        used = pending + n
        if bucket.device_layout is None or bucket.device_layout[0] != (n, used):
            inputs = bucket.inputs
            inputs[n:size].zero_()
            inputs[size + used : size + width].fill_(-1)  # pads and unused window slots, as _fill
            bucket.device_layout = ((n, used), (inputs[:n], inputs[size : size + used]))
            bucket.device_scalars = None
        token_slots, parent_slots = bucket.device_layout[1]
        token_slots.copy_(tokens)
        parent_slots.copy_(parents)
        old = bucket.device_scalars
        if old is None or old[0] != self.length:
            bucket.inputs[size + width].fill_(self.length)
        if old is None or old[1] != pending:
            bucket.inputs[size + width + 1].fill_(pending)
        bucket.device_scalars = (self.length, pending)

    def _shape(self, n: int, pending: int) -> tuple[int | None, int | None]:
        """(inputs bucket, window bucket) of a forward of n inputs after `pending` slots; None: no
        bucket holds it (the caller runs it in chunks or eagerly)."""
        size = next((b for b in self.buckets if b >= n), None)
        width = (
            size if pending == 0 else next((b for b in self.buckets if size and b >= pending + size), None)
        )
        return size, width

    def _run_bucket(
        self, bucket: Bucket, size: int, width: int, want_hidden: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Replay the bucket's graph (timed when profiling) or run its static forward; outputs are
        the bucket's own buffers, overwritten by its next run."""
        if bucket.graph is None:
            with self._attention():
                return self._step(bucket.inputs, size, width, want_hidden)
        if self.profile:
            self._timing.record()
            bucket.graph.replay()
            self._timing.record()
        else:
            bucket.graph.replay()
        return bucket.logits, bucket.hidden

    def _move(self, kept: list[int]) -> None:
        if self.use_graphs and len(kept) <= self.buckets[-1]:
            self._move_graph(kept)
        else:
            super()._move(kept)

    # -------------------------------------------------------------------------------------------
    # Benchmark helpers

    def prepare(self, sizes: list[int] | None = None, want_hidden: bool = False) -> None:
        """Capture (and compile) plain buckets now, so that it happens outside any timed run."""
        for size in sizes or self.buckets:
            self._bucket(size, size, want_hidden)
        if self.use_graphs and self._move_bucket is None:
            self._move_graph(None)

    def prepare_seen(self) -> None:
        """Capture every bucket of each variant (hidden states or not, after pending slots or not) that
        a forward has used so far. A warm-up generation reaches only the sizes its one prompt happened
        to need; a size first met in a timed answer would be captured, and compiled when its variant
        is new, on the clock (46.9 s on one DReSD answer on an H200 before this existed, 2026-12-03)."""
        variants = {(want_hidden, width != size) for size, width, want_hidden in self._buckets}
        for want_hidden, windowed in sorted(variants):
            for size in self.buckets:
                widths = [w for w in self.buckets if w > size] if windowed else [size]
                for width in widths:
                    self._bucket(size, width, want_hidden)
        if self.use_graphs and self._move_bucket is None:
            self._move_graph(None)

    def take_forward_times(self) -> list[float]:
        """GPU seconds of each graph forward since the last call, in order (needs `profile = True`)."""
        events = self._timing.recorded()
        if not events:
            return []
        events[-1].synchronize()
        times = [begin.elapsed_time(end) / 1000.0 for begin, end in zip(events[::2], events[1::2])]
        self._timing.reset()
        return times

    # -------------------------------------------------------------------------------------------
    # Internals

    @contextmanager
    def _attention(self, graph: bool = True):
        """Select our attention function, pin the SDPA backend and swap in the fused projections and
        the rotary tables for the duration of a forward/capture.

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
            with pinned, fused(self.fusions) if graph else nullcontext():
                with rotary_tables(self.rotary) if graph else nullcontext():
                    yield
        finally:
            config._attn_implementation = previous

    def _eager_context(self):
        return self._attention(graph=False)

    def _step(
        self, inputs: torch.Tensor, size: int, width: int, want_hidden: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward of `size` inputs in a `width` window described by `inputs`; fixed shapes, no host
        sync (capturable): the positions and mask (`_inputs`), then the model (`_model_step`)."""
        positions, mask, write = self._inputs(inputs, size, width)
        return self._model_step(inputs[:size], positions, mask, write, want_hidden)

    def _static_inputs(
        self, inputs: torch.Tensor, size: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(position ids (1, size), attention mask, cache write slots (size,)) of the bucket's inputs.
        Window node j is cache slot start + j; the inputs are nodes [m, m + size)."""
        parents = inputs[size : size + width]
        start, pending = inputs[size + width], inputs[size + width + 1]
        window = self._cols[:width]
        anc = ancestor_closure(
            parents, window, closure_rounds(self.buckets[-1]) if self.compile_mode else None
        )
        nodes = pending + self._cols[:size]
        visible = anc.index_select(0, nodes)  # (size, width)
        depth = visible.sum(dim=1) - 1
        if self.attention == "tree":  # the kernel reads the window and `start`, and builds the mask itself
            mask = tree_mask(visible, start)
        else:  # an additive mask over the whole static cache
            rel = self._cols - start
            in_window = visible.index_select(1, rel.clamp(0, width - 1)) & ((rel >= 0) & (rel < width))
            allowed = in_window | (self._cols < start)
            mask = torch.where(allowed, self._zero, self._masked)[None, None]
        return (start + depth).unsqueeze(0), mask, start + nodes

    def _static_model(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        write: torch.Tensor,
        want_hidden: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model over the static cache: logits (size, V) float32 and, with want_hidden, the final
        hidden states (size, H)."""
        self.cache.slots.write = write
        self.cache.slots.visible = None
        out = self.model(
            input_ids=tokens.unsqueeze(0),
            position_ids=positions,
            attention_mask=mask,
            past_key_values=self.cache,
            use_cache=True,
            # Hidden states only in the graphs that need them: returning them installs hooks,
            # which torch.compile cannot trace through (graph breaks).
            output_hidden_states=want_hidden,
        )
        logits = out.logits[0].float() if self.float_logits else out.logits[0]
        return logits, (out.hidden_states[-1][0] if want_hidden else None)

    def _new_bucket(self, size: int, width: int, length: int) -> Bucket:
        inputs = torch.zeros(length, dtype=torch.long, device=self.device)
        if self.device.type == "cuda":
            host = torch.zeros(length, dtype=torch.long, pin_memory=True)
        else:
            host = inputs  # the CPU path reads the host buffer directly
        return Bucket(size, width, inputs, host)

    def _upload(self, bucket: Bucket) -> None:
        if bucket.host is not bucket.inputs:
            bucket.inputs.copy_(bucket.host, non_blocking=True)
            self._copied.record()

    def _host_view(self, bucket: Bucket) -> np.ndarray:
        # The previous asynchronous copy must have read the pinned buffer before it is rewritten.
        if self._copied is not None:
            self._copied.synchronize()
        return bucket.host.numpy()

    def _fill(
        self, bucket: Bucket, tokens: list[int], parents: list[int] | None, start: int, pending: int
    ) -> None:
        size, width, n = bucket.size, bucket.width, len(tokens)
        host = self._host_view(bucket)
        host[:n] = tokens
        host[n:size] = 0
        used = pending + n
        host[size : size + used] = np.arange(-1, n - 1) if parents is None else parents
        host[size + used : size + width] = -1  # pads and unused window slots: depth 0, their own slot only
        host[size + width] = start
        host[size + width + 1] = pending
        self._upload(bucket)
        bucket.device_layout = bucket.device_scalars = None  # every entry rewritten from the host

    def _bucket(self, size: int, width: int, want_hidden: bool) -> Bucket:
        bucket = self._buckets.get((size, width, want_hidden))
        if bucket is None:
            bucket = self._new_bucket(size, width, size + width + 2)
            bucket.want_hidden = want_hidden
            if self.use_graphs:
                self._capture(bucket)
            self.captures += 1  # counted without CUDA too (static buffers only), so CPU tests see it
            self._buckets[size, width, want_hidden] = bucket
        return bucket

    def _capture(self, bucket: Bucket) -> None:
        """Warm up (and compile) on a side stream, then capture the forward into a CUDA graph."""
        size, width = bucket.size, bucket.width
        # A dummy step whose writes land in the spare slots past max_len, never in live entries.
        self._fill(bucket, [0] * size, [-1] * size, self.max_len, 0)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(side), self._attention():
            try:
                for _ in range(3 if self.compile_mode else 1):
                    self._step(bucket.inputs, size, width, bucket.want_hidden)
            except Exception as err:  # a model torch.compile cannot handle still gets graphs
                if self.compile_mode is None:
                    raise
                self.compile_error = f"{type(err).__name__}: {str(err)[:300]}"
                self.compile_mode = None
                self._inputs, self._model_step = self._static_inputs, self._static_model
                self._step(bucket.inputs, size, width, bucket.want_hidden)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), self._attention(), torch.cuda.graph(graph, pool=self._pool):
            bucket.logits, bucket.hidden = self._step(bucket.inputs, size, width, bucket.want_hidden)
        bucket.graph = graph

    def _move_graph(self, kept: list[int] | None) -> None:
        """Compaction through a captured graph: `kept` inputs move to [length, length + k)."""
        top = self.buckets[-1]
        if self._move_bucket is None:
            # All layers in two launches where Triton is there and passes its self-check (compaction.py).
            self.cache.fused, self.move_kind = fused_move(self.cache.tensors(), top)
            move = self._new_bucket(top, top, 2 * top)
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
            self._move_bucket = move
        if kept is not None:
            self._fill_move(self._move_bucket, kept, self.length)
            self._move_bucket.graph.replay()

    def _fill_move(self, move: Bucket, kept: list[int], length: int) -> None:
        top, k = move.size, len(kept)
        host = self._host_view(move)
        host[:k] = np.asarray(kept) + length
        host[top : top + k] = np.arange(length, length + k)
        # Unused entries copy a spare slot onto itself: harmless, and all of them carry equal values.
        host[k:top] = self.max_len
        host[top + k :] = self.max_len
        self._upload(move)
