"""SAM-decoding: the suffix automata against brute-force matchers, the datastore, and the drafter's rules."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specbench_cli.datastores import build_from_token_docs
from specbench_cli.datastores.automaton import SEPARATOR, FrozenAutomaton, SuffixAutomaton
from specbench_cli.datastores.manifest import check_datastore, read_manifest
from specbench_cli.datastores.sam import SamDatastore, concatenate
from specbench_cli.drafters.sam import SamDecoding
from specbench_cli.engine.decode import Engine, generate
from specbench_cli.models import tokenizer_fingerprint
from specbench_cli.types import DraftContext, MethodSetup, SpecbenchError, StepFeedback

# ----------------------------------------------------------------------------------------------------
# Oracles, from the definitions


def end_positions(text: list[int], pattern: list[int]) -> list[int]:
    n = len(pattern)
    return [i + n - 1 for i in range(len(text) - n + 1) if text[i : i + n] == pattern]


def longest_match(text: list[int], query: list[int]) -> tuple[int, int]:
    """(length, first end position) of the longest suffix of `query` that occurs in `text`."""
    for length in range(len(query), 0, -1):
        ends = end_positions(text, query[len(query) - length :])
        if ends:
            return length, ends[0]
    return 0, -1


def longest_repeat(text: list[int]) -> tuple[int, int]:
    """(length, first end position) of the longest suffix of `text` that also ends earlier in it."""
    n = len(text)
    for length in range(n - 1, 0, -1):
        ends = [e for e in end_positions(text, text[n - length :]) if e < n - 1]
        if ends:
            return length, ends[0]
    return 0, -1


def built(text) -> SuffixAutomaton:
    auto = SuffixAutomaton()
    auto.extend(text)
    return auto


def build_for_model(docs, out, loaded, force: bool = False):
    return build_from_token_docs("sam", docs, out, loaded=loaded, force=force)


def same_automaton(a: FrozenAutomaton, b: FrozenAutomaton) -> bool:
    return all(np.array_equal(x, b.arrays()[k]) for k, x in a.arrays().items())


texts = st.lists(st.integers(0, 3), max_size=60)
queries = st.lists(st.integers(0, 4), max_size=20)  # 4 never occurs in a text: forces full fallbacks

# ----------------------------------------------------------------------------------------------------
# The automaton


@settings(max_examples=300, deadline=None)
@given(texts, queries)
def test_longest_match_equals_brute_force(text, query):
    auto = built(text)
    want = longest_match(text, query)
    got = auto.match(query)
    assert (got.length, got.end) == want
    frozen = auto.freeze()
    got = frozen.match(query)
    assert (got.length, got.end) == want
    # The walk can resume: a query split in two gives the same match.
    cut = len(query) // 2
    assert frozen.walk(query[cut:], *frozen.walk(query[:cut])) == frozen.walk(query)
    if len(text) >= 3:  # the classical bounds, which the array reservations rely on
        assert auto.n_states <= 2 * len(text) and auto.n_edges <= 3 * len(text) - 4


@settings(max_examples=100, deadline=None)
@given(texts, st.lists(st.sampled_from([0, 1, 2, 3, -7, 2**31, 2**40]), max_size=12))
def test_queries_as_lists_and_arrays_match_alike_ids_out_of_range_included(text, query):
    """A list (the decode loop's) takes a fast path; an id no automaton can hold matches nothing."""
    auto = built(text)
    frozen = auto.freeze()
    for a in (auto, frozen):
        assert a.walk(query) == a.walk(np.asarray(query, dtype=np.int64))
    valid = [t for t in query if 0 <= t <= 3]
    got = frozen.match(query)
    cut = max((i + 1 for i, t in enumerate(query) if not 0 <= t <= 3), default=0)
    assert (got.length, got.end) == longest_match(text, query[cut:])  # never across a bad id
    dyn = SuffixAutomaton()
    if len(valid) == len(query):
        dyn.extend(query)
        assert dyn.text.tolist() == query
    else:
        with pytest.raises(SpecbenchError):
            dyn.extend(query)
        assert dyn.length == 0  # nothing written


@settings(max_examples=200, deadline=None)
@given(texts, st.lists(st.integers(0, 60), max_size=6))
def test_dynamic_updates_equal_a_rebuilt_automaton(text, cuts):
    dyn = SuffixAutomaton(capacity=1)  # forces every array to grow along the way
    bounds = sorted(set(cuts + [len(text)]))
    done = 0
    for b in bounds:
        b = min(b, len(text))
        dyn.extend(text[done:b])
        done = b
        rep = dyn.repeat()
        assert (rep.length, rep.end) == longest_repeat(text[:done])
    assert dyn.text.tolist() == text
    assert same_automaton(dyn.freeze(), built(text).freeze())


def test_large_and_degenerate_texts_grow_the_hash_table():
    rng = random.Random(0)
    # a^n b adds n transitions in one step; then a long random + repeated text.
    text = [0] * 3000 + [1] + [rng.randrange(50) for _ in range(4000)]
    text += text[1500:2500]
    one_by_one = SuffixAutomaton(capacity=1)
    for i in range(0, len(text), 7):
        one_by_one.extend(text[i : i + 7])
    assert same_automaton(one_by_one.freeze(), built(text).freeze())
    arr = np.array(text)
    for _ in range(20):
        start = rng.randrange(len(text) - 30)
        query = text[start : start + rng.randrange(1, 30)] + [rng.randrange(50)]
        got = one_by_one.match(query)
        hits = np.flatnonzero(
            np.lib.stride_tricks.sliding_window_view(arr, got.length).__eq__(query[-got.length :]).all(1)
        )
        assert hits[0] + got.length - 1 == got.end  # the longest suffix occurs, first ending at `end`...
        longer = query[-got.length - 1 :]
        assert got.length == len(query) or not end_positions(text, longer)  # ...and one more token does not


# ----------------------------------------------------------------------------------------------------
# The static datastore


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=15), min_size=1, max_size=5),
    queries,
    st.integers(1, 8),
)
def test_static_matches_stay_inside_documents(docs, query, n):
    stream, n_docs = concatenate(docs)
    assert n_docs == len(docs) and stream.tolist().count(SEPARATOR) == len(docs)
    frozen = built(stream).freeze()
    got = frozen.match(query)
    # Queries never hold the separator, so the stream oracle is "longest match inside one document".
    assert (got.length, got.end) == longest_match(stream.tolist(), query)
    assert SEPARATOR not in stream[got.end - got.length + 1 : got.end + 1].tolist()
    draft = frozen.continuation(got.end, n).tolist()
    if got.length:
        assert SEPARATOR not in draft and draft == stream[got.end + 1 : got.end + 1 + len(draft)].tolist()
        # cut only where the document ends
        assert len(draft) == n or stream[got.end + 1 + len(draft)] == SEPARATOR


def test_datastore_roundtrip_and_manifest(tiny, tmp_path):
    rng = random.Random(3)
    docs = [[rng.randrange(tiny.vocab_size) for _ in range(rng.randrange(1, 80))] for _ in range(30)]
    path = build_for_model(docs, tmp_path / "sam", tiny)
    loaded = SamDatastore(path).automaton
    assert isinstance(loaded.edges, np.memmap)  # read lazily, not copied into memory
    stream, _ = concatenate(docs)
    assert same_automaton(loaded, built(stream).freeze())
    manifest = read_manifest(path)
    assert manifest["method"] == "sam" and manifest["documents"] == 30
    assert manifest["tokens"] == sum(len(d) for d in docs)
    build = manifest["build"]
    assert build["states"] == loaded.n_states and build["edges"] == loaded.n_edges
    assert build["seconds"] > 0 and build["peak_rss_mb"] > 0 and build["bytes_on_disk"] > 0
    check_datastore(path, "sam", tokenizer_fingerprint(tiny.tokenizer), "mt-bench", None, False)
    with pytest.raises(SpecbenchError, match="--method sam"):
        check_datastore(path, "rest", tokenizer_fingerprint(tiny.tokenizer), "mt-bench", None, False)
    with pytest.raises(SpecbenchError, match="already exists"):
        build_for_model(docs, path, tiny)
    (path / "edges.npy").write_bytes(b"junk")
    with pytest.raises(SpecbenchError, match="damaged"):
        SamDatastore(path)


def test_build_index_from_a_text_corpus(tiny, tmp_path):
    from specbench_cli.datastores import build_index

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("def add(a, b):\n    return a + b\n" * 3)
    (corpus / "b.txt").write_text("hello world, hello suffix automaton")
    manifest = build_index("sam", "tiny-random", str(corpus), tmp_path / "store", {"glob": "*.txt"}, None)
    assert manifest["method"] == "sam" and manifest["documents"] == 2
    auto = SamDatastore(tmp_path / "store").automaton
    query = list(b"return a")
    assert auto.match(query).length == len(query)


# ----------------------------------------------------------------------------------------------------
# The drafter


def sam_drafter(tiny, store=None, **options) -> SamDecoding:
    options.setdefault("fallback", "none")
    return SamDecoding(MethodSetup(target=tiny, datastores={"sam": store} if store else {}, options=options))


def propose(drafter: SamDecoding, tokens: list[int], max_nodes: int = 128) -> list[int]:
    drafter.reset(tokens[:-1])
    tree = drafter.propose(DraftContext(tokens=list(tokens), max_nodes=max_nodes))
    assert tree.parents == tuple(range(-1, len(tree) - 1))  # always a chain
    return list(tree.tokens)


def test_static_draft_stops_at_its_document_end(tiny, tmp_path):
    rng = random.Random(4)
    head, tail, other = ([rng.randrange(256) for _ in range(k)] for k in (20, 6, 50))
    store = build_for_model([head + tail, other], tmp_path / "sam", tiny)
    drafter = sam_drafter(tiny, store)
    assert propose(drafter, [1, 2] + head) == tail  # not followed into the next document
    assert drafter.stats()["static_steps"] == 1
    # Matched up to the document's end: nothing follows, and no dynamic match: no draft.
    assert propose(drafter, head + tail) == [] and drafter.stats()["fallback_steps"] == 1
    # Even an id equal to the separator (or any id out of range) does not bridge two documents.
    for odd in (SEPARATOR, 2**40):
        assert drafter.static.match(tail + [odd] + other[:5]).length == 5


def test_longer_match_wins_with_bias_and_threshold(tiny, tmp_path):
    rng = random.Random(5)
    corpus_doc = [rng.randrange(256) for _ in range(60)]
    store = build_for_model([corpus_doc], tmp_path / "sam", tiny)
    filler = [rng.randrange(256) for _ in range(60)]
    cut = [256, 257, 258]  # ids the corpus never holds: they bound the static match

    def context(dyn: int, static: int) -> list[int]:
        """Ends with a corpus substring of length `static` whose last `dyn` tokens occurred before."""
        shared = corpus_doc[10 : 10 + static]
        return cut + filler[:8] + shared[-dyn:] + filler[8:] + [259] + shared

    # static 12 - bias 5 = 7 beats dynamic 6: the corpus continuation (cut at the document's end)
    d = sam_drafter(tiny, store)
    assert propose(d, context(6, 12)) == corpus_doc[22:] and d.stats()["static_steps"] == 1
    # static 11 - 5 = 6 ties dynamic 6: the dynamic match wins, its continuation is the context's
    d = sam_drafter(tiny, store)
    assert propose(d, context(6, 11)) == filler[8 : 8 + 39] and d.stats()["dynamic_steps"] == 1
    # both below the threshold of 5 (static 9 - 5 = 4, dynamic 4): the fallback drafts
    d = sam_drafter(tiny, store)
    assert propose(d, context(4, 9)) == [] and d.stats()["fallback_steps"] == 1
    assert propose(sam_drafter(tiny, store, len_threshold=4), context(4, 9)) == filler[8 : 8 + 39]
    # static=false: the corpus is ignored
    d = sam_drafter(tiny, store, static=False)
    assert d.static is None and propose(d, context(2, 20)) == []
    # n_predicts counts the root (40 verified positions = 39 drafted tokens); max_nodes caps the chain
    assert propose(sam_drafter(tiny, store, n_predicts=6), context(6, 20)) == corpus_doc[30:35]
    assert propose(sam_drafter(tiny, store), context(6, 20), max_nodes=7) == corpus_doc[30:37]


def test_dynamic_match_climbs_until_a_full_chain_follows(tiny):
    rng = random.Random(6)
    noise = [rng.randrange(10, 256) for _ in range(50)]  # none of the ids 1..8 below
    text = [7, 8] + noise + [5, 6, 7, 8] + [1, 2, 3] + [5, 6, 7, 8]
    d = sam_drafter(tiny)
    d.reset(text)
    length, chain = d.dynamic_chain(39)
    # The longest repeat [5 6 7 8] is followed by 7 tokens only; [7 8] also occurs at the start.
    assert length == 4 and chain.tolist() == text[2 : 2 + 39]


def test_fallback_and_options(tiny, tiny_draft):
    default = SamDecoding(MethodSetup(target=tiny))
    assert default.fallback_name == "recycle" and default.needs_node_topk == 8  # the official default
    assert sam_drafter(tiny).needs_node_topk == 0
    with_draft = SamDecoding(
        MethodSetup(target=tiny, draft=tiny_draft, options={"fallback": "sps-tree", "fallback.top_k": 3})
    )
    assert with_draft.fallback_name == "sps-tree" and with_draft.fallback.top_k == 3
    for bad in ({"fallback": "eagle"}, {"n_predict": 3}, {"static": "maybe"}):
        with pytest.raises(SpecbenchError):
            sam_drafter(tiny, **bad)
    # pld takes over when the automata have nothing: its draft comes out unchanged
    pld = sam_drafter(tiny, fallback="pld", **{"fallback.num_pred": 3})
    toks = [1, 2, 3, 9, 9, 9, 1, 2, 3]
    assert propose(pld, toks) == [9, 9, 9] and pld.stats()["fallback_steps"] == 1


def test_automata_follow_the_committed_tokens(tiny, tmp_path):
    rng = random.Random(7)
    docs = [[rng.randrange(tiny.vocab_size) for _ in range(40)] for _ in range(5)]
    store = build_for_model(docs, tmp_path / "sam", tiny)
    drafter = SamDecoding(MethodSetup(target=tiny, datastores={"sam": store}))
    prompt = docs[0][:25] + docs[0][:10]
    gen = generate(Engine(tiny, max_len=256), drafter, prompt, 40)
    everything = prompt + gen.output_ids
    assert drafter.dynamic.text.tolist() == everything
    assert same_automaton(drafter.dynamic.freeze(), built(everything).freeze())
    assert (drafter.state, drafter.length) == drafter.static.walk(everything)
    assert sum(drafter.stats().values()) == len(gen.steps) - 1  # one source per step after the prefill
    # A feedback whose tokens extend the text feeds exactly the committed ones.
    tree = drafter.propose(DraftContext(tokens=everything, max_nodes=8))
    drafter.update(StepFeedback(tree, [], [42], everything + [42]))
    assert drafter.dynamic.text.tolist() == everything + [42]


def random_queries(docs: list[list[int]], rng, count: int):
    """`count` contexts of up to 40 tokens ending at a random point of a random document."""
    for _ in range(count):
        doc = docs[rng.integers(len(docs))]
        cut = int(rng.integers(1, len(doc)))
        yield doc[max(0, cut - 40) : cut]


def test_compact_store_matches_the_live_automaton_on_real_text(tmp_path):
    """The stored (renumbered, compact) automaton walks exactly like the live one it was frozen from,
    on standard-library code as bytes, and stays under half the ~91 bytes/token of the live form."""
    from specbench_cli.datastores.corpus import stdlib_files

    _, paths = stdlib_files()
    docs = [list(p.read_bytes()) for p in paths[:30]]
    store = build_from_token_docs("sam", docs, tmp_path / "sam", "bytes", "fp")
    frozen = SamDatastore(store).automaton
    live = built(concatenate(docs)[0])
    assert frozen.n_states == live.n_states and frozen.n_edges == live.n_edges
    build = read_manifest(store)["build"]
    assert build["stored_bytes_per_token"] <= 45 < build["live_bytes_per_token"]
    rng = np.random.default_rng(2)
    held_out = [list(p.read_bytes()) for p in paths[30:40]]
    for query in random_queries(held_out, rng, 300):
        want, got = live.match(query), frozen.match(query)
        assert (got.length, got.end) == (want.length, want.end)
        # Token by token (how the drafter feeds it), the matched length follows the live one.
        state, length, live_state, live_length = 0, 0, 0, 0
        for t in query[-12:]:
            state, length = frozen.walk([t], state, length)
            live_state, live_length = live.walk([t], live_state, live_length)
            assert length == live_length and frozen.first_end(state) == live.first_end(live_state)


def test_sharded_store_gives_the_matches_and_drafts_of_one_automaton(tiny, tmp_path):
    """Shards of whole documents, walked as one: the same longest match, first end and continuation
    as the automaton of the whole stream, fed in one go or token by token, and the same drafts."""
    from specbench_cli.datastores.automaton import ShardedAutomaton
    from specbench_cli.datastores.corpus import stdlib_files

    _, paths = stdlib_files()
    docs = [list(p.read_bytes()) for p in paths[:30]]
    total = sum(len(d) + 1 for d in docs)
    one = build_from_token_docs("sam", docs, tmp_path / "one", loaded=tiny)
    many = build_from_token_docs("sam", docs, tmp_path / "many", loaded=tiny, shard_tokens=total // 6)
    whole, sharded = SamDatastore(one).automaton, SamDatastore(many).automaton
    assert isinstance(sharded, ShardedAutomaton) and len(sharded.shards) >= 6
    manifest = read_manifest(many)
    assert (
        manifest["layout"]["shards"] == len(sharded.shards)
        and manifest["tokens"] == read_manifest(one)["tokens"]
    )
    assert sum(manifest["build"]["shard_tokens"]) == total  # every document in exactly one shard
    # Build memory follows the largest shard (here one long file of about 2/7 of the text), not the corpus.
    assert manifest["build"]["automaton_mb"] < read_manifest(one)["build"]["automaton_mb"] / 2
    rng = np.random.default_rng(3)
    held_out = [list(p.read_bytes()) for p in paths[30:40]] + docs[:3]  # unseen text, and text in the stores
    drafters = [sam_drafter(tiny, store) for store in (one, many)]
    for query in random_queries(held_out, rng, 200):
        want, got = whole.match(query), sharded.match(query)
        assert (got.length, got.end) == (want.length, want.end)
        assert np.array_equal(sharded.continuation(got.end, 12), whole.continuation(want.end, 12))
        state, length, ws, wl = 0, 0, 0, 0
        for t in query[-8:]:
            state, length = sharded.walk([t], state, length)
            ws, wl = whole.walk([t], ws, wl)
            assert length == wl and sharded.first_end(state) == whole.first_end(ws)
        assert propose(drafters[0], query) == propose(drafters[1], query)
