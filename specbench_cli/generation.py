"""Batched generation with transformers' own forward and a DynamicCache, on any device.

    rows = generate_batch(loaded.model, prompts, max_new_tokens=256, eos_ids=loaded.eos_ids)
    rows[i].tokens  # prompt i's answer, up to and including its first EOS

Prompts of different lengths are left-padded into one batch: pads are masked out of attention and
every row's position ids count its own tokens only (pads sit at position 1, as transformers' generate
puts them), so a row's answer is the one it gets alone. A finished row keeps riding along (its output
is ignored) until every row has stopped or the budget is spent.

With `want_hidden=True` every row also gets the target's last-layer hidden state (after the final
norm, `hidden_states[-1]`) at each position it fed, taken from the same forwards that chose the tokens:
the prompt's positions from the prefill, then one per generated token that was fed back. The last
generated token is never fed, so a row of P prompt and G generated tokens has P + G - 1 states. This is
what an EAGLE head trains on (`specbench_cli/head/`) and what aligned corpora need.

Greedy by default; `temperature > 0` samples with a seeded generator (reproducible for a given batch).
This is a data-making tool, not the timed engine (`engine/decode.py` is the benchmark's only loop).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

# Prompts answered at once when the user gives no --batch-size. A step of transformers' eager forward
# costs about the same for 64 or 256 rows on a GPU (kernel launches, not arithmetic, bound it), so a
# wider batch is nearly free throughput: 256 rows gave 4,900 generated tokens/s for Qwen2.5-Coder-1.5B
# on an H200 (bench/results/2026-12-03-h200-head-methods/chain.log) where 128 gave ~2,600. On a CPU
# the KV cache of 256 long rows would not fit a small machine's memory.
GPU_BATCH = 256
CPU_BATCH = 64


def default_batch(device: Any) -> int:
    """Prompts per generation batch on `device` (a torch.device or its name) when none is given."""
    return GPU_BATCH if str(device).startswith("cuda") else CPU_BATCH


@dataclass
class GeneratedRow:
    tokens: list[int]  # generated ids, cut after the first EOS (kept) or at the budget
    hidden: torch.Tensor | None = None  # (prompt + generated - 1, H) on the model's device


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both (B, longest prompt), prompts right-aligned."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p) :] = 1
    return ids, mask


def pick_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) float logits -> (B,) ids: argmax, or one draw from softmax(logits / temperature)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate_batch(
    model: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_ids: list[int] | tuple[int, ...] = (),
    pad_id: int | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    want_hidden: bool = False,
) -> list[GeneratedRow]:
    from transformers import DynamicCache

    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate_batch needs non-empty prompts")
    device = next(model.parameters()).device
    eos = torch.tensor(sorted(set(eos_ids)) or [-1], device=device)
    pad = pad_id if pad_id is not None else (list(eos_ids) or [0])[0]
    ids, mask = (t.to(device) for t in left_pad(prompts, pad))
    batch, width = ids.shape
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=device).manual_seed(seed)

    cache = DynamicCache(config=model.config)
    # transformers 5 renamed `past_key_values` to `cache` (the old name warns).
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        output_hidden_states=want_hidden,
        logits_to_keep=1,
        **{cache_kw: cache},
    )
    states = [out.hidden_states[-1]] if want_hidden else []  # (B, width, H), then (B, 1, H) per step
    next_pos = positions[:, -1:] + 1
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        tok = pick_tokens(out.logits[:, -1], temperature, generator)
        tok = torch.where(done, torch.full_like(tok, pad), tok)  # finished rows ride along on pads
        steps.append(tok)
        done |= torch.isin(tok, eos)
        if step == max_new_tokens - 1 or bool(done.all()):  # one host sync per step
            break
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(
            input_ids=tok[:, None],
            attention_mask=mask,
            position_ids=next_pos,
            use_cache=True,
            output_hidden_states=want_hidden,
            **{cache_kw: cache},
        )
        next_pos = next_pos + 1
        if want_hidden:
            states.append(out.hidden_states[-1])

    generated = torch.stack(steps, dim=1).tolist()
    hidden = torch.cat(states, dim=1) if want_hidden else None
    rows = []
    eos_set = set(eos_ids)
    for r, (prompt, row) in enumerate(zip(prompts, generated)):
        cut = next((i + 1 for i, t in enumerate(row) if t in eos_set), len(row))
        tokens = row[:cut]
        feats = None
        if hidden is not None:
            # The prompt's states sit right-aligned in the first `width` columns; the generated
            # tokens that were fed back (all but the last) follow.
            feats = hidden[r, width - len(prompt) : width + len(tokens) - 1]
        rows.append(GeneratedRow(tokens, feats))
    return rows
