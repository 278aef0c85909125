"""`sps-tree`: a dynamic draft tree grown with the small draft model (EAGLE-2's tree, SpS's drafter).

EAGLE-2 drafts with a feature-level head (`eagle2`); here a small LM with the target's tokenizer grows
the same tree (`dynamic_tree.py`, EAGLE-2's defaults: top_k 10, depth 6 levels, 60 nodes).

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
from .dynamic_tree import grow_tree
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

        def expand(tokens: list[int], slot_parents: list[int], rows) -> torch.Tensor:
            return self.runner.forward(tokens, slot_parents)[0]

        grown = grow_tree(root_logp, expand, self.top_k, self.depth, budget)
        self.last_node_logprobs, self.last_token_logprobs = grown.node_logprobs, grown.token_logprobs
        self.last_expanded_logprobs = grown.expanded
        return grown.tree

    def describe(self) -> dict:
        return {
            "top_k": self.top_k,
            "depth": self.depth,
            "total_nodes": self.total_nodes,
            "draft_model": self.setup.draft.name if self.setup.draft else None,
        }


def host_tree(setup: MethodSetup, options: dict) -> Drafter:
    """The host tree a hybrid method (rasd, respec) builds on, with the host's own options: EAGLE-2
    on the EAGLE head when --draft-head is given (as in the RASD and ReSpec papers), else sps-tree."""
    if setup.draft_head is not None:
        from .eagle2 import Eagle2

        return Eagle2(replace(setup, options=options))
    return DraftModelTree(replace(setup, options=options))
