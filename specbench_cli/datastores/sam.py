"""SAM-Decoding's static datastore: the frozen suffix automaton of a corpus (automaton.py), on disk.

Datastore folder (`specbench build-index --method sam`), layout "compact-v2":
    tokens.npy       int32 [N], every document followed by SEPARATOR (-1)
    link.npy         int32 [S]: suffix link of every state (S = N + 1 + C)
    clone_len.npy    int32 [C]: longest length of clone N + 1 + k (other states: their id)
    clone_first.npy  int32 [C]: its first end position (other states: id - 1)
    edge_start.npy   int32 or int64 [S + 1]: state v owns edges[edge_start[v] : edge_start[v + 1]]
    edges.npy        int32 [E, 2]: token, target state; sorted by token within each state
    NAME.I.npy       the same six arrays for shard I >= 1, when the corpus is larger than
                     `--opt shard_tokens` (each shard is the automaton of its whole documents)
    manifest.json    see manifest.py (sizes and sha256 of every file; "layout.shards")

On real code about 36 bytes per corpus token (measured: docs/datastores.md), against 44 for the
earlier layout that stored (link, length, first end) for every state. Building takes about 90 bytes
per token of the live automaton, so a large corpus is built shard by shard, each frozen to disk
before the next starts; ShardedAutomaton walks them as one, with the matches of a single automaton.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..options import option
from ..types import SpecbenchError
from .automaton import (
    MAX_TOKENS,
    SEPARATOR,
    FrozenAutomaton,
    ShardedAutomaton,
    SuffixAutomaton,
    build_automaton,
)
from .base import BuildInput, Datastore, document_groups, join_documents

LAYOUT = "compact-v2"
FILES = {
    "tokens": "tokens.npy",
    "link": "link.npy",
    "clone_len": "clone_len.npy",
    "clone_first": "clone_first.npy",
    "edge_start": "edge_start.npy",
    "edges": "edges.npy",
}
SLICE = 1 << 24  # states per slice when checking a (possibly GBs large) memory-mapped store


@dataclass
class SamOptions:
    shard_tokens: int = option(
        1 << 26,
        "tokens per automaton shard; build memory follows this (about 90 bytes a shard token), not the corpus",
        "ours: like rest's chunk_tokens (2**26 tokens: about 6 GB at peak)",
        minimum=2,
    )


def shard_file(key: str, i: int) -> str:
    """File of array `key` in shard i; shard 0 keeps the plain names."""
    return FILES[key] if i == 0 else FILES[key].replace(".npy", f".{i}.npy")


class SamDatastore(Datastore):
    """A built sam datastore; `automaton` is the memory-mapped FrozenAutomaton."""

    kind = "sam"
    options_class = SamOptions

    def load(self) -> None:
        layout = self.manifest.get("layout") or {}
        if layout.get("automaton") != LAYOUT:
            raise self.refuse("it was built with an older automaton layout")
        self.shards = [
            FrozenAutomaton(**{k: np.load(self.path / shard_file(k, i), mmap_mode="r") for k in FILES})
            for i in range(int(layout.get("shards", 1)))
        ]
        one = len(self.shards) == 1
        self.automaton = self.shards[0] if one else ShardedAutomaton(self.shards)

    def validate(self) -> None:
        for i, shard in enumerate(self.shards):
            self.validate_shard(shard, {k: shard_file(k, i) for k in FILES})

    def validate_shard(self, a: FrozenAutomaton, files: dict[str, str]) -> None:
        # The walk kernels index states by link and by edge target, clones by id, and edges by
        # edge_start: every one of those must point inside its array, and a suffix link must lead
        # to a shorter string (else falling back along links never reaches the root).
        for key, dtypes, ndim, min_rows in (
            ("tokens", (np.int32,), 1, 1),
            ("link", (np.int32,), 1, 1),
            ("clone_len", (np.int32,), 1, 0),
            ("clone_first", (np.int32,), 1, 0),
            ("edge_start", (np.int32, np.int64), 1, 1),
            ("edges", (np.int32,), 2, 0),
        ):
            self.expect_array(files[key], getattr(a, key), dtypes, ndim, min_rows)
        n_tokens, n_states, n_clones = len(a.tokens), a.n_states, len(a.clone_len)
        if (
            n_states != n_tokens + 1 + n_clones
            or len(a.clone_first) != n_clones
            or a.edges.shape[1:] != (2,)
            or len(a.edge_start) != n_states + 1
        ):
            raise self.refuse("its arrays have inconsistent shapes")
        if a.tokens[-1] != SEPARATOR:
            raise self.refuse(f"{files['tokens']} does not end with the document separator")
        self.expect_range(files["tokens"], a.tokens, SEPARATOR, MAX_TOKENS + 1)
        starts = np.asarray(a.edge_start)
        if starts[0] != 0 or starts[-1] != len(a.edges) or (np.diff(starts) < 0).any():
            raise self.refuse(f"{files['edge_start']} is not an increasing index into {files['edges']}")
        if len(a.edges):
            self.expect_range(f"{files['edges']} targets", a.edges[:, 1], 1, n_states)
        if n_clones:
            self.expect_range(files["clone_len"], a.clone_len, 1, n_tokens + 1)
            self.expect_range(files["clone_first"], a.clone_first, 0, n_tokens)
        if a.link[0] != -1:
            raise self.refuse(f"{files['link']} does not start with the root state")
        self.expect_range(f"{files['link']} links", a.link[1:], 0, n_states)

        def lengths(ids: np.ndarray) -> np.ndarray:
            clone = ids > n_tokens
            out = ids.astype(np.int64)
            out[clone] = np.asarray(a.clone_len)[ids[clone] - n_tokens - 1]
            return out

        for start in range(1, n_states, SLICE):
            ids = np.arange(start, min(start + SLICE, n_states))
            if (lengths(np.asarray(a.link[ids[0] : ids[-1] + 1])) >= lengths(ids)).any():
                raise self.refuse(f"{files['link']} has a suffix link that does not lead to a shorter string")

    @classmethod
    def write(cls, build: BuildInput, folder: Path) -> dict:
        """Shard by shard: the automaton of the shard's documents, built online, then frozen array by
        array straight to disk, and freed before the next shard is read."""
        build_automaton(np.array([0, SEPARATOR], dtype=np.int32))  # compile / load the kernels off the clock
        totals = {"tokens": 0, "documents": 0, "states": 0, "edges": 0, "stored": 0}
        construct_seconds, freeze_seconds, live_peak, live_mb, shard_tokens = 0.0, 0.0, 0.0, 0.0, []
        for i, group in enumerate(document_groups(build.docs, build.options.shard_tokens)):
            stream, n_docs = concatenate(group)
            group.clear()  # in place: the generator still holds the list while this shard builds
            t0 = time.perf_counter()
            auto = build_shard(stream, i, build.console)
            construct_seconds += time.perf_counter() - t0
            # The live automaton's bytes per token of its shard: what building costs in memory.
            live_peak = max(live_peak, auto.nbytes() / len(stream))
            live_mb = max(live_mb, auto.nbytes() / 2**20)
            auto.table = np.empty(0, dtype=np.int32)  # freezing needs no hash table: free it first
            totals["states"] += auto.n_states
            totals["edges"] += auto.n_edges
            t0 = time.perf_counter()
            np.save(folder / shard_file("tokens", i), stream)
            totals["stored"] += stream.nbytes
            for key, arr in auto.frozen_arrays():
                np.save(folder / shard_file(key, i), arr)
                totals["stored"] += arr.nbytes
                del arr
            del auto
            freeze_seconds += time.perf_counter() - t0
            totals["tokens"] += len(stream) - n_docs  # corpus tokens, separators not counted
            totals["documents"] += n_docs
            shard_tokens.append(len(stream))
            del stream
        if not shard_tokens:
            raise SpecbenchError("the corpus gave no tokens: nothing to index")
        n_tokens = max(totals["tokens"], 1)
        return {
            "tokens": totals["tokens"],
            "documents": totals["documents"],
            "layout": {
                "dtype": "int32",
                "separator": SEPARATOR,
                "after": "every document",
                "automaton": LAYOUT,
                "shards": len(shard_tokens),
            },
            "build": {
                "construct_seconds": round(construct_seconds, 3),
                "freeze_seconds": round(freeze_seconds, 3),
                "automaton_mb": round(live_mb, 1),  # the largest shard's live automaton
                "live_bytes_per_token": round(live_peak, 1),
                "stored_bytes_per_token": round(totals["stored"] / n_tokens, 1),
                "states": totals["states"],
                "edges": totals["edges"],
                "shard_tokens": shard_tokens,
            },
        }

    @classmethod
    def summary(cls, manifest: dict) -> str:
        build = manifest["build"]
        return (
            f"{super().summary(manifest)}; {build['states']:,} states, {build['edges']:,} edges "
            f"(automaton {build['construct_seconds']:.1f} s, {build['stored_bytes_per_token']} bytes/token)"
        )


def build_shard(stream: np.ndarray, i: int, console) -> SuffixAutomaton:
    """The live automaton of one shard's stream, with a progress line when a console is given."""
    if console is None:
        return build_automaton(stream)
    total = len(stream)
    with console.status(f"building the suffix automaton of shard {i + 1} ({total:,} tokens)") as status:
        return build_automaton(
            stream, lambda done: status.update(f"suffix automaton, shard {i + 1}: {done:,}/{total:,} tokens")
        )


def concatenate(docs: Iterable[np.ndarray | list[int]]) -> tuple[np.ndarray, int]:
    """One int32 stream with SEPARATOR after every non-empty document; returns (stream, documents)."""
    return join_documents(docs, np.int32, SEPARATOR, MAX_TOKENS, max_len=MAX_TOKENS)
