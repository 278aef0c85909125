"""The drafter contract: a method only proposes draft trees.

A drafter never calls the target model and never touches its KV cache; the shared verifier does.
Subclass `Drafter`, set the class flags, implement `propose`, and add one line to
`specbench_cli.registry.DRAFTERS`. The lossless test picks the new method up by itself.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..types import DraftContext, DraftTree, MethodSetup, SpecbenchError, StepFeedback


class Drafter:
    name: ClassVar[str] = "base"
    needs_hidden_states: ClassVar[bool] = False  # ctx.hidden = target's last hidden state
    needs_logits: ClassVar[bool] = False  # ctx.logits = target's logits at the last position
    needs_features: ClassVar[bool] = False  # ctx.features = target's hidden state at every committed position
    # k > 0: every StepFeedback carries `node_topk`, the top-k token ids of the target's logits at every
    # input the verifier forwarded (root and all draft nodes), read back with the verifier's own choices
    # in one host copy (Token Recycling). A plain attribute, so a wrapper may set it per instance (sam).
    needs_node_topk: ClassVar[int] = 0
    needs_draft_model: ClassVar[bool] = False  # setup.draft must be given (--draft-model)
    needs_draft_head: ClassVar[bool] = False  # setup.draft_head must be given (--draft-head)
    host_on_draft_head: ClassVar[bool] = False  # --draft-head replaces --draft-model as its host tree
    datastore_kind: ClassVar[str | None] = None  # which `build-index --method` this drafter reads
    lossless: ClassVar[bool] = True  # False: the report keeps it out of lossless rankings
    lossless_options: ClassVar[dict] = {}  # for a lossy method: the options that make it lossless
    options_class: ClassVar[type | None] = None  # a dataclass of `options.option` fields (typed options)

    def __init__(self, setup: MethodSetup):
        self.setup = setup
        if (
            self.needs_draft_model
            and setup.draft is None
            and not (self.host_on_draft_head and setup.draft_head)
        ):
            raise SpecbenchError(
                f"method '{self.name}' needs --draft-model (a small model with the target's tokenizer)"
            )
        if self.needs_draft_head and setup.draft_head is None:
            raise SpecbenchError(
                f"method '{self.name}' needs --draft-head DIR (an EAGLE head from `specbench train-head`)"
            )

    def options(self, defaults: dict) -> dict:
        """The method's options: `--method-opt` values over `defaults`; an unknown key is an error."""
        unknown = sorted(set(self.setup.options) - set(defaults))
        if unknown:
            raise SpecbenchError(
                f"unknown {self.name} option(s) {', '.join(unknown)}; choose from: {', '.join(defaults)}"
            )
        return defaults | dict(self.setup.options)

    def typed_options(self, nested: bool = False) -> Any:
        """`--method-opt` values parsed into `options_class` (one-line error on unknown keys or bad values).

        With nested=True, dotted keys (`fallback.k=3`) are returned separately for the method to route:
        (options, {"fallback": {"k": 3}}).
        """
        from ..options import parse_options, split_nested

        own, sub = split_nested(dict(self.setup.options)) if nested else (dict(self.setup.options), {})
        parsed = parse_options(self.options_class, own, owner=self.name)
        return (parsed, sub) if nested else parsed

    def reset(self, prompt_ids: list[int]) -> None:
        """Called once per generated turn, before the first step."""

    def propose(self, ctx: DraftContext) -> DraftTree:
        raise NotImplementedError

    def update(self, feedback: StepFeedback) -> None:
        """Called after every verification step (acceptance feedback, dynamic indexes)."""

    def start_run(self) -> None:
        """Called by `eval` once before the first timed question (after the warm-up): forget anything
        learned from earlier generations, so a run's drafts do not depend on its warm-up."""

    def finish_answer(self, output_ids: list[int]) -> None:
        """Called by `eval` with each turn's generated tokens once its question's answer is written, in
        run order (SuffixDecoding's cross-request tree learns from these, never from unfinished text)."""

    def verify_options(self) -> dict:
        """Extra verifier settings (ReSpec's relaxed rule); lossless drafters return {}."""
        return {}

    def describe(self) -> dict:
        """Parameters recorded in config.json."""
        return {}
