"""`dresd`: dense retrieval drafts (DReSD, Gritta et al., ACL 2025 Findings), with the official defaults.

Each step the target's final hidden state at the position that produced the root (taken from the
verifier's own forward: no extra forward) is z-scored, projected with the datastore's PCA and
L2-normalised, and its 50 nearest keys are fetched. A neighbour is kept only when its first value
token equals the root (DReSD's "filtering token": the stored position predicted the same token the
target just chose); that token is dropped and the next 10 tokens are a candidate. The first 10
candidates, in neighbour order (score, then id), are merged into one tree so shared prefixes are
verified once. Under greedy decoding this accepts exactly what DReSD's batch of 10 rows accepts (the
longest matching prefix among the candidates), with fewer tokens in the forward.

Options (`--method-opt dresd.KEY=VALUE`): neighbours (50), num_drafts (10), draft_len (10),
distinct (false: duplicate candidates count towards num_drafts, as in DReSD), backend
(auto | faiss-gpu | torch | faiss-cpu), nprobe (the datastore's).
"""

from __future__ import annotations

import time

import numpy as np

from ..types import DraftContext, DraftTree, MethodSetup, SpecbenchError
from .base import Drafter


def candidate_paths(
    values: np.ndarray, root: int, num_drafts: int = 10, draft_len: int = 10, distinct: bool = False
) -> list[list[int]]:
    """DReSD's filter: rows (neighbour order) whose first token is `root`, that token dropped, cut at the
    first padding slot (-1, a document's end), at most `num_drafts` non-empty candidates."""
    out: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()
    for row in values:
        if int(row[0]) != root:
            continue
        cand = row[1 : 1 + draft_len]
        pad = np.flatnonzero(cand < 0)
        cand = cand[: pad[0]] if pad.size else cand
        if cand.size == 0:
            continue
        path = cand.tolist()
        if distinct:
            if tuple(path) in seen:
                continue
            seen.add(tuple(path))
        out.append(path)
        if len(out) == num_drafts:
            break
    return out


class DReSD(Drafter):
    name = "dresd"
    needs_hidden_states = True
    datastore_kind = "dresd"

    def __init__(self, setup: MethodSetup):
        from ..datastores.dresd import DresdDatastore

        super().__init__(setup)
        opts = setup.options
        self.neighbours = int(opts.get("neighbours", 50))
        self.num_drafts = int(opts.get("num_drafts", 10))
        self.draft_len = int(opts.get("draft_len", 10))
        self.distinct = bool(opts.get("distinct", False))
        if "dresd" not in setup.datastores:
            raise SpecbenchError(
                "method 'dresd' needs a datastore: build one with `specbench build-index --method dresd` "
                "and pass it with --datastore DIR"
            )
        if min(self.neighbours, self.num_drafts, self.draft_len) < 1:
            raise SpecbenchError("dresd options neighbours, num_drafts and draft_len must be at least 1")
        nprobe = opts.get("nprobe")
        self.store = DresdDatastore(
            setup.datastores["dresd"],
            setup.target,
            backend=str(opts.get("backend", "auto")),
            nprobe=int(nprobe) if nprobe is not None else None,
            k=self.neighbours,
        )
        layer = self.store.manifest.get("layer", -1)
        n_layers = setup.target.model.config.get_text_config().num_hidden_layers
        if layer not in (-1, n_layers):
            # The engine hands drafters the final hidden state only; keys from another layer would be
            # compared with queries from a different space.
            raise SpecbenchError(
                f"datastore {self.store.path} was built from layer {layer}, but the dresd drafter queries with "
                f"the final layer; rebuild it with --layer -1 (or {n_layers})"
            )
        # Per-step figures the benchmark reads (one entry per propose call, across generations).
        self.retrieval_seconds: list[float] = []
        self.tree_nodes: list[int] = []
        self.batch_tokens: list[int] = []  # tokens the same candidates would cost as DReSD's batch of rows

    def propose(self, ctx: DraftContext) -> DraftTree:
        if ctx.hidden is None or ctx.max_nodes < 1:
            return DraftTree.empty()
        start = time.perf_counter()
        _, ids = self.store.search(ctx.hidden, self.neighbours)
        rows = self.store.values[ids]  # (k, 20), neighbour order
        paths = candidate_paths(rows, int(ctx.tokens[-1]), self.num_drafts, self.draft_len, self.distinct)
        tree = DraftTree.from_paths(paths, ctx.max_nodes)
        self.retrieval_seconds.append(time.perf_counter() - start)
        self.tree_nodes.append(len(tree))
        self.batch_tokens.append(sum(len(p) for p in paths))
        return tree

    def describe(self) -> dict:
        m = self.store.manifest
        return {
            "neighbours": self.neighbours,
            "num_drafts": self.num_drafts,
            "draft_len": self.draft_len,
            "distinct": self.distinct,
            "backend": self.store.backend,
            "search": self.store.search_params,
            "index": m.get("index"),
            "vectors": m.get("vectors"),
            "dim": m.get("dim"),
            "layer": m.get("layer"),
            "built_with": (m.get("model") or {}).get("name"),
        }
