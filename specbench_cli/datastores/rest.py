"""REST's sparse datastore: one token stream and its suffix array, both memory-mapped `.npy` files.

Layout of a datastore folder:
    tokens.npy     uint32, every document followed by SENTINEL (so a match never spans two documents
                   and a continuation stops where its document ends)
    sa.npy         int32 (int64 past 2**31 tokens), the suffix array of tokens.npy
    manifest.json  see manifest.py (sizes and sha256 of both files)

Token ids are uint32 because Qwen has 151,936 ids and REST's u16 storage silently wraps them. The
sentinel is 2**32 - 1, larger than any real id, so suffixes that stop at a document end sort after
every suffix that goes on: inside the range of a query, matches with a continuation come first.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import BuildInput, Datastore, join_documents

SENTINEL = np.uint32(0xFFFF_FFFF)
TOKENS_FILE = "tokens.npy"
SA_FILE = "sa.npy"
CHUNK = 1 << 24  # tokens per slice when a pass over the whole stream needs temporaries

try:  # numba turns the binary searches into ~microsecond calls; without it the same code runs in Python
    from numba import njit
except ImportError:  # pragma: no cover - exercised only where numba is missing

    def njit(*args, **kwargs):
        return args[0] if args and callable(args[0]) else (lambda f: f)


# ----------------------------------------------------------------------------------------------------
# Search kernels (numba). `tokens` ends with SENTINEL, so reading past a suffix's end never happens
# before a mismatch: queries never contain the sentinel (the caller checks).


@njit(cache=True, nogil=True)
def _compare(tokens, start, query, qlen):
    """-1 if the suffix at `start` sorts before query[:qlen], 0 if it starts with it, 1 if after."""
    for i in range(qlen):
        a = tokens[start + i]
        b = query[i]
        if a < b:
            return -1
        if a > b:
            return 1
    return 0


@njit(cache=True, nogil=True)
def _lower_bound(tokens, sa, query, qlen, lo, hi):
    """First index in sa[lo:hi] whose suffix does not sort before query[:qlen]."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if _compare(tokens, sa[mid], query, qlen) < 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def _upper_bound(tokens, sa, query, qlen, lo, hi):
    """First index in sa[lo:hi] whose suffix sorts after every string that starts with query[:qlen]."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if _compare(tokens, sa[mid], query, qlen) <= 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def _search(tokens, sa, query, qlen):
    lo = _lower_bound(tokens, sa, query, qlen, 0, sa.shape[0])
    hi = _upper_bound(tokens, sa, query, qlen, lo, sa.shape[0])
    return lo, hi


@njit(cache=True, nogil=True)
def _search_with_continuation(tokens, sa, query, qlen, sentinel):
    """Range of suffixes that start with query[:qlen] AND go on inside their document.

    Matches followed by the sentinel sort last in the query's range, so the useful part ends at the
    lower bound of query + [sentinel]; `query` must have room for that extra slot.
    """
    lo, hi = _search(tokens, sa, query, qlen)
    if lo == hi:
        return lo, lo
    saved = query[qlen]
    query[qlen] = sentinel
    end = _lower_bound(tokens, sa, query, qlen + 1, lo, hi)
    query[qlen] = saved
    return lo, end


@njit(cache=True, nogil=True)
def _longest_suffix_match(tokens, sa, context, min_span, max_span, sentinel):
    """Longest span in [min_span, max_span] whose last-`span` tokens of `context` occur with a continuation.

    Hits are monotone in the span (if the last L tokens occur at p with a continuation, the last L-1
    occur at p+1 with the same one), so a binary search over spans gives the same answer as REST's
    scan from 16 down to 2, with about 4 range searches instead of up to 15.
    Returns (span, lo, hi); span = 0 when nothing matches.
    """
    n = context.shape[0]
    max_span = min(max_span, n)
    if max_span < min_span:
        return 0, 0, 0
    query = np.empty(max_span + 1, dtype=context.dtype)
    best_span, best_lo, best_hi = 0, 0, 0
    lo_span, hi_span = min_span, max_span
    while lo_span <= hi_span:
        span = (lo_span + hi_span) >> 1
        query[:span] = context[n - span :]
        lo, hi = _search_with_continuation(tokens, sa, query, span, sentinel)
        if hi > lo:
            best_span, best_lo, best_hi = span, lo, hi
            lo_span = span + 1
        else:
            hi_span = span - 1
    return best_span, best_lo, best_hi


@njit(cache=True, nogil=True)
def _gather_rows(tokens, sa, lo, hi, span, length, sentinel):
    """The `length` tokens after the first `span` of each suffix in sa[lo:hi], cut (sentinel-padded)
    at the end of its document. The stream ends with a sentinel, so no read runs past it."""
    rows = np.full((hi - lo, length), sentinel, dtype=np.uint32)
    n = tokens.shape[0]
    for r in range(hi - lo):
        p = sa[lo + r] + span
        for j in range(min(length, n - p)):
            t = tokens[p + j]
            if t == sentinel:
                break
            rows[r, j] = t
    return rows


# ----------------------------------------------------------------------------------------------------
# Reading


@dataclass
class Match:
    span: int  # query length that matched (0 = no match)
    lo: int  # suffix-array range of the matches that have a continuation
    hi: int

    @property
    def count(self) -> int:
        return self.hi - self.lo


@dataclass
class RestOptions:
    """REST's datastore has no build options: the stream and its suffix array are fully determined."""


class RestDatastore(Datastore):
    """A built REST datastore, memory-mapped: opening it reads the manifest and checks the files."""

    kind = "rest"
    options_class = RestOptions

    def load(self) -> None:
        self.tokens = np.load(self.path / TOKENS_FILE, mmap_mode="r")
        self.sa = np.load(self.path / SA_FILE, mmap_mode="r")

    def validate(self) -> None:
        # The search kernels read tokens[sa[i] + j] until a mismatch, which the final sentinel
        # guarantees, so every suffix-array entry must point into the stream.
        self.expect_array(TOKENS_FILE, self.tokens, (np.uint32,), 1)
        self.expect_array(SA_FILE, self.sa, (np.int32, np.int64), 1)
        if len(self.sa) != len(self.tokens):
            raise self.refuse(f"{SA_FILE} has {len(self.sa):,} entries for {len(self.tokens):,} tokens")
        if self.tokens[-1] != SENTINEL:
            raise self.refuse(f"{TOKENS_FILE} does not end with the document separator")
        self.expect_range(SA_FILE, self.sa, 0, len(self.tokens))

    @classmethod
    def write(cls, build: BuildInput, folder: Path) -> dict:
        """tokens.npy (documents joined by the sentinel) and sa.npy, its suffix array."""
        tokens, n_docs = concatenate_documents(build.docs)
        if build.console is not None:
            with build.console.status(f"sorting the suffixes of {tokens.size:,} tokens (libdivsufsort)"):
                sort_seconds = write_store(tokens, folder)
        else:
            sort_seconds = write_store(tokens, folder)
        return {
            "tokens": int(tokens.size) - n_docs,  # corpus tokens, separators not counted
            "documents": n_docs,
            "layout": {"dtype": "uint32", "separator": int(SENTINEL), "after": "every document"},
            "build": {"sort_seconds": round(sort_seconds, 3)},
        }

    def __len__(self) -> int:
        return len(self.tokens)

    def _as_query(self, tokens: Iterable[int] | np.ndarray) -> np.ndarray | None:
        q = np.asarray(tokens, dtype=np.int64)
        # An id at or above the sentinel (negative, or a model id beyond uint32) can match nothing.
        if q.size and (q.min() < 0 or q.max() >= int(SENTINEL)):
            return None
        return q.astype(np.uint32)

    def search(self, query: Iterable[int] | np.ndarray) -> tuple[int, int]:
        """Suffix-array range [lo, hi) of every occurrence of `query` (including ones at a document end)."""
        q = self._as_query(query)
        if q is None or q.size == 0:
            return (0, len(self.sa)) if q is not None else (0, 0)
        lo, hi = _search(self.tokens, self.sa, q, q.size)
        return int(lo), int(hi)

    def longest_match(
        self, context: Iterable[int] | np.ndarray, min_span: int = 2, max_span: int = 16
    ) -> Match:
        """REST's query: the longest suffix of `context` (16 down to 2 tokens) that occurs with a continuation."""
        c = np.asarray(context, dtype=np.int64)[-max_span:]
        # Drop everything up to the last id that cannot be stored: no match can include it.
        bad = np.flatnonzero((c < 0) | (c >= int(SENTINEL)))
        if bad.size:
            c = c[bad[-1] + 1 :]
        span, lo, hi = _longest_suffix_match(
            self.tokens, self.sa, c.astype(np.uint32), min_span, max_span, SENTINEL
        )
        return Match(int(span), int(lo), int(hi))

    def continuation_matrix(
        self, lo: int, hi: int, span: int, max_matches: int = 5000, length: int = 10
    ) -> np.ndarray:
        """The `length` tokens after each match in sa[lo:lo+max_matches], one row each, SENTINEL-padded.

        Like the official retriever, the first `max_matches` matches in suffix-array order are used.
        Rows come out in lexicographic order (they are suffixes in sorted order), which the trie
        builder relies on.
        """
        return _gather_rows(self.tokens, self.sa, lo, min(hi, lo + max_matches), span, length, SENTINEL)

    def continuations(
        self, query: Iterable[int] | np.ndarray, max_matches: int = 5000, length: int = 10
    ) -> list[np.ndarray]:
        """Up to `max_matches` continuations (the tokens after `query`), cut at document ends."""
        q = self._as_query(query)
        if q is None:
            return []
        buf = np.append(q, np.uint32(0))  # one spare slot for the sentinel probe
        lo, hi = _search_with_continuation(self.tokens, self.sa, buf, q.size, SENTINEL)
        rows = self.continuation_matrix(int(lo), int(hi), q.size, max_matches, length)
        return [row[row != SENTINEL] for row in rows]


# ----------------------------------------------------------------------------------------------------
# Building


def suffix_array(tokens: np.ndarray) -> np.ndarray:
    """Suffix array of a SENTINEL-terminated uint32 token stream, with libdivsufsort (pydivsufsort).

    pydivsufsort sorts the big-endian bytes of the array and keeps the aligned positions, so fewer bytes
    per token means less work. Ranking the ids that actually occur (an order-preserving map, sentinel
    last) lets most real corpora, even with a 150k vocabulary, sort as 2 bytes per token instead of 4.
    Work goes in chunks so the temporaries stay small next to the stream itself.
    """
    from pydivsufsort import divsufsort

    chunks = [slice(i, i + CHUNK) for i in range(0, len(tokens), CHUNK)]
    top = 0
    for c in chunks:
        part = tokens[c]
        top = max(top, int(part.max(where=part != SENTINEL, initial=0)))
    present = np.zeros(top + 1, dtype=bool)
    for c in chunks:
        part = tokens[c]
        present[part[part != SENTINEL]] = True
    n_symbols = int(present.sum()) + 1  # + the sentinel, ranked last
    ranks = np.cumsum(present, dtype=np.uint32) - 1  # id -> rank among the ids present
    dense = np.empty(tokens.shape, dtype=np.uint16 if n_symbols <= 1 << 16 else np.uint32)
    for c in chunks:
        part = tokens[c]
        is_end = part == SENTINEL
        dense[c] = np.where(is_end, n_symbols - 1, ranks[np.where(is_end, 0, part)])
    del ranks, present
    sa = divsufsort(dense)
    del dense
    return sa if sa.dtype == np.int32 or len(sa) >= 2**31 else sa.astype(np.int32)


def concatenate_documents(docs: Iterable[np.ndarray | list[int]]) -> tuple[np.ndarray, int]:
    """One stream with a SENTINEL after every non-empty document; returns (tokens, documents)."""
    return join_documents(docs, np.uint32, int(SENTINEL), int(SENTINEL) - 1)


def write_store(tokens: np.ndarray, folder: Path) -> float:
    """Sort and save tokens.npy + sa.npy into `folder`; returns the sort's seconds."""
    np.save(folder / TOKENS_FILE, tokens)
    t0 = time.perf_counter()
    sa = suffix_array(tokens)
    sort_seconds = time.perf_counter() - t0
    np.save(folder / SA_FILE, sa)
    return sort_seconds
