"""Retrieved draft candidates for the hybrid methods (`rasd`, `respec`), from the existing retrievers.

    retriever = Retriever(RetrieverOptions(retriever="pld+rest"), setup, method="respec")
    cands = retriever.candidates(ctx, max_nodes=64)   # best first, each with a feedback key

A retriever spec names one or more sources joined by "+":
- `pld`: matches of the context's last 1..3 tokens in the context itself. PLD's own draft (the first
  match that leaves a full continuation, `pld.find_candidate`'s choice) comes first, then the other
  match positions, longest n-gram and most recent first. ReSpec's point is that the earliest match is
  not always the best one; keeping several lets the hybrid methods choose.
- `rest`: the REST drafter's trie over its datastore (the most frequent continuation prefixes), split
  into its root-to-leaf paths.
- `dresd`: the DReSD drafter's dense-retrieval candidates (needs the target's hidden state).
The datastore sources read `setup.datastores`, so the user must pass `--datastore DIR` for them.

Each candidate carries a key that identifies "the same source" from one step to the next, for
ReSpec's acceptance feedback. A context match is keyed by its distance back from the current
position: while a copied passage keeps matching, both ends advance together and the distance stays
the same. Datastore candidates are keyed by their rank in the source's list.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..options import option
from ..types import DraftContext, MethodSetup, SpecbenchError

SOURCES = ("pld", "rest", "dresd")


@dataclass
class RetrieverOptions:
    """The retrieval options a hybrid method (rasd, respec) takes, under these names."""

    retriever: str = option("pld", "sources joined by '+': pld, rest, dresd", "RASD(PLD) / RASD(REST)")
    num_pred: int = option(
        10,
        "tokens per retrieved continuation",
        "PLD num_pred_tokens / REST length / DReSD len_drafts",
        minimum=1,
    )
    max_ngram: int = option(3, "longest context n-gram matched (pld source)", "Spec-Bench PLD", minimum=1)
    max_context_candidates: int = option(
        8, "context match positions kept (pld source)", "ours: ReSpec's several match positions", minimum=1
    )

    def __post_init__(self) -> None:
        parse_sources(self.retriever)


@dataclass(frozen=True)
class Candidate:
    tokens: tuple[int, ...]
    source: str  # one of SOURCES
    key: tuple  # feedback identity, stable across steps for the same copy source


def parse_sources(spec: str) -> list[str]:
    """`"pld+rest"` -> ["pld", "rest"]; unknown or repeated names are a user error."""
    names = [s.strip() for s in str(spec).split("+") if s.strip()]
    bad = [s for s in names if s not in SOURCES]
    if not names or bad or len(set(names)) != len(names):
        raise SpecbenchError(
            f"option retriever='{spec}' is not valid; choose one or more of "
            f"{', '.join(SOURCES)} joined by '+', e.g. pld or pld+rest"
        )
    return names


def context_candidates(
    tokens: np.ndarray, max_ngram: int = 3, num_pred: int = 10, max_candidates: int = 8
) -> list[tuple[int, tuple[int, ...]]]:
    """(continuation start, continuation) pairs for matches of the context's suffix in the context.

    For n = max_ngram..1, every earlier occurrence of the last n tokens that has at least one token
    after it is a match; its continuation is the next `num_pred` tokens (shorter near the end).
    The first pair is PLD's own choice when PLD has one (the earliest match, at the largest n, that
    leaves `num_pred` tokens and does not overlap the suffix); the rest follow by n descending, then
    most recent first. Continuations are distinct.
    """
    length = len(tokens)
    pld_pick: tuple[int, tuple[int, ...]] | None = None
    others: list[tuple[int, tuple[int, ...]]] = []
    for n in range(min(max_ngram, length - 1), 0, -1):
        # Windows starting at 0 .. length-n-1: each has at least one token after it, and the suffix
        # itself (starting at length-n) is excluded.
        windows = sliding_window_view(tokens[: length - 1], n)
        hits = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
        if not hits.size:
            continue
        # PLD's validity rule (pld.find_candidate): a full continuation that starts before the suffix.
        last_valid = min(length - n - num_pred, length - 2 * n - 1)
        if pld_pick is None and hits[0] <= last_valid:
            start = int(hits[0]) + n
            pld_pick = (start, tuple(tokens[start : start + num_pred].tolist()))
        for s in hits[::-1][: 4 * max_candidates]:  # most recent first; a bounded scan per n
            start = int(s) + n
            others.append((start, tuple(tokens[start : start + num_pred].tolist())))
    out: list[tuple[int, tuple[int, ...]]] = []
    seen: set[tuple[int, ...]] = set()
    for start, cont in ([pld_pick] if pld_pick else []) + others:
        if cont in seen:
            continue
        seen.add(cont)
        out.append((start, cont))
        if len(out) == max_candidates:
            break
    return out


class Retriever:
    """One or more retrieval sources behind one call; built once per drafter."""

    def __init__(self, options: RetrieverOptions, setup: MethodSetup, method: str):
        self.sources = parse_sources(options.retriever)
        self.max_ngram, self.num_pred = options.max_ngram, options.num_pred
        self.max_context_candidates = options.max_context_candidates
        self.rest = self.dresd = None
        if "rest" in self.sources:
            from .rest import Rest, RestOptions

            self.rest = Rest(self._sub_setup(setup, "rest", method), RestOptions(length=self.num_pred))
        if "dresd" in self.sources:
            from .dresd import DReSD, DresdOptions

            sub = self._sub_setup(setup, "dresd", method)
            self.dresd = DReSD(sub, DresdOptions(draft_len=self.num_pred))
        self.needs_hidden_states = self.dresd is not None

    @staticmethod
    def _sub_setup(setup: MethodSetup, kind: str, method: str) -> MethodSetup:
        # The eval only hands out datastores by method name; a hybrid reads the one its retriever names.
        path = setup.datastores.get(kind)
        if path is None:
            raise SpecbenchError(
                f"method '{method}' with retriever {kind} needs a {kind} datastore: build one with "
                f"`specbench build-index --method {kind}` and pass it with --datastore DIR"
            )
        return MethodSetup(target=setup.target, datastores={kind: path}, seed=setup.seed)

    def candidates(self, ctx: DraftContext, max_nodes: int = 64) -> list[Candidate]:
        """Candidates from every source, in source order, each source's best first."""
        out: list[Candidate] = []
        for source in self.sources:
            if source == "pld":
                toks = ctx.array()
                for start, cont in context_candidates(
                    toks, self.max_ngram, self.num_pred, self.max_context_candidates
                ):
                    out.append(Candidate(cont, "pld", ("pld", len(toks) - start)))
            else:
                drafter = self.rest if source == "rest" else self.dresd
                sub = DraftContext(ctx.tokens, max_nodes, ctx.temperature, ctx.hidden, ctx.logits)
                for rank, path in enumerate(drafter.propose(sub).paths()):
                    out.append(Candidate(tuple(path), source, (source, rank)))
        return out

    def describe(self) -> dict:
        d: dict = {
            "retriever": "+".join(self.sources),
            "max_ngram": self.max_ngram,
            "num_pred": self.num_pred,
        }
        if self.rest is not None:
            d["rest"] = self.rest.describe()
        if self.dresd is not None:
            d["dresd"] = self.dresd.describe()
        return d
