"""`sps-tree`: a dynamic draft tree grown with the small draft model (EAGLE-2's tree, SpS's drafter).

EAGLE-2 drafts with a feature-level head; we have a small LM with the target's tokenizer instead, and
grow the same tree with it (EAGLE-2's defaults, methods.md §1.7):
- level 1: the top_k (10) children of the root, scored by their draft log-probability;
- each further level: ONE draft forward over the frontier (the top_k nodes of the level above by
  cumulative log-probability), each expanded into its top_k children: top_k * top_k candidates, all
  kept as candidates, of which the top_k best become the next frontier; `depth` (6) levels in all,
  which is EAGLE-2's depth=5 expansions after the first;
- finally the best `total_nodes` (60) candidates by cumulative log-probability form the tree.
A child's cumulative log-probability never exceeds its parent's (log p <= 0, and float addition is
monotone), so the best N nodes form a closed tree; ties go to the shallower, earlier node, and the
selection still skips any node whose parent is out, so the tree is closed whatever the numbers.
Nodes come out best first, so every prefix of the node list is itself the best smaller tree.

Methods built on this tree (rasd, respec) compose it through three public calls and nothing else:
`grow(ctx)` (the tree with every node's draft log-probabilities), `root_logits(tokens, headroom)`
(the draft cache brought up to the context, and the draft's logits after the root) and
`score(tree, root_logprobs)` (any other tree hanging off the root, scored by the draft model).

The draft model keeps its own slot cache in step with the committed tokens (as `sps` does). The
frontier forwards write their K/V after the committed slots without committing them: each sees the
committed prefix plus its ancestors in the tree, and the next catch-up overwrites them.
Expanding by the draft model's most likely tokens is right at any temperature: the verifier's shared
draw accepts a child with the target's probability of it, so the tree only decides speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..options import option
from ..types import DraftContext, DraftTree, MethodSetup
from .base import Drafter
from .sps import common_prefix

if TYPE_CHECKING:  # torch is imported where it is used, so `ls --method sps-tree` stays light
    import torch


@dataclass
class SpsTreeOptions:
    top_k: int = option(
        10,
        "children expanded per node, and frontier width",
        "EAGLE-2 top_k=10 (Spec-Bench eagle2)",
        minimum=1,
    )
    depth: int = option(
        6, "levels of the tree (EAGLE-2's depth=5 expansions after the first)", "EAGLE-2 depth=5", minimum=1
    )
    total_nodes: int = option(
        60, "best nodes kept by cumulative draft log-probability", "EAGLE-2 total_token=60", minimum=0
    )


@dataclass
class ScoredTree:
    """A grown tree and what the draft model said about it, node by node."""

    tree: DraftTree
    node_logprobs: list[float] = field(default_factory=list)  # cumulative log-probability of the path
    token_logprobs: list[float] = field(default_factory=list)  # log-probability of the token given its parent
    root_logprobs: torch.Tensor | None = None  # (V,) draft log-probs after the root; None: no draft ran
    expanded_logprobs: dict[int, torch.Tensor] = field(default_factory=dict)  # node -> (V,) of its children


class DraftModelTree(Drafter):
    name = "sps-tree"
    needs_draft_model = True
    options_class = SpsTreeOptions

    def __init__(self, setup: MethodSetup, options: SpsTreeOptions | None = None):
        super().__init__(setup, options)
        self.top_k, self.depth, self.total_nodes = self.opts.top_k, self.opts.depth, self.opts.total_nodes
        self.runner = setup.draft_runner()
        self.seen: list[int] = []  # tokens whose K/V sit in the draft cache, in order

    def reset(self, prompt_ids: list[int]) -> None:
        self.runner.reset()
        self.seen = []

    def root_logits(self, tokens: list[int], headroom: int) -> torch.Tensor:
        """Bring the draft cache to `tokens` (leaving `headroom` free slots); return the logits after the last."""
        keep = min(common_prefix(self.seen, tokens), len(tokens) - 1)  # always rerun the last: its logits
        self.runner.rewind(keep)
        todo = tokens[keep:]
        if keep + len(todo) + headroom > self.runner.max_len:
            self.runner.reset()
            self.runner.ensure_capacity(len(tokens) + headroom + 64)
            todo = tokens
        logits, _ = self.runner.forward(todo, last_only=True)
        self.runner.commit(list(range(len(todo))))
        self.seen = list(tokens)
        return logits[-1]

    def propose(self, ctx: DraftContext) -> DraftTree:
        return self.grow(ctx).tree

    def grow(self, ctx: DraftContext) -> ScoredTree:
        """The dynamic tree for `ctx`, best node first, with the draft model's scores of every node."""
        import torch

        budget = min(self.total_nodes, ctx.max_nodes)
        if budget <= 0:
            return ScoredTree(DraftTree.empty())
        k = min(self.top_k, self.runner.model.get_output_embeddings().weight.shape[0])
        root_logp = torch.log_softmax(self.root_logits(ctx.tokens, (self.depth - 1) * k + 1), dim=-1)
        # Candidate pool, host-side lists indexed by candidate id; parents precede children.
        val, idx = root_logp.topk(k)
        tok, parent, score, own, depth = idx.tolist(), [-1] * k, val.tolist(), val.tolist(), [1] * k
        expanded: dict[int, torch.Tensor] = {}  # candidate -> log-probs of its children
        frontier = list(range(k))
        front_score = val  # (n,) on the device: cumulative log-probability of each frontier node
        slot_of: dict[int, int] = {}  # candidate -> its pending slot (0-based after the committed ones)
        slot_parents: list[int] = []  # parent slot of every pending slot (-1: a child of the root)
        for level in range(2, self.depth + 1):
            n = len(frontier)
            for c in frontier:
                slot_of[c] = len(slot_parents)
                slot_parents.append(slot_of[parent[c]] if parent[c] >= 0 else -1)
            # The frontier runs after the earlier levels' pending slots, which it may attend to.
            logits, _ = self.runner.forward([tok[c] for c in frontier], slot_parents)
            logp = torch.log_softmax(logits, dim=-1)
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
            depth += [level] * nk
            frontier = [first + int(b) for b in host[3 * nk :]]

        # Best `budget` candidates; ties: shallower, then earlier. A node whose parent was not taken is
        # skipped (cannot happen with exact arithmetic, kept so the tree is closed regardless).
        order = sorted(range(len(tok)), key=lambda c: (-score[c], depth[c], c))
        node_of: dict[int, int] = {}
        tokens, parents = [], []
        node_logprobs, token_logprobs = [], []
        for c in order:
            if len(tokens) >= budget:
                break
            if parent[c] >= 0 and parent[c] not in node_of:
                continue
            node_of[c] = len(tokens)
            tokens.append(tok[c])
            parents.append(node_of[parent[c]] if parent[c] >= 0 else -1)
            node_logprobs.append(score[c])
            token_logprobs.append(own[c])
        return ScoredTree(
            DraftTree(tuple(tokens), tuple(parents)),
            node_logprobs,
            token_logprobs,
            root_logp,
            {node_of[c]: row for c, row in expanded.items() if c in node_of},
        )

    def score(self, tree: DraftTree, root_logprobs: torch.Tensor) -> list[float]:
        """Cumulative draft log-probability of every node of `tree`, any tree hanging off the current root.

        Call right after `grow` or `root_logits` for the same context. Depth-1 nodes read
        `root_logprobs`; the others need their parent's output, so the tree's inner nodes go through
        the draft model in one forward. It writes after the committed draft cache without committing
        (the pending slots of `grow` are done with), and the next catch-up overwrites it.
        """
        import torch

        n = len(tree)
        if n == 0:
            return []
        inner = sorted({p for p in tree.parents if p >= 0})
        row_of = {node: i for i, node in enumerate(inner)}
        rows = None
        with torch.inference_mode():
            if inner and self.runner.length + len(inner) <= self.runner.max_len:
                # An inner node's parent is itself inner, so the sub-tree is closed.
                logits, _ = self.runner.forward(
                    [tree.tokens[v] for v in inner], [row_of.get(tree.parents[v], -1) for v in inner]
                )
                rows = torch.log_softmax(logits, dim=-1)
            roots = [v for v in range(n) if tree.parents[v] < 0]
            root_index = torch.tensor([tree.tokens[v] for v in roots], device=root_logprobs.device)
            root_val = dict(zip(roots, root_logprobs[root_index].tolist()))
            deep = [v for v in range(n) if tree.parents[v] >= 0]
            if rows is not None and deep:
                r_idx = torch.tensor([row_of[tree.parents[v]] for v in deep], device=rows.device)
                t_idx = torch.tensor([tree.tokens[v] for v in deep], device=rows.device)
                deep_val = dict(zip(deep, rows[r_idx, t_idx].tolist()))
            else:  # no room in the draft cache (rare): deeper nodes count as unlikely
                deep_val = {}
        cum: list[float] = []
        for v in range(n):
            p = tree.parents[v]
            logp = root_val[v] if p < 0 else deep_val.get(v, -math.inf)
            cum.append(logp + (cum[p] if p >= 0 else 0.0))
        return cum

    def describe(self) -> dict:
        return super().describe() | {"draft_model": self.setup.draft.name if self.setup.draft else None}
