"""SAM-Decoding's static datastore: the frozen suffix automaton of a corpus (automaton.py), on disk.

Datastore folder (`specbench build-index --method sam`), layout "compact-v2":
    tokens.npy       int32 [N], every document followed by SEPARATOR (-1)
    link.npy         int32 [S]: suffix link of every state (S = N + 1 + C)
    clone_len.npy    int32 [C]: longest length of clone N + 1 + k (other states: their id)
    clone_first.npy  int32 [C]: its first end position (other states: id - 1)
    edge_start.npy   int32 or int64 [S + 1]: state v owns edges[edge_start[v] : edge_start[v + 1]]
    edges.npy        int32 [E, 2]: token, target state; sorted by token within each state
    manifest.json    see manifest.py (sizes and sha256 of the six files)

On real code about 36 bytes per corpus token (measured: docs/datastores.md), against 44 for the
earlier layout that stored (link, length, first end) for every state.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .automaton import MAX_TOKENS, SEPARATOR, FrozenAutomaton, build_automaton
from .base import BuildInput, Datastore, join_documents

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
    """The static automaton has no build options: it is fully determined by the corpus."""


class SamDatastore(Datastore):
    """A built sam datastore; `automaton` is the memory-mapped FrozenAutomaton."""

    kind = "sam"
    options_class = SamOptions

    def load(self) -> None:
        if (self.manifest.get("layout") or {}).get("automaton") != LAYOUT:
            raise self.refuse("it was built with an older automaton layout")
        arrays = {k: np.load(self.path / f, mmap_mode="r") for k, f in FILES.items()}
        self.automaton = FrozenAutomaton(**arrays)

    def validate(self) -> None:
        # The walk kernels index states by link and by edge target, clones by id, and edges by
        # edge_start: every one of those must point inside its array, and a suffix link must lead
        # to a shorter string (else falling back along links never reaches the root).
        a = self.automaton
        for key, dtypes, ndim, min_rows in (
            ("tokens", (np.int32,), 1, 1),
            ("link", (np.int32,), 1, 1),
            ("clone_len", (np.int32,), 1, 0),
            ("clone_first", (np.int32,), 1, 0),
            ("edge_start", (np.int32, np.int64), 1, 1),
            ("edges", (np.int32,), 2, 0),
        ):
            self.expect_array(FILES[key], getattr(a, key), dtypes, ndim, min_rows)
        n_tokens, n_states, n_clones = len(a.tokens), a.n_states, len(a.clone_len)
        if (
            n_states != n_tokens + 1 + n_clones
            or len(a.clone_first) != n_clones
            or a.edges.shape[1:] != (2,)
            or len(a.edge_start) != n_states + 1
        ):
            raise self.refuse("its arrays have inconsistent shapes")
        if a.tokens[-1] != SEPARATOR:
            raise self.refuse(f"{FILES['tokens']} does not end with the document separator")
        self.expect_range(FILES["tokens"], a.tokens, SEPARATOR, MAX_TOKENS + 1)
        starts = np.asarray(a.edge_start)
        if starts[0] != 0 or starts[-1] != len(a.edges) or (np.diff(starts) < 0).any():
            raise self.refuse(f"{FILES['edge_start']} is not an increasing index into {FILES['edges']}")
        if len(a.edges):
            self.expect_range(f"{FILES['edges']} targets", a.edges[:, 1], 1, n_states)
        if n_clones:
            self.expect_range(FILES["clone_len"], a.clone_len, 1, n_tokens + 1)
            self.expect_range(FILES["clone_first"], a.clone_first, 0, n_tokens)
        if a.link[0] != -1:
            raise self.refuse(f"{FILES['link']} does not start with the root state")
        self.expect_range(f"{FILES['link']} links", a.link[1:], 0, n_states)

        def lengths(ids: np.ndarray) -> np.ndarray:
            clone = ids > n_tokens
            out = ids.astype(np.int64)
            out[clone] = np.asarray(a.clone_len)[ids[clone] - n_tokens - 1]
            return out

        for start in range(1, n_states, SLICE):
            ids = np.arange(start, min(start + SLICE, n_states))
            if (lengths(np.asarray(a.link[ids[0] : ids[-1] + 1])) >= lengths(ids)).any():
                raise self.refuse(f"{FILES['link']} has a suffix link that does not lead to a shorter string")

    @classmethod
    def write(cls, build: BuildInput, folder: Path) -> dict:
        """The corpus automaton, built online, then frozen array by array straight to disk."""
        stream, n_docs = concatenate(build.docs)
        build_automaton(np.array([0, SEPARATOR], dtype=np.int32))  # compile / load the kernels off the clock
        t0 = time.perf_counter()
        if build.console is not None:
            total = len(stream)
            with build.console.status(f"building the suffix automaton of {total:,} tokens") as status:
                auto = build_automaton(
                    stream, lambda done: status.update(f"suffix automaton: {done:,}/{total:,} tokens")
                )
        else:
            auto = build_automaton(stream)
        construct_seconds = time.perf_counter() - t0
        live_bytes = auto.nbytes()
        auto.table = np.empty(0, dtype=np.int32)  # freezing needs no hash table: free it first
        n_states, n_edges = auto.n_states, auto.n_edges
        t0 = time.perf_counter()
        np.save(folder / FILES["tokens"], stream)
        stored = stream.nbytes
        for key, arr in auto.frozen_arrays():
            np.save(folder / FILES[key], arr)
            stored += arr.nbytes
            del arr
        del auto
        n_tokens = len(stream) - n_docs  # corpus tokens, separators not counted
        return {
            "tokens": n_tokens,
            "documents": n_docs,
            "layout": {
                "dtype": "int32",
                "separator": SEPARATOR,
                "after": "every document",
                "automaton": LAYOUT,
            },
            "build": {
                "construct_seconds": round(construct_seconds, 3),
                "freeze_seconds": round(time.perf_counter() - t0, 3),
                "automaton_mb": round(live_bytes / 2**20, 1),
                "live_bytes_per_token": round(live_bytes / max(n_tokens, 1), 1),
                "stored_bytes_per_token": round(stored / max(n_tokens, 1), 1),
                "states": n_states,
                "edges": n_edges,
            },
        }

    @classmethod
    def summary(cls, manifest: dict) -> str:
        build = manifest["build"]
        return (
            f"{super().summary(manifest)}; {build['states']:,} states, {build['edges']:,} edges "
            f"(automaton {build['construct_seconds']:.1f} s, {build['stored_bytes_per_token']} bytes/token)"
        )


def concatenate(docs: Iterable[np.ndarray | list[int]]) -> tuple[np.ndarray, int]:
    """One int32 stream with SEPARATOR after every non-empty document; returns (stream, documents)."""
    return join_documents(docs, np.int32, SEPARATOR, MAX_TOKENS, max_len=MAX_TOKENS)
