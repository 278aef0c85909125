"""Dense keys in packed batches: the target's hidden states over many documents, few forwards, no pad waste.

Documents (already truncated to the row width) are packed whole into fixed-width rows, first fit by
decreasing length inside windows of a seeded random order, so a row holds several short documents
and almost no padding. Each forward takes `rows_per_batch` rows. Inside a row every document gets its
own positions (0, 1, ...) and a block-diagonal causal mask, so a token attends only to earlier tokens
of its own document: the hidden states are the ones the document gets alone (tests/test_dresd.py
checks this against one-document-at-a-time forwards in float32).

Only the base model runs (no lm_head, so no tokens x vocabulary logits), and only the final layer is
kept unless another layer is asked for. The random window order keeps the first keys a fair sample
for the PCA, which is fitted on the first `pca_sample` keys.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..types import LoadedModel, SpecbenchError

PACK_WINDOW = 4096  # documents packed together (after the seeded shuffle)


def check_layer(loaded: LoadedModel, layer: int) -> None:
    """hidden_states holds the embeddings (0) and every layer's output (1..L); -1 is the final one."""
    n_layers = loaded.model.config.get_text_config().num_hidden_layers
    if not -(n_layers + 1) <= layer <= n_layers:
        raise SpecbenchError(
            f"dresd option layer={layer} is out of range for {loaded.name}; choose from -1 (final) or 0..{n_layers}"
        )


def pack_rows(lengths: list[int], width: int, seed: int, window: int = PACK_WINDOW) -> list[list[int]]:
    """Rows of document ids whose lengths sum to <= width: documents in a seeded random order, then,
    inside each window, first fit by decreasing length (rows nearly full, order still random at scale)."""
    if any(n > width for n in lengths):
        raise ValueError("a document is longer than the row width")
    order = np.random.default_rng(seed).permutation(len(lengths)).tolist()
    rows: list[list[int]] = []
    for w in range(0, len(order), window):
        part = sorted(order[w : w + window], key=lambda d: -lengths[d])
        open_rows: list[list[int]] = []
        room: list[int] = []
        for d in part:
            slot = next((r for r, free in enumerate(room) if free >= lengths[d]), None)
            if slot is None:
                open_rows.append([])
                room.append(width)
                slot = len(room) - 1
            open_rows[slot].append(d)
            room[slot] -= lengths[d]
        rows += open_rows
    return rows


def packed_inputs(docs: list[np.ndarray], rows: list[list[int]], width: int, dtype: Any, device: Any):
    """(input ids, position ids, additive block-diagonal causal mask (R, 1, W, W)) for packed rows."""
    import torch

    ids = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: padding at a row's end
    for r, row in enumerate(rows):
        at = 0
        for s, d in enumerate(row):
            n = len(docs[d])
            ids[r, at : at + n] = torch.from_numpy(np.asarray(docs[d], dtype=np.int64))
            positions[r, at : at + n] = torch.arange(n)
            segment[r, at : at + n] = s
            at += n
    segment = segment.to(device)
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    allowed = (segment[:, :, None] == segment[:, None, :]) & causal
    # Additive float mask: what both the eager and the SDPA attention of transformers take as given
    # (a 4-D mask is used as is). Padding attends to earlier padding only, so no row is all -inf.
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return ids.to(device), positions.to(device), mask[:, None]


def base_model(model: Any) -> Any:
    """The decoder stack without the lm_head (LlamaForCausalLM.model, Qwen2ForCausalLM.model, ...)."""
    inner = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    return inner if inner is not None and inner is not model else model


def hidden_batches(
    loaded: LoadedModel,
    docs: list[np.ndarray],
    layer: int,
    rows_per_batch: int,
    seed: int,
    console: Any = None,
    width: int | None = None,
    window: int = PACK_WINDOW,
) -> Iterator[tuple[list[int], list[Any]]]:
    """Teacher-forced forwards over packed rows of `width` tokens (default: the longest document):
    yields (doc ids, [hidden states (len - 1, H) of `layer`]) per batch, with a progress bar in tokens/s
    when a console is given."""
    import torch

    from ..progress import progress_bar

    check_layer(loaded, layer)
    model = loaded.model
    n_layers = model.config.get_text_config().num_hidden_layers
    final = layer in (-1, n_layers)
    decoder = base_model(model)
    param = next(model.parameters())
    width = max(width or 0, max(len(d) for d in docs))
    rows = pack_rows([len(d) for d in docs], width, seed, window)
    total = sum(len(d) for d in docs)
    progress = progress_bar("dresd keys", "tokens  {task.fields[rate]}", console, disable=console is None)
    with progress, torch.inference_mode():
        task = progress.add_task("keys", total=total, rate="")
        t0, done = time.perf_counter(), 0
        for start in range(0, len(rows), rows_per_batch):
            batch_rows = rows[start : start + rows_per_batch]
            ids, positions, mask = packed_inputs(docs, batch_rows, width, param.dtype, param.device)
            out = decoder(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=False,
                output_hidden_states=not final,
            )
            states = out.last_hidden_state if final else out.hidden_states[layer]
            doc_ids, per_doc = [], []
            for r, row in enumerate(batch_rows):
                at = 0
                for d in row:
                    n = len(docs[d])
                    doc_ids.append(d)
                    per_doc.append(states[r, at : at + n - 1])
                    at += n
                    done += n
            yield doc_ids, per_doc
            progress.update(
                task, completed=done, rate=f"{done / max(time.perf_counter() - t0, 1e-9):,.0f} tok/s"
            )
