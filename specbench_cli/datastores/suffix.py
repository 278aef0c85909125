"""REST's sparse datastore: one token stream and its suffix array, both memory-mapped `.npy` files.

Layout of a datastore folder:
    tokens.npy     uint32, every document followed by SENTINEL (so a match never spans two documents
                   and a continuation stops where its document ends)
    sa.npy         int32 (int64 past 2**31 tokens), the suffix array of tokens.npy
    manifest.json  see manifest.py

Token ids are uint32 because Qwen has 151,936 ids and REST's u16 storage silently wraps them. The
sentinel is 2**32 - 1, larger than any real id, so suffixes that stop at a document end sort after
every suffix that goes on: inside the range of a query, matches with a continuation come first.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..types import SpecbenchError
from .manifest import read_manifest, staged_build, write_manifest

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


class SuffixDatastore:
    """A built REST datastore, memory-mapped: opening it reads only the manifest."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        if self.manifest.get("method") != "rest":
            raise SpecbenchError(
                f"datastore {self.path} was built for method '{self.manifest.get('method')}', not 'rest'; "
                "build one with `specbench build-index --method rest`"
            )
        try:
            self.tokens = np.load(self.path / TOKENS_FILE, mmap_mode="r")
            self.sa = np.load(self.path / SA_FILE, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise SpecbenchError(f"datastore {self.path} is damaged ({e}); rebuild it with --force") from e
        if self.tokens.dtype != np.uint32 or len(self.sa) != len(self.tokens):
            raise SpecbenchError(f"datastore {self.path} has inconsistent files; rebuild it with --force")

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


@dataclass
class BuildStats:
    tokens: int  # stored tokens, sentinels included
    documents: int
    seconds: float
    sort_seconds: float
    peak_rss_mb: float
    bytes_on_disk: int


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux: the high-water mark of this process since it started.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    parts: list[np.ndarray] = []
    sep = np.array([SENTINEL], dtype=np.uint32)
    n_docs = 0
    for doc in docs:
        arr = np.asarray(doc)
        if arr.size == 0:
            continue
        if arr.min() < 0 or arr.max() >= int(SENTINEL):
            raise SpecbenchError(f"token ids must lie in [0, {int(SENTINEL)}); got {arr.min()}..{arr.max()}")
        parts.append(arr.astype(np.uint32, copy=False))
        parts.append(sep)
        n_docs += 1
    if not parts:
        raise SpecbenchError("the corpus gave no tokens: nothing to index")
    return np.concatenate(parts), n_docs


def write_store(tokens: np.ndarray, folder: Path) -> tuple[float, int]:
    """Sort and save tokens.npy + sa.npy into `folder`; returns (sort seconds, bytes written)."""
    np.save(folder / TOKENS_FILE, tokens)
    t0 = time.perf_counter()
    sa = suffix_array(tokens)
    sort_seconds = time.perf_counter() - t0
    np.save(folder / SA_FILE, sa)
    del sa
    size = sum(f.stat().st_size for f in folder.iterdir())
    return sort_seconds, size


def build_rest_store(
    docs: Iterable[np.ndarray | list[int]],
    out_dir: Path,
    manifest: dict,
    force: bool = False,
    console=None,
) -> BuildStats:
    """Build a datastore folder from token documents, atomically.

    Everything is written into a temporary sibling folder that is renamed at the end, so an interrupted
    build leaves no half-written datastore. `manifest` holds the caller's fields (tokenizer, corpus,
    params); counts, timings and memory are added here.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise SpecbenchError(f"output folder {out_dir} already exists; pass --force to overwrite it")
    t0 = time.perf_counter()
    with staged_build(out_dir) as tmp:
        tokens, n_docs = concatenate_documents(docs)
        if console is not None:
            with console.status(f"sorting the suffixes of {tokens.size:,} tokens (libdivsufsort)"):
                sort_seconds, size = write_store(tokens, tmp)
        else:
            sort_seconds, size = write_store(tokens, tmp)
        stats = BuildStats(
            tokens=int(tokens.size),
            documents=n_docs,
            seconds=time.perf_counter() - t0,
            sort_seconds=sort_seconds,
            peak_rss_mb=peak_rss_mb(),
            bytes_on_disk=size,
        )
        del tokens
        full = dict(manifest)
        full.update(
            method="rest",
            tokens=stats.tokens - stats.documents,  # corpus tokens, separators not counted
            documents=stats.documents,
        )
        full.setdefault("build", {})
        full["build"] = dict(full["build"]) | {
            "seconds": round(stats.seconds, 3),
            "sort_seconds": round(stats.sort_seconds, 3),
            "peak_rss_mb": round(stats.peak_rss_mb, 1),
            "bytes_on_disk": stats.bytes_on_disk,
        }
        full["files"] = {"tokens": TOKENS_FILE, "suffix_array": SA_FILE, "sentinel": int(SENTINEL)}
        write_manifest(tmp, full)
    return stats


def build_from_token_docs(
    docs: list[list[int]] | Iterable[np.ndarray],
    out_dir: Path,
    tokenizer_name: str,
    fingerprint: str,
    corpus: dict | None = None,
    force: bool = False,
) -> Path:
    """Build a REST datastore straight from token lists (tests, benchmarks): no text, no model."""
    from .manifest import new_manifest

    manifest = new_manifest(
        method="rest",
        tokenizer={"name": tokenizer_name, "fingerprint": fingerprint},
        corpus=corpus
        or {"spec": "token-docs", "kind": "tokens", "description": "token documents given in code"},
        params={},
    )
    build_rest_store(docs, Path(out_dir), manifest, force=force)
    return Path(out_dir)


def load_tokenizer_for(model_spec: str, options: dict):
    """The target's tokenizer; the whole model only when models.py offers no tokenizer-only path."""
    from .. import models

    if hasattr(models, "load_tokenizer"):
        return models.load_tokenizer(model_spec)
    return models.load_model(
        model_spec, options.get("dtype") or "float32", options.get("device") or "cpu"
    ).tokenizer


def build(model_spec: str, corpus_spec: str, out_dir: Path, options: dict, console) -> dict:
    """`build-index --method rest`: tokenize the corpus with the target's tokenizer, then index it."""
    from rich.console import Console

    from ..models import load_model, tokenizer_fingerprint
    from .corpus import iter_corpus, tokenize_documents
    from .manifest import new_manifest

    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    options = dict(options)
    loaded = None
    if corpus_spec.startswith("generate:"):
        loaded = load_model(model_spec, options.get("dtype") or "float32", options.get("device") or "cpu")
        tokenizer = loaded.tokenizer
        options.setdefault("generated_dir", out_dir.parent / "generated")
    else:
        tokenizer = load_tokenizer_for(model_spec, options)
    source = iter_corpus(corpus_spec, options, loaded=loaded, console=console)
    manifest = new_manifest(
        method="rest",
        tokenizer={
            "name": model_spec,
            "fingerprint": tokenizer_fingerprint(tokenizer),
            "vocab_size": len(tokenizer),
        },
        corpus=source.to_manifest(),
        params={
            "dtype": "uint32",
            "separator": "sentinel 2**32-1 after every document",
            "max_docs": options.get("max_docs"),
        },
    )
    docs = tokenize_documents(source.texts(), tokenizer, total=source.documents, console=console)
    stats = build_rest_store(docs, out_dir, manifest, force=bool(options.get("force")), console=console)
    console.print(
        f"rest datastore {out_dir}: {stats.tokens - stats.documents:,} tokens in {stats.documents:,} documents, "
        f"{stats.bytes_on_disk / 2**20:,.1f} MiB, built in {stats.seconds:.1f} s "
        f"(sort {stats.sort_seconds:.1f} s), peak memory {stats.peak_rss_mb:,.0f} MiB"
    )
    return read_manifest(out_dir)
