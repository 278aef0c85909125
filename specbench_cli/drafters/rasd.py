"""`rasd`: Retrieval-Augmented Speculative Decoding (Quan et al., ACL 2025 Findings; arXiv 2503.03434).

Each step, one after the other (as in the paper; running them in parallel is its stated open item):
1. the host draft tree: `sps-tree` (EAGLE-2's dynamic tree grown with --draft-model), up to 60 nodes,
   each with its cumulative draft log-probability; with --draft-head, `eagle2` (the EAGLE head the
   paper builds on) instead;
2. the retrieval tree: the trie of the candidates of `--method-opt rasd.retriever=` (pld by default,
   rest or dresd with their --datastore), up to 64 nodes;
3. pruning: ONE draft-model forward over the retrieval trie (tree attention, on top of the draft
   cache the host just caught up) scores every retrieved node by its cumulative draft probability;
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

import torch

from ..types import DraftContext, DraftTree, MethodSetup, SpecbenchError, StepFeedback
from .base import Drafter
from .retrieval import Retriever
from .sps_tree import OPTIONS as HOST_OPTIONS
from .sps_tree import host_tree

OPTIONS = {
    "retriever": "pld",  # pld | rest | dresd, or several joined by '+'
    "budget": 80,  # fused tree nodes
    "retrieval_nodes": 64,  # retrieval trie size before pruning (REST's num_draft)
    "prune_min_prob": 0.0,  # drop retrieved nodes below this cumulative draft probability (0: rank only)
    "num_pred": 10,  # tokens per retrieved continuation (PLD / REST / DReSD default)
    "max_ngram": 3,  # context match length, PLD's
    "max_candidates": 8,  # context match positions
} | HOST_OPTIONS


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

    def __init__(self, setup: MethodSetup):
        super().__init__(setup)
        opts = self.options(OPTIONS)
        self.budget = int(opts["budget"])
        self.retrieval_nodes = int(opts["retrieval_nodes"])
        self.prune_min_prob = float(opts["prune_min_prob"])
        if self.budget < 1 or self.retrieval_nodes < 0 or not 0.0 <= self.prune_min_prob <= 1.0:
            raise SpecbenchError(
                "rasd needs budget >= 1, retrieval_nodes >= 0 and 0 <= prune_min_prob <= 1; got "
                f"{self.budget}, {self.retrieval_nodes}, {self.prune_min_prob}"
            )
        self.host = host_tree(setup, {k: opts[k] for k in HOST_OPTIONS})
        self.retriever = Retriever(
            str(opts["retriever"]),
            setup,
            "rasd",
            max_ngram=int(opts["max_ngram"]),
            num_pred=int(opts["num_pred"]),
            max_context_candidates=int(opts["max_candidates"]),
        )
        # DReSD queries with the target's hidden state; the engine reads this flag per instance.
        self.needs_hidden_states = self.retriever.needs_hidden_states
        self.needs_features = self.host.needs_features  # an EAGLE head host reads the target's features
        self.last_origin: list[str] = []  # origin of every node of the last fused tree
        self.stats = {
            key: 0 for key in ("steps", "retrieved", "pruned", "added", "accepted", "accepted_retrieval")
        }

    def reset(self, prompt_ids: list[int]) -> None:
        self.host.reset(prompt_ids)

    def propose(self, ctx: DraftContext) -> DraftTree:
        budget = min(self.budget, ctx.max_nodes)
        self.last_origin = []
        if budget <= 0:
            return DraftTree.empty()
        host_tree = self.host.propose(ctx)
        host_scores = list(self.host.last_node_logprobs)
        if len(host_tree):
            root_logp = self.host.last_root_logprobs
        else:  # total_nodes=0: retrieval only, but the draft cache must still catch up to score it
            root_logp = torch.log_softmax(self.host.catch_up(ctx.tokens, self.retrieval_nodes + 1), dim=-1)
        cands = self.retriever.candidates(ctx, self.retrieval_nodes)
        rtree = DraftTree.from_paths([list(c.tokens) for c in cands], self.retrieval_nodes)
        # An EAGLE head scores level by level (each level needs its parent's predicted feature).
        rscores = getattr(self.host, "score_tree", self.score_with_draft)(rtree, root_logp)
        min_logprob = math.log(self.prune_min_prob) if self.prune_min_prob > 0 else -math.inf
        kept = prune_mask(rtree, rscores, min_logprob)
        fused, self.last_origin = fuse_trees(host_tree, host_scores, rtree, rscores, budget, kept)
        s = self.stats
        s["steps"] += 1
        s["retrieved"] += len(rtree)
        s["pruned"] += len(rtree) - sum(kept)
        s["added"] += self.last_origin.count("retrieval")
        return fused

    @torch.inference_mode()
    def score_with_draft(self, tree: DraftTree, root_logp: torch.Tensor) -> list[float]:
        """Cumulative draft log-probability of every node of `tree` (hanging off the current root).

        Depth-1 nodes read `root_logp`, the draft's log-probabilities after the root; the others need their parent's output, so the
        tree's inner nodes go through the draft model in one forward. It writes after the committed
        draft cache without committing (the host's pending tree slots are done with), and the next
        catch-up overwrites it.
        """
        n = len(tree)
        if n == 0:
            return []
        inner = sorted({p for p in tree.parents if p >= 0})
        row_of = {node: i for i, node in enumerate(inner)}
        runner = self.host.runner
        rows = None
        if inner and runner.length + len(inner) <= runner.max_len:
            # An inner node's parent is itself inner, so the sub-tree is closed.
            logits, _ = runner.forward(
                [tree.tokens[v] for v in inner], [row_of.get(tree.parents[v], -1) for v in inner]
            )
            rows = torch.log_softmax(logits, dim=-1)
        roots = [v for v in range(n) if tree.parents[v] < 0]
        root_vals = root_logp[torch.tensor([tree.tokens[v] for v in roots], device=root_logp.device)].tolist()
        root_val = dict(zip(roots, root_vals))
        deep = [v for v in range(n) if tree.parents[v] >= 0]
        if rows is not None and deep:
            r_idx = torch.tensor([row_of[tree.parents[v]] for v in deep], device=rows.device)
            t_idx = torch.tensor([tree.tokens[v] for v in deep], device=rows.device)
            deep_val = dict(zip(deep, rows[r_idx, t_idx].tolist()))
        else:  # no room in the draft cache (rare): deeper retrieved nodes count as unlikely
            deep_val = {}
        cum: list[float] = []
        for v in range(n):
            p = tree.parents[v]
            logp = root_val[v] if p < 0 else deep_val.get(v, -math.inf)
            cum.append(logp + (cum[p] if p >= 0 else 0.0))
        return cum

    def update(self, feedback: StepFeedback) -> None:
        self.stats["accepted"] += len(feedback.accepted_nodes)
        origin = self.last_origin
        self.stats["accepted_retrieval"] += sum(
            1 for n in feedback.accepted_nodes if n < len(origin) and origin[n] == "retrieval"
        )

    def describe(self) -> dict:
        return {
            "budget": self.budget,
            "retrieval_nodes": self.retrieval_nodes,
            "prune_min_prob": self.prune_min_prob,
            "host": self.host.describe(),
            **self.retriever.describe(),
        }
