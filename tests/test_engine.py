"""Tree masks, positions and KV compaction against plain sequential forwards; verifier rules."""

from __future__ import annotations

import random

import pytest
import torch

from specbench_cli.engine.decode import sanitize
from specbench_cli.engine.runner import ModelRunner, ancestor_matrix
from specbench_cli.engine.verifier import child_by_token, children_by_input, verify
from specbench_cli.types import DraftTree


def random_tree(rng: random.Random, n: int, vocab: int) -> DraftTree:
    parents = [rng.randint(-1, i - 1) for i in range(n)]
    return DraftTree(tuple(rng.randrange(vocab) for _ in range(n)), tuple(parents))


def sequential_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def test_from_paths_merges_prefixes_and_respects_budget():
    tree = DraftTree.from_paths([[1, 2, 3], [1, 2, 4], [5]], max_nodes=10)
    assert sorted(tree.paths()) == [[1, 2, 3], [1, 2, 4], [5]]
    assert len(tree) == 5  # 1, 2, 3, 4, 5: the shared prefix 1-2 stored once
    small = DraftTree.from_paths([[1, 2, 3], [1, 2, 4], [5]], max_nodes=3)
    assert small.paths() == [[1, 2, 3]]


def test_tree_node_i_is_forward_input_i_plus_1():
    tree = DraftTree((5, 6, 7), (-1, 0, 0))  # root -> 5 -> {6, 7}
    assert [tree.input_of(n) for n in range(len(tree))] == [1, 2, 3]
    assert tree.input_of(-1) == 0 and tree.node_of(0) == -1  # the root is input 0
    assert all(tree.node_of(tree.input_of(n)) == n for n in range(-1, len(tree)))
    assert tree.input_parents() == [-1, 0, 1, 1]


def test_ancestor_matrix_matches_parent_walk():
    rng = random.Random(0)
    tree = random_tree(rng, 30, 10)
    parents = tree.input_parents()
    anc = ancestor_matrix(parents)
    for i in range(len(parents)):
        walk, node = set(), i
        while node >= 0:
            walk.add(node)
            node = parents[node]
        assert set(anc[i].nonzero()[0].tolist()) == walk


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tree_forward_equals_sequential_path_forwards(tiny, seed):
    rng = random.Random(seed)
    vocab = tiny.vocab_size
    prompt = [rng.randrange(vocab) for _ in range(13)]
    runner = ModelRunner(tiny.model, 128)
    runner.forward(prompt)
    runner.commit(list(range(len(prompt))))
    root = rng.randrange(vocab)
    tree = random_tree(rng, 12, vocab)
    logits, _ = runner.forward([root, *tree.tokens], tree.input_parents())
    for node in range(len(tree)):
        path, cur = [], node
        while cur >= 0:
            path.append(tree.tokens[cur])
            cur = tree.parents[cur]
        ref = sequential_logits(tiny.model, prompt + [root] + path[::-1])[-1]
        torch.testing.assert_close(logits[tree.input_of(node)], ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        logits[0], sequential_logits(tiny.model, prompt + [root])[-1], atol=1e-4, rtol=1e-4
    )


def test_commit_compacts_kv_like_a_recomputed_cache(tiny):
    rng = random.Random(5)
    vocab = tiny.vocab_size
    prompt = [rng.randrange(vocab) for _ in range(9)]
    tree = DraftTree((3, 4, 5, 6, 7), (-1, -1, 1, 2, 1))  # root -> {3, 4 -> {5 -> 6, 7}}
    runner = ModelRunner(tiny.model, 64)
    runner.forward(prompt)
    runner.commit(list(range(len(prompt))))
    runner.forward([11, *tree.tokens], tree.input_parents())
    kept = [0, 2, 3, 4]  # root, node 1 (4), node 2 (5), node 3 (6)
    runner.commit(kept)
    fresh = ModelRunner(tiny.model, 64)
    fresh.forward(prompt + [11, 4, 5, 6])
    fresh.commit(list(range(len(prompt) + 4)))
    assert runner.length == fresh.length == len(prompt) + 4
    for a, b in zip(runner.cache.layers, fresh.cache.layers):
        torch.testing.assert_close(
            a.keys[:, :, : runner.length], b.keys[:, :, : fresh.length], atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            a.values[:, :, : runner.length], b.values[:, :, : fresh.length], atol=1e-5, rtol=1e-5
        )
    # And decoding continues from the compacted cache exactly as from the recomputed one.
    nxt_a, _ = runner.forward([9])
    nxt_b, _ = fresh.forward([9])
    torch.testing.assert_close(nxt_a, nxt_b, atol=1e-4, rtol=1e-4)


def test_greedy_verify_walks_the_argmax_path():
    tree = DraftTree((1, 2, 3, 2), (-1, -1, 0, 1))  # root -> 1 -> 3 ; root -> 2 -> 2
    logits = torch.full((5, 6), -5.0)
    logits[0, 2] = 5  # root wants 2 -> node 1
    logits[2, 2] = 5  # node 1 (input 2) wants 2 -> node 3
    logits[4, 0] = 5  # node 3 (input 4) wants 0: no child, bonus 0
    v = verify(tree, logits)
    assert v.accepted_nodes == [1, 3] and v.bonus == 0


def test_a_token_repeated_among_siblings_is_matched_to_its_first_node():
    tree = DraftTree((4, 4, 7, 7), (-1, -1, 0, 1))  # two root children with token 4, each with a 7
    assert child_by_token(tree) == {(0, 4): 1, (1, 7): 3, (2, 7): 4}
    rng = random.Random(3)
    for _ in range(50):  # the flat lookup agrees with the per-input one on random trees with repeats
        t = random_tree(rng, rng.randint(0, 40), 5)
        flat = {(i, tok): child for i, kids in enumerate(children_by_input(t)) for tok, child in kids.items()}
        assert child_by_token(t) == flat
    logits = torch.full((5, 9), -5.0)
    logits[0, 4] = logits[1, 7] = logits[2, 7] = 5
    assert verify(tree, logits).accepted_nodes == [0, 2]  # the first 4, then its own 7


def test_relaxed_rule_accepts_top_k_only_on_marked_nodes():
    logits = torch.tensor([[0.0, 3.0, 2.0, -9.0]])
    logits = torch.cat([logits, torch.zeros(1, 4)])
    marked = DraftTree((2,), (-1,), relaxed=(True,))
    plain = DraftTree((2,), (-1,))
    assert verify(marked, logits, relaxed_topk=2).accepted_nodes == [0]  # 2 is second best: in top-2
    assert verify(marked, logits, relaxed_topk=1).accepted_nodes == []
    assert verify(plain, logits, relaxed_topk=2).accepted_nodes == []  # unmarked: strict
    far = DraftTree((3,), (-1,), relaxed=(True,))
    assert verify(far, logits, relaxed_topk=2, relaxed_min_prob=0.5).accepted_nodes == []


def test_sanitize_cuts_bad_nodes_and_budget():
    tree = DraftTree((1, 2, 999, 3), (-1, 0, 1, 2))
    assert sanitize(tree, 100, 10).tokens == (1, 2)
    assert sanitize(DraftTree((1, 2), (-1, 5)), 100, 10).tokens == (1,)
    assert len(sanitize(DraftTree.chain(list(range(20))), 100, 7)) == 7
    assert sanitize(DraftTree((1, -1), (-1, 0)), 100, 10).tokens == (1,)  # negative id
    assert sanitize(DraftTree((1, 2), (-1, -2)), 100, 10).tokens == (1,)  # parent below -1
    assert sanitize(DraftTree((1, 2), (-1, 1)), 100, 10).tokens == (1,)  # a node its own parent
    good = DraftTree((1, 2, 3), (-1, 0, 0), relaxed=(True, False, True))
    assert sanitize(good, 100, 3) is good  # a well-formed tree within budget is passed on as is
    assert sanitize(good, 100, 2).relaxed == (True, False)
    assert len(sanitize(DraftTree(), 100, 0)) == 0


def test_the_drafters_setup_is_the_prefill_steps_drafting_time_not_the_prefills(tiny):
    """prefill_time (and the prefill step's t_verify) is the forward alone, the same for every method;
    what a drafter does in reset (indexing the prompt) is that step's t_draft."""
    import time

    from specbench_cli.drafters.ar import Autoregressive
    from specbench_cli.engine.decode import Engine, generate
    from specbench_cli.types import MethodSetup

    class SlowSetup(Autoregressive):
        def reset(self, prompt_ids):
            super().reset(prompt_ids)
            time.sleep(0.2)

    gen = generate(Engine(tiny, max_len=64), SlowSetup(MethodSetup(target=tiny)), [1, 2, 3], 4)
    first = gen.steps[0]
    assert first.t_draft >= 0.2 and first.t_verify < 0.2
    assert gen.prefill_time == pytest.approx(first.t_verify)


def test_read_later_gives_the_values_at_the_time_of_the_call():
    # A drafter reads back a runner's output after queueing more work; on the CPU the copy is taken at
    # once, so a later overwrite of the buffer (the next forward's outputs) cannot change what it reads.
    from specbench_cli.engine.transfer import read_later, upload

    buffer = torch.arange(6, dtype=torch.float64)
    read = read_later(buffer)
    buffer.fill_(-1.0)
    assert read().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    ids = upload([3, 1, 2], torch.device("cpu"))
    assert ids.dtype == torch.long and ids.tolist() == [3, 1, 2]


def test_the_step_clock_reuses_its_events_from_one_generation_to_the_next(monkeypatch):
    """On CUDA each mark records an event; a generation's marks reuse the last one's events (all read
    after its final synchronisation) instead of making four new ones every step."""
    from specbench_cli.engine.decode import StepClock

    made, records = [], iter(range(10**6))

    class FakeEvent:
        def __init__(self, enable_timing=False):
            made.append(self)

        def record(self):
            self.at = next(records)  # the "time" of this record

        def elapsed_time(self, other):
            return 1000.0 * (other.at - self.at)

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    clock = StepClock(torch.device("cpu"))
    clock.cuda = True  # as on a GPU; events stood in
    for generation in range(3):
        clock.start()
        marks = [clock.mark() for _ in range(4 + generation)]
        assert clock.seconds(marks[0], marks[-1]) > 0  # later marks read later
    assert len(made) == 6  # the longest generation's marks, made once
    assert len({id(m) for m in marks}) == 6  # no event twice within a generation
