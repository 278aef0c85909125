"""sps-tree: the dynamic draft tree's shape, its tree attention, its cache, and its gain over the chain."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from specbench_cli.drafters.sps import DraftModelChain, common_prefix
from specbench_cli.drafters.sps_tree import DraftModelTree
from specbench_cli.engine.decode import Engine, generate
from specbench_cli.types import DraftContext, MethodSetup, SpecbenchError


def tree_drafter(tiny, draft, **options) -> DraftModelTree:
    return DraftModelTree(MethodSetup(target=tiny, draft=draft, options=options))


def context(vocab: int, seed: int, n: int = 15) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(vocab) for _ in range(n)]


@torch.inference_mode()
def sequential_logprobs(model, tokens: list[int]) -> torch.Tensor:
    """The draft model's next-token log-probs after `tokens`, from a plain forward without any cache."""
    return torch.log_softmax(model(torch.tensor([tokens])).logits[0, -1].float(), dim=-1)


def test_tree_is_closed_best_first_and_within_budget(tiny, tiny_draft):
    d = tree_drafter(tiny, tiny_draft, top_k=4, depth=4, total_nodes=25)
    tokens = context(tiny.vocab_size, 0)
    d.reset(tokens[:-1])
    grown = d.grow(DraftContext(tokens=tokens, max_nodes=128))
    tree = grown.tree
    assert len(tree) == 25 and tree.depth() <= 4
    assert all(-1 <= p < i for i, p in enumerate(tree.parents))  # parents before children
    cum, own = grown.node_logprobs, grown.token_logprobs
    assert cum == sorted(cum, reverse=True)  # best first: every prefix is the best smaller tree
    for i, p in enumerate(tree.parents):
        assert cum[i] == pytest.approx((cum[p] if p >= 0 else 0.0) + own[i], abs=1e-5)
    # Level 1 holds the root's top-k; no node has more than top_k children, siblings differ.
    root_top = set(grown.root_logprobs.topk(4).indices.tolist())
    assert {t for t, p in zip(tree.tokens, tree.parents) if p < 0} <= root_top
    kids: dict[int, list[int]] = {}
    for t, p in zip(tree.tokens, tree.parents):
        kids.setdefault(p, []).append(t)
    assert all(len(v) <= 4 and len(set(v)) == len(v) for v in kids.values())
    # Without a budget the tree is every candidate: top_k at level 1, top_k * top_k below each level's frontier.
    full = tree_drafter(tiny, tiny_draft, top_k=3, depth=3, total_nodes=1000)
    full.reset(tokens[:-1])
    assert len(full.propose(DraftContext(tokens=tokens, max_nodes=1000))) == 3 + 2 * 9
    # The engine's node budget and the option both cap it; depth 1 is the root's top-k alone.
    assert len(d.propose(DraftContext(tokens=tokens, max_nodes=7))) == 7
    shallow = tree_drafter(tiny, tiny_draft, top_k=5, depth=1).propose(
        DraftContext(tokens=tokens, max_nodes=60)
    )
    assert shallow.parents == (-1,) * 5


def test_tree_forward_sees_exactly_the_ancestors(tiny, tiny_draft):
    # Each expanded node's draft distribution must equal a plain forward over context + its path:
    # a wrong mask (siblings visible, wrong positions, stale slots) changes it.
    d = tree_drafter(tiny, tiny_draft, top_k=3, depth=4, total_nodes=40)
    for seed in (1, 2):
        tokens = context(tiny.vocab_size, seed)
        d.reset(tokens[:-1])
        for _ in range(2):  # the second propose reuses the cache the first one left
            grown = d.grow(DraftContext(tokens=tokens, max_nodes=128))
            tree = grown.tree
            torch.testing.assert_close(
                grown.root_logprobs, sequential_logprobs(tiny_draft.model, tokens), atol=1e-4, rtol=0
            )
            assert len(grown.expanded_logprobs) >= 3
            for node, row in grown.expanded_logprobs.items():
                path, i = [], node
                while i >= 0:
                    path.append(tree.tokens[i])
                    i = tree.parents[i]
                want = sequential_logprobs(tiny_draft.model, tokens + path[::-1])
                torch.testing.assert_close(row, want, atol=1e-4, rtol=0)
            tokens = tokens + list(tree.paths()[0][:2]) + [5]  # as if two drafts and a bonus were committed


def test_draft_cache_stays_in_step_with_the_committed_tokens(tiny, tiny_draft):
    d = tree_drafter(tiny, tiny_draft)
    prompt = context(tiny.vocab_size, 3)
    gen = generate(Engine(tiny, max_len=256), d, prompt, 40)
    # The cache holds the tokens of the last propose, which are the committed text before the last step.
    assert d.seen == (prompt + gen.output_ids)[: len(d.seen)] and d.runner.length == len(d.seen)
    assert len(d.seen) > len(prompt)


def test_options_are_checked(tiny, tiny_draft):
    with pytest.raises(SpecbenchError, match="needs --draft-model"):
        DraftModelTree(MethodSetup(target=tiny))
    with pytest.raises(SpecbenchError, match="unknown sps-tree option"):
        tree_drafter(tiny, tiny_draft, topk=3)
    with pytest.raises(SpecbenchError, match="top_k=0 must be at least 1"):
        tree_drafter(tiny, tiny_draft, top_k=0)
    empty = tree_drafter(tiny, tiny_draft, total_nodes=0).propose(DraftContext(tokens=[1, 2], max_nodes=60))
    assert len(empty) == 0


def mean_accepted(engine, drafter, prompts, max_new: int) -> float:
    """Tokens committed per verification step, bonus included (the prefill step excluded)."""
    steps = [s for p in prompts for s in generate(engine, drafter, p, max_new).steps[1:]]
    return sum(s.accepted + 1 for s in steps) / len(steps)


def test_tree_beats_the_chain_in_accepted_length(tiny, tiny_draft):
    engine = Engine(tiny, max_len=256)
    prompts = [context(tiny.vocab_size, seed, 12) for seed in (10, 11, 12)]
    setup = MethodSetup(target=tiny, draft=tiny_draft)
    chain = mean_accepted(engine, DraftModelChain(setup), prompts, 48)
    tree = mean_accepted(engine, DraftModelTree(setup), prompts, 48)
    # The random pair agrees often but not always, so the chain's first miss ends its step while the
    # tree still holds the target's choice among the draft's top-10 alternatives.
    assert chain > 1.2 and tree > chain + 0.5, (chain, tree)


@given(st.lists(st.integers(0, 3), max_size=40), st.lists(st.integers(0, 3), max_size=40))
def test_common_prefix_is_the_first_mismatch(a, b):
    # Small alphabets make long shared prefixes and mismatches at every position likely.
    want = 0
    while want < min(len(a), len(b)) and a[want] == b[want]:
        want += 1
    assert common_prefix(a, b) == want
    assert common_prefix(a, a + b) == len(a)
