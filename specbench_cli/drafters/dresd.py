"""`dresd`: dense retrieval drafts (DReSD, Gritta et al., ACL 2025 Findings), with the official defaults.

Each step the target's final hidden state at the position that produced the root (taken from the
verifier's own forward: no extra forward) is z-scored, projected with the datastore's PCA and
L2-normalised, and its 50 nearest keys are fetched. A neighbour is kept only when its first value
token equals the root (DReSD's "filtering token": the stored position predicted the same token the
target just chose); that token is dropped and the next 10 tokens are a candidate. The first 10
candidates, in neighbour order (score, then id), are merged into one tree so shared prefixes are
verified once. Under greedy decoding this accepts exactly what DReSD's batch of 10 rows accepts (the
longest matching prefix among the candidates), with fewer tokens in the forward.
Options: `DresdOptions` below (`specbench ls --method dresd`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..options import option
from ..types import DraftContext, DraftTree, MethodSetup, SpecbenchError
from .base import Drafter

DRESD_CODE = "DReSD official code (huawei-noah/HEBO, dresd.py)"


@dataclass
class DresdOptions:
    neighbours: int = option(
        50, "nearest keys fetched per step", f"{DRESD_CODE}, num_neighbors=50", minimum=1
    )
    num_drafts: int = option(
        10, "candidates kept after the first-token filter", f"{DRESD_CODE}, num_drafts=10", minimum=1
    )
    draft_len: int = option(10, "tokens per candidate", f"{DRESD_CODE}, len_drafts=10", minimum=1)
    distinct: bool = option(
        False, "drop repeated candidates before counting num_drafts", f"{DRESD_CODE}: kept"
    )
    backend: str = option(
        "auto", "nearest-neighbour search", "ours", choices=("auto", "faiss-gpu", "torch", "faiss-cpu")
    )
    nprobe: int | None = option(
        None, "IVF cells searched (none: the datastore's)", "build-index --nprobe", minimum=1
    )
    load: str = option(
        "ram",
        "ram: read the index into memory; mmap: memory-map the store files",
        "ours",
        choices=("ram", "mmap"),
    )


def candidate_paths(
    values: np.ndarray, root: int, num_drafts: int = 10, draft_len: int = 10, distinct: bool = False
) -> list[list[int]]:
    """DReSD's filter: rows (neighbour order) whose first token is `root`, that token dropped, cut at the
    first padding slot (-1, a document's end), at most `num_drafts` non-empty candidates."""
    # One comparison finds the rows to keep (first token the root, a second token that is no padding)
    # and one `tolist` reads them: per-row numpy calls cost ~11 us a step for a few rows, this ~4.
    keep = np.flatnonzero((values[:, 0] == root) & (values[:, 1] >= 0))
    if not distinct:  # every kept row is a candidate: the first num_drafts are the answer
        keep = keep[:num_drafts]
    out: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()
    for path in values[keep, 1 : 1 + draft_len].tolist():
        if min(path) < 0:
            path = path[: next(i for i, tok in enumerate(path) if tok < 0)]
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

    options_class = DresdOptions
    stat_names = {
        "retrieval_seconds": "time in the search and the candidate filter",
        "candidates": "candidates left after the first-token filter",
        "batch_tokens": "tokens DReSD's batch of rows would verify for the same candidates",
    }

    def __init__(self, setup: MethodSetup, options: DresdOptions | None = None):
        from ..datastores.dresd import DresdDatastore

        super().__init__(setup, options)
        o = self.opts
        self.neighbours, self.num_drafts, self.draft_len, self.distinct = (
            o.neighbours,
            o.num_drafts,
            o.draft_len,
            o.distinct,
        )
        self.store = DresdDatastore(
            self.datastore_path(),
            setup.target,
            backend=o.backend,
            nprobe=o.nprobe,
            k=self.neighbours,
            mmap=o.load == "mmap",
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

    def propose(self, ctx: DraftContext) -> DraftTree:
        if ctx.hidden is None or ctx.max_nodes < 1:
            return DraftTree.empty()
        start = time.perf_counter()
        _, ids = self.store.search(ctx.hidden, self.neighbours)
        rows = self.store.values[ids]  # (k, 20), neighbour order (the search drops padding ids)
        paths = candidate_paths(rows, int(ctx.tokens[-1]), self.num_drafts, self.draft_len, self.distinct)
        tree = DraftTree.from_paths(paths, ctx.max_nodes)
        self.count("retrieval_seconds", time.perf_counter() - start)
        self.count("candidates", len(paths))
        self.count("batch_tokens", sum(len(p) for p in paths))
        return tree

    def describe(self) -> dict:
        m = self.store.manifest
        return super().describe() | {
            "backend": self.store.backend,
            "search": self.store.search_params,
            "search_mode": self.store.index.search_mode(),
            "index": m.get("index"),
            "vectors": m.get("vectors"),
            "dim": m.get("dim"),
            "layer": m.get("layer"),
            "built_with": (m.get("model") or {}).get("name"),
        }
