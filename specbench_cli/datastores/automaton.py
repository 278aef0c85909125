"""SAM-Decoding's suffix automata: a compact array-backed automaton and its frozen (CSR) form.

The suffix automaton of a text T is the smallest automaton that accepts every substring of T: at most
2|T| - 1 states and 3|T| - 4 transitions. A state is a class of substrings with the same set of end
positions; per state we keep its suffix link, the length of its longest string and its FIRST end
position, because SAM-Decoding drafts the tokens that follow the first occurrence of a match.

Two forms, both numpy arrays instead of one Python object per state (the official code keeps a dict
per state, several hundred bytes each):
- `SuffixAutomaton` grows online (Blumer et al.'s construction, amortised O(1) per token). States are
  rows of one int32 array; transitions are rows of an int32 edge table, found through an
  open-addressing hash table and chained per state so that a clone can copy its source's edges.
  It is the dynamic automaton over prompt + output, and the builder of the static one.
- `FrozenAutomaton` is the static corpus automaton as stored: out-edges sorted by token per state
  (CSR), loaded memory-mapped; following a transition is a binary search among a state's edges.
  Its states are renumbered so that only clones store a length and a first end position (the
  state created at text position p has id p + 1, length p + 1 and first end p), and it keeps no
  hash table: about 36 bytes per token on real code, against about 85-91 for the live automaton.

The separator is -1, an id no query ever contains, so a match never spans two documents (the official
code ends documents with EOS, which a generated text can contain); drafts are cut where it appears.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..jit import id_list_within, njit
from ..types import SpecbenchError

SEPARATOR = -1
UNKNOWN = -2  # stands for an id no automaton can hold: the static text never contains it
MAX_TOKENS = 2**31 - 2  # positions and state ids are int32
BUILD_CHUNK = 1 << 20  # tokens per construction call (progress updates between calls)

# Columns of the live arrays.
LINK, LEN, FIRST, HEAD = 0, 1, 2, 3  # states: suffix link, longest length, first end position, edge list
SRC, TOK, DST, NEXT = 0, 1, 2, 3  # edges: source state, token, target state, next edge of the source
# meta: state count, edge count, state of the whole text ("last")
N_STATES, N_EDGES, LAST = 0, 1, 2


# ----------------------------------------------------------------------------------------------------
# Kernels of the live automaton (numba). The hash table holds edge ids, -1 = empty slot, and is kept at
# most half full; it is the only array that grows inside a kernel (an add can insert many edges).


@njit(cache=True, nogil=True)
def _slot(src, tok, mask):
    # Two multiplications that fit in int64 (src < 2**31, |tok| < 2**31), then a fold of the high bits.
    h = (src * 0x9E3779B1) ^ (tok * 0x85EBCA77)
    h ^= h >> 31
    return h & mask


@njit(cache=True, nogil=True)
def _find_edge(edges, table, src, tok):
    """Edge id of the transition (src, tok), or -1."""
    mask = table.shape[0] - 1
    i = _slot(src, tok, mask)
    while True:
        e = table[i]
        if e < 0 or (edges[e, SRC] == src and edges[e, TOK] == tok):
            return e
        i = (i + 1) & mask


@njit(cache=True, nogil=True)
def _table_insert(edges, table, e):
    mask = table.shape[0] - 1
    i = _slot(edges[e, SRC], edges[e, TOK], mask)
    while table[i] >= 0:
        i = (i + 1) & mask
    table[i] = e


@njit(cache=True, nogil=True)
def _rehash(edges, n_edges, size):
    table = np.full(size, -1, np.int32)
    for e in range(n_edges):
        _table_insert(edges, table, e)
    return table


@njit(cache=True, nogil=True)
def _add_edge(states, edges, table, e, src, tok, dst):
    """Store edge id `e` = (src, tok) -> dst; returns the (possibly regrown) hash table."""
    if 2 * (e + 1) > table.shape[0]:
        table = _rehash(edges, e, 2 * table.shape[0])
    edges[e, SRC] = src
    edges[e, TOK] = tok
    edges[e, DST] = dst
    edges[e, NEXT] = states[src, HEAD]
    states[src, HEAD] = e
    _table_insert(edges, table, e)
    return table


@njit(cache=True, nogil=True)
def _extend(states, edges, table, meta, text, start, stop):
    """Append text[start:stop] to the automaton of text[:start] (the standard online construction).

    The caller reserves 2 * stop + 2 state rows and 3 * stop + 4 edge rows (the automaton's bounds).
    Returns the hash table, which may have been regrown.
    """
    n_states, n_edges, last = meta[N_STATES], meta[N_EDGES], meta[LAST]
    for pos in range(start, stop):
        c = text[pos]
        cur = n_states
        n_states += 1
        states[cur, LINK] = -1
        states[cur, LEN] = states[last, LEN] + 1
        states[cur, FIRST] = pos
        states[cur, HEAD] = -1
        # Every suffix of the old text that cannot be followed by c gets a transition to cur.
        p = last
        while p != -1 and _find_edge(edges, table, p, c) < 0:
            table = _add_edge(states, edges, table, n_edges, p, c, cur)
            n_edges += 1
            p = states[p, LINK]
        if p == -1:
            states[cur, LINK] = 0
        else:
            q = edges[_find_edge(edges, table, p, c), DST]
            if states[p, LEN] + 1 == states[q, LEN]:
                states[cur, LINK] = q
            else:
                # q holds strings of several lengths whose end positions now differ: split off the
                # short ones into a clone (same first end position, same out-edges).
                clone = n_states
                n_states += 1
                states[clone, LINK] = states[q, LINK]
                states[clone, LEN] = states[p, LEN] + 1
                states[clone, FIRST] = states[q, FIRST]
                states[clone, HEAD] = -1
                f = states[q, HEAD]
                while f >= 0:
                    table = _add_edge(states, edges, table, n_edges, clone, edges[f, TOK], edges[f, DST])
                    n_edges += 1
                    f = edges[f, NEXT]
                while p != -1:
                    e = _find_edge(edges, table, p, c)
                    if e < 0 or edges[e, DST] != q:
                        break
                    edges[e, DST] = clone
                    p = states[p, LINK]
                states[q, LINK] = clone
                states[cur, LINK] = clone
        last = cur
    meta[N_STATES], meta[N_EDGES], meta[LAST] = n_states, n_edges, last
    return table


@njit(cache=True, nogil=True)
def _walk_live(states, edges, table, state, length, query):
    """Advance a match (state, length) over `query`, falling back along suffix links on a mismatch.

    Afterwards `length` is the longest suffix of (matched text + query) that occurs in the text, and
    `state` the state that holds it.
    """
    for c in query:
        while True:
            e = _find_edge(edges, table, state, c)
            if e >= 0:
                state = edges[e, DST]
                length += 1
                break
            if state == 0:
                length = 0
                break
            state = states[state, LINK]
            length = states[state, LEN]
    return state, length


@njit(cache=True, nogil=True)
def _compact_ids(states, n_states, n_text):
    """Frozen id of every live state: pos + 1 for the state created at text position pos, whose
    longest string is the whole prefix (so its length is its id and its first end is id - 1; the
    root is 0, with length 0 and first end -1), then the clones after the text, in creation order.
    A clone's longest string is shorter than its first end position + 1, which tells them apart."""
    new = np.empty(n_states, np.int32)
    clones = 0
    for s in range(n_states):
        if states[s, LEN] == states[s, FIRST] + 1:
            new[s] = states[s, FIRST] + 1
        else:
            new[s] = n_text + 1 + clones
            clones += 1
    return new, clones


@njit(cache=True, nogil=True)
def _compact_states(states, n_states, new, n_text, link, clone_len, clone_first):
    for s in range(n_states):
        v = new[s]
        link[v] = new[states[s, LINK]] if s > 0 else -1
        if v > n_text:
            clone_len[v - n_text - 1] = states[s, LEN]
            clone_first[v - n_text - 1] = states[s, FIRST]


@njit(cache=True, nogil=True)
def _compact_edges(states, edges, n_states, new, edge_start, out):
    """The out-edges of every state in frozen-id order, sorted by token, as CSR
    (edge_start, out[:, (token, frozen target)])."""
    edge_start[0] = 0
    for s in range(n_states):
        deg = 0
        f = states[s, HEAD]
        while f >= 0:
            deg += 1
            f = edges[f, NEXT]
        edge_start[new[s] + 1] = deg
    for v in range(n_states):
        edge_start[v + 1] += edge_start[v]
    for s in range(n_states):
        lo, hi = edge_start[new[s]], edge_start[new[s] + 1]
        k = lo
        f = states[s, HEAD]
        while f >= 0:
            out[k, 0] = edges[f, TOK]
            out[k, 1] = new[edges[f, DST]]
            k += 1
            f = edges[f, NEXT]
        if hi - lo > 16:
            toks = out[lo:hi, 0].copy()
            dsts = out[lo:hi, 1].copy()
            order = np.argsort(toks)
            for i in range(hi - lo):
                out[lo + i, 0] = toks[order[i]]
                out[lo + i, 1] = dsts[order[i]]
        else:  # most states have a handful of edges: insertion sort, no allocation
            for i in range(lo + 1, hi):
                t0, d0 = out[i, 0], out[i, 1]
                j = i - 1
                while j >= lo and out[j, 0] > t0:
                    out[j + 1, 0] = out[j, 0]
                    out[j + 1, 1] = out[j, 1]
                    j -= 1
                out[j + 1, 0] = t0
                out[j + 1, 1] = d0


# ----------------------------------------------------------------------------------------------------
# Kernels of the frozen automaton


@njit(cache=True, nogil=True)
def _target(edge_start, edges, state, tok):
    lo, hi = edge_start[state], edge_start[state + 1]
    while lo < hi:
        mid = (lo + hi) >> 1
        t = edges[mid, 0]
        if t < tok:
            lo = mid + 1
        elif t > tok:
            hi = mid
        else:
            return edges[mid, 1]
    return -1


@njit(cache=True, nogil=True)
def _frozen_len(clone_len, n_text, state):
    return state if state <= n_text else clone_len[state - n_text - 1]


@njit(cache=True, nogil=True)
def _walk_frozen(link, clone_len, n_text, edge_start, edges, state, length, query):
    """`_walk_live` on the frozen form."""
    for c in query:
        while True:
            d = _target(edge_start, edges, state, c)
            if d >= 0:
                state = d
                length += 1
                break
            if state == 0:
                length = 0
                break
            state = link[state]
            length = _frozen_len(clone_len, n_text, state)
    return state, length


# ----------------------------------------------------------------------------------------------------
# The two automata


def as_query(tokens: Iterable[int] | np.ndarray) -> np.ndarray:
    """Token ids as int32; an id outside [0, MAX_TOKENS] becomes UNKNOWN, which no corpus holds."""
    if id_list_within(tokens, 0, MAX_TOKENS):  # the decode loop's few ids a step: converted once
        return np.array(tokens, dtype=np.int32)
    q = np.asarray(tokens, dtype=np.int64).reshape(-1)
    return np.where((q < 0) | (q > MAX_TOKENS), UNKNOWN, q).astype(np.int32)


@dataclass
class Match:
    length: int  # tokens matched (0 = none)
    state: int  # automaton state holding the matched string
    end: int  # first end position of the match in the text (index of its last token); -1 when none


class SuffixAutomaton:
    """The online automaton of a growing token sequence (the dynamic automaton of SAM-Decoding)."""

    def __init__(self, capacity: int = 256, text: np.ndarray | None = None):
        capacity = max(int(capacity), 1 if text is None else len(text))
        # np.empty leaves untouched pages unallocated, so reserving the worst case costs no memory.
        self.states = np.empty((2 * capacity + 2, 4), dtype=np.int32)
        self.edges = np.empty((3 * capacity + 4, 4), dtype=np.int32)
        self.table = np.full(1 << 10, -1, dtype=np.int32)
        self.meta = np.zeros(3, dtype=np.int64)
        self.states[0] = (-1, 0, -1, -1)  # the root: empty string, no link
        self.meta[N_STATES] = 1
        # `text` lets the static build index a stream in place instead of copying it.
        self.tokens = np.empty(capacity, dtype=np.int32) if text is None else text
        self.length = 0

    def __len__(self) -> int:
        return self.length

    @property
    def text(self) -> np.ndarray:
        return self.tokens[: self.length]

    @property
    def n_states(self) -> int:
        return int(self.meta[N_STATES])

    @property
    def n_edges(self) -> int:
        return int(self.meta[N_EDGES])

    def nbytes(self) -> int:
        """Memory in use (rows actually written, the hash table and the text)."""
        row_s, row_e = self.states.itemsize * 4, self.edges.itemsize * 4
        return self.n_states * row_s + self.n_edges * row_e + self.table.nbytes + self.length * 4

    def _reserve(self, n: int) -> None:
        """Room for a text of n tokens (doubling, so appends stay amortised O(1))."""
        if n > MAX_TOKENS:
            raise SpecbenchError(f"a suffix automaton holds at most {MAX_TOKENS:,} tokens; got {n:,}")
        if n <= len(self.tokens):
            return
        cap = max(n, 2 * len(self.tokens))
        self.tokens = _grown(self.tokens, cap)
        self.states = _grown(self.states, 2 * cap + 2)
        self.edges = _grown(self.edges, 3 * cap + 4)

    def extend(self, tokens: Iterable[int] | np.ndarray) -> None:
        """Append tokens (amortised O(1) each): ids in [0, MAX_TOKENS], or SEPARATOR between documents."""
        if id_list_within(tokens, SEPARATOR, MAX_TOKENS):  # the decode loop's few new ids a step
            new = np.array(tokens, dtype=np.int32)
        else:
            new = np.asarray(tokens, dtype=np.int64).reshape(-1)
            if new.size and (new.min() < SEPARATOR or new.max() > MAX_TOKENS):
                raise SpecbenchError(f"token ids must lie in [0, {MAX_TOKENS}]; got {new.min()}..{new.max()}")
            new = new.astype(np.int32)
        end = self.length + len(new)
        self._reserve(end)
        self.tokens[self.length : end] = new
        self._index(end)

    def _index(self, end: int) -> None:
        """Add self.tokens[self.length:end] to the automaton."""
        self.table = _extend(self.states, self.edges, self.table, self.meta, self.tokens, self.length, end)
        self.length = end

    def walk(self, query: Iterable[int] | np.ndarray, state: int = 0, length: int = 0) -> tuple[int, int]:
        s, n = _walk_live(self.states, self.edges, self.table, state, length, as_query(query))
        return int(s), int(n)

    def match(self, query: Iterable[int] | np.ndarray) -> Match:
        """Longest suffix of `query` that occurs in the text, and where it first ends."""
        return self._as_match(*self.walk(query))

    def repeat(self) -> Match:
        """Longest suffix of the text that also occurs earlier in it (SAM-Decoding's dynamic match).

        That string is the longest one of the suffix link of the state of the whole text, so no
        separate match needs tracking: it is up to date after every extend.
        """
        link = int(self.states[self.meta[LAST], LINK]) if self.length else 0
        return self._as_match(max(link, 0), int(self.states[max(link, 0), LEN]))

    def _as_match(self, state: int, length: int) -> Match:
        return Match(length, state, int(self.states[state, FIRST]) if length else -1)

    def link(self, state: int) -> int:
        return int(self.states[state, LINK])

    def first_end(self, state: int) -> int:
        return int(self.states[state, FIRST])

    def frozen_arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """The frozen form's arrays but the text, one at a time (a build saves and drops each before
        the next is made, so freezing needs the id map plus one array at a time on top of this)."""
        n, n_text = self.n_states, self.length
        new, n_clones = _compact_ids(self.states, n, n_text)
        link = np.empty(n, dtype=np.int32)
        clone_len = np.empty(n_clones, dtype=np.int32)
        clone_first = np.empty(n_clones, dtype=np.int32)
        _compact_states(self.states, n, new, n_text, link, clone_len, clone_first)
        yield "link", link
        del link
        yield "clone_len", clone_len
        yield "clone_first", clone_first
        del clone_len, clone_first
        edge_start = np.empty(n + 1, dtype=np.int32 if self.n_edges < 2**31 else np.int64)
        edges = np.empty((self.n_edges, 2), dtype=np.int32)
        _compact_edges(self.states, self.edges, n, new, edge_start, edges)
        del new
        yield "edge_start", edge_start
        yield "edges", edges

    def freeze(self) -> FrozenAutomaton:
        """The frozen form, in memory (a copy of the text)."""
        return FrozenAutomaton(tokens=self.text.copy(), **dict(self.frozen_arrays()))


def _grown(arr: np.ndarray, rows: int) -> np.ndarray:
    out = np.empty((rows, *arr.shape[1:]), dtype=arr.dtype)
    out[: len(arr)] = arr
    return out


@dataclass
class FrozenAutomaton:
    """The static automaton: read-only arrays, memory-mapped when loaded from a datastore.

    State ids are renumbered so that most states need no stored fields: state v in 1..N (N = len of
    the text) is the one created at text position v - 1, whose longest string has length v and first
    ends at v - 1; the root is 0; clones follow as N + 1 + k and keep their length and first end in
    clone_len[k] and clone_first[k]. About half the states of real text are clones.
    """

    tokens: np.ndarray  # int32 stream, SEPARATOR after every document
    link: np.ndarray  # int32 [S]: suffix link (-1 at the root)
    clone_len: np.ndarray  # int32 [C]: length of the longest string of clone N + 1 + k
    clone_first: np.ndarray  # int32 [C]: its first end position
    edge_start: np.ndarray  # [S + 1]: state v owns edges[edge_start[v] : edge_start[v + 1]]
    edges: np.ndarray  # int32 [E, 2]: token, target; sorted by token within each state

    @property
    def n_states(self) -> int:
        return len(self.link)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "tokens": self.tokens,
            "link": self.link,
            "clone_len": self.clone_len,
            "clone_first": self.clone_first,
            "edge_start": self.edge_start,
            "edges": self.edges,
        }

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values())

    def walk(self, query: Iterable[int] | np.ndarray, state: int = 0, length: int = 0) -> tuple[int, int]:
        s, n = _walk_frozen(
            self.link,
            self.clone_len,
            len(self.tokens),
            self.edge_start,
            self.edges,
            state,
            length,
            as_query(query),
        )
        return int(s), int(n)

    def match(self, query: Iterable[int] | np.ndarray) -> Match:
        state, length = self.walk(query)
        return Match(length, state, self.first_end(state) if length else -1)

    def first_end(self, state: int) -> int:
        n_text = len(self.tokens)
        return state - 1 if state <= n_text else int(self.clone_first[state - n_text - 1])

    def continuation(self, end: int, n: int) -> np.ndarray:
        """Up to n tokens after position `end`, cut at the end of its document."""
        if end < 0:
            return self.tokens[:0]
        after = np.asarray(self.tokens[end + 1 : end + 1 + n])
        stop = np.flatnonzero(after == SEPARATOR)
        return after[: stop[0]] if stop.size else after


@dataclass
class ShardedAutomaton:
    """The static automaton of a corpus built in shards of whole documents, walked as one.

    A match never spans two documents, so the longest match over the corpus is the longest of the
    shards' matches, and its first occurrence is in the first shard that has one that long (shards
    follow the stream's order). A state is a tuple of one (state, length) pair per shard; positions
    are global (the shards' streams laid end to end). Same methods as FrozenAutomaton.
    """

    shards: list[FrozenAutomaton]

    def __post_init__(self) -> None:
        self.offsets = np.cumsum([0] + [len(s.tokens) for s in self.shards])

    @property
    def n_states(self) -> int:
        return sum(s.n_states for s in self.shards)

    @property
    def n_edges(self) -> int:
        return sum(s.n_edges for s in self.shards)

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.shards)

    def walk(self, query: Iterable[int] | np.ndarray, state: Any = 0, length: int = 0) -> tuple[tuple, int]:
        q = as_query(query)
        pairs = state if isinstance(state, tuple) else ((0, 0),) * len(self.shards)
        walked = tuple(shard.walk(q, s, n) for shard, (s, n) in zip(self.shards, pairs, strict=True))
        return walked, max(n for _, n in walked)

    def match(self, query: Iterable[int] | np.ndarray) -> Match:
        state, length = self.walk(query)
        return Match(length, state, self.first_end(state) if length else -1)

    def first_end(self, state: Any) -> int:
        if not isinstance(state, tuple):
            return -1  # the start state: nothing matched
        longest = max(n for _, n in state)
        if longest == 0:
            return -1
        j = next(i for i, (_, n) in enumerate(state) if n == longest)
        return int(self.offsets[j]) + self.shards[j].first_end(state[j][0])

    def continuation(self, end: int, n: int) -> np.ndarray:
        if end < 0:
            return self.shards[0].tokens[:0]
        j = int(np.searchsorted(self.offsets, end, side="right")) - 1
        return self.shards[j].continuation(end - int(self.offsets[j]), n)


# ----------------------------------------------------------------------------------------------------
# Building a static automaton


def build_automaton(stream: np.ndarray, progress=None) -> SuffixAutomaton:
    """The live automaton of an int32 stream, built in place (`progress(done)` after every chunk)."""
    auto = SuffixAutomaton(text=stream)
    for start in range(0, len(stream), BUILD_CHUNK):
        auto._index(min(start + BUILD_CHUNK, len(stream)))
        if progress is not None:
            progress(auto.length)
    return auto
