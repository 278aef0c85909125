"""The k most likely token ids of every row of the verifier's logits, in two passes.

Token Recycling learns the top-k successors of every forwarded input (`needs_node_topk`), and SAM hands
most of its steps to it, so those steps take the top-8 of a (inputs, vocab) float32 tensor. torch.topk
gives each row one thread block that walks its 152k columns in several radix passes: 0.20 ms for 64
rows and 0.31 ms for 96 on an H200, against 2.6-2.8 ms for the forward itself
(bench/results/2026-12-03-h200-pre5/step_parts.json, `top8_ms`). With a few dozen rows most of the GPU
idles while it runs.

`row_topk` cuts every row into chunks of BLOCK columns, one Triton program each, that keeps its chunk's
k largest entries (k rounds of max over registers, the lowest column first on equal values); then
torch.topk picks the k largest of each row's chunks * k candidates (a few hundred columns). The k
largest of a row are among its chunks' k largest, so the result is torch.topk's up to the order of
equal values, which only ever changes a draft, never a verified token.

The Triton pass is used after a self-check against torch.topk on the device (once per process);
elsewhere, and for rows too short to chunk, it is torch.topk.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

BLOCK = 2048  # columns per program: 75 chunks for a 152k vocabulary


@functools.cache  # built on first use: Triton is imported only where the pass runs
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def chunk_topk_kernel(X, Values, Ids, stride, COLS, CHUNKS, K: tl.constexpr, BLOCK_C: tl.constexpr):
        row, chunk = tl.program_id(0), tl.program_id(1)
        cols = chunk * BLOCK_C + tl.arange(0, BLOCK_C)
        live = cols < COLS  # columns not taken yet (pads past the row's end never are)
        x = tl.load(X + row.to(tl.int64) * stride + cols, mask=live, other=float("-inf")).to(tl.float32)
        out = (row.to(tl.int64) * CHUNKS + chunk) * K
        for j in tl.static_range(K):
            top = tl.max(tl.where(live, x, float("-inf")), 0)
            at = tl.min(tl.where(live & (x == top), cols, COLS), 0)  # the first live column holding it
            tl.store(Values + out + j, top)
            tl.store(Ids + out + j, tl.minimum(at, COLS - 1))  # COLS: a chunk with fewer than K columns
            live = live & (cols != at)

    return chunk_topk_kernel


def chunked_topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The Triton two-pass top-k: (rows, cols) -> (rows, k) int64 column ids, largest first."""
    rows, cols = logits.shape
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    chunks = -(-cols // BLOCK)
    values = torch.empty(rows, chunks * k, dtype=torch.float32, device=logits.device)
    ids = torch.empty(rows, chunks * k, dtype=torch.int64, device=logits.device)
    _kernel()[(rows, chunks)](
        logits, values, ids, logits.stride(0), cols, chunks, K=k, BLOCK_C=BLOCK, num_warps=4
    )
    return ids.gather(1, values.topk(k, dim=1).indices)


def why_not_chunked(logits: torch.Tensor, k: int) -> str | None:
    """Why these logits take torch.topk (None: the Triton pass can take them)."""
    # A last chunk of fewer than k columns would offer padding as candidates (duplicate ids in a row
    # with fewer than k finite values): such widths take torch.topk.
    cols = logits.shape[-1]
    if logits.dim() != 2 or cols < 2 * BLOCK or not 0 < k <= 64 or 0 < cols % BLOCK < k:
        return f"logits of shape {tuple(logits.shape)} with k={k}"
    if logits.device.type != "cuda":
        return "not on CUDA"
    return self_check(logits.device, logits.dtype)


@functools.cache  # once per device, dtype and process
def self_check(device: torch.device, dtype: torch.dtype = torch.float32) -> str | None:
    """The Triton pass on random rows the size of a real vocabulary, in the dtype it will read (the
    compiled target's logits are the model's, a draft's log-probs float32): None when it finds each
    row's top 8, else why torch.topk stays. bf16 has too few values for a row without ties, so the top 8
    are planted at random columns with distinct values above every other entry: one right answer."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed"
    gen = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(37, 151_936, generator=gen, device=device).to(dtype)  # all below 11
    planted = torch.rand(37, 151_936, generator=gen, device=device).argsort(dim=1)[:, :8]
    logits.scatter_(1, planted, (18 - torch.arange(8, device=device)).to(dtype).expand(37, 8))
    try:
        got = chunked_topk(logits, 8)
        torch.cuda.synchronize(device)
    except Exception as err:  # a Triton or driver version that cannot build it
        return f"{type(err).__name__}: {str(err)[:200]}"
    if not torch.equal(got, planted):
        return f"the chunked top-k missed the planted top 8 on the self-check ({dtype})"
    return None


def row_topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Column ids of every row's k largest entries, largest first: (rows, cols) -> (rows, k) int64."""
    k = min(k, logits.shape[-1])
    if why_not_chunked(logits, k) is None:
        return chunked_topk(logits, k)
    return logits.topk(k, dim=-1).indices


def topk_kind(device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """How `row_topk` runs on this device for logits of `dtype` (the target's), for the run's config."""
    if device.type != "cuda":
        return "torch.topk (not on CUDA)"
    problem = self_check(device, dtype)
    return (
        "torch.topk (" + problem + ")"
        if problem
        else f"chunked: Triton top-k per {BLOCK} columns, then torch.topk"
    )
