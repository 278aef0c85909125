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

# expand(tokens, slot_parents, rows) -> (n, V) logits for the n frontier tokens, all three 1-D long
# tensors on the drafter's device. `slot_parents` gives the parent slot of every pending slot of this
# tree so far and then of the new inputs (-1: a child of the root); `rows[i]` is the row, in the
# previous expand's output, of frontier node i's parent (None on the first expansion, whose parents are
# all the root). Nothing here reads a device value back until the tree is complete: with a runner that
# takes device inputs (`Runner.forward_tensors`) the levels queue up on the GPU without a host round
# trip each (on an H200 that round trip made the head's drafting 3.5x its forwards' GPU time).
Expand = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor | None"], "torch.Tensor"]


@dataclass
class ScoredTree:
    """A grown tree and what the drafter said about it, node by node (what a host tree hands a hybrid)."""

    tree: DraftTree = field(default_factory=DraftTree.empty)
    node_logprobs: list[float] = field(default_factory=list)  # cumulative log-probability of the path
    token_logprobs: list[float] = field(default_factory=list)  # log-probability of the token given its parent
    root_logprobs: torch.Tensor | None = None  # (V,) draft log-probs after the root; None: no draft ran
    # node -> (log-probs of its level's frontier (n, V), its row there): a view per node would cost the
    # host a tensor index each on every step, and only tests read them (expanded_logprobs).
    expanded_rows: dict[int, tuple[torch.Tensor, int]] = field(default_factory=dict)

    @property
    def expanded_logprobs(self) -> dict[int, torch.Tensor]:
        """node -> (V,) draft log-probs of its children, for every node the drafter expanded."""
        return {node: logp[row] for node, (logp, row) in self.expanded_rows.items()}


class LaunchedTree:
    """A tree whose levels are queued on the device; `finish` reads it back (the only wait) and picks
    the nodes. Between the two a hybrid may queue more work (RASD's scoring forward) and do its host
    work (retrieval) while the GPU runs the levels."""

    def __init__(
        self,
        root_logp: torch.Tensor | None,
        budget: int,
        levels: list[int] | None = None,
        expanded: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        read: Callable[[], torch.Tensor] | None = None,
    ):
        self.root_logprobs = root_logp  # (V,) draft log-probs after the root; None: no draft ran
        self.budget, self.levels, self.expanded, self.read = budget, levels or [], expanded or [], read

    def finish(self) -> ScoredTree:
        """The best `budget` candidates; ties: shallower, then earlier. A node whose parent was not
        taken is skipped (cannot happen with exact arithmetic, kept so the tree is closed regardless)."""
        import numpy as np

        out = ScoredTree(root_logprobs=self.root_logprobs)
        if self.read is None:
            return out
        host = self.read().numpy()
        total = len(self.levels)
        tok = host[:total].astype(np.int64).tolist()
        parent = host[total : 2 * total].astype(np.int64).tolist()
        score, own = host[2 * total : 3 * total], host[3 * total : 4 * total].tolist()
        # numpy's lexsort: the last key first (-score), then the level, then the candidate id.
        order = np.lexsort((np.arange(total), np.asarray(self.levels), -score)).tolist()
        score = score.tolist()
        node_of: dict[int, int] = {}
        tokens, parents = [], []
        for c in order:
            if len(tokens) >= self.budget:
                break
            p = parent[c]
            if p >= 0 and p not in node_of:
                continue
            node_of[c] = len(tokens)
            tokens.append(tok[c])
            parents.append(node_of[p] if p >= 0 else -1)
            out.node_logprobs.append(score[c])
            out.token_logprobs.append(own[c])
        out.tree = DraftTree(tuple(tokens), tuple(parents))
        at = 4 * total  # then the candidate ids of each expanded frontier, in order
        for front, logp in self.expanded:
            for i, c in enumerate(host[at : at + front.shape[0]].astype(np.int64).tolist()):
                if c in node_of:
                    out.expanded_rows[node_of[c]] = (logp, i)
            at += front.shape[0]
        return out


def launch_tree(root_logp: torch.Tensor, expand: Expand, top_k: int, depth: int, budget: int) -> LaunchedTree:
    """EAGLE-2's tree below a root whose children have draft log-probabilities `root_logp` (V,):
    every level queued on the device, and the copy of the candidates to the host after them."""
    import torch

    from ..engine.row_topk import row_topk
    from ..engine.transfer import read_later

    if budget <= 0:
        return LaunchedTree(root_logp, budget)
    k = min(top_k, root_logp.shape[-1])
    dev = root_logp.device
    # The candidate pool, one device tensor per level, candidate ids in level order (parents first).
    val, idx = root_logp.topk(k)
    cand_tokens, cand_scores, cand_owns = [idx], [val], [val]
    cand_parents = [torch.full((k,), -1, dtype=torch.long, device=dev)]
    levels = [1] * k  # host: each level's size is known without reading anything back
    front_ids = torch.arange(k, device=dev)  # candidate ids of the frontier
    front_tok, front_score = idx, val  # its tokens and cumulative log-probabilities
    rows: torch.Tensor | None = None  # row of each frontier node's parent in the last expand's output
    slot_parents = torch.empty((0,), dtype=torch.long, device=dev)
    last_offset = 0  # first pending slot of the previous frontier
    expanded: list[tuple[torch.Tensor, torch.Tensor]] = []  # (frontier candidate ids, their (n, V) log-probs)
    for level in range(2, depth + 1):
        n = front_tok.shape[0]
        # The frontier runs after the earlier levels' pending slots, which it may attend to; its
        # parents are the previous frontier, whose slots start at last_offset.
        own_parents = (
            torch.full((n,), -1, dtype=torch.long, device=dev) if rows is None else rows + last_offset
        )
        last_offset = slot_parents.shape[0]
        slot_parents = torch.cat([slot_parents, own_parents])
        logp = torch.log_softmax(expand(front_tok, slot_parents, rows), dim=-1)
        expanded.append((front_ids, logp))
        # (n, k): the chunked top-k where it runs (engine/row_topk.py: torch.topk gives each of the n
        # rows one thread block over the whole vocabulary), values read back at its ids
        idx = row_topk(logp, k)
        val = logp.gather(-1, idx)
        cum = (val + front_score[:, None]).flatten()
        first = len(levels)
        cand_tokens.append(idx.flatten())
        cand_scores.append(cum)
        cand_owns.append(val.flatten())
        cand_parents.append(front_ids.repeat_interleave(k))
        levels += [level] * (n * k)
        front_score, best = cum.topk(min(k, n * k))
        front_ids, rows = first + best, best // k
        front_tok = idx.flatten()[best]

    # The one device-to-host copy: float64 holds every token id and float32 score exactly.
    flat = torch.cat(
        [torch.cat(t).double() for t in (cand_tokens, cand_parents, cand_scores, cand_owns)]
        + [front.double() for front, _ in expanded]
    )
    return LaunchedTree(root_logp, budget, levels, expanded, read_later(flat))


def grow_tree(root_logp: torch.Tensor, expand: Expand, top_k: int, depth: int, budget: int) -> ScoredTree:
    """EAGLE-2's tree below a root whose children have draft log-probabilities `root_logp` (V,)."""
    return launch_tree(root_logp, expand, top_k, depth, budget).finish()


def picked(logp: torch.Tensor, tokens: list[int], rows: list[int] | None = None) -> torch.Tensor:
    """logp[tokens] of one row (V,), or logp[rows[i], tokens[i]] of a level's (n, V): the indices go up
    in one copy through pinned memory (a pageable copy would wait for every forward queued before it)."""
    from ..engine.transfer import upload

    if rows is None:
        return logp[upload(tokens, logp.device)]
    index = upload(rows + tokens, logp.device)
    return logp[index[: len(rows)], index[len(rows) :]]


def path_scores_later(tree: DraftTree, scored: list[int], own: torch.Tensor) -> Callable[[], list[float]]:
    """A host tree's `score_later` result: `own` (device) holds the log-probability of each node in
    `scored` given its parent; its copy is queued now, and the call sums them down every path (a node
    left unscored, for want of room in the draft cache, counts as impossible, and so do its children)."""
    import math

    from ..engine.transfer import read_later

    read = read_later(own.double())

    def cumulative() -> list[float]:
        logp = dict(zip(scored, read().tolist()))
        cum: list[float] = []
        for v, p in enumerate(tree.parents):
            cum.append(logp.get(v, -math.inf) + (cum[p] if p >= 0 else 0.0))
        return cum

    return cumulative
