"""`sps-tree`: a dynamic draft tree grown with the small draft model (EAGLE-2's tree, SpS's drafter).

EAGLE-2 drafts with a feature-level head (`eagle2`); here a small LM with the target's tokenizer grows
the same tree (`dynamic_tree.grow_tree`, EAGLE-2's defaults: top_k 10, depth 6 levels, 60 nodes).

Methods built on this tree (rasd, respec) compose it through its public calls and nothing else:
`grow(ctx)` (the tree with every node's draft log-probabilities), `root_logits(ctx, headroom)`
(the draft cache brought up to the context, and the draft's logits after the root) and
`score(tree, root_logprobs)` (any other tree hanging off the root, scored by the draft model); and
their queued halves, `launch(ctx)` (`.finish()` is `grow`) and `score_later(tree, root_logprobs)`
(calling the result is `score`), so that a hybrid's host work and its scoring forward overlap the
tree's forwards instead of following them. `eagle2` offers the same calls, so `host_tree` gives a
hybrid either one.

The draft model keeps its own slot cache in step with the committed tokens (as `sps` does). The
frontier forwards write their K/V after the committed slots without committing them: each sees the
committed prefix plus its ancestors in the tree, and the next catch-up overwrites them.
Expanding by the draft model's most likely tokens is right at any temperature: the verifier's shared
draw accepts a child with the target's probability of it, so the tree only decides speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..options import option, subset
from ..types import DraftContext, DraftTree, MethodSetup
from .base import Drafter
from .dynamic_tree import LaunchedTree, ScoredTree, launch_tree, path_scores_later, picked
from .sps import common_prefix

if TYPE_CHECKING:  # torch is imported where it is used, so `ls --method sps-tree` stays light
    from collections.abc import Callable

    import torch

    from .eagle2 import Eagle2


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

    def root_logits(self, ctx: DraftContext, headroom: int) -> torch.Tensor:
        """Bring the draft cache to `ctx.tokens` (with `headroom` free slots); return the logits after it."""
        tokens = ctx.tokens
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
        return self.launch(ctx).finish()

    def launch(self, ctx: DraftContext) -> LaunchedTree:
        """`grow`, queued: the catch-up and every level on the device, nothing read back yet."""
        import torch

        budget = min(self.total_nodes, ctx.max_nodes)
        if budget <= 0:
            return LaunchedTree(None, 0)
        k = min(self.top_k, self.runner.model.get_output_embeddings().weight.shape[0])
        root_logp = torch.log_softmax(self.root_logits(ctx, (self.depth - 1) * k + 1), dim=-1)

        def expand(
            tokens: torch.Tensor, slot_parents: torch.Tensor, rows: torch.Tensor | None
        ) -> torch.Tensor:
            # The frontier runs after the earlier levels' pending slots, which it may attend to. Its
            # logits go straight into a log-softmax (a new tensor): the graph's own output, uncopied.
            return self.runner.forward_tensors(tokens, slot_parents, copy=False)[0]

        return launch_tree(root_logp, expand, self.top_k, self.depth, budget)

    def score(self, tree: DraftTree, root_logprobs: torch.Tensor) -> list[float]:
        """Cumulative draft log-probability of every node of `tree`, any tree hanging off the current root.

        Call right after `grow` (or `launch`) or `root_logits` for the same context. Depth-1 nodes read
        `root_logprobs`; the others need their parent's output, so the tree's inner nodes go through
        the draft model in one forward. It writes after the committed draft cache without committing
        (the pending slots of `grow` are done with: the forward is queued after its levels), and the
        next catch-up overwrites it.
        """
        return self.score_later(tree, root_logprobs)()

    def score_later(self, tree: DraftTree, root_logprobs: torch.Tensor) -> Callable[[], list[float]]:
        """`score`, queued: the forward and the reads go to the device now; the call reads them back."""
        import torch

        n = len(tree)
        if n == 0:
            return lambda: []
        inner = sorted({p for p in tree.parents if p >= 0})
        row_of = {node: i for i, node in enumerate(inner)}
        roots = [v for v in range(n) if tree.parents[v] < 0]
        deep = [v for v in range(n) if tree.parents[v] >= 0]
        picks = [picked(root_logprobs, [tree.tokens[v] for v in roots])]
        scored = list(roots)
        with torch.inference_mode():
            if deep and self.runner.length + len(inner) <= self.runner.max_len:
                # An inner node's parent is itself inner, so the sub-tree is closed.
                logits, _ = self.runner.forward(
                    [tree.tokens[v] for v in inner], [row_of.get(tree.parents[v], -1) for v in inner]
                )
                logp = torch.log_softmax(logits, dim=-1)
                picks.append(
                    picked(logp, [tree.tokens[v] for v in deep], [row_of[tree.parents[v]] for v in deep])
                )
                scored += deep
            # else: no room in the draft cache (rare): deeper nodes count as unlikely
            return path_scores_later(tree, scored, torch.cat(picks))

    def describe(self) -> dict:
        return super().describe() | {"draft_model": self.setup.draft.name if self.setup.draft else None}


def host_tree(setup: MethodSetup, options: SpsTreeOptions) -> DraftModelTree | Eagle2:
    """The host tree a hybrid method (rasd, respec) builds on, with the host's own options: `eagle2`
    on the EAGLE head when --draft-head is given (as in the RASD and ReSpec papers), else `sps-tree`.
    Both offer the same public calls (`grow`, `root_logits`, `score`); the hybrid uses nothing else."""
    if setup.draft_head is not None:
        from .eagle2 import Eagle2, Eagle2Options

        return Eagle2(setup, subset(Eagle2Options, options))
    return DraftModelTree(setup, options)
