"""`sam`: SAM-Decoding (Hu et al., ACL 2025; methods.md §1.3) with its defaults.

Two suffix automata (datastores/automaton.py): a static one over a corpus, built by
`build-index --method sam` and memory-mapped, and a dynamic one over the prompt and everything
generated, extended by the committed tokens after every step (amortised O(1) per token). Each step:
- dynamic match: the longest suffix of the committed text (root included) that occurs earlier in it;
  the automaton keeps it up to date by construction (see SuffixAutomaton.repeat);
- static match: the longest suffix that occurs in the corpus, carried from step to step as
  (state, length) and advanced token by token with suffix-link fallback; len_bias (5) is taken off it;
- if the longer of the two (the dynamic one on ties) reaches len_threshold (5), draft the chain that
  follows the match's first occurrence: n_predicts - 1 tokens, so that with the root the target
  verifies n_predicts (40) positions, as in the official code. A dynamic match climbs suffix links
  (the official `to_anc`) until a whole chain follows it; a static chain stops at its document's end;
- otherwise ask the auxiliary drafter (option `fallback`): Token Recycling (`recycle`), the official
  code's default `tree_method="token_recycle"`; or `eagle2`, EAGLE-2's tree from an EAGLE head
  (needs --draft-head: the paper's SAMD[EAGLE2], what Spec-Bench runs); or `pld`, or `sps-tree` (the
  same tree from --draft-model), or `none` (draft nothing). Options `fallback.KEY=VALUE` go to it. The
  fallback sees every step's feedback, so Token Recycling's matrix also learns from the steps that
  drafted a SAM chain, as in the official code. An EAGLE head skips the steps SAM drafts and catches
  up on the next step it drafts (its cache takes the target's features of every committed token).
Option `static=false` ignores the corpus automaton (the README's advice for models far from the
corpus's); the datastore is still required by `eval` so that runs stay comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..datastores.automaton import SuffixAutomaton
from ..datastores.sam import SamDatastore
from ..options import option
from ..types import DraftContext, DraftTree, MethodSetup, SpecbenchError, StepFeedback
from .base import Drafter

SAM_CODE = "SAM-Decoding official code (hyx1999/SAM-Decoding, SamdConfig)"
FALLBACKS = ("recycle", "eagle2", "pld", "sps-tree", "none")


@dataclass
class SamOptions:
    n_predicts: int = option(
        40, "positions verified per chain, root included", f"{SAM_CODE}, n_predicts=40", minimum=1
    )
    len_threshold: int = option(
        5, "shortest match that drafts a chain", f"{SAM_CODE}, len_threshold=5", minimum=0
    )
    len_bias: int = option(5, "taken off the static match length", f"{SAM_CODE}, len_bias=5", minimum=0)
    static: bool = option(
        True, "use the corpus automaton (false: the dynamic one alone)", "SAM-Decoding README"
    )
    fallback: str = option(
        "recycle",
        "drafter when no match is long enough (none: draft nothing)",
        f"{SAM_CODE}, tree_method='token_recycle'",
        choices=FALLBACKS,
    )


class SamDecoding(Drafter):
    name = "sam"
    datastore_kind = "sam"
    options_class = SamOptions
    nested_options = ("fallback",)  # fallback.KEY=VALUE goes to the fallback drafter
    stat_names = {
        "dynamic_steps": "steps drafted from the dynamic automaton (the context)",
        "static_steps": "steps drafted from the static automaton (the corpus)",
        "fallback_steps": "steps handed to the fallback drafter",
    }

    def __init__(self, setup: MethodSetup):
        super().__init__(setup)
        self.n_predicts = self.opts.n_predicts
        self.len_threshold = self.opts.len_threshold
        self.len_bias = self.opts.len_bias
        store = setup.datastores.get("sam")
        # Without a datastore (a drafter built in code) the method runs on the dynamic automaton alone.
        self.static = SamDatastore(store).automaton if self.opts.static and store is not None else None

        self.fallback_name = self.opts.fallback
        self.fallback: Drafter | None = None
        if self.fallback_name != "none":
            from ..registry import DRAFTERS

            fb_setup = replace(setup, options=self.routed_options.get("fallback", {}))
            self.fallback = DRAFTERS.get(self.fallback_name)(fb_setup)
            # The engine reads these flags per instance: recycle learns the top-k of every step,
            # an EAGLE head reads the target's features.
            self.needs_node_topk = self.fallback.needs_node_topk
            self.needs_features = self.fallback.needs_features

        self.dynamic = SuffixAutomaton()
        self.fed = 0  # committed tokens already in the dynamic automaton and the static match
        self.state, self.length = 0, 0  # static match: automaton state and matched length

    @classmethod
    def check_options(cls, raw: dict, has_draft_model: bool, has_draft_head: bool = False) -> None:
        opts, routed = cls.parse_options(raw, nested=True)
        fallback = opts.fallback
        if fallback != "none":
            from ..registry import DRAFTERS

            fb = DRAFTERS.get(fallback)
            # Before any model loads: the fallback's network must be on the command line.
            if fb.needs_draft_head and not has_draft_head:
                raise SpecbenchError(
                    f"sam option fallback={fallback} needs --draft-head DIR (an EAGLE head from "
                    "`specbench train-head`)"
                )
            if fb.needs_draft_model and not has_draft_model:
                raise SpecbenchError(f"sam option fallback={fallback} needs --draft-model")
            fb.check_options(routed.get("fallback", {}), has_draft_model, has_draft_head)
        elif routed:
            raise SpecbenchError("sam options fallback.KEY need a fallback; fallback=none has no options")

    def reset(self, prompt_ids: list[int]) -> None:
        self.dynamic = SuffixAutomaton(capacity=2 * len(prompt_ids) + 256)
        self.fed, self.state, self.length = 0, 0, 0
        self._feed(prompt_ids)
        if self.fallback is not None:
            self.fallback.reset(prompt_ids)

    def start_run(self) -> None:
        if self.fallback is not None:
            self.fallback.start_run()

    def finish_answer(self, output_ids: list[int]) -> None:
        if self.fallback is not None:
            self.fallback.finish_answer(output_ids)

    def _feed(self, tokens: list[int]) -> None:
        """Add tokens[self.fed:] to both matches (the engine only ever appends to the committed text)."""
        new = tokens[self.fed :]
        if not new:
            return
        self.dynamic.extend(new)
        if self.static is not None:
            self.state, self.length = self.static.walk(new, self.state, self.length)
        self.fed = len(tokens)

    def update(self, feedback: StepFeedback) -> None:
        # feedback.tokens[self.fed:] is exactly feedback.committed (the accepted drafts + the bonus).
        self._feed(feedback.tokens)
        if self.fallback is not None:
            self.fallback.update(feedback)

    def dynamic_chain(self, n: int) -> tuple[int, np.ndarray]:
        """(match length, the n tokens after its first occurrence, climbing suffix links until n follow)."""
        match = self.dynamic.repeat()
        state, text = match.state, self.dynamic.text
        while self.dynamic.link(state) > 0 and len(text) - 1 - self.dynamic.first_end(state) < n:
            state = self.dynamic.link(state)
        end = self.dynamic.first_end(state)
        return match.length, text[end + 1 : end + 1 + n]

    def propose(self, ctx: DraftContext) -> DraftTree:
        self._feed(ctx.tokens)  # the first root arrives here, before any update
        n = min(self.n_predicts - 1, ctx.max_nodes)
        dyn_len = self.dynamic.repeat().length
        static_len = self.length - self.len_bias if self.static is not None else -1
        if n > 0 and max(dyn_len, static_len) >= self.len_threshold:
            if dyn_len >= static_len:
                source, chain = "dynamic", self.dynamic_chain(n)[1]
            else:
                source, chain = "static", self.static.continuation(self.static.first_end(self.state), n)
            if len(chain):
                self.count(f"{source}_steps")
                return DraftTree.chain(chain.tolist())
        self.count("fallback_steps")
        return self.fallback.propose(ctx) if self.fallback is not None else DraftTree.empty()

    def describe(self) -> dict:
        return super().describe() | {
            "static": self.static is not None,
            "static_states": self.static.n_states if self.static is not None else None,
            "fallback": self.fallback_name,
            "fallback_params": self.fallback.describe() if self.fallback is not None else {},
        }
