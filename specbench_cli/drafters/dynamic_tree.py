"""EAGLE-2's dynamic draft tree, grown by any drafter that scores a frontier in one forward.

EAGLE-2 (Li et al., 2024; `topK_genrate` in SafeAILab/EAGLE `eagle/model/cnets1.py`):
- level 1: the top_k children of the root, scored by their draft log-probability;
- each further level: ONE draft forward over the frontier (the top_k nodes of the level above by
  cumulative log-probability), each expanded into its top_k children: top_k * top_k candidates, all
  kept as candidates, of which the top_k best become the next frontier; `depth` levels in all (their
  `depth=5` counts the expansions after the first level, so it is depth 6 here);
- finally the best `budget` candidates by cumulative log-probability form the tree.
A child's cumulative log-probability never exceeds its parent's (log p <= 0, and float addition is
monotone), so the best N nodes form a closed tree; ties go to the shallower, earlier node, and the
selection still skips any node whose parent is out, so the tree is closed whatever the numbers.
Nodes come out best first, so every prefix of the node list is itself the best smaller tree.

`sps-tree` grows it with a small LM, `eagle2` with an EAGLE head; they differ only in `expand`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..types import DraftTree

if TYPE_CHECKING:  # torch is imported where it is used, so `ls --method sps-tree` stays light
    import torch

# expand(tokens, slot_parents, rows) -> (n, V) logits for the n frontier tokens. `slot_parents` lists
# the parent slot of every pending slot of this tree so far and then of the new inputs (-1: a child of
# the root); `rows[i]` is the row, in the previous expand's output, of frontier node i's parent (None
# on the first expansion, whose parents are all the root).
Expand = Callable[[list[int], list[int], "list[int] | None"], "torch.Tensor"]


@dataclass
class ScoredTree:
    """A grown tree and what the drafter said about it, node by node (what a host tree hands a hybrid)."""

    tree: DraftTree = field(default_factory=DraftTree.empty)
    node_logprobs: list[float] = field(default_factory=list)  # cumulative log-probability of the path
    token_logprobs: list[float] = field(default_factory=list)  # log-probability of the token given its parent
    root_logprobs: torch.Tensor | None = None  # (V,) draft log-probs after the root; None: no draft ran
    expanded_logprobs: dict[int, torch.Tensor] = field(default_factory=dict)  # node -> (V,) of its children


def grow_tree(root_logp: torch.Tensor, expand: Expand, top_k: int, depth: int, budget: int) -> ScoredTree:
    """EAGLE-2's tree below a root whose children have draft log-probabilities `root_logp` (V,)."""
    import torch

    if budget <= 0:
        return ScoredTree(root_logprobs=root_logp)
    k = min(top_k, root_logp.shape[-1])
    # Candidate pool, host-side lists indexed by candidate id; parents precede children.
    val, idx = root_logp.topk(k)
    tok, parent, score, own, level_of = idx.tolist(), [-1] * k, val.tolist(), val.tolist(), [1] * k
    expanded: dict[int, torch.Tensor] = {}  # candidate -> log-probs of its children
    frontier = list(range(k))
    rows: list[int] | None = None
    front_score = val  # (n,) on the device: cumulative log-probability of each frontier node
    slot_of: dict[int, int] = {}  # candidate -> its pending slot (0-based after the committed ones)
    slot_parents: list[int] = []  # parent slot of every pending slot (-1: a child of the root)
    for level in range(2, depth + 1):
        n = len(frontier)
        for c in frontier:
            slot_of[c] = len(slot_parents)
            slot_parents.append(slot_of[parent[c]] if parent[c] >= 0 else -1)
        # The frontier runs after the earlier levels' pending slots, which it may attend to.
        logp = torch.log_softmax(expand([tok[c] for c in frontier], slot_parents, rows), dim=-1)
        val, idx = logp.topk(k, dim=-1)  # (n, k)
        cum = (val + front_score[:, None]).flatten()
        front_score, best = cum.topk(min(k, n * k))
        # One device-to-host copy per level (each .tolist() would be a sync of its own).
        # float64 holds every token id and float32 score exactly.
        nk = n * k
        host = torch.cat([idx.flatten().double(), cum.double(), val.flatten().double(), best.double()])
        host = host.tolist()
        first = len(tok)
        for i, c in enumerate(frontier):
            expanded[c] = logp[i]
        tok += [int(t) for t in host[:nk]]
        parent += [c for c in frontier for _ in range(k)]
        score += host[nk : 2 * nk]
        own += host[2 * nk : 3 * nk]
        level_of += [level] * nk
        frontier = [first + int(b) for b in host[3 * nk :]]
        rows = [int(b) // k for b in host[3 * nk :]]

    # Best `budget` candidates; ties: shallower, then earlier. A node whose parent was not taken is
    # skipped (cannot happen with exact arithmetic, kept so the tree is closed regardless).
    order = sorted(range(len(tok)), key=lambda c: (-score[c], level_of[c], c))
    node_of: dict[int, int] = {}
    out = ScoredTree(root_logprobs=root_logp)
    tokens, parents = [], []
    for c in order:
        if len(tokens) >= budget:
            break
        if parent[c] >= 0 and parent[c] not in node_of:
            continue
        node_of[c] = len(tokens)
        tokens.append(tok[c])
        parents.append(node_of[parent[c]] if parent[c] >= 0 else -1)
        out.node_logprobs.append(score[c])
        out.token_logprobs.append(own[c])
    out.tree = DraftTree(tuple(tokens), tuple(parents))
    out.expanded_logprobs = {node_of[c]: row for c, row in expanded.items() if c in node_of}
    return out
