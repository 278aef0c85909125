"""SuffixDecoding: suffix-trie counts and drafts against a brute-force oracle; the cap; the shared tree."""

from __future__ import annotations

import heapq
import json
from collections import deque
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specbench_cli.drafters.suffix_decoding import LEAF, SuffixDecoding, SuffixOptions, SuffixTrie
from specbench_cli.engine.decode import Engine, generate
from specbench_cli.types import DraftContext, MethodSetup, SpecbenchError

texts = st.lists(st.integers(0, 3), max_size=30)  # a small alphabet: many repeats, many ties


def occurrences(texts: list[list[int]], s: tuple[int, ...]) -> int:
    """How often s occurs in the texts (never across two texts): the count a trie node must hold."""
    n = len(s)
    return sum(tuple(t[i : i + n]) == s for t in texts for i in range(len(t) - n + 1))


def oracle_grow(texts, depth, pattern, cap, opts: SuffixOptions):
    """The draft below `pattern` from brute-force counts, by the documented rule (same tie order)."""
    alphabet = sorted({tok for t in texts for tok in t})
    tokens, parents, probs, heap = [], [], [], []

    def offer(string, index, prob):
        if len(string) >= depth:  # the trie holds nothing deeper
            return
        kids = sorted((-occurrences(texts, string + (a,)), a) for a in alphabet)
        for neg_c, a in [k for k in kids if k[0] < 0][: None if opts.tree else 1]:
            p = prob * -neg_c / occurrences(texts, string)
            if p < opts.min_token_prob:
                break
            heapq.heappush(heap, (-p, next(counter), a, string + (a,), index))

    counter = iter(range(10**9))
    offer(pattern, -1, 1.0)
    while heap and len(tokens) < cap:
        neg_p, _, a, string, parent = heapq.heappop(heap)
        tokens.append(a)
        parents.append(parent)
        probs.append(-neg_p)
        offer(string, len(tokens) - 1, -neg_p)
    return tokens, parents, probs


def oracle_draft(texts, depth, context, opts: SuffixOptions, max_spec):
    """The best draft over match lengths, from brute-force counts."""
    best = ([], [], [], 0)  # tokens, parents, probs, match length
    for m in range(1, len(context)):
        pattern = tuple(context[-m:])
        if m > depth or occurrences(texts, pattern) == 0:
            break
        cap = min(max_spec, max(0, int(m * opts.max_spec_factor + opts.max_spec_offset + 1e-6)))
        tokens, parents, probs = oracle_grow(texts, depth, pattern, cap, opts)
        if sum(probs) >= sum(best[2]):
            best = (tokens, parents, probs, m)
    return best


def trie_of(texts, depth, chunks=1) -> SuffixTrie:
    trie = SuffixTrie(depth)
    for t in texts:
        step = max(1, len(t) // chunks)
        for i in range(0, len(t), step):  # appended piece by piece, as the engine commits tokens
            trie.extend(t[i : i + step])
        trie.close()
    return trie


def trie_strings(trie: SuffixTrie) -> dict[tuple[int, ...], int]:
    """Every string the trie holds with its count; a string seen once (`~q`, no node) counts 1."""
    out, stack = {}, [(0, ())]
    while stack:
        node, string = stack.pop()
        for tok, child in trie.children(node, len(string)):
            out[string + (tok,)] = trie.count[child] if child >= 0 else 1
            stack.append((child, string + (tok,)))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(texts, min_size=1, max_size=4), st.integers(1, 6), st.integers(1, 4))
def test_trie_counts_every_substring_up_to_the_depth(corpus, depth, chunks):
    trie = trie_of(corpus, depth, chunks)
    expected = {}
    for t in corpus:
        for i in range(len(t)):
            for n in range(1, min(depth, len(t) - i) + 1):
                expected[tuple(t[i : i + n])] = occurrences(corpus, tuple(t[i : i + n]))
    assert not LEAF, "a leaf's shared children dict was written to"  # checked first: trie_strings would loop
    assert trie_strings(trie) == expected
    assert trie.count[0] == sum(map(len, corpus))
    assert trie.strings == len(expected)  # the request-tree-nodes statistic: a plain trie's nodes
    # Only strings seen twice or more are nodes (the root aside): a string seen once is its occurrence.
    assert len(trie.kids) - 1 == sum(c >= 2 for c in expected.values())


@settings(max_examples=40, deadline=None)
@given(st.lists(texts, min_size=2, max_size=5), st.integers(1, 5), st.data())
def test_removing_a_text_leaves_the_counts_of_the_others(corpus, depth, data):
    gone = data.draw(st.integers(0, len(corpus) - 1))
    trie = trie_of(corpus, depth)
    trie.remove(corpus[gone])
    trie.extend(corpus[gone])  # and learnt again over the nodes removing it left behind
    trie.close()
    trie.remove(corpus[gone])
    assert not LEAF
    rest = corpus[:gone] + corpus[gone + 1 :]
    assert trie_strings(trie) == trie_strings(trie_of(rest, depth))


@settings(max_examples=80, deadline=None)
@given(
    st.lists(texts, min_size=1, max_size=3),
    st.lists(st.integers(0, 3), min_size=1, max_size=10),
    st.integers(2, 7),
    st.sampled_from([0.5, 1.0, 2.0]),
    st.sampled_from([0.0, 0.1, 0.3]),
    st.booleans(),
    st.integers(1, 12),
)
def test_drafts_match_the_brute_force_oracle(corpus, context, depth, factor, min_prob, tree, max_spec):
    opts = SuffixOptions(max_spec_factor=factor, min_token_prob=min_prob, tree=tree)
    context = context[-depth:]
    draft = trie_of(corpus, depth).speculate(context, opts, max_spec)
    tokens, parents, probs, m = oracle_draft(corpus, depth, context, opts, max_spec)
    assert (draft.tokens, draft.parents, draft.match_len) == (tokens, parents, m)
    assert draft.probs == pytest.approx(probs)
    assert len(draft.tokens) <= max(0, int(factor * draft.match_len + 1e-6))  # the cap


@settings(max_examples=80, deadline=None)
@given(
    st.lists(texts, min_size=1, max_size=3),
    st.lists(st.integers(0, 3), min_size=1, max_size=10),
    st.integers(2, 7),
    st.booleans(),
    st.sampled_from([0.0, 0.3, 0.9, 1.0, 1.5, 2.0, 3.0]),
)
def test_a_score_to_beat_keeps_the_draft_that_beats_it_and_drops_the_rest(
    corpus, context, depth, tree, to_beat
):
    opts = SuffixOptions(min_token_prob=0.1, tree=tree)
    context = context[-depth:]
    trie = trie_of(corpus, depth)
    full = trie.speculate(context, opts, 12)
    pruned = trie.speculate(context, opts, 12, to_beat=to_beat)
    if full.score > to_beat:  # the same draft, match length and all
        assert (pruned.tokens, pruned.parents, pruned.match_len) == (
            full.tokens,
            full.parents,
            full.match_len,
        )
    else:  # nothing wanted: the empty draft, which loses to (or ties with) the other tree's
        assert pruned.tokens == [] and pruned.score == 0.0


def test_speculation_cap_follows_the_match_length():
    answer = list(range(100, 140))
    trie = trie_of([answer], 24)
    for m in (1, 3, 7, 12):
        context = [7, 8] + answer[10 : 10 + m]  # 7, 8 never occur: the match is exactly m tokens
        for factor, expected in ((1.0, m), (0.5, int(0.5 * m)), (2.0, 2 * m)):
            if m + expected > 24:  # past the tree's depth a shorter match drafts more: covered by the oracle
                continue
            draft = trie.speculate(context, SuffixOptions(max_spec_factor=factor), 24)
            assert draft.match_len == m
            assert draft.tokens == answer[10 + m : 10 + m + expected]  # deterministic: probability 1
            assert draft.parents == list(range(-1, expected - 1))


def drafter(tiny, **options) -> SuffixDecoding:
    return SuffixDecoding(MethodSetup(target=tiny, options=options))


def propose(d: SuffixDecoding, tokens: list[int]):
    d.reset(tokens[:-1])
    return d.propose(DraftContext(tokens=list(tokens), max_nodes=128))


def test_cross_request_tree_learns_only_finished_answers(tiny):
    engine = Engine(tiny, max_len=256)
    d = drafter(tiny)
    first = generate(engine, d, [3, 1, 4, 1, 5], 40)
    # Generating taught the per-request tree only: the shared tree is still empty.
    assert d.shared.count[0] == 0 and not d.answers
    probe = [9, 9, 2] + first.output_ids[5:12]  # a new request that ends with a piece of that answer
    assert propose(d, probe).tokens == ()
    d.finish_answer(first.output_ids)
    tree = propose(d, probe)
    assert d.last_source == "shared" and tree.tokens[:3] == tuple(first.output_ids[12:15])
    # The per-request tree wins ties and has what the prompt holds; eviction keeps the newest answers.
    small = drafter(tiny, max_cached_requests=2)
    for answer in ([1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]):
        small.finish_answer(answer)
    assert list(small.answers) == [[5, 6, 7, 8], [9, 10, 11, 12]]
    assert propose(small, [0, 1, 2]).tokens == () and propose(small, [0, 5, 6]).tokens == (7, 8)
    assert drafter(tiny, max_cached_requests=0).finish_answer([1, 2]) is None
    small.start_run()
    assert small.shared.count[0] == 0 and not small.answers


def test_options_are_typed(tiny):
    assert drafter(tiny, max_tree_depth=8).max_spec == 8
    assert drafter(tiny, max_spec_tokens=5, tree="false").opts == replace(
        SuffixOptions(), max_spec_tokens=5, tree=False
    )
    for bad in ({"max_tree_depth": 0}, {"min_token_prob": "likely"}, {"factor": 1}):
        with pytest.raises(SpecbenchError):
            drafter(tiny, **bad)


def test_eval_teaches_each_answer_after_it_is_written_in_run_order(tmp_path, monkeypatch):
    from test_cli import eval_args, run

    calls = []

    def spy(self, output_ids):
        # The answer is already on disk when the drafter learns it
        written = [json.loads(x) for x in next(out.glob("answers/*/suffix.jsonl")).read_text().splitlines()]
        assert any(output_ids in r["choices"][0]["output_ids"] for r in written)
        calls.append(list(output_ids))
        SuffixDecoding.finish_answer.__wrapped__(self, output_ids)

    spy.__wrapped__ = SuffixDecoding.finish_answer
    monkeypatch.setattr(SuffixDecoding, "finish_answer", spy)
    out = tmp_path / "run"
    args = eval_args(out, "--limit", "3")
    args[args.index("--methods") + 1] = "ar,suffix"
    assert run(*args).exit_code == 0
    records = [json.loads(x) for x in next(out.glob("answers/*/suffix.jsonl")).read_text().splitlines()]
    in_order = [ids for r in records for ids in r["choices"][0]["output_ids"]]
    assert calls == in_order
    # --resume relearns the answers already written, in order, before making new ones
    for p in out.glob("answers/*/*.jsonl"):
        p.write_text("".join(p.read_text().splitlines(keepends=True)[:1]))
    calls.clear()
    args[args.index("--limit") + 1] = "3"
    assert run(*args, "--resume").exit_code == 0
    records = [json.loads(x) for x in next(out.glob("answers/*/suffix.jsonl")).read_text().splitlines()]
    assert calls == [ids for r in records for ids in r["choices"][0]["output_ids"]]


def test_evictions_keep_a_bounded_queue():
    trie, kept = SuffixTrie(4), deque()
    for i in range(5):
        text = [i, i + 1, i, i + 1]
        trie.extend(text)
        trie.close()
        kept.append(text)
        if len(kept) > 2:
            trie.remove(kept.popleft())
    assert trie_strings(trie) == trie_strings(trie_of(list(kept), 4))


def test_statistics_say_which_tree_drafted_and_how_well_it_matched(tiny):
    d = drafter(tiny)
    d.finish_answer([7, 8, 9, 10, 11])
    tree = propose(d, [1, 2, 3, 1, 2])  # the prompt itself holds "1 2 -> 3"
    trie_nodes = d.local.strings
    stats = d.stats()
    assert tree.tokens[:1] == (3,) and d.last_source == "request"
    assert stats["drafted_steps"] == 1 and stats["shared_steps"] == 0
    assert stats["match_len"] == d.last.match_len == 2
    assert stats["draft_score"] == pytest.approx(d.last.score) and stats["draft_score"] > 0
    assert stats["request_tree_nodes"] == trie_nodes == len(trie_strings(d.local))
    d.clear_stats()
    propose(d, [0, 7, 8])  # only an earlier answer holds "7 8"
    assert d.last_source == "shared"
    assert d.stats()["shared_steps"] == d.stats()["drafted_steps"] == 1
    d.clear_stats()
    assert propose(d, [0, 42]).tokens == ()  # nothing matches: no draft, nothing counted as drafted
    assert d.stats()["drafted_steps"] == d.stats()["match_len"] == d.stats()["draft_score"] == 0


def test_statistics_over_a_decode(tiny):
    engine = Engine(tiny, max_len=256)
    d = drafter(tiny)
    gen = generate(engine, d, [3, 1, 4, 1, 5, 3, 1, 4, 1, 5], 40)
    stats = d.stats()
    drafting = len(gen.steps) - 1  # the first record is the prefill
    assert 0 < stats["drafted_steps"] <= drafting
    assert stats["drafted_steps"] == sum(s.draft_nodes > 0 for s in gen.steps)
    assert stats["match_len"] >= stats["drafted_steps"]  # every draft matched at least one token
    assert stats["shared_steps"] == 0  # nothing finished yet
    assert stats["request_tree_nodes"] == d.local.strings == len(trie_strings(d.local))


@settings(max_examples=60, deadline=None)
@given(
    answers=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=30), max_size=4),
    prompt=st.lists(st.integers(0, 3), min_size=1, max_size=12),
    generated=st.lists(st.integers(0, 3), max_size=60),
    commits=st.lists(st.integers(1, 6), min_size=1, max_size=30),
    depth=st.integers(2, 8),
)
def test_kept_matches_equal_matching_from_the_root_every_step(
    tiny, answers, prompt, generated, commits, depth
):
    """The drafter keeps both trees' matches across steps (the request tree's open suffixes; the
    cross-request tree's followed token by token) instead of walking every suffix from the root: at
    every step, commits of 1-6 tokens, they must be what `matches` finds, and the drafts the same."""
    d = drafter(tiny, max_tree_depth=depth)
    for answer in answers:
        d.finish_answer(answer)
    d.reset(prompt)
    tokens, at = list(prompt), 0
    for n in commits:
        if at >= len(generated):
            break
        tokens += generated[at : at + n]
        at += n
        tree = d.propose(DraftContext(tokens=list(tokens), max_nodes=128))
        context = tokens[-depth:]
        assert d.shared_matches[: len(context) - 1] == d.shared.matches(context)
        assert d.local.open_matches()[: len(context) - 1] == d.local.matches(context)
        limit = min(d.max_spec, 128)
        fresh = [t.speculate(context, d.opts, limit) for t in (d.local, d.shared)]
        best = fresh[0] if fresh[0].score >= fresh[1].score else fresh[1]
        assert (tree.tokens, tree.parents) == (tuple(best.tokens), tuple(best.parents))
