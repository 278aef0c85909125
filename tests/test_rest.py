"""REST datastore and drafter: suffix-array search against brute force, document boundaries, the
deterministic top-64 trie, and an end-to-end decode with a store built from the model's own text."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specbench_cli.datastores import build_from_token_docs
from specbench_cli.datastores.manifest import read_manifest, write_manifest
from specbench_cli.datastores.rest import RestDatastore
from specbench_cli.drafters.rest import Rest, top_prefix_tree
from specbench_cli.types import DraftContext, MethodSetup, SpecbenchError

# Token documents over a small alphabet (so queries repeat) whose ids may be above 65,535.
alphabet = st.sampled_from([0, 1, 2, 3, 65_535, 65_536, 70_000, 151_935])
documents = st.lists(st.lists(alphabet, min_size=0, max_size=30), min_size=1, max_size=8).filter(
    lambda docs: any(docs)
)


def build(docs: list[list[int]], folder: Path, chunk_tokens: int | None = None) -> RestDatastore:
    opts = {} if chunk_tokens is None else {"chunk_tokens": chunk_tokens}
    build_from_token_docs("rest", docs, folder / "store", "test-tokenizer", "fp-test", **opts)
    return RestDatastore(folder / "store")


chunk_sizes = st.sampled_from([None, 2, 9, 40])  # one array, or chunks down to one document each


def occurrences(docs: list[list[int]], query: list[int]) -> list[tuple[int, int]]:
    """(document, offset) of every occurrence of query inside a single document."""
    L = len(query)
    return [(d, i) for d, doc in enumerate(docs) for i in range(len(doc) - L + 1) if doc[i : i + L] == query]


def brute_continuations(docs, query, max_matches, length):
    """The official retriever's rule on a separated corpus: the first max_matches matches in sorted
    suffix order (= sorted by what follows), each continuation cut at its document's end."""
    SENT = 2**32  # sorts after every id, like the datastore's sentinel
    found = []
    for d, i in occurrences(docs, query):
        rest = docs[d][i + len(query) :]
        if rest:  # a match at a document's end has no continuation: not a hit
            found.append(rest + [SENT])
    found.sort()
    return [tuple(r[: r.index(SENT)][:length]) for r in found[:max_matches]]


def reference_tree(conts: list[tuple[int, ...]], num_nodes: int) -> list[tuple[int, ...]]:
    """Prefixes ranked by count desc, then length, then token order: the top num_nodes."""
    counts = Counter(c[:d] for c in conts for d in range(1, len(c) + 1))
    ranked = sorted(counts, key=lambda p: (-counts[p], len(p), p))
    return ranked[:num_nodes]


def tree_prefixes(tree) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = []
    for tok, parent in zip(tree.tokens, tree.parents, strict=True):
        out.append((out[parent] if parent >= 0 else ()) + (tok,))
    return out


@settings(max_examples=60, deadline=None)
@given(docs=documents, chunk_tokens=chunk_sizes, data=st.data())
def test_search_matches_brute_force(docs, chunk_tokens, data):
    with tempfile.TemporaryDirectory() as tmp:
        store = build(docs, Path(tmp), chunk_tokens)
        flat = [t for d in docs for t in d]
        # Queries taken from the stream (hits) and random ones (mostly misses).
        if flat:
            start = data.draw(st.integers(0, len(flat) - 1))
            from_stream = flat[start : start + data.draw(st.integers(1, 5))]
        else:
            from_stream = [0]
        for query in (from_stream, data.draw(st.lists(alphabet, min_size=1, max_size=4))):
            ranges = store.search(query)
            assert sum(hi - lo for lo, hi in ranges) == len(occurrences(docs, query))
            # Every suffix in each chunk's range starts with the query.
            for chunk, (lo, hi) in zip(store.chunks, ranges, strict=True):
                for p in np.asarray(chunk.sa[lo:hi]):
                    assert chunk.tokens[p : p + len(query)].tolist() == query
            want = brute_continuations(docs, query, 7, 3)
            got = [tuple(c.tolist()) for c in store.continuations(query, max_matches=7, length=3)]
            assert got == want


@settings(max_examples=40, deadline=None)
@given(docs=documents, chunk_tokens=chunk_sizes, data=st.data())
def test_longest_match_and_tree_match_reference(docs, chunk_tokens, data):
    with tempfile.TemporaryDirectory() as tmp:
        store = build(docs, Path(tmp), chunk_tokens)
        doc = data.draw(st.sampled_from([d for d in docs if d]))
        cut = data.draw(st.integers(1, len(doc)))
        context = data.draw(st.lists(alphabet, max_size=3)) + doc[:cut]
        match = store.longest_match(context, min_span=2, max_span=16)
        # REST's scan: the first span from 16 down to 2 whose suffix occurs with a continuation.
        want_span = next(
            (L for L in range(min(16, len(context)), 1, -1) if brute_continuations(docs, context[-L:], 1, 1)),
            0,
        )
        assert match.span == want_span
        # The same match from an array, and an id the store cannot hold ends every match before it.
        assert store.longest_match(np.asarray(context), min_span=2, max_span=16) == match
        for bad in (-3, 2**32):
            broken = context[:-2] + [bad] + context[-2:] if len(context) > 2 else context
            as_array = store.longest_match(np.asarray(broken, dtype=np.int64), min_span=2, max_span=16)
            assert store.longest_match(broken, min_span=2, max_span=16) == as_array
            assert as_array.span <= (2 if len(context) > 2 else want_span)
        if want_span:
            rows = store.continuation_matrix(match.ranges, match.span, max_matches=50, length=4)
            num = data.draw(st.integers(1, 12))
            tree = top_prefix_tree(rows, num)
            conts = brute_continuations(docs, context[-want_span:], 50, 4)
            assert tree_prefixes(tree) == reference_tree(conts, num)


def test_continuations_never_cross_documents(tmp_path):
    docs = [[5, 6, 7, 1, 2], [3, 4, 4, 4], [1, 2, 9, 9], [1, 2]]
    store = build(docs, tmp_path)
    conts = sorted(tuple(c.tolist()) for c in store.continuations([1, 2], length=10))
    # Doc 0 and doc 3 end right after [1, 2]: no continuation may run into doc 1's [3, 4, ...].
    assert conts == [(9, 9)]
    rows = store.continuation_matrix(store.search([4]), 1, length=10)
    for row in rows:
        assert all(t in (4, 0xFFFF_FFFF) for t in row.tolist())


def test_large_vocabulary_ids_round_trip(tmp_path):
    docs = [[151_935, 65_536, 65_535, 100_000, 7], [65_536, 65_535, 123_456]]
    store = build(docs, tmp_path)
    assert store.chunks[0].tokens.dtype == np.uint32
    got = sorted(tuple(c.tolist()) for c in store.continuations([65_536, 65_535]))
    assert got == [(100_000, 7), (123_456,)]
    # 65,536 must not alias 0, as it would in a u16 store
    assert all(hi == lo for lo, hi in store.search([0]))


def rest_setup(store: Path, **options) -> MethodSetup:
    return MethodSetup(target=None, datastores={"rest": store}, options=options)


def test_tree_is_deterministic_bounded_and_holds_the_most_frequent_continuation(tmp_path):
    rng = np.random.default_rng(0)
    common = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    docs = []
    for i in range(300):
        doc = [1, 2, 3] + (common if i % 3 == 0 else rng.integers(20, 40, size=10).tolist())
        docs.append(doc + rng.integers(0, 50, size=5).tolist())
    build_from_token_docs("rest", docs, tmp_path / "s", "t", "fp")
    ctx = DraftContext(tokens=[7, 8, 1, 2, 3], max_nodes=128)
    a = Rest(rest_setup(tmp_path / "s"))
    t1, t2 = a.propose(ctx), a.propose(ctx)
    t3 = Rest(rest_setup(tmp_path / "s")).propose(ctx)
    assert t1 == t2 == t3
    assert 0 < len(t1) <= 64
    assert common in t1.paths()  # 100 of 300 matches share it: every prefix makes the top 64
    assert all(p < i for i, p in enumerate(t1.parents))
    small = a.propose(DraftContext(tokens=[1, 2, 3], max_nodes=5))
    assert len(small) == 5 and tree_prefixes(small) == tree_prefixes(t1)[:5]
    stats = a.stats()  # three lookups, all of them hits
    assert stats["matched_steps"] == 3 and stats["matched_span"] >= 3 * 2 and stats["lookup_seconds"] > 0


def test_no_hit_gives_an_empty_tree_and_options_apply(tmp_path):
    build_from_token_docs("rest", [[1, 2, 3, 4, 5, 6]], tmp_path / "s", "t", "fp")
    drafter = Rest(rest_setup(tmp_path / "s", length=2, num_draft=64))
    assert len(drafter.propose(DraftContext(tokens=[9, 9, 9], max_nodes=64))) == 0
    tree = drafter.propose(DraftContext(tokens=[0, 1, 2], max_nodes=64))
    assert tree.paths() == [[3, 4]]
    assert drafter.describe()["length"] == 2
    with pytest.raises(SpecbenchError, match="unknown rest option"):
        Rest(rest_setup(tmp_path / "s", spans=3))


def test_missing_or_foreign_datastore_is_refused(tmp_path):
    with pytest.raises(SpecbenchError, match="build-index --method rest"):
        Rest(MethodSetup(target=None))
    build_from_token_docs("rest", [[1, 2, 3]], tmp_path / "s", "t", "fp")
    manifest = read_manifest(tmp_path / "s")
    write_manifest(tmp_path / "s", manifest | {"method": "dresd"})
    with pytest.raises(SpecbenchError, match="built for method 'dresd'"):
        Rest(rest_setup(tmp_path / "s"))


def test_rebuild_needs_force_and_leaves_no_temp_folder(tmp_path):
    build_from_token_docs("rest", [[1, 2, 3]], tmp_path / "s", "t", "fp")
    with pytest.raises(SpecbenchError, match="--force"):
        build_from_token_docs("rest", [[4, 5]], tmp_path / "s", "t", "fp")
    build_from_token_docs("rest", [[4, 5]], tmp_path / "s", "t", "fp", force=True)
    assert RestDatastore(tmp_path / "s").chunks[0].tokens.tolist()[:2] == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    m = read_manifest(tmp_path / "s")
    assert m["tokens"] == 2 and m["documents"] == 1 and m["build"]["peak_rss_mb"] > 0


def test_generate_with_rest_equals_autoregressive(tiny, tmp_path):
    """A store built from the model's own greedy text: REST drafts get accepted, output unchanged."""
    from specbench_cli.drafters.ar import Autoregressive
    from specbench_cli.engine.decode import Engine, generate

    prompt = list(b"def add(a, b):\n")
    engine = Engine(tiny, max_len=256)
    ar = generate(engine, Autoregressive(MethodSetup(target=tiny)), prompt, 40)
    build_from_token_docs("rest", [prompt + ar.output_ids], tmp_path / "s", "tiny", "fp")
    rest = generate(engine, Rest(MethodSetup(target=tiny, datastores={"rest": tmp_path / "s"})), prompt, 40)
    assert rest.output_ids == ar.output_ids
    assert sum(s.accepted for s in rest.steps) > 0
    assert len(rest.steps) < len(ar.steps)


def stdlib_byte_docs(first: int, count: int) -> list[list[int]]:
    """Real code: standard-library sources as bytes (a tokenizer-free token stream)."""
    from specbench_cli.datastores.corpus import stdlib_files

    _, paths = stdlib_files()
    return [list(p.read_bytes()) for p in paths[first : first + count]]


def test_chunked_store_gives_the_drafts_of_one_array_on_real_text(tmp_path):
    docs = stdlib_byte_docs(0, 40)
    total = sum(len(d) + 1 for d in docs)
    build_from_token_docs("rest", docs, tmp_path / "one", "bytes", "fp")
    build_from_token_docs("rest", docs, tmp_path / "many", "bytes", "fp", chunk_tokens=total // 9)
    one, many = RestDatastore(tmp_path / "one"), RestDatastore(tmp_path / "many")
    assert len(one.chunks) == 1 and len(many.chunks) >= 9 and len(one) == len(many)
    assert all(isinstance(c.sa, np.memmap) and isinstance(c.tokens, np.memmap) for c in many.chunks)
    assert read_manifest(tmp_path / "many")["layout"]["chunks"] == len(many.chunks)
    drafters = [Rest(rest_setup(tmp_path / name)) for name in ("one", "many")]
    # Contexts from other stdlib files: real queries, with common and rare continuations.
    rng = np.random.default_rng(1)
    held_out = [d for d in stdlib_byte_docs(40, 20) if len(d) > 64]
    hits = 0
    for _ in range(300):
        doc = held_out[rng.integers(len(held_out))]
        cut = int(rng.integers(16, len(doc)))
        context = doc[cut - 16 : cut]
        a, b = one.longest_match(context), many.longest_match(context)
        assert (a.span, a.count) == (b.span, b.count)
        if a.span:
            hits += 1
            for max_matches in (7, 5000):
                want = one.continuation_matrix(a.ranges, a.span, max_matches, 10)
                assert np.array_equal(many.continuation_matrix(b.ranges, b.span, max_matches, 10), want)
        trees = [d.propose(DraftContext(tokens=context, max_nodes=64)) for d in drafters]
        assert trees[0] == trees[1]
    assert hits > 200  # the comparison ran on real matches, most of them with many continuations


def test_chunks_are_read_one_at_a_time(tmp_path):
    from specbench_cli.datastores.base import document_groups

    pulled = []

    def docs():
        for i in range(100):
            pulled.append(i)
            yield [i % 7 + 1] * 9  # 10 tokens with its separator

    groups = document_groups(docs(), 35)
    first = next(groups)
    assert [len(d) for d in first] == [9, 9, 9] and len(pulled) == 4  # one look-ahead document only
    assert sum(len(g) for g in groups) == 97
    # A document longer than a chunk gets a chunk of its own instead of being split.
    assert [len(g) for g in document_groups([[1] * 50, [2], [3] * 60], 10)] == [1, 1, 1]
