"""SAM-Decoding's static datastore: the frozen suffix automaton of a corpus (automaton.py), on disk.

Datastore folder (`specbench build-index --method sam`):
    tokens.npy      int32, every document followed by SEPARATOR (-1)
    states.npy      int32 [S, 3]: suffix link, length, first end position (index into tokens.npy)
    edge_start.npy  int32 or int64 [S + 1]: state s owns edges[edge_start[s] : edge_start[s + 1]]
    edges.npy       int32 [E, 2]: token, target state; sorted by token within each state
    manifest.json   see manifest.py (sizes and sha256 of the four files)
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .automaton import FIRST, LEN, LINK, MAX_TOKENS, SEPARATOR, FrozenAutomaton, build_automaton
from .base import BuildInput, Datastore, join_documents

FILES = {"tokens": "tokens.npy", "states": "states.npy", "edge_start": "edge_start.npy", "edges": "edges.npy"}


@dataclass
class SamOptions:
    """The static automaton has no build options: it is fully determined by the corpus."""


class SamDatastore(Datastore):
    """A built sam datastore; `automaton` is the memory-mapped FrozenAutomaton."""

    kind = "sam"
    options_class = SamOptions

    def load(self) -> None:
        arrays = {k: np.load(self.path / f, mmap_mode="r") for k, f in FILES.items()}
        self.automaton = FrozenAutomaton(**arrays)

    def validate(self) -> None:
        # The walk kernels index states by link and by edge target, and edges by edge_start: every
        # one of those must point inside its array, and a suffix link must lead to a shorter string
        # (else falling back along links never reaches the root).
        a = self.automaton
        self.expect_array(FILES["tokens"], a.tokens, (np.int32,), 1)
        self.expect_array(FILES["states"], a.states, (np.int32,), 2)
        self.expect_array(FILES["edge_start"], a.edge_start, (np.int32, np.int64), 1)
        self.expect_array(FILES["edges"], a.edges, (np.int32,), 2, min_rows=0)
        n_states, n_tokens = a.states.shape[0], a.tokens.shape[0]
        if a.states.shape[1] != 3 or a.edges.shape[1:] != (2,) or len(a.edge_start) != n_states + 1:
            raise self.refuse("its arrays have inconsistent shapes")
        if a.tokens[-1] != SEPARATOR:
            raise self.refuse(f"{FILES['tokens']} does not end with the document separator")
        self.expect_range(FILES["tokens"], a.tokens, SEPARATOR, MAX_TOKENS + 1)
        starts = np.asarray(a.edge_start)
        if starts[0] != 0 or starts[-1] != len(a.edges) or (np.diff(starts) < 0).any():
            raise self.refuse(f"{FILES['edge_start']} is not an increasing index into {FILES['edges']}")
        if len(a.edges):
            self.expect_range(f"{FILES['edges']} targets", a.edges[:, 1], 1, n_states)
        states = np.asarray(a.states)
        if states[0, LINK] != -1 or states[0, LEN] != 0:
            raise self.refuse(f"{FILES['states']} does not start with the root state")
        links, lengths = states[1:, LINK], states[:, LEN]
        self.expect_range(f"{FILES['states']} links", links, 0, n_states)
        self.expect_range(f"{FILES['states']} lengths", lengths, 0, n_tokens + 1)
        self.expect_range(f"{FILES['states']} first ends", states[1:, FIRST], 0, n_tokens)
        if n_states > 1 and (lengths[links] >= lengths[1:]).any():
            raise self.refuse(f"{FILES['states']} has a suffix link that does not lead to a shorter string")

    @classmethod
    def write(cls, build: BuildInput, folder: Path) -> dict:
        """The corpus automaton, built online, frozen to CSR and saved as four arrays."""
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
        automaton_mb = auto.nbytes() / 2**20
        auto.table = np.empty(0, dtype=np.int32)  # freezing needs no hash table: free it first
        frozen = auto.freeze(copy=False)
        del auto
        for key, arr in (
            ("tokens", frozen.tokens),
            ("states", frozen.states),
            ("edge_start", frozen.edge_start),
            ("edges", frozen.edges),
        ):
            np.save(folder / FILES[key], arr)
        return {
            "tokens": len(stream) - n_docs,  # corpus tokens, separators not counted
            "documents": n_docs,
            "layout": {"dtype": "int32", "separator": SEPARATOR, "after": "every document"},
            "build": {
                "construct_seconds": round(construct_seconds, 3),
                "automaton_mb": round(automaton_mb, 1),
                "states": frozen.n_states,
                "edges": frozen.n_edges,
            },
        }

    @classmethod
    def summary(cls, manifest: dict) -> str:
        build = manifest["build"]
        return (
            f"{super().summary(manifest)}; {build['states']:,} states, {build['edges']:,} edges "
            f"(automaton {build['construct_seconds']:.1f} s)"
        )


def concatenate(docs: Iterable[np.ndarray | list[int]]) -> tuple[np.ndarray, int]:
    """One int32 stream with SEPARATOR after every non-empty document; returns (stream, documents)."""
    return join_documents(docs, np.int32, SEPARATOR, MAX_TOKENS, max_len=MAX_TOKENS)
