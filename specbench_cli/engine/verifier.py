"""Acceptance: which draft nodes the target agrees with, and the bonus token after them.

Inputs to the verification forward are [root] + tree nodes (`DraftTree.input_of` / `node_of` map
between the two), and the logits of input i predict the token after it. Walking down from the root:
- greedy: move to the child whose token is the target's argmax; stop when none is;
- sampling: draw y ~ p at the current node ONCE, shared by all its children, and move to the child
  whose token is y (methods.md §0). Every emitted token is then a draw from the target's own
  distribution, whatever the draft was, so the output distribution is exactly the target's.
The bonus is the argmax (or the draw y) at the node where the walk stops.

Relaxed acceptance (ReSpec, lossy) may additionally take a child marked `relaxed` when its token is
in the target's top-k or has probability >= min_prob at the current node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..types import DraftTree
from .row_topk import row_topk


@dataclass
class Verdict:
    accepted_nodes: list[int]  # tree node indices along the accepted path
    bonus: int
    relaxed_accepts: int = 0  # how many accepted nodes only the relaxed rule let through


def children_by_input(tree: DraftTree) -> list[dict[int, int]]:
    """For every forward input: token -> input index of its first child with that token."""
    kids: list[dict[int, int]] = [{} for _ in range(len(tree) + 1)]
    for child, (tok, parent) in enumerate(zip(tree.tokens, tree.input_parents()[1:]), start=1):
        kids[parent].setdefault(tok, child)
    return kids


def child_by_token(tree: DraftTree) -> dict[tuple[int, int], int]:
    """(input, token) -> input index of its first child with that token: one dict built in C (zip,
    dict) instead of a Python loop over the nodes, ~5x faster for an 80-node tree. Built from the
    last node to the first, so that the first child with a token is the one that stays."""
    n = len(tree)
    parents = tree.input_parents()
    return dict(zip(zip(parents[n:0:-1], tree.tokens[::-1]), range(n, 0, -1)))


def choose_tokens(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row, left on the device: argmax at temperature 0, else one draw from softmax(logits / T)
    computed in float32 (the compiled target hands over its logits in the model's dtype)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> list[int]:
    """`choose_tokens`, read back to the host."""
    return choose_tokens(logits, temperature, generator).tolist()


def choices_with_topk(
    logits: torch.Tensor, k: int, temperature: float, generator: torch.Generator | None
) -> tuple[list[int], np.ndarray]:
    """The verifier's choice per row and each row's k most likely token ids, in one host copy.

    For drafters that learn from every forwarded input (Token Recycling): the top-k is taken on the
    device (row_topk.py) and packed beside the choices, so a step still reads the device once. The choices are drawn
    exactly as `sample_tokens` draws them (same generator calls), so passing them to `verify` as
    `picks` changes nothing in the output.
    """
    chosen = choose_tokens(logits, temperature, generator)
    top = row_topk(logits, k)
    rows = torch.cat([chosen[:, None], top], dim=1).cpu().numpy()
    return rows[:, 0].tolist(), rows[:, 1:]


def verify(
    tree: DraftTree,
    logits: torch.Tensor,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    relaxed_topk: int = 0,
    relaxed_min_prob: float = 1.1,
    picks: list[int] | None = None,
) -> Verdict:
    """logits: (len(tree) + 1, V), row 0 for the root; `picks`: choices already made (`choices_with_topk`)."""
    # One draw (or argmax) per input, made up front: a single host sync. Draws at inputs the walk
    # never visits are simply unused, so this is the same as drawing on the way down.
    if picks is None:
        picks = sample_tokens(logits, temperature, generator)
    child = child_by_token(tree)
    use_relaxed = tree.relaxed is not None and (relaxed_topk > 0 or relaxed_min_prob <= 1.0)
    kids = children_by_input(tree) if use_relaxed else None  # every child of an input: relaxed rule only
    accepted: list[int] = []
    relaxed_accepts = 0
    cur = 0
    while True:
        nxt = child.get((cur, picks[cur]))
        if nxt is None and kids is not None and kids[cur]:
            nxt = _relaxed_child(tree, kids[cur], logits[cur], temperature, relaxed_topk, relaxed_min_prob)
            relaxed_accepts += nxt is not None
        if nxt is None:
            return Verdict(accepted, picks[cur], relaxed_accepts)
        accepted.append(tree.node_of(nxt))
        cur = nxt


def _relaxed_child(tree, kids, row, temperature, topk, min_prob) -> int | None:
    row = row.float()
    probs = torch.softmax(row / max(temperature, 1e-6) if temperature > 0 else row, dim=-1)
    top = set(probs.topk(topk).indices.tolist()) if topk > 0 else set()
    best, best_p = None, -1.0
    for tok, inp in kids.items():
        if not tree.relaxed[tree.node_of(inp)]:
            continue
        p = float(probs[tok])
        if (tok in top or p >= min_prob) and p > best_p:
            best, best_p = inp, p
    return best
