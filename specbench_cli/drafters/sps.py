"""`sps`: draft-model speculative decoding with a chain of k tokens (default 5).

The drafter owns a small model with its own slot cache (the target's cache is never touched). Before
drafting it rolls its cache back to the longest prefix it shares with the committed tokens, feeds
what it has not seen, then decodes k tokens greedily. Greedy drafting is the right choice at any
temperature here: the verifier's shared-draw rule accepts a drafted token with probability p(x), which
the draft model's most likely token maximises when it approximates the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..options import option
from ..types import DraftContext, DraftTree, MethodSetup
from .base import Drafter

if TYPE_CHECKING:  # torch is not imported at module level, so `ls --method sps` stays light
    import torch


@dataclass
class SpsOptions:
    k: int = option(
        5,
        "draft tokens per step (a chain)",
        "transformers assisted generation, num_assistant_tokens=5 (Spec-Bench's sps)",
        minimum=1,
    )


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix. Lists compare in C: a draft cache's tokens are almost
    always a prefix of the next context, found in one comparison instead of a Python loop over the
    whole context every step, run on the host while the GPU waits; a mismatch is bisected."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class DraftModelChain(Drafter):
    name = "sps"
    needs_draft_model = True

    options_class = SpsOptions

    def __init__(self, setup: MethodSetup):
        super().__init__(setup)  # checks that --draft-model was given
        self.k = self.opts.k
        self.runner = setup.draft_runner()
        self.seen: list[int] = []  # tokens whose K/V sit in the draft cache, in order

    def reset(self, prompt_ids: list[int]) -> None:
        self.runner.reset()
        self.seen = []

    def catch_up(self, tokens: list[int]) -> torch.Tensor:
        """Bring the draft cache to `tokens`; return the draft logits after the last one."""
        keep = common_prefix(self.seen, tokens)
        keep = min(keep, len(tokens) - 1)  # always run at least the last token to get its logits
        self.runner.rewind(keep)
        todo = tokens[keep:]
        if self.runner.length + len(todo) + self.k + 1 > self.runner.max_len:
            self.runner.reset()
            self.runner.ensure_capacity(len(tokens) + self.k + 64)
            keep, todo = 0, tokens
        logits, _ = self.runner.forward(todo, last_only=True)
        self.runner.commit(list(range(len(todo))))
        self.seen = list(tokens)
        return logits[-1]

    def propose(self, ctx: DraftContext) -> DraftTree:
        k = min(self.k, ctx.max_nodes)
        if k <= 0:
            return DraftTree.empty()
        import torch

        logits = self.catch_up(ctx.tokens)
        # Each token stays on the device and feeds the next forward (`forward_tensors`): on the compiled
        # runner the k forwards queue on the GPU back to back, and the chain is read back once, instead
        # of a host round trip (argmax read, then the next forward's inputs written) per token.
        root = torch.full((1,), -1, dtype=torch.long, device=logits.device)  # a lone input: no parent
        picks = [logits.argmax().view(1)]
        for _ in range(k - 1):
            logits, _ = self.runner.forward_tensors(picks[-1], root, copy=False)  # read by the argmax below
            self.runner.commit([0])
            picks.append(logits[-1].argmax().view(1))
        draft = torch.cat(picks).tolist()
        self.seen.extend(draft[:-1])  # the last draft token is not in the draft cache
        return DraftTree.chain(draft)

    def describe(self) -> dict:
        return super().describe() | {"draft_model": self.setup.draft.name if self.setup.draft else None}
