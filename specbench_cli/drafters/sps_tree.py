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

The draft model keeps its own slot cache in step with the committed tokens (as `sps` does). The
frontier forwards write their K/V after the committed slots without committing them: each sees the
committed prefix plus its ancestors in the tree, and the next catch-up overwrites them.
Expanding by the draft model's most likely tokens is right at any temperature: the verifier's shared
draw accepts a child with the target's probability of it, so the tree only decides speed.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..types import DraftContext, DraftTree, MethodSetup, SpecbenchError
from .base import Drafter
from .sps import common_prefix

OPTIONS = {"top_k": 10, "depth": 6, "total_nodes": 60}


class DraftModelTree(Drafter):
    name = "sps-tree"
    needs_draft_model = True

    def __init__(self, setup: MethodSetup):
        super().__init__(setup)
        opts = self.options(OPTIONS)
        self.top_k, self.depth, self.total_nodes = (
            int(opts["top_k"]),
            int(opts["depth"]),
            int(opts["total_nodes"]),
        )
        if self.top_k < 1 or self.depth < 1 or self.total_nodes < 0:
            raise SpecbenchError(
                f"sps-tree needs top_k >= 1, depth >= 1, total_nodes >= 0; got {self.top_k}, {self.depth}, {self.total_nodes}"
            )
        self.runner = setup.draft_runner()
        self.seen: list[int] = []  # tokens whose K/V sit in the draft cache, in order
        # About the last tree returned, node by node (for methods built on this one, e.g. RASD's pruning):
        self.last_node_logprobs: list[float] = []  # cumulative draft log-probability of the path to the node
        self.last_token_logprobs: list[
            float
        ] = []  # draft log-probability of the node's token given its parent
        self.last_root_logprobs: torch.Tensor | None = (
            None  # (V,) draft log-probs of the token after the root
        )
        self.last_expanded_logprobs: dict[int, torch.Tensor] = {}  # node -> (V,) log-probs of its children

    def reset(self, prompt_ids: list[int]) -> None:
        self.runner.reset()
        self.seen = []

    def catch_up(self, tokens: list[int], headroom: int) -> torch.Tensor:
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
        budget = min(self.total_nodes, ctx.max_nodes)
        self.last_node_logprobs, self.last_token_logprobs, self.last_expanded_logprobs = [], [], {}
        if budget <= 0:
            return DraftTree.empty()
        k = min(self.top_k, self.runner.model.get_output_embeddings().weight.shape[0])
        root_logp = torch.log_softmax(self.catch_up(ctx.tokens, (self.depth - 1) * k + 1), dim=-1)
        self.last_root_logprobs = root_logp
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
        for c in order:
            if len(tokens) >= budget:
                break
            if parent[c] >= 0 and parent[c] not in node_of:
                continue
            node_of[c] = len(tokens)
            tokens.append(tok[c])
            parents.append(node_of[parent[c]] if parent[c] >= 0 else -1)
            self.last_node_logprobs.append(score[c])
            self.last_token_logprobs.append(own[c])
        self.last_expanded_logprobs = {node_of[c]: row for c, row in expanded.items() if c in node_of}
        return DraftTree(tuple(tokens), tuple(parents))

    def describe(self) -> dict:
        return {
            "top_k": self.top_k,
            "depth": self.depth,
            "total_nodes": self.total_nodes,
            "draft_model": self.setup.draft.name if self.setup.draft else None,
        }


def host_tree(setup: MethodSetup, options: dict) -> DraftModelTree:
    """The draft-model tree a hybrid method (rasd, respec) builds on, with the host's own options."""
    return DraftModelTree(replace(setup, options=options))
