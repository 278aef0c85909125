"""Attention functions for the compiled runner: packed-GQA SDPA and a Triton tree-attention kernel.

Both plug into transformers through its `AttentionInterface` (`register_attention()`), so the model's
own forward calls them with the query, the whole static cache and our mask.

Why not transformers' SDPA: with a mask it repeats every K/V head over the whole static cache (6x the
cache bytes per layer for Qwen2.5-1.5B). `packed_sdpa_attention` stacks the query heads of a group along
the query axis instead. The tree kernel goes further: it splits the key range across thread blocks
(flash-decoding), stops at the last live slot and builds the tree mask itself from a tiny input.

The tree mask travels through transformers' `attention_mask` argument (any 4-D tensor reaches the
attention function untouched): float32 (1, 1, B, W + 1) for B query inputs over a window of W >= B slots.
Its first W columns say which window slots each input sees (1 = visible): window slot j is cache slot
`start + j`; the last column holds `start`, the committed length. Input i sees every slot < start and
window slot j when mask[i, j] is 1. A plain tree forward has W = B (its inputs are the window); a draft
tree grown level by level puts the earlier levels' pending slots in front of the new inputs (W > B).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

PACKED_ATTENTION = "specbench_packed_sdpa"
TREE_ATTENTION = "specbench_tree_attention"
_TREE_OP: Any = None
_TREE_KERNELS: Any = None


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


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def tree_mask(visible: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """(B, W) bool window visibility + 0-dim start -> the (1, 1, B, W + 1) float32 tree mask."""
    rows = visible.shape[0]
    return torch.cat([visible.float(), start.float().expand(rows, 1)], dim=1)[None, None]


def dense_tree_mask(mask: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """The tree mask as an additive (B, length) mask (the reference path, and the CPU path)."""
    width = mask.shape[-1] - 1
    visible, start = mask[0, 0, :, :width] > 0.5, mask[0, 0, 0, width].long()
    cols = torch.arange(length, device=mask.device)
    rel = cols - start
    window = visible.index_select(1, rel.clamp(0, width - 1)) & ((rel >= 0) & (rel < width))
    allowed = window | (cols < start)
    return torch.zeros((), dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)


def reference_tree_attention(
    query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """query (Hq, B, D), k, v (Hkv, L, D) -> (B, Hq, D): the query heads of a K/V head stacked as its
    rows (row r is input r % B), one SDPA over the whole cache with the dense tree mask."""
    q_heads, size, dim = query.shape
    heads = k.shape[0]
    q = query.reshape(heads, q_heads // heads * size, dim)
    dense = dense_tree_mask(mask, k.shape[1], q.dtype)
    rows = dense.repeat(q.shape[1] // dense.shape[0], 1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=rows, scale=scale)
    return out.reshape(q_heads, size, dim).transpose(0, 1).contiguous()


# ---------------------------------------------------------------------------------------------------
# The Triton kernels.
#
# Measured on an H200 (bench/results/h200-2026-11-21-profile-before-tree-kernel.json): with a dense mask
# over the whole static cache, SDPA's memory-efficient kernel took ~100 us per layer for ONE query token
# (2 K/V heads -> 2 thread blocks walking 2,176 keys): 2.7 of 6.4 ms per Qwen2.5-1.5B forward. Splitting
# the key range across thread blocks and stopping at the last live slot brought a forward to 2.7 ms.
#
# The grid is fixed when a CUDA graph is captured, but the live length is not. So the kernels divide the
# *live* range (read from the mask on the GPU) into the grid's SPLITS chunks at run time: every program
# has work at any context length, instead of most of them idling on chunks of a mostly empty static
# cache (2026-12-02 profile: at 1,000 live slots of 4,352, three quarters of the split programs stored
# empty partials). The merge then reads all partials of a row in one vector load per tensor, one
# program per (head, row), instead of walking the chunks one dependent load at a time: that walk cost
# 12 us per layer for a single query (merge_kernel, 0.34 ms of a 2.68 ms forward).


def _build_tree_kernels() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def split_kernel(
        Q, K, V, Mask, Opart, Mpart, Lpart,
        stride_qh, stride_qb, stride_kh, stride_kn, stride_vh, stride_vn,
        R, R_PAD, HEADS, GROUPS, SIZE, WIDTH, SPLITS, scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, IEEE: tl.constexpr,
    ):  # fmt: skip
        split, head, block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        start = tl.load(Mask + WIDTH).to(tl.int32)
        live = start + WIDTH  # the live slots [0, start + WIDTH), cut into SPLITS chunks of BLOCK_N's
        chunk = tl.cdiv(tl.cdiv(live, SPLITS), BLOCK_N) * BLOCK_N
        lo = split * chunk
        if lo < live:  # chunks past the live range hold nothing; the merge never reads them
            hi = tl.minimum(lo + chunk, live)
            rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
            row_ok = rows < R
            node = rows % SIZE
            d = tl.arange(0, D)
            # Row r of K/V head `head` is query head head * GROUPS + r // SIZE at input r % SIZE, read
            # where the model left it: no copy of the query into a row-major layout first.
            q_at = (head * GROUPS + rows // SIZE) * stride_qh + node * stride_qb
            q = tl.load(Q + q_at[:, None] + d[None, :], mask=row_ok[:, None], other=0.0)
            # Scores in base 2 (the merge works in the same base): exp2 of a difference is one
            # instruction; the scale is applied to the float32 scores, not rounded into the query.
            qk_scale = scale * 1.4426950408889634
            m = tl.full([BLOCK_M], float("-inf"), tl.float32)
            denom = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, D], tl.float32)
            k_at = K + head * stride_kh + d[None, :]
            v_at = V + head * stride_vh + d[None, :]
            # Whole key blocks below `start` are visible to every input: no tree mask, no bounds, and
            # every row's running maximum is finite after the first. Most of a long context is here.
            # (float32, the exactness checks, keeps the one masked loop it was verified with.)
            prefix_end = lo
            if not IEEE:
                prefix_end = lo + (tl.maximum(tl.minimum(hi, start) - lo, 0) // BLOCK_N) * BLOCK_N
                for n0 in range(lo, prefix_end, BLOCK_N):
                    cols = n0 + tl.arange(0, BLOCK_N)
                    k = tl.load(k_at + cols[:, None] * stride_kn)
                    s = tl.dot(q, tl.trans(k)) * qk_scale
                    m_new = tl.maximum(m, tl.max(s, 1))
                    p = tl.math.exp2(s - m_new[:, None])
                    alpha = tl.math.exp2(m - m_new)
                    denom = denom * alpha + tl.sum(p, 1)
                    v = tl.load(v_at + cols[:, None] * stride_vn)
                    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
                    m = m_new
            # The rest of the chunk: a partial block before `start`, then the window's slots, which
            # each input sees only where its row of the tree mask says so.
            for n0 in range(prefix_end, hi, BLOCK_N):
                cols = n0 + tl.arange(0, BLOCK_N)
                col_ok = cols < hi
                k = tl.load(k_at + cols[:, None] * stride_kn, mask=col_ok[:, None], other=0.0)
                if IEEE:
                    s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
                else:
                    s = tl.dot(q, tl.trans(k)) * qk_scale
                rel = cols - start
                in_window = row_ok[:, None] & (col_ok & (rel >= 0))[None, :]
                seen = tl.load(Mask + node[:, None] * (WIDTH + 1) + rel[None, :], mask=in_window, other=0.0)
                allowed = ((cols < start)[None, :] | (seen > 0.5)) & col_ok[None, :]
                s = tl.where(allowed, s, float("-inf"))
                m_new = tl.maximum(m, tl.max(s, 1))
                m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
                p = tl.math.exp2(s - m_ref[:, None])
                alpha = tl.math.exp2(m - m_ref)
                denom = denom * alpha + tl.sum(p, 1)
                v = tl.load(v_at + cols[:, None] * stride_vn, mask=col_ok[:, None], other=0.0)
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
        Opart, Mpart, Lpart, Out, Mask, stride_ob, stride_oh, R_PAD, HEADS, GROUPS, SIZE, WIDTH, SPLITS,
        SPLITS_P2: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
    ):  # fmt: skip
        head, row = tl.program_id(0), tl.program_id(1)
        live = tl.load(Mask + WIDTH).to(tl.int32) + WIDTH  # the split kernel's chunks, recomputed
        chunk = tl.cdiv(tl.cdiv(live, SPLITS), BLOCK_N) * BLOCK_N
        splits = tl.arange(0, SPLITS_P2)
        used = splits < tl.cdiv(live, chunk)  # the chunks a split program wrote
        at = (splits * HEADS + head) * R_PAD + row
        m = tl.load(Mpart + at, mask=used, other=float("-inf"))
        top = tl.max(m, 0)
        top = tl.where(top == float("-inf"), 0.0, top)
        weight = tl.where(used, tl.math.exp2(m - top), 0.0)  # base 2, as the split kernel's
        total = tl.sum(weight * tl.load(Lpart + at, mask=used, other=0.0), 0)
        d = tl.arange(0, D)
        parts = tl.load(Opart + at[:, None] * D + d[None, :], mask=used[:, None], other=0.0)
        out = tl.sum(weight[:, None] * parts, 0) / tl.where(total > 0, total, 1.0)
        # Written as (input, query head, dim), the layout the output projection reads.
        out_at = (row % SIZE) * stride_ob + (head * GROUPS + row // SIZE) * stride_oh
        tl.store(Out + out_at + d, out.to(Out.dtype.element_ty))

    return split_kernel, merge_kernel


@dataclass(frozen=True)
class KernelConfig:
    """How the split kernel cuts the work: query rows per program, keys per inner step, key-range
    chunks per (head, row block), warps per program, and the key blocks in flight (Triton's software
    pipeline: 3 is its default; 2 lets 64- and 128-row tiles of 128 keys fit in shared memory)."""

    block_m: int
    block_n: int
    splits: int
    warps: int = 4
    stages: int = 3

    @property
    def key(self) -> str:
        """The sweep's name for it: rows/keys/chunks/warps, and /sN where the stages are not 3."""
        tail = f"/s{self.stages}" if self.stages != 3 else ""
        return f"{self.block_m}/{self.block_n}/{self.splits}/{self.warps}{tail}"


# Per head dim and query-row count (rows = query heads per K/V head x inputs), the configuration that
# `bench/attention_sweep.py` found fastest on an H200 over contexts of 300-2,000 live slots (head dim
# 64, the 0.5B: bench/results/2026-12-03-h200-kernels/attention-sweep-2x7x64.json; 128, the 1.5B, with
# the split kernel's unmasked prefix loop: bench/results/2026-12-03-h200-session11/). A row count between two entries
# takes the next larger entry's; more rows than the last entry, the last; a head dim without entries, the old rule.
KERNEL_CONFIGS: dict[int, dict[int, KernelConfig]] = {
    64: {
        7: KernelConfig(16, 64, 32, 4),
        112: KernelConfig(16, 64, 8, 4),
        224: KernelConfig(64, 64, 16, 4),
        336: KernelConfig(64, 64, 8, 4),
        448: KernelConfig(64, 64, 8, 4),
        560: KernelConfig(32, 64, 16, 4),
        672: KernelConfig(64, 64, 16, 4),
        903: KernelConfig(64, 64, 4, 4),
    },
    128: {
        6: KernelConfig(16, 32, 16, 4),
        96: KernelConfig(16, 32, 8, 4),
        192: KernelConfig(16, 64, 4, 4),
        288: KernelConfig(16, 128, 2, 4),
        384: KernelConfig(16, 128, 2, 4),
        480: KernelConfig(16, 128, 2, 4),
        # Token Recycling's 81-input bucket: 31 row blocks x 2 heads x 2 chunks = 124 programs, under the
        # H200's 132 SMs (576 rows' 16-row blocks would make 144).
        486: KernelConfig(16, 128, 2, 4),
        576: KernelConfig(64, 128, 8, 4, stages=2),
        774: KernelConfig(32, 128, 2, 4),
    },
}
_OVERRIDE: KernelConfig | None = None  # set by the sweep, one configuration at a time


def default_config(rows: int, length: int, heads: int) -> KernelConfig:
    """The rule used before the sweep (and where no table entry applies): enough (chunk, head, row
    block) programs to fill the GPU when the live range is long; fewer chunks when there are many row
    blocks (each chunk's partials are written and merged per row)."""
    block_m = 16 if rows <= 16 else 32 if rows <= 32 else 64
    blocks = cdiv(rows, block_m)
    return KernelConfig(block_m, 64, max(1, min(cdiv(length, 64), cdiv(256, heads * blocks))))


def kernel_config(rows: int, length: int, heads: int, dim: int, ieee: bool = False) -> KernelConfig:
    """The configuration a launch uses: the sweep's override, else the table's entry for `rows`. The
    table was tuned in bf16; float32 tiles are twice the bytes, so float32 (`ieee`, the exactness
    checks) keeps the rule it was verified with."""
    if _OVERRIDE is not None:
        return _OVERRIDE
    table = KERNEL_CONFIGS.get(dim)
    if ieee or not table:
        return default_config(rows, length, heads)
    fits = [r for r in sorted(table) if r >= rows]
    return table[fits[0] if fits else max(table)]


def triton_tree_attention(
    query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """`reference_tree_attention` as two Triton kernels: partial softmax per live chunk, then a merge.
    query (Hq, B, D) in any layout with unit stride along D; k, v (Hkv, L, D) -> (B, Hq, D) contiguous."""
    global _TREE_KERNELS
    if _TREE_KERNELS is None:
        _TREE_KERNELS = _build_tree_kernels()
    split_kernel, merge_kernel = _TREE_KERNELS
    q_heads, size, dim = query.shape
    heads, length = k.shape[0], k.shape[1]
    groups = q_heads // heads
    rows, width = groups * size, mask.shape[-1] - 1
    ieee = query.dtype == torch.float32
    config = kernel_config(rows, length, heads, dim, ieee)
    block_m, block_n, splits = config.block_m, config.block_n, max(1, min(config.splits, cdiv(length, 16)))
    blocks = cdiv(rows, block_m)
    r_pad = blocks * block_m
    opart = torch.empty(splits * heads * r_pad, dim, dtype=torch.float32, device=query.device)
    mpart = torch.empty(splits * heads * r_pad, dtype=torch.float32, device=query.device)
    lpart = torch.empty_like(mpart)
    out = torch.empty(size, q_heads, dim, dtype=query.dtype, device=query.device)
    mask = mask.contiguous()
    split_kernel[(splits, heads, blocks)](
        query, k, v, mask, opart, mpart, lpart,
        query.stride(0), query.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        rows, r_pad, heads, groups, size, width, splits, scale,
        BLOCK_M=block_m, BLOCK_N=block_n, D=dim, IEEE=ieee, num_warps=config.warps,
        num_stages=config.stages,
    )  # fmt: skip
    merge_kernel[(heads, rows)](
        opart, mpart, lpart, out, mask, out.stride(0), out.stride(1), r_pad, heads, groups, size, width,
        splits, SPLITS_P2=triton_next_pow2(splits), BLOCK_N=block_n, D=dim,
    )  # fmt: skip
    return out


def triton_next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def tree_attention_op() -> Any:
    """A torch custom op (opaque to torch.compile) that runs the Triton kernels on CUDA."""
    global _TREE_OP
    if _TREE_OP is None:

        @torch.library.custom_op("specbench::tree_attention", mutates_args=())
        def op(
            query: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
        ) -> torch.Tensor:
            dim = query.shape[-1]
            if (
                query.is_cuda
                and dim & (dim - 1) == 0
                and dim >= 16
                and query.stride(-1) == 1
                and k.stride(-1) == 1
            ):
                return triton_tree_attention(query, k, v, mask, scale)
            return reference_tree_attention(query, k, v, mask, scale)

        @op.register_fake
        def _(query, k, v, mask, scale):
            return query.new_empty(query.shape[1], query.shape[0], query.shape[2])

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
    static cache (1, Hkv, L, D), attention_mask the tree mask -> (1, B, Hq, D).

    The kernel reads the query where the model left it and writes the output in the layout the output
    projection reads: reshaping them around it cost two copy kernels per layer once B > 1 (54 + 47 us
    per 96-input forward on an H200, bench/results/2026-12-03-h200-session7/profile_step.json)."""
    dim = query.shape[-1]
    scale = scaling if scaling is not None else dim**-0.5
    return tree_attention_op()(query[0], key[0], value[0], attention_mask, float(scale))[None], None


def register_attention() -> None:
    """Make our attention functions valid `config._attn_implementation`s (mask rules: SDPA's)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    AttentionInterface.register(TREE_ATTENTION, tree_attention_forward)
    AttentionMaskInterface.register(TREE_ATTENTION, sdpa_mask)
    tree_attention_op()  # registered now: never for the first time inside a torch.compile trace
