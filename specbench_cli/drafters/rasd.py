"""`rasd`: Retrieval-Augmented Speculative Decoding (Quan et al., ACL 2025 Findings; arXiv 2503.03434).

Each step, in this order (as in the paper; running them in parallel is its stated open item), though
on a GPU the host's work overlaps the device's: the tree's forwards are queued, the retrieval runs on
the host meanwhile, the scoring forward is queued behind them, and the tree is read back and picked
while that forward runs (a retriever searching on the GPU, dresd, reads its neighbours back and so
waits for the tree first):
1. the host draft tree: `sps-tree` (EAGLE-2's dynamic tree grown with --draft-model), up to 60 nodes,
   each with its cumulative draft log-probability; with --draft-head, `eagle2` (the EAGLE head the
   paper builds on) instead;
2. the retrieval tree: the trie of the candidates of `--method-opt rasd.retriever=` (pld by default,
   rest or dresd with their --datastore), up to 64 nodes;
3. pruning: ONE draft-model forward over the retrieval trie (tree attention, on top of the draft
   cache the host just caught up; with an EAGLE head one head forward per level, since each level
   needs its parent's predicted feature) scores every retrieved node by its cumulative draft
   probability, through the host's public `score`;
   a node below `prune_min_prob` (0 by default), and with it its subtree, is dropped;
4. fusion by longest-prefix matching: each retrieved path walks down the host tree while its tokens
   match and hangs the rest of itself there as a new branch. When the union exceeds the node budget
   (80), the nodes with the highest cumulative draft probability are kept: the rule EAGLE-2 uses to
   pick its own nodes, applied to both sources, so the fused tree is the union whenever it fits and
   the draft model's scores decide which retrieved nodes get the rest of the budget.
The fused tree is verified once by the shared verifier with the standard rule: lossless.

The paper gives no pruning threshold or budget (methods.md §1.5); the values here are ours and
`bench/ablate_rasd_respec.py` measures them (docs/methods.md, "rasd").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..options import option, subset
from ..types import DraftContext, DraftTree, MethodSetup, SpecbenchError, StepFeedback
from .base import Drafter
from .retrieval import Retriever, RetrieverOptions
from .sps_tree import SpsTreeOptions, host_tree


@dataclass
class RasdOptions(SpsTreeOptions, RetrieverOptions):
    """RASD's own options, plus the host tree's (sps-tree or eagle2) and the retriever's under their
    own names."""

    budget: int = option(80, "nodes of the fused tree", "ours: the paper gives none (ablated)", minimum=1)
    retrieval_nodes: int = option(
        64, "retrieval trie size before pruning", "REST num_draft=64 (the paper gives none)", minimum=0
    )
    prune_min_prob: float = option(
        0.0,
        "drop retrieved nodes below this cumulative draft probability (0: rank only)",
        "ours: the paper gives no threshold (ablated)",
        minimum=0.0,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prune_min_prob > 1.0:
            raise SpecbenchError(f"option prune_min_prob={self.prune_min_prob!r} must be at most 1")


def prune_mask(tree: DraftTree, cum_logprobs: list[float], min_logprob: float) -> list[bool]:
    """kept[i]: node i's cumulative draft log-probability reaches `min_logprob` and its parent is kept."""
    kept: list[bool] = []
    for parent, score in zip(tree.parents, cum_logprobs):
        kept.append((parent < 0 or kept[parent]) and score >= min_logprob)
    return kept


def fuse_trees(
    host: DraftTree,
    host_scores: list[float],
    retrieved: DraftTree,
    retrieved_scores: list[float],
    budget: int,
    kept: list[bool] | None = None,
) -> tuple[DraftTree, list[str]]:
    """Merge `retrieved` into `host` by longest-prefix matching; keep the best `budget` nodes.

    Scores are cumulative draft log-probabilities. A retrieved node that matches a host node (same
    token under the same parent) is that node; the others become new branches. Returns the fused
    tree (best node first, parents before children) and each node's origin: "draft", "retrieval" or
    "both".
    """
    tokens = list(host.tokens)
    parents = list(host.parents)
    scores = [float(s) for s in host_scores]
    origin = ["draft"] * len(tokens)
    child: dict[tuple[int, int], int] = {(p, t): i for i, (t, p) in enumerate(zip(tokens, parents))}
    node_of: dict[int, int] = {}  # retrieved node -> fused node
    for j, (tok, rparent) in enumerate(zip(retrieved.tokens, retrieved.parents)):
        if kept is not None and not kept[j]:
            continue
        parent = -1 if rparent < 0 else node_of.get(rparent)
        if parent is None:  # its parent was pruned
            continue
        node = child.get((parent, tok))
        if node is None:
            node = len(tokens)
            tokens.append(tok)
            parents.append(parent)
            # Never above the parent's score: two forwards may round the shared prefix differently.
            scores.append(min(float(retrieved_scores[j]), scores[parent] if parent >= 0 else 0.0))
            origin.append("retrieval")
            child[(parent, tok)] = node
        elif origin[node] == "draft":
            origin[node] = "both"
        node_of[j] = node

    depth: list[int] = []
    for p in parents:
        depth.append(1 if p < 0 else depth[p] + 1)
    # Best first; ties to the shallower, then the earlier (host) node. Scores never rise down a path,
    # so parents come before their children; the parent check keeps the tree closed regardless.
    order = sorted(range(len(tokens)), key=lambda i: (-scores[i], depth[i], i))
    new_index: dict[int, int] = {}
    out_tokens, out_parents, out_origin = [], [], []
    for i in order:
        if len(out_tokens) >= budget:
            break
        if parents[i] >= 0 and parents[i] not in new_index:
            continue
        new_index[i] = len(out_tokens)
        out_tokens.append(tokens[i])
        out_parents.append(new_index[parents[i]] if parents[i] >= 0 else -1)
        out_origin.append(origin[i])
    return DraftTree(tuple(out_tokens), tuple(out_parents)), out_origin


class Rasd(Drafter):
    name = "rasd"
    needs_draft_model = True
    host_on_draft_head = True
    options_class = RasdOptions
    stat_names = {
        "retrieval_seconds": "time in the retriever",
        "retrieved_nodes": "nodes of the retrieval trie, before pruning",
        "pruned_nodes": "retrieved nodes dropped by the draft-probability threshold",
        "added_nodes": "fused-tree nodes that only retrieval proposed",
        "accepted_retrieval_nodes": "accepted nodes that only retrieval proposed",
    }

    def __init__(self, setup: MethodSetup):
        super().__init__(setup)
        self.budget, self.retrieval_nodes = self.opts.budget, self.opts.retrieval_nodes
        self.prune_min_prob = self.opts.prune_min_prob
        self.host = host_tree(setup, subset(SpsTreeOptions, self.opts))
        self.retriever = Retriever(subset(RetrieverOptions, self.opts), setup, "rasd")
        # DReSD queries with the target's hidden state; the engine reads this flag per instance.
        self.needs_hidden_states = self.retriever.needs_hidden_states
        self.needs_features = self.host.needs_features  # an EAGLE head host reads the target's features
        self.last_origin: list[str] = []  # origin of every node of the last fused tree

    def reset(self, prompt_ids: list[int]) -> None:
        self.host.reset(prompt_ids)

    def propose(self, ctx: DraftContext) -> DraftTree:
        import torch

        budget = min(self.budget, ctx.max_nodes)
        self.last_origin = []
        if budget <= 0:
            return DraftTree.empty()
        # The host tree's forwards are queued first; the retrieval (host work) and the scoring forward
        # (queued behind them) overlap them, and the tree is read back while the scoring runs.
        launched = self.host.launch(ctx)
        root_logp = launched.root_logprobs
        if root_logp is None:  # total_nodes=0: retrieval only, but the draft cache must still catch up
            root_logp = torch.log_softmax(self.host.root_logits(ctx, self.retrieval_nodes + 1), dim=-1)
        start = time.perf_counter()
        cands = self.retriever.candidates(ctx, self.retrieval_nodes)
        self.count("retrieval_seconds", time.perf_counter() - start)
        rtree = DraftTree.from_paths([list(c.tokens) for c in cands], self.retrieval_nodes)
        scoring = self.host.score_later(rtree, root_logp)
        host = launched.finish()
        rscores = scoring()
        min_logprob = math.log(self.prune_min_prob) if self.prune_min_prob > 0 else -math.inf
        kept = prune_mask(rtree, rscores, min_logprob)
        fused, self.last_origin = fuse_trees(host.tree, host.node_logprobs, rtree, rscores, budget, kept)
        self.count("retrieved_nodes", len(rtree))
        self.count("pruned_nodes", len(rtree) - sum(kept))
        self.count("added_nodes", self.last_origin.count("retrieval"))
        return fused

    def update(self, feedback: StepFeedback) -> None:
        origin = self.last_origin
        self.count(
            "accepted_retrieval_nodes",
            sum(1 for n in feedback.accepted_nodes if n < len(origin) and origin[n] == "retrieval"),
        )

    def describe(self) -> dict:
        return super().describe() | {"host": self.host.describe(), **self.retriever.describe()}
