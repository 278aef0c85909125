"""Name -> "module:attribute" maps, resolved lazily so `--help` and `ls` never import torch.

Usage: `DRAFTERS.get("pld")` imports `specbench_cli.drafters.pld` and returns its class.
"""

from __future__ import annotations

import importlib
from typing import Any

from .types import SpecbenchError


class Registry:
    def __init__(self, kind: str, entries: dict[str, tuple[str, str]]):
        # entries: name -> ("module:attr", one-line description)
        self.kind = kind
        self.entries = dict(entries)

    def names(self) -> list[str]:
        return list(self.entries)

    def describe(self, name: str) -> str:
        return self.entries[name][1]

    def check(self, name: str) -> str:
        if name not in self.entries:
            raise SpecbenchError(f"unknown {self.kind} '{name}'; choose from: {', '.join(self.entries)}")
        return name

    def get(self, name: str) -> Any:
        target = self.entries[self.check(name)][0]
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)


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
            "SAM-decoding: static + dynamic suffix automata (40-token chains), recycle fallback",
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
)
