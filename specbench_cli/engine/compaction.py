"""Compacting an accepted path in every layer at once: two Triton launches instead of 4 per layer.

After a tree verification the accepted inputs' K/V move down to the committed prefix
(`SlotCache.move`). Done with torch ops it is an index_select and an index_copy_ for the keys and the
values of every layer: 112 small kernels for a 28-layer model, ~0.35 ms a step on an H200 even inside
a CUDA graph (bench/results/2026-12-03-h200-head-methods: `t_other` 0.42-0.46 ms for tree drafts
against 0.08 ms for chains, which need no move). Each kernel moves a few KiB, so the launches are the
cost.

`FusedMove` moves every layer's keys and values in two launches. The tensors stay separate (the
compiled forward sees the cache exactly as before); the kernels get their addresses in one int64
tensor and cast each to a pointer, as Triton's grouped GEMM does. The first kernel gathers the `src`
slots of every tensor into a scratch buffer, the second scatters them to `dst`: sources and
destinations overlap (an accepted path moves down onto slots other accepted inputs come from), and
two launches order every read before every write.

`fused_move(layers, rows)` builds one after a self-check on scratch tensors of the same layout
against the torch ops; it returns None, with the reason, where it cannot be used (no CUDA, no
Triton, layers of different shapes, or a check that fails), and the cache keeps the torch ops.
"""

from __future__ import annotations

from typing import Any

import torch

_KERNEL: Any = None
BLOCK_ROWS = 32  # slots one program moves


def _build_kernel() -> Any:
    import triton
    import triton.language as tl

    # Program (tensor, head, row block): GATHER copies BLOCK_R of the cache slots `Slots` of one head of
    # one tensor into their scratch rows; the other pass copies scratch rows back to slots `Slots`.
    @triton.jit
    def move_kernel(
        Ptrs, Slots, Scratch, ROWS, ROWS_PAD, HEADS, SLOTS,
        GATHER: tl.constexpr, BLOCK_R: tl.constexpr, D: tl.constexpr,
    ):  # fmt: skip
        tensor, head, block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        base = tl.load(Ptrs + tensor).to(tl.pointer_type(Scratch.dtype.element_ty))
        rows = block * BLOCK_R + tl.arange(0, BLOCK_R)
        ok = rows < ROWS
        slot = tl.load(Slots + rows, mask=ok, other=0).to(tl.int64)
        d = tl.arange(0, D)
        cache_at = (head.to(tl.int64) * SLOTS + slot[:, None]) * D + d[None, :]
        scratch_at = ((tensor.to(tl.int64) * HEADS + head) * ROWS_PAD + rows[:, None]) * D + d[None, :]
        if GATHER:
            tl.store(Scratch + scratch_at, tl.load(base + cache_at, mask=ok[:, None]), mask=ok[:, None])
        else:
            tl.store(base + cache_at, tl.load(Scratch + scratch_at, mask=ok[:, None]), mask=ok[:, None])

    return move_kernel


def _kernel() -> Any:
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _build_kernel()
    return _KERNEL


class FusedMove:
    """`move(src, dst)` over `tensors` (each (1, heads, slots, dim), contiguous, one dtype and shape)
    for index vectors of exactly `rows` entries (the compaction graph's fixed size)."""

    def __init__(self, tensors: list[torch.Tensor], rows: int):
        first = tensors[0]
        _, self.heads, self.slots, self.dim = first.shape
        self.rows = rows
        # Row blocks of BLOCK_ROWS per program keep a program's tile (BLOCK_ROWS x dim) in registers.
        self.blocks = -(-rows // BLOCK_ROWS)
        self.rows_pad = self.blocks * BLOCK_ROWS
        self.tensors = tensors  # kept alive: the kernels only hold their addresses
        self.ptrs = torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64, device=first.device)
        self.scratch = torch.empty(
            len(tensors) * self.heads * self.rows_pad * self.dim, dtype=first.dtype, device=first.device
        )

    def __call__(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        move = _kernel()
        grid = (len(self.tensors), self.heads, self.blocks)
        for slots, gather in ((src, True), (dst, False)):  # every read before any write
            move[grid](
                self.ptrs, slots, self.scratch, self.rows, self.rows_pad, self.heads, self.slots,
                GATHER=gather, BLOCK_R=BLOCK_ROWS, D=self.dim, num_warps=4,
            )  # fmt: skip


def torch_move(tensors: list[torch.Tensor], src: torch.Tensor, dst: torch.Tensor) -> None:
    """The reference: one index_select and one index_copy_ per tensor (slot axis 2)."""
    for t in tensors:
        t.index_copy_(2, dst, t.index_select(2, src))


def why_not_fused(tensors: list[torch.Tensor]) -> str | None:
    """Why these tensors cannot take the fused move (None: they can)."""
    if not tensors:
        return "no cache tensors"
    first = tensors[0]
    if first.dim() != 4 or first.shape[0] != 1:
        return f"cache tensors of shape {tuple(first.shape)}, not (1, heads, slots, dim)"
    dim = first.shape[-1]
    if dim & (dim - 1):
        return f"head dim {dim} is not a power of two"
    for t in tensors:
        if t.shape != first.shape or t.dtype != first.dtype or not t.is_contiguous():
            return "cache tensors differ in shape, dtype or layout"
    if first.device.type != "cuda":
        return "not on CUDA"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed"
    return None


def self_check(like: torch.Tensor, rows: int) -> str | None:
    """Run the kernels on scratch tensors shaped like the cache's (fewer slots) and compare with
    `torch_move` on an overlapping move; None when they agree exactly."""
    _, heads, _, dim = like.shape
    slots = 2 * rows + 8
    gen = torch.Generator(device=like.device).manual_seed(0)
    made = [
        torch.randn(1, heads, slots, dim, generator=gen, device=like.device).to(like.dtype) for _ in range(4)
    ]
    expected = [t.clone() for t in made]
    # An accepted path: inputs at slots [base, base + rows) keep every other one, moved down to base.
    base = 3
    kept = torch.arange(0, rows, 2, device=like.device)
    # src and dst as the two halves of one vector, as the runner's compaction graph holds them (dst
    # then starts at an offset Triton specialises differently from a fresh allocation). Unused
    # entries copy a spare slot onto itself, as the runner's pads do.
    both = torch.full((2 * rows,), slots - 1, dtype=torch.int64, device=like.device)
    src, dst = both[:rows], both[rows:]
    src[: len(kept)] = base + kept
    dst[: len(kept)] = base + torch.arange(len(kept), device=like.device)
    try:
        FusedMove(made, rows)(src, dst)
        torch.cuda.synchronize(like.device)
    except Exception as err:  # a Triton or driver version that cannot build it: keep the torch ops
        return f"{type(err).__name__}: {str(err)[:200]}"
    torch_move(expected, src, dst)
    if not all(torch.equal(a, b) for a, b in zip(made, expected)):
        return "the fused move disagreed with the torch ops on the self-check"
    return None


def fused_move(tensors: list[torch.Tensor], rows: int) -> tuple[FusedMove | None, str]:
    """A checked `FusedMove` for the cache tensors, or None and the reason the torch ops stay."""
    problem = why_not_fused(tensors) or self_check(tensors[0], rows)
    if problem:
        return None, f"per layer ({problem})"
    return FusedMove(tensors, rows), f"fused: 2 Triton launches for {len(tensors)} tensors"
