"""`respec`: "When, What, and How: Rethinking Retrieval-Enhanced Speculative Decoding" (Fang et al.,
arXiv 2511.01282). Lossy by default: `--method-opt respec.relaxed=off` makes it lossless.

- WHEN, the entropy trigger: every step reads the entropy (nats) of the target's next-token
  distribution at the position that produced the root, from the verifier's own forward. Over the
  last l = 3 steps, H_k is the mean of the last k entropies and C_k = H_k + lambda_e / k; the step
  retrieves when the H_k of the smallest C_k is at most theta = 1.5 (the paper's theta and l;
  lambda_e = 1.0 as in a public re-implementation, methods.md §7). Otherwise, or when retrieval finds
  nothing worth verifying, the step drafts with the model tree (`sps-tree`, --draft-model).
  The engine hands over one distribution per step, so the "last k positions" are the roots of the
  last k steps, not the last k tokens.
- WHAT, feedback-driven candidates: the retriever (context matches at several positions by default;
  `retriever=pld+rest` adds the REST datastore) gives candidates, each with a key for its copy
  source. Each key keeps a score S <- (1 - alpha) S + alpha R, R = accepted / proposed tokens of its
  last use (start 0.5, alpha 0.3); candidates under the cut-off (0.5) are dropped, the best
  `num_candidates` (4) by score are merged into one tree and verified together, with the draft
  model's 4 most likely first tokens beside them as strict siblings (ours: many retrieval steps would
  otherwise accept nothing).
- HOW, source-aware relaxed verification: retrieved nodes are marked `relaxed`, and the shared
  verifier may accept such a node when the target's strict pick is not among the children but the
  node's token is in the target's top-`relaxed_topk` (1) or has probability >= `relaxed_min_prob`
  (0.3). Model-drafted nodes are always verified strictly. The paper's exact rule was not found;
  ours is documented and ablated in docs/methods.md ("respec").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..options import option, subset
from ..types import DraftContext, DraftTree, MethodSetup, SpecbenchError, StepFeedback
from .base import Drafter
from .retrieval import Candidate, Retriever, RetrieverOptions
from .sps_tree import DraftModelTree, SpsTreeOptions

if TYPE_CHECKING:  # torch is imported where it is used, so `ls --method respec` stays light
    import torch

PAPER = "ReSpec (arXiv 2511.01282)"
REIMPLEMENTATION = "a public re-implementation of ReSpec's Algorithm 1"


@dataclass
class ReSpecOptions(SpsTreeOptions, RetrieverOptions):
    """ReSpec's own options, plus the host tree's (sps-tree) and the retriever's under their own names."""

    relaxed: bool = option(True, "relaxed verification of retrieved nodes (off: lossless)", PAPER)
    relaxed_topk: int = option(
        1,
        "a retrieved token in the target's top-k is accepted",
        "ours: the paper's rule was not found",
        minimum=0,
    )
    relaxed_min_prob: float = option(
        0.3, "a retrieved token with this target probability is accepted", "ours (ablated)", minimum=0.0
    )
    entropy_theta: float = option(1.5, "retrieve when the windowed entropy (nats) is at most this", PAPER)
    lookback: int = option(3, "entropy window l (steps)", PAPER, minimum=1)
    lambda_e: float = option(1.0, "window penalty: C_k = H_k + lambda_e / k", REIMPLEMENTATION)
    alpha: float = option(0.3, "feedback score step: S <- (1 - alpha) S + alpha R", REIMPLEMENTATION)
    score_init: float = option(0.5, "feedback score of a new candidate source", REIMPLEMENTATION)
    score_cutoff: float = option(0.5, "candidates scoring below this are dropped", REIMPLEMENTATION)
    num_candidates: int = option(4, "candidates verified together per retrieval step", "ours", minimum=1)
    budget: int = option(64, "nodes of the retrieval tree", "REST num_draft=64", minimum=1)
    fallback_k: int = option(
        4, "strict draft-model first tokens added beside the retrieved ones", "ours (ablated)", minimum=0
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.alpha <= 1.0:
            raise SpecbenchError(f"option alpha={self.alpha!r} must be in (0, 1]")


def entropy_nats(logits: torch.Tensor, temperature: float = 0.0) -> float:
    """Entropy of the distribution the verifier draws from: softmax(logits / T), or softmax(logits) at T=0."""
    import torch

    row = logits.float().reshape(-1)
    if temperature > 0:
        row = row / temperature
    logp = torch.log_softmax(row, dim=-1)
    return float(-(logp.exp() * logp).sum())


def entropy_trigger(
    history: list[float], lookback: int = 3, lambda_e: float = 1.0, theta: float = 1.5
) -> bool:
    """True when the recent context is predictable enough to retrieve (ReSpec's Algorithm 1 rule).

    For k = 1..min(lookback, len(history)): H_k = mean of the last k entropies, C_k = H_k + lambda_e/k
    (a longer window is trusted more). The H_k with the smallest C_k (the shorter window on a tie)
    decides: retrieve when it is <= theta.
    """
    n = min(lookback, len(history))
    best: tuple[float, float] | None = None  # (C_k, H_k)
    total = 0.0
    for k in range(1, n + 1):
        total += history[-k]
        h_k = total / k
        c_k = h_k + lambda_e / k
        if best is None or c_k < best[0]:
            best = (c_k, h_k)
    return best is not None and best[1] <= theta


def rank_candidates(
    cands: list[Candidate], scores: dict[tuple, float], init: float, cutoff: float, limit: int
) -> list[Candidate]:
    """Candidates whose feedback score reaches `cutoff`, best score first (ties keep the retriever's
    order), at most `limit`."""
    scored = [(scores.get(c.key, init), i, c) for i, c in enumerate(cands)]
    passing = [t for t in scored if t[0] >= cutoff]
    passing.sort(key=lambda t: (-t[0], t[1]))
    return [c for _, _, c in passing[:limit]]


def common_prefix_len(a: tuple[int, ...] | list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class ReSpec(Drafter):
    name = "respec"
    needs_logits = True
    needs_draft_model = True
    lossless = False  # the default (relaxed on); an instance with relaxed=off sets its own True
    lossless_options = {"relaxed": False}  # the options that make it lossless (for the lossless test)

    options_class = ReSpecOptions
    stat_names = {
        "retrieval_seconds": "time in the retriever",
        "triggered_steps": "steps the entropy trigger chose retrieval",
        "retrieval_steps": "steps that verified retrieved candidates",
        "retrieval_step_accepts": "tokens accepted in retrieval steps",
        "relaxed_accepts": "nodes only the relaxed rule accepted",
    }

    def __init__(self, setup: MethodSetup):
        super().__init__(setup)
        o = self.opts
        self.relaxed, self.relaxed_topk, self.relaxed_min_prob = o.relaxed, o.relaxed_topk, o.relaxed_min_prob
        self.theta, self.lookback, self.lambda_e = o.entropy_theta, o.lookback, o.lambda_e
        self.alpha, self.score_init, self.score_cutoff = o.alpha, o.score_init, o.score_cutoff
        self.num_candidates, self.budget, self.fallback_k = o.num_candidates, o.budget, o.fallback_k
        # The report reads this to keep a relaxed run out of the lossless rankings.
        self.lossless = not self.relaxed
        self.host = DraftModelTree(setup, subset(SpsTreeOptions, o))
        self.retriever = Retriever(subset(RetrieverOptions, o), setup, "respec")
        self.needs_hidden_states = self.retriever.needs_hidden_states
        self.entropies: list[float] = []  # one per step of this turn
        self.scores: dict[tuple, float] = {}  # candidate key -> feedback score
        self.last_used: list[Candidate] = []  # candidates verified in the last step

    def reset(self, prompt_ids: list[int]) -> None:
        self.host.reset(prompt_ids)
        self.entropies, self.scores, self.last_used = [], {}, []

    def verify_options(self) -> dict:
        if not self.relaxed:
            return {}
        return {"relaxed_topk": self.relaxed_topk, "relaxed_min_prob": self.relaxed_min_prob}

    def propose(self, ctx: DraftContext) -> DraftTree:
        self.last_used = []
        if ctx.logits is not None:
            self.entropies.append(entropy_nats(ctx.logits, ctx.temperature))
            del self.entropies[: -self.lookback]
        budget = min(self.budget, ctx.max_nodes)
        if budget > 0 and entropy_trigger(self.entropies, self.lookback, self.lambda_e, self.theta):
            self.count("triggered_steps")
            start = time.perf_counter()
            cands = self.retriever.candidates(ctx, budget)
            self.count("retrieval_seconds", time.perf_counter() - start)
            chosen = rank_candidates(
                cands, self.scores, self.score_init, self.score_cutoff, self.num_candidates
            )
            if chosen:
                self.last_used = chosen
                self.count("retrieval_steps")
                return self.retrieval_tree(ctx, chosen, budget)
        return self.host.propose(ctx)

    def retrieval_tree(self, ctx: DraftContext, chosen: list[Candidate], budget: int) -> DraftTree:
        """The chosen candidates as one trie (marked relaxed when relaxed is on), plus the draft model's
        `fallback_k` most likely first tokens as strict siblings.

        On real text more than half of the retrieval steps accept nothing (bench/results/
        replay_respec_qwen05.json). The siblings cost one draft forward, the catch-up that the next
        model step would do anyway, and turn most of those steps into at least one accepted token.
        """
        tree = DraftTree.from_paths([list(c.tokens) for c in chosen], budget)
        tokens, parents = list(tree.tokens), list(tree.parents)
        relaxed = [self.relaxed] * len(tokens)
        room = min(self.fallback_k, budget - len(tokens))
        if room > 0:
            root_logits = self.host.root_logits(ctx.tokens, headroom=1)
            firsts = {t for t, p in zip(tokens, parents) if p < 0}
            for tok in root_logits.topk(room + len(firsts)).indices.tolist():
                if tok not in firsts and room > 0:
                    tokens.append(tok)
                    parents.append(-1)
                    relaxed.append(False)
                    room -= 1
        return DraftTree(tuple(tokens), tuple(parents), tuple(relaxed) if self.relaxed else None)

    def update(self, feedback: StepFeedback) -> None:
        accepted = [feedback.tree.tokens[n] for n in feedback.accepted_nodes]
        self.count("relaxed_accepts", feedback.relaxed_accepts)
        if not self.last_used:
            return
        self.count("retrieval_step_accepts", len(accepted))
        for cand in self.last_used:
            reward = common_prefix_len(cand.tokens, accepted) / max(len(cand.tokens), 1)
            old = self.scores.get(cand.key, self.score_init)
            self.scores[cand.key] = (1.0 - self.alpha) * old + self.alpha * reward

    def describe(self) -> dict:
        return super().describe() | {
            "lossless": self.lossless,
            "host": self.host.describe(),
            **self.retriever.describe(),
        }
