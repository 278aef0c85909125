"""REST's sparse datastore: token streams and their suffix arrays, memory-mapped `.npy` files.

Layout of a datastore folder:
    tokens.npy     uint32, every document followed by SENTINEL (so a match never spans two documents
                   and a continuation stops where its document ends)
    sa.npy         int32 (int64 past 2**31 tokens), the suffix array of tokens.npy
    tokens.I.npy, sa.I.npy   chunk I >= 1, when the corpus is larger than `--opt chunk_tokens`
    manifest.json  see manifest.py (sizes and sha256 of every file; "layout.chunks" counts the chunks)

Like the official code's 512M-token sub-indexes, a large corpus is built in chunks of whole documents,
each sorted and written before the next is read, so build memory follows the chunk size, not the
corpus. A query searches every chunk and merges, giving exactly the drafts of one suffix array.

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

from ..jit import id_list_within, njit
from ..options import option
from ..types import SpecbenchError
from .base import BuildInput, Datastore, document_groups, join_documents

SENTINEL = np.uint32(0xFFFF_FFFF)
TOKENS_FILE = "tokens.npy"
SA_FILE = "sa.npy"
SLICE = 1 << 24  # tokens per slice when a pass over a whole stream needs temporaries
# 2**27 tokens per chunk: sorting a chunk adds about 24 bytes per chunk token (stream, dense ranks,
# libdivsufsort's byte-level suffix array and the int32 result; 3.2 GB measured at 500M tokens in
# 4 chunks), plus the tokenizer's own memory, whatever the corpus size.
DEFAULT_CHUNK_TOKENS = 1 << 27


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


@njit(cache=True, nogil=True)
def _row_less(a, i, b, j):
    for k in range(a.shape[1]):
        if a[i, k] != b[j, k]:
            return a[i, k] < b[j, k]
    return False


@njit(cache=True, nogil=True)
def _merge_rows(a, b, limit):
    """The first `limit` rows of two lexicographically sorted row matrices, merged (still sorted)."""
    n = min(limit, a.shape[0] + b.shape[0])
    out = np.empty((n, a.shape[1]), dtype=a.dtype)
    i = j = 0
    for r in range(n):
        if j >= b.shape[0] or (i < a.shape[0] and not _row_less(b, j, a, i)):
            out[r] = a[i]
            i += 1
        else:
            out[r] = b[j]
            j += 1
    return out


# ----------------------------------------------------------------------------------------------------
# Reading


@dataclass
class Chunk:
    """One sub-index: a SENTINEL-terminated stream of whole documents and its suffix array."""

    tokens: np.ndarray
    sa: np.ndarray


@dataclass
class Match:
    span: int  # query length that matched (0 = no match)
    ranges: list[tuple[int, int]]  # per chunk: suffix-array range of the matches that have a continuation

    @property
    def count(self) -> int:
        return sum(hi - lo for lo, hi in self.ranges)


@dataclass
class RestOptions:
    chunk_tokens: int = option(
        DEFAULT_CHUNK_TOKENS,
        "tokens per sub-index; build memory grows with this, not with the corpus",
        "REST official code: 512M-token sub-indexes (a quarter here: a 2**27 chunk adds about 3.2 GB)",
        minimum=2,
    )


def chunk_files(i: int) -> tuple[str, str]:
    """File names of chunk i; chunk 0 keeps the one-array names, so every older store still opens."""
    return (TOKENS_FILE, SA_FILE) if i == 0 else (f"tokens.{i}.npy", f"sa.{i}.npy")


class RestDatastore(Datastore):
    """A built REST datastore, memory-mapped: opening it reads the manifest and checks the files.

    A store holds one or more chunks; every query searches them all and merges the results, so the
    drafts are the ones a single suffix array over the whole stream would give.
    """

    kind = "rest"
    options_class = RestOptions

    def load(self) -> None:
        n_chunks = int((self.manifest.get("layout") or {}).get("chunks", 1))
        self.chunks = []
        for i in range(n_chunks):
            tokens_file, sa_file = chunk_files(i)
            self.chunks.append(
                Chunk(
                    np.load(self.path / tokens_file, mmap_mode="r"),
                    np.load(self.path / sa_file, mmap_mode="r"),
                )
            )

    def validate(self) -> None:
        # The search kernels read tokens[sa[i] + j] until a mismatch, which the final sentinel
        # guarantees, so every suffix-array entry must point into its chunk's stream.
        for i, chunk in enumerate(self.chunks):
            tokens_file, sa_file = chunk_files(i)
            self.expect_array(tokens_file, chunk.tokens, (np.uint32,), 1)
            self.expect_array(sa_file, chunk.sa, (np.int32, np.int64), 1)
            if len(chunk.sa) != len(chunk.tokens):
                raise self.refuse(f"{sa_file} has {len(chunk.sa):,} entries for {len(chunk.tokens):,} tokens")
            if chunk.tokens[-1] != SENTINEL:
                raise self.refuse(f"{tokens_file} does not end with the document separator")
            self.expect_range(sa_file, chunk.sa, 0, len(chunk.tokens))

    @classmethod
    def write(cls, build: BuildInput, folder: Path) -> dict:
        """Chunks of at most `chunk_tokens` tokens (whole documents), each tokens + suffix array."""
        return write_chunks(build.docs, folder, build.options.chunk_tokens, build.console)

    @classmethod
    def summary(cls, manifest: dict) -> str:
        chunks = (manifest.get("layout") or {}).get("chunks", 1)
        return f"{super().summary(manifest)}; {chunks} chunk{'s' if chunks > 1 else ''}"

    def __len__(self) -> int:
        return sum(len(c.tokens) for c in self.chunks)

    def _as_query(self, tokens: Iterable[int] | np.ndarray) -> np.ndarray | None:
        q = np.asarray(tokens, dtype=np.int64)
        # An id at or above the sentinel (negative, or a model id beyond uint32) can match nothing.
        if q.size and (q.min() < 0 or q.max() >= int(SENTINEL)):
            return None
        return q.astype(np.uint32)

    def search(self, query: Iterable[int] | np.ndarray) -> list[tuple[int, int]]:
        """Per chunk, the suffix-array range [lo, hi) of every occurrence of `query` (document ends included)."""
        q = self._as_query(query)
        if q is None:
            return [(0, 0) for _ in self.chunks]
        if q.size == 0:
            return [(0, len(c.sa)) for c in self.chunks]
        return [tuple(int(x) for x in _search(c.tokens, c.sa, q, q.size)) for c in self.chunks]

    def longest_match(
        self, context: Iterable[int] | np.ndarray, min_span: int = 2, max_span: int = 16
    ) -> Match:
        """REST's query: the longest suffix of `context` (16 down to 2 tokens) that occurs with a continuation."""
        tail = context[-max_span:] if isinstance(context, list) else None
        if id_list_within(tail, 0, int(SENTINEL) - 1):  # the decode loop's list of ids: converted once
            c = np.array(tail, dtype=np.uint32)
        else:
            c = np.asarray(context, dtype=np.int64)[-max_span:]
            # Drop everything up to the last id that cannot be stored: no match can include it.
            bad = np.flatnonzero((c < 0) | (c >= int(SENTINEL)))
            if bad.size:
                c = c[bad[-1] + 1 :]
            c = c.astype(np.uint32)
        # Each chunk only looks for spans at least as long as the best so far; a chunk whose own
        # longest span falls short of the final one holds no match of that span.
        best, found = 0, []
        for chunk in self.chunks:
            span, lo, hi = _longest_suffix_match(
                chunk.tokens, chunk.sa, c, max(min_span, best), max_span, SENTINEL
            )
            found.append((int(span), int(lo), int(hi)))
            best = max(best, int(span))
        ranges = [(lo, hi) if span == best and best else (0, 0) for span, lo, hi in found]
        return Match(best, ranges)

    def continuation_matrix(
        self, ranges: list[tuple[int, int]], span: int, max_matches: int = 5000, length: int = 10
    ) -> np.ndarray:
        """The `length` tokens after each of the first `max_matches` matches, one row each, SENTINEL-padded.

        Like the official retriever, the first `max_matches` matches in suffix-array order are used,
        and rows come out in lexicographic order, which the trie builder relies on. A row is the
        start of its suffix (cut at the document end, where the suffix has the sentinel too), so
        suffix order sorts rows: the first max_matches rows of the whole stream are the smallest
        max_matches rows of the union of each chunk's first max_matches. Chunked and one-array
        stores therefore give the same matrix.
        """
        parts = [
            _gather_rows(c.tokens, c.sa, lo, min(hi, lo + max_matches), span, length, SENTINEL)
            for c, (lo, hi) in zip(self.chunks, ranges, strict=True)
            if hi > lo
        ]
        if not parts:
            return np.empty((0, length), dtype=np.uint32)
        rows = parts[0]
        for part in parts[1:]:  # each part is sorted: merge, keeping the first max_matches
            rows = _merge_rows(rows, part, max_matches)
        return rows

    def continuations(
        self, query: Iterable[int] | np.ndarray, max_matches: int = 5000, length: int = 10
    ) -> list[np.ndarray]:
        """Up to `max_matches` continuations (the tokens after `query`), cut at document ends."""
        q = self._as_query(query)
        if q is None:
            return []
        buf = np.append(q, np.uint32(0))  # one spare slot for the sentinel probe
        ranges = [
            tuple(int(x) for x in _search_with_continuation(c.tokens, c.sa, buf, q.size, SENTINEL))
            for c in self.chunks
        ]
        rows = self.continuation_matrix(ranges, q.size, max_matches, length)
        return [row[row != SENTINEL] for row in rows]


# ----------------------------------------------------------------------------------------------------
# Building


def suffix_array(tokens: np.ndarray) -> np.ndarray:
    """Suffix array of a SENTINEL-terminated uint32 token stream, with libdivsufsort (pydivsufsort).

    pydivsufsort sorts the big-endian bytes of the array and keeps the aligned positions, so fewer bytes
    per token means less work. Ranking the ids that actually occur (an order-preserving map, sentinel
    last) lets most real corpora, even with a 150k vocabulary, sort as 2 bytes per token instead of 4.
    Work goes in slices so the temporaries stay small next to the stream itself.
    """
    from pydivsufsort import divsufsort

    slices = [slice(i, i + SLICE) for i in range(0, len(tokens), SLICE)]
    top = 0
    for c in slices:
        part = tokens[c]
        top = max(top, int(part.max(where=part != SENTINEL, initial=0)))
    present = np.zeros(top + 1, dtype=bool)
    for c in slices:
        part = tokens[c]
        present[part[part != SENTINEL]] = True
    n_symbols = int(present.sum()) + 1  # + the sentinel, ranked last
    ranks = np.cumsum(present, dtype=np.uint32) - 1  # id -> rank among the ids present
    dense = np.empty(tokens.shape, dtype=np.uint16 if n_symbols <= 1 << 16 else np.uint32)
    for c in slices:
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


def write_store(tokens: np.ndarray, folder: Path, chunk: int = 0) -> float:
    """Sort and save chunk `chunk`'s tokens + suffix array into `folder`; returns the sort's seconds."""
    tokens_file, sa_file = chunk_files(chunk)
    np.save(folder / tokens_file, tokens)
    t0 = time.perf_counter()
    sa = suffix_array(tokens)
    sort_seconds = time.perf_counter() - t0
    np.save(folder / sa_file, sa)
    return sort_seconds


def write_chunks(
    docs: Iterable[np.ndarray | list[int]], folder: Path, chunk_tokens: int, console=None
) -> dict:
    """Stream the documents into chunks, each sorted and saved before the next is read; the manifest fields."""
    n_tokens, n_docs, sort_seconds, sizes = 0, 0, 0.0, []
    for i, group in enumerate(document_groups(docs, chunk_tokens)):
        tokens, docs_in = concatenate_documents(group)
        group.clear()  # in place: the generator still holds the list while this chunk sorts
        label = f"sorting the suffixes of chunk {i + 1} ({tokens.size:,} tokens, libdivsufsort)"
        if console is not None:
            with console.status(label):
                sort_seconds += write_store(tokens, folder, i)
        else:
            sort_seconds += write_store(tokens, folder, i)
        n_tokens += int(tokens.size) - docs_in
        n_docs += docs_in
        sizes.append(int(tokens.size))
        del tokens
    if not sizes:
        raise SpecbenchError("the corpus gave no tokens: nothing to index")
    return {
        "tokens": n_tokens,  # corpus tokens, separators not counted
        "documents": n_docs,
        "layout": {
            "dtype": "uint32",
            "separator": int(SENTINEL),
            "after": "every document",
            "chunks": len(sizes),
        },
        "build": {"sort_seconds": round(sort_seconds, 3), "chunk_tokens": sizes},
    }
