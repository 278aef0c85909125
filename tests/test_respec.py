"""respec: the entropy trigger, feedback ranking, relaxed verification, and losslessness with it off."""

from __future__ import annotations

import math
import random

import pytest
import torch

from specbench_cli.drafters.ar import Autoregressive
from specbench_cli.drafters.respec import ReSpec, entropy_nats, entropy_trigger, rank_candidates
from specbench_cli.drafters.retrieval import Candidate
from specbench_cli.engine.decode import Engine, generate
from specbench_cli.engine.verifier import verify
from specbench_cli.types import DraftContext, DraftTree, MethodSetup, SpecbenchError, StepFeedback


def respec(tiny, draft, **options) -> ReSpec:
    return ReSpec(MethodSetup(target=tiny, draft=draft, options=options))


def test_entropy_of_crafted_distributions():
    assert entropy_nats(torch.zeros(50)) == pytest.approx(math.log(50), abs=1e-5)
    peaked = torch.full((50,), -30.0)
    peaked[3] = 0.0
    assert entropy_nats(peaked) < 1e-6
    two = torch.tensor([0.0, 0.0, -1e9])
    assert entropy_nats(two) == pytest.approx(math.log(2), abs=1e-6)
    # At T > 0 the verifier draws from softmax(logits / T): a higher T flattens it.
    assert entropy_nats(torch.tensor([2.0, 0.0, 0.0]), 4.0) > entropy_nats(torch.tensor([2.0, 0.0, 0.0]))


def test_entropy_trigger_rule():
    assert not entropy_trigger([])  # nothing seen yet: draft with the model
    assert entropy_trigger([0.2]) and not entropy_trigger([2.0])
    # [3.0, 0.2, 0.2]: C_1 = 1.2, C_2 = 0.7, C_3 = 1.47 -> k = 2, H = 0.2 <= 1.5: retrieve.
    assert entropy_trigger([3.0, 0.2, 0.2])
    # [0.1, 0.1, 5.0]: C_1 = 6, C_2 = 3.05, C_3 = 2.07 -> k = 3, H = 1.73 > 1.5: model.
    assert not entropy_trigger([0.1, 0.1, 5.0])
    # lambda_e trades window length for level: with lambda_e = 0 the lowest mean wins (k = 1 here).
    assert entropy_trigger([5.0, 5.0, 1.0], lambda_e=0.0)
    assert not entropy_trigger([5.0, 5.0, 1.0], lambda_e=10.0)  # k = 3: mean 3.67
    assert entropy_trigger([9.0, 9.0, 9.0, 0.1], lookback=1)  # only the last step counts


def ctx_with_entropy(tokens: list[int], vocab: int, low: bool) -> DraftContext:
    logits = torch.zeros(vocab)
    if low:
        logits[tokens[-1]] = 40.0  # one token takes all the mass: entropy ~0
    return DraftContext(tokens=tokens, max_nodes=128, logits=logits)


def test_trigger_switches_between_retrieval_and_model(tiny, tiny_draft):
    d = respec(tiny, tiny_draft, total_nodes=20)
    rng = random.Random(0)
    rep = [rng.randrange(tiny.vocab_size) for _ in range(5)]
    tokens = rep * 3 + rep[:2]
    d.reset(tokens[:-1])
    for _ in range(3):
        tree = d.propose(ctx_with_entropy(tokens, tiny.vocab_size, low=True))
    # Low entropy: the context's continuations, marked relaxed, and the draft model's top first tokens
    # beside them, strict.
    strict = [i for i, r in enumerate(tree.relaxed) if not r]
    assert strict and all(tree.parents[i] == -1 for i in strict) and len(strict) <= d.fallback_k
    assert len({tree.tokens[i] for i in range(len(tree)) if tree.parents[i] == -1}) == sum(
        p == -1 for p in tree.parents
    )
    assert rep[2:] + rep[:2] in [p[:5] for p in tree.paths()]
    assert all(tree.relaxed[i] for i in range(len(tree)) if i not in strict)
    for _ in range(3):
        tree = d.propose(ctx_with_entropy(tokens, tiny.vocab_size, low=False))  # log(V) nats: high
    # High entropy: the draft model's tree, verified strictly.
    assert tree.relaxed is None and len(tree) == 20
    assert list(tree.tokens) == list(d.host.propose(ctx_with_entropy(tokens, tiny.vocab_size, False)).tokens)
    assert d.stats()["triggered_steps"] == 3
    # Low entropy but nothing to retrieve (no repeated suffix): fall back to the model tree.
    fresh = list(range(1, 30))
    d.reset(fresh[:-1])
    for _ in range(3):
        tree = d.propose(ctx_with_entropy(fresh, tiny.vocab_size, low=True))
    assert tree.relaxed is None and len(tree) == 20


def test_feedback_ranking_orders_candidates_by_history(tiny, tiny_draft):
    a = Candidate((1, 2, 3, 4), "pld", ("pld", 7))
    b = Candidate((1, 5, 6, 7), "pld", ("pld", 12))
    c = Candidate((9, 9), "rest", ("rest", 0))
    # No history: every score is the start value, the retriever's order stands.
    assert rank_candidates([a, b, c], {}, 0.5, 0.5, 3) == [a, b, c]
    assert rank_candidates([a, b, c], {("pld", 12): 0.9, ("rest", 0): 0.6}, 0.5, 0.5, 2) == [b, c]
    assert rank_candidates([a, b, c], {("pld", 7): 0.2}, 0.5, 0.5, 3) == [b, c]  # under the cut-off

    d = respec(tiny, tiny_draft, alpha=0.5)
    tree = DraftTree.from_paths([list(a.tokens), list(b.tokens)])
    accepted_path = [
        i for i, path in enumerate(_node_paths(tree)) if path in ((1,), (1, 5), (1, 5, 6), (1, 5, 6, 7))
    ]
    d.last_used = [a, b]
    d.update(StepFeedback(tree, accepted_path, [1, 5, 6, 7, 8], []))
    # R_a = 1/4 (only the shared first token), R_b = 4/4: S = 0.5 * 0.5 + 0.5 * R.
    assert d.scores[a.key] == pytest.approx(0.375) and d.scores[b.key] == pytest.approx(0.75)
    assert rank_candidates([a, b], d.scores, d.score_init, d.score_cutoff, 4) == [b]


def _node_paths(tree: DraftTree) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = []
    for tok, parent in zip(tree.tokens, tree.parents):
        out.append((out[parent] if parent >= 0 else ()) + (tok,))
    return out


def test_relaxed_rule_accepts_exactly_top_k_or_probable_retrieved_tokens():
    gen = torch.Generator().manual_seed(0)
    vocab, topk, min_prob = 12, 3, 0.15
    for _ in range(40):
        row = torch.randn(vocab, generator=gen) * 2
        probs = torch.softmax(row, -1)
        top = set(probs.topk(topk).indices.tolist())
        logits = torch.stack([row, torch.zeros(vocab)])
        for tok in range(vocab):
            want = tok == int(row.argmax()) or tok in top or float(probs[tok]) >= min_prob
            relaxed = DraftTree((tok,), (-1,), (True,))
            got = verify(relaxed, logits, relaxed_topk=topk, relaxed_min_prob=min_prob)
            assert (got.accepted_nodes == [0]) == want
            strict = DraftTree((tok,), (-1,), (False,))  # a model-drafted node: argmax only
            got = verify(strict, logits, relaxed_topk=topk, relaxed_min_prob=min_prob)
            assert (got.accepted_nodes == [0]) == (tok == int(row.argmax()))


def test_relaxed_walk_prefers_the_strict_child_then_the_most_probable_relaxed_one():
    row0 = torch.log(torch.tensor([0.5, 0.3, 0.2, 1e-6]))
    row = torch.zeros(4)
    logits = torch.stack([row0, row, row, row, row])
    tree = DraftTree((2, 1, 3, 0), (-1, -1, 0, 1), (True, True, True, True))
    # argmax 0 is not a child; among relaxed children {2: 0.2, 1: 0.3} both pass top-3, 1 wins.
    v = verify(tree, logits, relaxed_topk=3, relaxed_min_prob=1.1)
    assert v.accepted_nodes[0] == 1 and v.relaxed_accepts >= 1
    # min_prob alone: 0.25 admits token 1 (0.3) only.
    assert verify(tree, logits, relaxed_topk=0, relaxed_min_prob=0.25).accepted_nodes[0] == 1
    assert verify(tree, logits, relaxed_topk=0, relaxed_min_prob=0.35).accepted_nodes == []


def test_verify_options_follow_the_relaxed_switch(tiny, tiny_draft):
    on = respec(tiny, tiny_draft, relaxed_topk=4, relaxed_min_prob=0.2)
    assert on.verify_options() == {"relaxed_topk": 4, "relaxed_min_prob": 0.2}
    assert on.lossless is False and ReSpec.lossless is False
    off = respec(tiny, tiny_draft, relaxed=False)
    assert off.verify_options() == {} and off.lossless is True
    assert respec(tiny, tiny_draft, **ReSpec.lossless_options).lossless is True
    with pytest.raises(SpecbenchError, match="relaxed"):
        respec(tiny, tiny_draft, relaxed="maybe")
    with pytest.raises(SpecbenchError, match="unknown respec option"):
        respec(tiny, tiny_draft, theta=1.0)


def prompts(vocab: int) -> list[list[int]]:
    rng = random.Random(1)
    rep = [rng.randrange(vocab) for _ in range(6)]
    return [
        rep * 4 + [rng.randrange(vocab) for _ in range(3)],
        [rng.randrange(vocab) for _ in range(20)],
        [7],
    ]


@pytest.fixture(scope="module")
def engine(tiny):
    return Engine(tiny, max_len=256)


@pytest.mark.parametrize("theta", [1.5, 100.0, 0.0])  # default, always retrieve, never retrieve
def test_respec_with_relaxed_off_is_lossless(theta, tiny, tiny_draft, engine):
    d = respec(tiny, tiny_draft, relaxed="off", entropy_theta=theta)
    drafted = 0
    for p in prompts(tiny.vocab_size):
        ref = generate(engine, Autoregressive(MethodSetup(target=tiny)), p, 40).output_ids
        gen = generate(engine, d, p, 40)
        assert gen.output_ids == ref
        drafted += sum(s.draft_nodes for s in gen.steps)
    assert drafted > 0
    if theta == 100.0:
        assert d.stats()["retrieval_steps"] > 0 and d.stats()["retrieval_step_accepts"] > 0
    if theta == 0.0:
        assert d.stats()["retrieval_steps"] == 0


def test_permissive_relaxed_rule_takes_every_retrieved_chain_whole(tiny, tiny_draft, engine):
    # With top-k = the whole vocabulary every retrieved token passes the relaxed rule, so a step that
    # verifies one retrieved chain accepts all of it; model-drafted trees stay strict.
    d = respec(
        tiny, tiny_draft, entropy_theta=100.0, num_candidates=1, fallback_k=0, relaxed_topk=tiny.vocab_size
    )
    gen = generate(engine, d, prompts(tiny.vocab_size)[0], 40)
    chains = [s for s in gen.steps if 0 < s.draft_nodes == s.draft_depth]
    assert chains and all(s.accepted == s.draft_depth for s in chains)
    assert d.stats()["retrieval_steps"] == len(chains) and not d.lossless
