"""`rest`: Retrieval-Based Speculative Decoding (He et al., NAACL 2024) on our suffix-array datastore.

Each step: find the longest suffix of the committed context (root included, 16 down to 2 tokens) that
occurs in the datastore, take the 10 tokens after each of its first 5,000 matches, count every
prefix of those continuations and keep the 64 most frequent as a trie hanging off the root.

Unlike the official retriever (a hash-map heap, so ties fall in hash order), ties are broken by rule:
count descending, then shorter prefix, then lexicographic token order. A prefix never counts less
than its extensions, so under that order a parent always ranks before its children and the kept set
is a closed tree: no pruning pass is needed, and any prefix of the node list is a valid tree too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..datastores.rest import SENTINEL, RestDatastore
from ..jit import njit
from ..options import option
from ..types import DraftContext, DraftTree, MethodSetup, SpecbenchError
from .base import Drafter

REST_CODE = "REST official code (FasterDecoding/REST)"


@dataclass
class RestOptions:
    max_span: int = option(
        16, "longest context suffix looked up", f"{REST_CODE}, --max-token-span 16", minimum=1
    )
    min_span: int = option(2, "shortest context suffix looked up", f"{REST_CODE}, spans 16..2", minimum=1)
    max_matches: int = option(5000, "datastore matches read per lookup", f"{REST_CODE}, k=5000", minimum=1)
    length: int = option(10, "tokens per continuation", f"{REST_CODE}, long=10", minimum=1)
    num_draft: int = option(
        64, "most frequent prefixes kept in the trie", f"{REST_CODE}, --num-draft 64", minimum=1
    )

    def __post_init__(self) -> None:
        if self.min_span > self.max_span:
            raise SpecbenchError(f"option min_span ({self.min_span}) exceeds max_span ({self.max_span})")


@njit(cache=True, nogil=True)
def _count_prefixes(rows, sentinel):
    """Every distinct prefix of the sorted rows as a run: (count, depth, first row), plus run_of[d-1, r],
    the first row of the depth-d run that holds row r (to find a prefix's parent)."""
    m, length = rows.shape
    run_of = np.empty((length, m), dtype=np.int64)
    counts = np.empty(m * length, dtype=np.int64)
    depths = np.empty(m * length, dtype=np.int64)
    starts = np.empty(m * length, dtype=np.int64)
    n = 0
    for d in range(length):
        r = 0
        while r < m:
            # The run of rows sharing the depth-(d+1) prefix of row r.
            end = r + 1
            while (
                end < m and rows[end, d] == rows[r, d] and (d == 0 or run_of[d - 1, end] == run_of[d - 1, r])
            ):
                end += 1
            for i in range(r, end):
                run_of[d, i] = r
            if rows[r, d] != sentinel:  # a run of padding is no prefix
                counts[n], depths[n], starts[n] = end - r, d + 1, r
                n += 1
            r = end
    return counts[:n], depths[:n], starts[:n], run_of


def top_prefix_tree(rows: np.ndarray, num_nodes: int) -> DraftTree:
    """Trie of the `num_nodes` most frequent prefixes of the continuation rows.

    `rows` is (matches, length), SENTINEL-padded after a cut continuation, and sorted lexicographically
    (suffix-array order gives that for free). Sorted rows turn prefix counting into run lengths: the
    rows sharing a prefix are contiguous, and within one depth a run's first row orders prefixes
    lexicographically.
    """
    m, length = rows.shape
    if m == 0 or num_nodes <= 0:
        return DraftTree.empty()
    count, depth, start, run_of = _count_prefixes(rows, SENTINEL)
    # One int64 key for (count desc, depth asc, first row asc): a linear-time partial sort picks the
    # top num_nodes even when thousands of prefixes tie at the threshold count.
    key = ((m - count) * (length + 1) + depth) * m + start
    top = np.argpartition(key, num_nodes - 1)[:num_nodes] if key.size > num_nodes else np.arange(key.size)
    top = top[np.argsort(key[top])]

    # Each node's token and its parent's run, gathered for all nodes at once: read one numpy scalar at
    # a time, these cost ~1 us a node of every step's drafting.
    top_depth, top_start = depth[top], start[top]
    tokens = rows[top_start, top_depth - 1].tolist()
    parent_start = run_of[np.maximum(top_depth - 2, 0), top_start].tolist()
    node_of: dict[tuple[int, int], int] = {}  # (depth, first row of its run) -> node index
    parents: list[int] = []
    for i, (d, s, ps) in enumerate(zip(top_depth.tolist(), top_start.tolist(), parent_start)):
        node_of[(d, s)] = i
        parents.append(-1 if d == 1 else node_of[(d - 1, ps)])
    return DraftTree(tuple(tokens), tuple(parents))


class Rest(Drafter):
    name = "rest"
    datastore_kind = "rest"
    options_class = RestOptions
    stat_names = {
        "lookup_seconds": "time in the suffix-array lookup and the trie",
        "matched_steps": "steps whose context suffix occurs in the datastore",
        "matched_span": "matched suffix length, summed (divide by matched steps for the mean)",
    }

    def __init__(self, setup: MethodSetup, options: RestOptions | None = None):
        super().__init__(setup, options)
        self.store = RestDatastore(self.datastore_path())
        self.last_match_span = 0  # matched suffix length of the last propose() (0 = no hit)

    def propose(self, ctx: DraftContext) -> DraftTree:
        t0 = time.perf_counter()
        o = self.opts
        tree = DraftTree.empty()
        budget = min(o.num_draft, ctx.max_nodes)
        match = self.store.longest_match(ctx.tokens[-o.max_span :], o.min_span, o.max_span)
        if match.span and budget > 0:
            rows = self.store.continuation_matrix(match.ranges, match.span, o.max_matches, o.length)
            tree = top_prefix_tree(rows, budget)
        self.last_match_span = match.span
        self.count("matched_steps", int(match.span > 0))
        self.count("matched_span", match.span)
        self.count("lookup_seconds", time.perf_counter() - t0)
        return tree

    def describe(self) -> dict:
        manifest = self.store.manifest
        return super().describe() | {
            "datastore": str(self.store.path),
            "datastore_tokens": manifest.get("tokens"),
            "datastore_corpus": (manifest.get("corpus") or {}).get("description"),
        }
