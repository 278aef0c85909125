"""rasd: tree fusion by longest prefix, pruning by the draft model, and losslessness with retrieval in play."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specbench_cli.drafters.ar import Autoregressive
from specbench_cli.drafters.rasd import Rasd, fuse_trees, prune_mask
from specbench_cli.drafters.retrieval import context_candidates
from specbench_cli.engine.decode import Engine, generate
from specbench_cli.types import DraftContext, DraftTree, MethodSetup, SpecbenchError


def node_paths(tree: DraftTree) -> set[tuple[int, ...]]:
    """The token path from the root to every node (not only to the leaves)."""
    out, paths = set(), []
    for tok, parent in zip(tree.tokens, tree.parents):
        path = (paths[parent] if parent >= 0 else ()) + (tok,)
        paths.append(path)
        out.add(path)
    return out


def scores_for(tree: DraftTree, own: list[float]) -> list[float]:
    cum: list[float] = []
    for p, s in zip(tree.parents, own):
        cum.append(s + (cum[p] if p >= 0 else 0.0))
    return cum


def test_fusion_attaches_at_the_deepest_match_and_keeps_both_trees():
    host = DraftTree.from_paths([[1, 2, 3], [1, 4], [5]])
    host_scores = scores_for(host, [-0.1, -0.2, -0.3, -0.5, -1.0])
    # [1, 2, 9, 9] shares [1, 2] with the host: it must hang its new part under the host's "2".
    retrieved = DraftTree.from_paths([[1, 2, 9, 9], [7, 8]])
    r_scores = scores_for(retrieved, [-0.1, -0.2, -0.4, -0.4, -2.0, -0.1])
    fused, origin = fuse_trees(host, host_scores, retrieved, r_scores, budget=100)
    assert node_paths(host) | node_paths(retrieved) == node_paths(fused)
    assert len(fused) == len(node_paths(fused))  # shared prefixes are one node each
    index = {p: i for i, p in enumerate(_paths_by_node(fused))}
    assert fused.parents[index[(1, 2, 9)]] == index[(1, 2)]
    assert origin[index[(1, 2)]] == "both" and origin[index[(1, 4)]] == "draft"
    assert origin[index[(1, 2, 9, 9)]] == "retrieval" and origin[index[(7, 8)]] == "retrieval"
    assert all(-1 <= p < i for i, p in enumerate(fused.parents))


def _paths_by_node(tree: DraftTree) -> list[tuple[int, ...]]:
    paths: list[tuple[int, ...]] = []
    for tok, parent in zip(tree.tokens, tree.parents):
        paths.append((paths[parent] if parent >= 0 else ()) + (tok,))
    return paths


@st.composite
def scored_tree(draw, max_nodes: int = 14):
    n = draw(st.integers(0, max_nodes))
    tokens = [draw(st.integers(0, 5)) for _ in range(n)]
    parents = [draw(st.integers(-1, i - 1)) for i in range(n)]
    tree = DraftTree.from_paths(_paths_by_node(DraftTree(tuple(tokens), tuple(parents))))
    own = [-draw(st.floats(0.0, 3.0)) for _ in range(len(tree))]
    return tree, scores_for(tree, own)


@settings(max_examples=80, deadline=None)
@given(scored_tree(), scored_tree(), st.integers(1, 30))
def test_fusion_is_the_best_closed_union_within_the_budget(host_scored, retrieved_scored, budget):
    (host, hs), (retrieved, rs) = host_scored, retrieved_scored
    fused, origin = fuse_trees(host, hs, retrieved, rs, budget)
    union = node_paths(host) | node_paths(retrieved)
    assert len(fused) == min(budget, len(union))
    assert node_paths(fused) <= union and len(node_paths(fused)) == len(fused)
    assert all(-1 <= p < i for i, p in enumerate(fused.parents))
    if budget >= len(union):  # everything fits: both source trees entirely
        assert node_paths(fused) == union
    # Nothing left out scores above anything kept. A shared node takes the host's score; a new
    # retrieved node is capped at its parent's, so that a child never outranks its parent.
    score = {p: s for p, s in zip(_paths_by_node(host), hs)}
    for p, s in sorted(zip(_paths_by_node(retrieved), rs), key=lambda t: len(t[0])):
        if p not in score:
            score[p] = min(s, score[p[:-1]]) if len(p) > 1 else s
    kept = node_paths(fused)
    if kept != union:
        worst_kept = min(score[p] for p in kept)
        for p in union - kept:
            # Left out only if it scores no better, or its parent was left out before it.
            assert score[p] <= worst_kept + 1e-9 or p[:-1] not in kept
    in_host, in_retrieved = node_paths(host), node_paths(retrieved)
    for path, o in zip(_paths_by_node(fused), origin):
        assert (
            o
            == {(True, False): "draft", (False, True): "retrieval", (True, True): "both"}[
                (path in in_host, path in in_retrieved)
            ]
        )


def test_pruning_drops_unlikely_nodes_with_their_subtrees():
    tree = DraftTree.from_paths([[1, 2, 3], [1, 4], [5, 6]])  # nodes: 1, 2, 3, 4, 5, 6
    cum = scores_for(
        tree, [math.log(0.9), math.log(0.5), math.log(0.9), math.log(0.01), math.log(0.001), 0.0]
    )
    kept = prune_mask(tree, cum, math.log(0.05))
    assert kept == [True, True, True, False, False, False]  # 6 is likely alone, but its parent 5 is not
    fused, _ = fuse_trees(DraftTree.empty(), [], tree, cum, budget=50, kept=kept)
    assert node_paths(fused) == {(1,), (1, 2), (1, 2, 3)}


@torch.inference_mode()
def plain_logprobs(model, tokens: list[int]) -> torch.Tensor:
    return torch.log_softmax(model(torch.tensor([tokens])).logits[0, -1].float(), dim=-1)


def test_retrieval_scores_equal_plain_draft_forwards(tiny, tiny_draft):
    # The one tree forward over the retrieval trie must give each node the draft probability a plain
    # forward over context + path gives: a wrong mask or position would change it.
    d = Rasd(MethodSetup(target=tiny, draft=tiny_draft, options={"top_k": 3, "depth": 3, "total_nodes": 12}))
    rng = random.Random(5)
    tokens = [rng.randrange(tiny.vocab_size) for _ in range(12)]
    d.reset(tokens[:-1])
    grown = d.host.grow(DraftContext(tokens=tokens, max_nodes=128))  # leaves pending slots dirty
    tree = DraftTree.from_paths([[3, 9, 4, 4], [3, 9, 7], [11, 2]])
    got = d.host.score(tree, grown.root_logprobs)
    for node, path in enumerate(_paths_by_node(tree)):
        want = 0.0
        for i in range(len(path)):
            want += float(plain_logprobs(tiny_draft.model, tokens + list(path[:i]))[path[i]])
        assert got[node] == pytest.approx(want, abs=1e-4)


def prompts(vocab: int) -> list[list[int]]:
    rng = random.Random(1)
    rep = [rng.randrange(vocab) for _ in range(6)]
    return [rep * 4 + [rng.randrange(vocab) for _ in range(3)], [rng.randrange(vocab) for _ in range(20)]]


@pytest.fixture(scope="module")
def engine(tiny):
    return Engine(tiny, max_len=256)


@pytest.mark.parametrize(
    "options",
    [
        {"prune_min_prob": 0.0},  # no pruning: retrieved branches beyond the host tree get verified
        {"prune_min_prob": 0.0, "budget": 12, "total_nodes": 8},  # tight budget: union cut to the best
        {"prune_min_prob": 0.0, "total_nodes": 0},  # retrieval only, still scored by the draft cache
    ],
)
def test_rasd_is_lossless_with_retrieved_branches(options, tiny, tiny_draft, engine):
    d = Rasd(MethodSetup(target=tiny, draft=tiny_draft, options=options))
    for p in prompts(tiny.vocab_size):
        ref = generate(engine, Autoregressive(MethodSetup(target=tiny)), p, 40).output_ids
        assert generate(engine, d, p, 40).output_ids == ref
        assert all(s.draft_nodes <= options.get("budget", 80) for s in generate(engine, d, p, 8).steps)
    assert d.stats()["added_nodes"] > 0  # the fused trees really held retrieved branches


def test_context_candidates_start_with_plds_choice():
    from specbench_cli.drafters.pld import find_candidate

    rng = random.Random(0)
    for _ in range(200):
        toks = [rng.randrange(4) for _ in range(rng.randrange(2, 40))]
        arr = __import__("numpy").asarray(toks)
        cands = context_candidates(arr, 3, 5, 8)
        pld = find_candidate(arr, 3, 5).tolist()
        if pld:
            assert list(cands[0][1]) == pld
        for start, cont in cands:  # every candidate really follows a match of the suffix
            assert 0 < start < len(toks) and list(cont) == toks[start : start + 5]
            assert toks[start - 1] == toks[-1]
        assert len({c for _, c in cands}) == len(cands)


def test_rasd_options_and_datastore_errors(tiny, tiny_draft):
    with pytest.raises(SpecbenchError, match="unknown rasd option"):
        Rasd(MethodSetup(target=tiny, draft=tiny_draft, options={"bogus": 1}))
    with pytest.raises(SpecbenchError, match="--datastore"):
        Rasd(MethodSetup(target=tiny, draft=tiny_draft, options={"retriever": "rest"}))
    with pytest.raises(SpecbenchError, match="retriever"):
        Rasd(MethodSetup(target=tiny, draft=tiny_draft, options={"retriever": "bm25"}))
    with pytest.raises(SpecbenchError, match="--draft-model"):
        Rasd(MethodSetup(target=tiny))


def test_rasd_with_the_rest_datastore_is_lossless(tiny, tiny_draft, engine, tmp_path):
    from specbench_cli.datastores import build_from_token_docs
    from specbench_cli.models import tokenizer_fingerprint

    p = prompts(tiny.vocab_size)[1]
    ref = generate(engine, Autoregressive(MethodSetup(target=tiny)), p, 40).output_ids
    store = build_from_token_docs(
        "rest",
        [p + ref, p[:10] + ref[5:]],
        tmp_path / "rest",
        "tiny-random",
        tokenizer_fingerprint(tiny.tokenizer),
    )
    d = Rasd(
        MethodSetup(
            target=tiny,
            draft=tiny_draft,
            datastores={"rest": store},
            options={"retriever": "rest", "prune_min_prob": 0.0},
        )
    )
    gen = generate(engine, d, p, 40)
    assert gen.output_ids == ref
    assert (
        d.stats()["accepted_retrieval_nodes"] > 0
    )  # the datastore's continuation was taken past the host tree
    assert len(gen.steps) < len(ref)


def test_the_queued_step_builds_the_tree_of_the_sequential_one(tiny, tiny_draft):
    # propose queues the host tree, retrieves and queues the scoring before it reads the tree back;
    # the fused tree must be the one the sequential calls (grow, retrieve, score, fuse) give.
    options = {"top_k": 3, "depth": 3, "total_nodes": 12, "budget": 20}
    queued = Rasd(MethodSetup(target=tiny, draft=tiny_draft, options=options))
    sequential = Rasd(MethodSetup(target=tiny, draft=tiny_draft, options=options))
    retrieved = []
    rep = prompts(tiny.vocab_size)[0][:6]
    for p in [rep * 4, rep * 3 + rep[:3], *prompts(tiny.vocab_size)]:
        queued.reset(p[:-1])
        sequential.reset(p[:-1])
        ctx = DraftContext(tokens=p, max_nodes=128)
        got = queued.propose(ctx)
        host = sequential.host.grow(ctx)
        cands = sequential.retriever.candidates(ctx, sequential.retrieval_nodes)
        rtree = DraftTree.from_paths([list(c.tokens) for c in cands], sequential.retrieval_nodes)
        rscores = sequential.host.score(rtree, host.root_logprobs)
        want, _ = fuse_trees(host.tree, host.node_logprobs, rtree, rscores, 20, [True] * len(rtree))
        assert got == want
        retrieved.append(len(rtree))
    assert max(retrieved) > 0  # the repetitive prompt retrieves: the scoring forward ran
