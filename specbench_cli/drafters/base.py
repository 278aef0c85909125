"""The drafter contract: a method only proposes draft trees.

A drafter never calls the target model and never touches its KV cache; the shared verifier does.
Subclass `Drafter`, set the class flags, declare the options as a dataclass of `options.option`
fields (`options_class`), implement `propose`, and add one line to `specbench_cli.registry.DRAFTERS`.
The lossless test picks the new method up by itself.

Two typed channels connect a method to the rest of the harness:
- options: `--method-opt NAME.KEY=VALUE` is parsed into `options_class` (`self.opts`) before any
  model loads (`check_options`), so a misspelt key or a bad value is a one-line error;
- statistics: a method declares what it counts in `stat_names` and adds to it with `self.count`;
  `eval` stores the sums of each answer in the answer record (`method_stats`) and the report shows
  them per method. Only declared names are accepted, so the record stays small whatever the run length.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from ..options import NoOptions, parse_options, split_nested
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
    options_class: ClassVar[type] = NoOptions  # a dataclass of `options.option` fields
    nested_options: ClassVar[tuple[str, ...]] = ()  # prefixes routed to another method: "fallback.k=3"
    stat_names: ClassVar[dict[str, str]] = {}  # statistic -> what it counts (summed per answer)

    def __init__(self, setup: MethodSetup, options: Any = None):
        """`options`: already parsed (a hybrid building its host); None parses `setup.options`."""
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
        self.routed_options: dict[str, dict[str, Any]] = {}  # "fallback" -> its own raw options
        if options is None:
            options, self.routed_options = self.typed_options(nested=True)
        self.opts = options
        self.clear_stats()

    # -- options --------------------------------------------------------------------------------------

    @classmethod
    def parse_options(cls, raw: dict[str, Any], nested: bool = False) -> Any:
        """`raw` parsed into `options_class` (one-line error on unknown keys or bad values).

        With nested=True, dotted keys whose prefix is in `nested_options` are returned separately for
        the method to route: (options, {"fallback": {"k": 3}}); any other dotted key is unknown.
        """
        own, routed = split_nested(dict(raw)) if nested else (dict(raw), {})
        stray = sorted(
            f"{head}.{key}" for head, keys in routed.items() if head not in cls.nested_options for key in keys
        )
        if stray:
            known = [
                *(f.name for f in dataclasses.fields(cls.options_class)),
                *(f"{h}.KEY" for h in cls.nested_options),
            ]
            raise SpecbenchError(
                f"unknown {cls.name} option(s) {', '.join(stray)}; choose from: {', '.join(known) or '(none)'}"
            )
        parsed = parse_options(cls.options_class, own, owner=cls.name)
        return (parsed, routed) if nested else parsed

    def typed_options(self, nested: bool = False) -> Any:
        """`--method-opt` values for this method, parsed (see `parse_options`)."""
        return self.parse_options(self.setup.options, nested)

    @classmethod
    def check_options(cls, raw: dict[str, Any], has_draft_model: bool, has_draft_head: bool = False) -> None:
        """Validate `--method-opt` values before any model loads; a method that routes nested options
        to another method checks those too (override)."""
        cls.parse_options(raw, nested=True)

    # -- statistics -----------------------------------------------------------------------------------

    def count(self, stat: str, amount: float = 1) -> None:
        """Add to one of the statistics declared in `stat_names` (an undeclared name is a bug: KeyError)."""
        self._stats[stat] += amount

    def stats(self) -> dict[str, int | float]:
        """The declared statistics summed since `clear_stats` (eval clears them before each answer)."""
        return dict(self._stats)

    def clear_stats(self) -> None:
        self._stats: dict[str, int | float] = dict.fromkeys(self.stat_names, 0)

    def datastore_path(self) -> Path:
        """The `--datastore` folder this method reads; one line naming the build command when missing."""
        path = self.setup.datastores.get(self.datastore_kind)
        if path is None:
            raise SpecbenchError(
                f"method '{self.name}' needs a datastore: build one with `specbench build-index --method "
                f"{self.datastore_kind}` and pass it with --datastore DIR"
            )
        return Path(path)

    # -- the contract ---------------------------------------------------------------------------------

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
        """Parameters recorded in config.json: the parsed options; a method adds what it resolved."""
        return dataclasses.asdict(self.opts)
