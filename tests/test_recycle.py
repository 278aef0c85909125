"""Token Recycling: the matrix holds the top-k of the logits it was fed; the template is the paper's, BFS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specbench_cli.drafters.recycle import PAPER_TEMPLATE, Template, TokenRecycling
from specbench_cli.engine.decode import Engine, generate
from specbench_cli.engine.verifier import choices_with_topk, sample_tokens
from specbench_cli.types import DraftContext, DraftTree, MethodSetup, SpecbenchError, StepFeedback


def recycler(tiny, **options) -> TokenRecycling:
    return TokenRecycling(MethodSetup(target=tiny, options=options))


def test_template_is_the_papers_80_node_tree():
    t = Template.from_paths(PAPER_TEMPLATE, 8)
    sizes = [end - start for start, end in t.levels]
    assert sizes == [8, 21, 25, 15, 8, 3] and len(t.parents) == 80
    depths = DraftTree(tuple(range(80)), tuple(t.parents.tolist())).depths()
    assert depths == sorted(depths)  # breadth-first: every level after the one above it
    for i, path in enumerate(PAPER_TEMPLATE):
        assert t.ranks[i] == path[-1]
        assert t.parents[i] == (PAPER_TEMPLATE.index(path[:-1]) if len(path) > 1 else -1)
    # k < 8 drops every path that uses a rank the matrix does not hold, and their descendants
    small = Template.from_paths(PAPER_TEMPLATE, 2)
    assert len(small.parents) == sum(max(p) < 2 for p in PAPER_TEMPLATE)
    with pytest.raises(ValueError):
        Template.from_paths([(0, 0), (0,)], 8)


def test_template_is_filled_breadth_first_from_the_matrix(tiny):
    d = recycler(tiny)
    rng = np.random.default_rng(0)
    d.matrix[:] = rng.integers(0, tiny.vocab_size, size=d.matrix.shape)
    root = 17
    tree = d.propose(DraftContext(tokens=[3, 5, root], max_nodes=128))
    # The paper's definition: path [i1, ..., id] is reached by taking successor i1 of the root, then
    # successor i2 of that token, and so on.
    for node, path in enumerate(PAPER_TEMPLATE):
        tok = root
        for rank in path:
            tok = int(d.matrix[tok, rank])
        assert tree.tokens[node] == tok, path
    assert tree.parents == tuple(d.template.parents.tolist())
    # A smaller budget keeps the first nodes (a prefix of a BFS list is a tree)
    cut = d.propose(DraftContext(tokens=[3, 5, root], max_nodes=30))
    assert cut.tokens == tree.tokens[:30] and cut.parents == tree.parents[:30]


def test_matrix_holds_exactly_the_topk_of_the_logits_it_was_fed(tiny):
    d = recycler(tiny)
    torch.manual_seed(0)
    tree = DraftTree((11, 12, 11, 13), (-1, 0, -1, 2))  # token 11 forwarded twice
    logits = torch.randn(len(tree) + 1, tiny.vocab_size)
    picks, node_topk = choices_with_topk(logits, d.needs_node_topk, 0.0, None)
    assert picks == sample_tokens(logits, 0.0, None)  # the verifier's choices are unchanged
    root, prompt = 10, [1, 2]
    committed = [11, picks[1]]
    d.update(StepFeedback(tree, [0], committed, prompt + [root] + committed, node_topk))
    top = logits.topk(8, dim=-1).indices
    assert d.matrix[10].tolist() == top[0].tolist()  # the root's row
    assert d.matrix[12].tolist() == top[2].tolist()
    assert d.matrix[13].tolist() == top[4].tolist()
    assert d.matrix[11].tolist() == top[3].tolist()  # the last occurrence of a repeated token wins
    untouched = np.ones(tiny.vocab_size, dtype=bool)
    untouched[[10, 11, 12, 13]] = False
    assert not d.matrix[untouched].any()  # every other row is still the initial zeros
    d.start_run()
    assert not d.matrix.any()


@pytest.mark.parametrize("kind", ["eager", "compiled"])
def test_decode_loop_feeds_the_targets_own_topk(tiny, kind):
    """Through the real loop (both runners): each step's rows are the top-k of the target's logits."""
    seen = []

    class Spy(TokenRecycling):
        def update(self, feedback):
            seen.append(feedback)
            super().update(feedback)

    engine = Engine(tiny, max_len=256, max_nodes=64, kind=kind)
    prompt = [5, 9, 5, 9, 5, 9, 2]
    gen = generate(engine, Spy(MethodSetup(target=tiny)), prompt, 24)
    for fb in seen[:4]:
        assert fb.node_topk.shape == (len(fb.tree) + 1, 8)
        # Row 0 belongs to the root: the logits after the committed text up to and including it.
        upto = fb.tokens[: len(fb.tokens) - len(fb.committed)]
        with torch.inference_mode():
            logits = tiny.model(torch.tensor([upto])).logits[0, -1]
        assert fb.node_topk[0].tolist() == logits.topk(8).indices.tolist()
    accepted = sum(s.accepted for s in gen.steps)
    assert accepted > 0  # the recycled successors do get accepted on this repetitive prompt


def test_options_are_typed(tiny):
    assert recycler(tiny, k=4).matrix.shape == (tiny.vocab_size, 4)
    for bad in ({"k": 0}, {"k": "many"}, {"topk": 8}):
        with pytest.raises(SpecbenchError):
            recycler(tiny, **bad)


def test_statistics_count_learned_rows_and_blind_nodes(tiny):
    d = recycler(tiny)
    ctx = DraftContext(tokens=[3, 5, 17], max_nodes=128)
    tree = d.propose(ctx)
    # An empty matrix: every node hangs below a row never written, and the root is unknown.
    assert d.stats() == {"rows_learned": 0, "blind_nodes": len(tree), "known_root_steps": 0}
    d.clear_stats()
    torch.manual_seed(0)
    logits = torch.randn(len(tree) + 1, tiny.vocab_size)
    _, node_topk = choices_with_topk(logits, d.needs_node_topk, 0.0, None)
    d.update(StepFeedback(tree, [], [int(node_topk[0, 0])], [3, 5, 17, int(node_topk[0, 0])], node_topk))
    forwarded = {17, *tree.tokens}
    assert d.stats()["rows_learned"] == len(forwarded) == d.learned.sum()
    d.update(StepFeedback(tree, [], [int(node_topk[0, 0])], [3, 5, 17, int(node_topk[0, 0])], node_topk))
    assert d.stats()["rows_learned"] == len(forwarded)  # the same rows again are not new
    d.clear_stats()
    tree = d.propose(ctx)
    parent_tokens = [17 if p < 0 else tree.tokens[p] for p in tree.parents]
    assert d.stats()["known_root_steps"] == 1
    assert d.stats()["blind_nodes"] == sum(t not in forwarded for t in parent_tokens) < len(tree)
    d.start_run()
    assert not d.learned.any()


def test_statistics_over_a_decode(tiny):
    engine = Engine(tiny, max_len=256, max_nodes=64)
    d = recycler(tiny)
    gen = generate(engine, d, [5, 9, 5, 9, 5, 9, 2], 24)
    stats = d.stats()
    drafted = sum(s.draft_nodes for s in gen.steps)
    assert stats["rows_learned"] == d.learned.sum() > 0
    assert 0 < stats["blind_nodes"] < drafted  # the first step is blind, later ones less so
    assert 0 < stats["known_root_steps"] <= len(gen.steps) - 1
