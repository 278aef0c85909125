"""The compiled runner must compute what the eager runner computes, pads and buckets notwithstanding.

On CPU the CompiledRunner runs its static-shape code without CUDA graphs: the padding to buckets,
the mask built from [tokens | parents | start], the full-length static cache and the compaction are
all exercised here; only the graph capture itself needs a GPU (bench/micro.py checks it there).
"""

from __future__ import annotations

import random

import pytest
import torch

from specbench_cli.drafters.ar import Autoregressive
from specbench_cli.drafters.base import Drafter
from specbench_cli.drafters.pld import PromptLookup
from specbench_cli.drafters.sps import DraftModelChain
from specbench_cli.engine.compiled import CompiledRunner, ancestor_closure, closure_rounds
from specbench_cli.engine.decode import Engine, generate
from specbench_cli.engine.factory import RunnerFactory
from specbench_cli.engine.runner import ModelRunner, ancestor_matrix
from specbench_cli.registry import DRAFTERS
from specbench_cli.types import DraftContext, DraftTree, MethodSetup, SpecbenchError

MAX_NEW = 40


def random_parents(rng: random.Random, n: int) -> list[int]:
    """Parents of n inputs, input 0 the root: sometimes a chain, sometimes a bushy tree."""
    if rng.random() < 0.3:
        return list(range(-1, n - 1))
    return [-1] + [rng.randint(max(0, i - rng.choice([1, 3, i])), i - 1) for i in range(1, n)]


def test_ancestor_closure_matches_host_matrix():
    rng = random.Random(0)
    for n in [1, 2, 3, 4, 5, 16, 17, 33, 65, 129]:
        for _ in range(3):
            parents = random_parents(rng, n)
            expected = torch.from_numpy(ancestor_matrix(parents))
            assert torch.equal(ancestor_closure(torch.tensor(parents), torch.arange(n)), expected)
            # The compiled graphs run the largest bucket's rounds in every bucket: extra rounds change nothing.
            rounds = closure_rounds(129)
            assert torch.equal(ancestor_closure(torch.tensor(parents), torch.arange(n), rounds), expected)
    # A window holds several roots (inputs whose parent is committed) and pads at depth 0.
    forest = [-1, 0, -1, 2, 3, 1, -1, -1]
    assert torch.equal(
        ancestor_closure(torch.tensor(forest), torch.arange(8)), torch.from_numpy(ancestor_matrix(forest))
    )
    # A parent that is no window index (never written by the runner) counts as a root, never a gather
    # out of bounds.
    stray = [-1, 0, 9, 2]
    assert torch.equal(
        ancestor_closure(torch.tensor(stray), torch.arange(4)),
        torch.from_numpy(ancestor_matrix([-1, 0, -1, 2])),
    )
    chain = list(range(-1, 128))  # the deepest tree the largest default bucket holds
    full = torch.ones(129, 129).tril().bool()
    assert torch.equal(ancestor_closure(torch.tensor(chain), torch.arange(129)), full)
    # One round fewer leaves the chain's deepest input without its farthest ancestors.
    short = ancestor_closure(torch.tensor(chain), torch.arange(129), closure_rounds(129) - 1)
    assert not torch.equal(short, full) and not short[128, 0]


@pytest.mark.parametrize("attention", ["tree", "packed", "sdpa"])
@pytest.mark.parametrize("seed", [0, 1])
def test_forwards_match_eager_runner(tiny, attention, seed):
    """Step by step against ModelRunner: long (chunked) and short (bucketed) prefills, random trees of
    every bucket size including the largest, random accepted paths compacted, rewinds."""
    rng = random.Random(seed)
    vocab = tiny.vocab_size
    compiled = CompiledRunner(tiny.model, 300, max_nodes=40, attention=attention)
    eager = ModelRunner(tiny.model, 300)
    assert compiled.buckets == [1, 16, 32, 41]
    for prompt_len in (60, 9):  # longer than the largest bucket (chunks of 41), then bucketed
        prompt = [rng.randrange(vocab) for _ in range(prompt_len)]
        for runner in (compiled, eager):
            runner.reset()
        lc, _ = compiled.forward(prompt, last_only=True)
        le, _ = eager.forward(prompt, last_only=True)
        torch.testing.assert_close(lc, le, atol=1e-4, rtol=1e-4)
        for runner in (compiled, eager):
            runner.commit(list(range(prompt_len)))
        for n in [1, 16, 41, 2, 33, 7, 1, 41, 12]:
            parents = random_parents(rng, n)
            tokens = [rng.randrange(vocab) for _ in range(n)]
            lc, hc = compiled.forward(tokens, parents, want_hidden=True)
            le, he = eager.forward(tokens, parents, want_hidden=True)
            assert lc.shape == (n, vocab) and lc.dtype == torch.float32
            torch.testing.assert_close(lc, le, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(hc, he, atol=1e-4, rtol=1e-4)
            path, node = [], rng.randrange(n)  # accept the path to a random input
            while node >= 0:
                path.append(node)
                node = parents[node]
            for runner in (compiled, eager):
                runner.commit(sorted(path))
            if rng.random() < 0.25:  # what a draft model does when the target disagrees
                back = rng.randint(prompt_len, compiled.length)
                compiled.rewind(back)
                eager.rewind(back)
            assert compiled.length == eager.length


def test_a_long_prompt_runs_in_bucket_chunks_and_fills_the_cache_as_one_forward(tiny, monkeypatch):
    """A prompt longer than the largest bucket: chunks of it through the graph forwards (no eager
    forward), every row's logits and hidden states as the eager runner's, nothing committed, and the
    cache left as one forward leaves it (the next step matches). Longer than CHUNKED_PREFILL_MAX
    buckets: the eager forward."""
    from specbench_cli.engine import compiled as compiled_module

    rng = random.Random(7)
    compiled = CompiledRunner(tiny.model, 200, max_nodes=15)
    eager = ModelRunner(tiny.model, 200)
    eager_calls = []
    real_eager = compiled._eager_forward
    monkeypatch.setattr(
        compiled, "_eager_forward", lambda *a, **k: eager_calls.append(1) or real_eager(*a, **k)
    )
    for prompt_len in (16 * 3, 16 * 2 + 5):  # whole chunks, then a partial last one
        prompt = [rng.randrange(tiny.vocab_size) for _ in range(prompt_len)]
        for runner in (compiled, eager):
            runner.reset()
        compiled.forward_log = []
        lc, hc = compiled.forward(prompt, want_hidden=True, all_hidden=True)
        le, he = eager.forward(prompt, want_hidden=True, all_hidden=True)
        assert len(compiled.forward_log) == -(-prompt_len // 16) and compiled.length == 0 and not eager_calls
        assert lc.shape == (prompt_len, tiny.vocab_size) and hc.shape[0] == prompt_len
        torch.testing.assert_close(lc, le, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(hc, he, atol=1e-4, rtol=1e-4)
        last, last_hidden = compiled.forward(prompt, want_hidden=True, last_only=True)
        torch.testing.assert_close(last, le[-1:], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(last_hidden, he[-1:], atol=1e-4, rtol=1e-4)
        for runner in (compiled, eager):
            runner.commit(list(range(prompt_len)))
        step = [rng.randrange(tiny.vocab_size) for _ in range(5)]
        torch.testing.assert_close(compiled.forward(step)[0], eager.forward(step)[0], atol=1e-4, rtol=1e-4)
    monkeypatch.setattr(compiled_module, "CHUNKED_PREFILL_MAX", 2)
    compiled.reset()
    compiled.forward([1] * 40)
    assert eager_calls == [1]


@pytest.mark.parametrize(("attention", "as_tensors"), [("tree", False), ("packed", False), ("tree", True)])
def test_pending_levels_match_eager_runner(tiny, attention, as_tensors):
    """Levels run after pending (written, uncommitted) slots, as sps-tree grows its tree: windows of
    every width the buckets allow, and one too wide for them (the eager path). `as_tensors`: the
    compiled runner gets each level as device tensors (`forward_tensors`, how grow_tree feeds it)."""
    rng = random.Random(5)
    prompt = [rng.randrange(tiny.vocab_size) for _ in range(20)]
    compiled = CompiledRunner(tiny.model, 200, max_nodes=40, attention=attention)
    eager = ModelRunner(tiny.model, 200)
    for runner in (compiled, eager):
        runner.forward(prompt)
        runner.commit(list(range(len(prompt))))
    slot_parents: list[int] = []
    every_level: list[int] = []
    for width in (3, 5, 9, 12, 15):  # pending slots grow 0, 3, 8, 17, 29: the last level is too wide
        level = [rng.randrange(tiny.vocab_size) for _ in range(width)]
        every_level += level
        pending = len(slot_parents)
        slot_parents += [rng.randint(-1, pending - 1) if pending else -1 for _ in range(width)]
        if as_tensors:
            lc, hc = compiled.forward_tensors(
                torch.tensor(level), torch.tensor(slot_parents), want_hidden=True
            )
        else:
            lc, hc = compiled.forward(level, slot_parents, want_hidden=True)
        le, he = eager.forward(level, slot_parents, want_hidden=True)
        assert lc.shape == (width, tiny.vocab_size)
        torch.testing.assert_close(lc, le, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(hc, he, atol=1e-4, rtol=1e-4)
    # A level's logits are those of a plain tree forward over every pending node and the level at once.
    full, _ = eager.forward(every_level, slot_parents)
    torch.testing.assert_close(lc, full[-len(level) :], atol=1e-4, rtol=1e-4)


def test_last_only_and_hidden_shapes(tiny):
    runner = CompiledRunner(tiny.model, 200, max_nodes=20)
    logits, hidden = runner.forward([1, 2, 3], want_hidden=True, last_only=True)
    assert logits.shape == (1, tiny.vocab_size) and hidden.shape == (1, tiny.model.config.hidden_size)
    runner.commit([0, 1, 2])
    logits, hidden = runner.forward(list(range(30)), want_hidden=False, last_only=True)  # eager path
    assert logits.shape == (1, tiny.vocab_size) and hidden is None


class RandomTrees(Drafter):
    """Random trees (right or wrong): exercises every bucket and the compaction of bushy paths."""

    name = "random-trees"

    def __init__(self, setup: MethodSetup, seed: int):
        super().__init__(setup)
        self.rng = random.Random(seed)

    def propose(self, ctx: DraftContext) -> DraftTree:
        n = min(self.rng.choice([0, 3, 15, 31, 63]), ctx.max_nodes)
        vocab = self.setup.target.vocab_size
        # Half of the nodes copy tokens from the context so that some of them get accepted.
        tokens = [
            self.rng.choice(ctx.tokens) if self.rng.random() < 0.5 else self.rng.randrange(vocab)
            for _ in range(n)
        ]
        parents = [self.rng.randint(-1, i - 1) for i in range(n)]
        return DraftTree(tuple(tokens), tuple(parents))


def prompts(vocab: int) -> list[list[int]]:
    rng = random.Random(3)
    rep = [rng.randrange(vocab) for _ in range(7)]
    return [
        [rng.randrange(vocab) for _ in range(25)],
        rep * 5 + [rng.randrange(vocab) for _ in range(4)],  # repetitive: prompt lookup finds matches
        [rng.randrange(vocab) for _ in range(150)],  # longer than the largest bucket: eager prefill
        [5],
    ]


@pytest.fixture(scope="module")
def reference(tiny):
    engine = Engine(tiny, max_len=320, max_nodes=64)
    ar = Autoregressive(MethodSetup(target=tiny))
    return [generate(engine, ar, p, MAX_NEW).output_ids for p in prompts(tiny.vocab_size)]


@pytest.mark.parametrize(
    "method",
    [
        "ar",
        "pld",
        "recycle",
        "sps",
        "sps-compiled-draft",
        "sps-tree",
        "sps-tree-compiled-draft",
        "random-trees",
    ],
)
def test_compiled_engine_is_lossless(method, tiny, tiny_draft, reference):
    engine = Engine(tiny, max_len=320, max_nodes=64, kind="compiled")
    assert isinstance(engine.runner, CompiledRunner)
    # "-compiled-draft": the draft model gets a compiled runner from the factory, as under --engine compiled.
    runners = RunnerFactory("compiled", 320) if method.endswith("compiled-draft") else None
    setup = MethodSetup(target=tiny, draft=tiny_draft, runners=runners)
    if method == "ar":
        drafter = Autoregressive(setup)
    elif method == "pld":
        drafter = PromptLookup(setup)
    elif method == "recycle":  # 80-node template cut to the 64-node budget; learns from node top-k
        drafter = DRAFTERS.get("recycle")(setup)
    elif method.startswith("sps-tree"):  # grows its tree level by level after pending slots
        drafter = DRAFTERS.get("sps-tree")(setup)
    elif method.startswith("sps"):
        drafter = DraftModelChain(setup)
    else:
        drafter = RandomTrees(setup, seed=4)
    accepted = 0
    for prompt, ref in zip(prompts(tiny.vocab_size), reference, strict=True):
        gen = generate(engine, drafter, prompt, MAX_NEW)
        assert gen.output_ids == ref
        accepted += sum(s.accepted for s in gen.steps)
    if method != "ar":
        assert accepted > 0  # drafts were accepted, so compaction ran
    if runners is not None:  # the drafter's runner is the factory's compiled one
        assert [role for role, _ in runners.made] == ["draft"]
        assert drafter.runner is runners.made[0][1] and isinstance(drafter.runner, CompiledRunner)


def test_static_cache_too_small_is_a_user_error(tiny):
    engine = Engine(tiny, max_len=64, max_nodes=16, kind="compiled")
    drafter = Autoregressive(MethodSetup(target=tiny))
    with pytest.raises(SpecbenchError, match="static"):
        generate(engine, drafter, list(range(40)), 32)
    # A generation that fits still works afterwards.
    assert len(generate(engine, drafter, [1, 2, 3], 8).output_ids) == 8


def test_bad_options_are_rejected(tiny):
    with pytest.raises(SpecbenchError, match="attention"):
        CompiledRunner(tiny.model, 64, attention="flashy")
    with pytest.raises(SpecbenchError, match="backend"):
        CompiledRunner(tiny.model, 64, backend="magic")


def test_fused_projections_compute_the_unfused_forward_and_restore_the_model(tiny):
    """q/k/v and gate/up fused into one GEMM each inside graph forwards; outside, the model is untouched."""
    from specbench_cli.engine.fusion import FusedProjection, fused

    compiled = CompiledRunner(tiny.model, 120, max_nodes=15, attention="packed")
    layers = tiny.model.config.num_hidden_layers
    assert len(compiled.fusions) == 2 * layers  # one attention group and one MLP group per layer
    before = {name: id(m) for name, m in tiny.model.named_modules()}
    unfused = CompiledRunner(tiny.model, 120, max_nodes=15, attention="packed", fuse=False)
    prompt = list(range(3, 12))
    tree, parents = [5, 6, 7, 8], [-1, 0, 0, 1, 2]
    outputs = []
    for runner in (compiled, unfused):
        runner.forward(prompt)
        runner.commit(list(range(len(prompt))))
        outputs.append(runner.forward([9, *tree], parents)[0])
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    assert outputs[0].argmax(-1).tolist() == outputs[1].argmax(-1).tolist()
    assert {name: id(m) for name, m in tiny.model.named_modules()} == before  # originals restored
    with fused(compiled.fusions):
        attn = tiny.model.model.layers[0].self_attn
        assert isinstance(attn.q_proj, FusedProjection) and not isinstance(attn.k_proj, FusedProjection)


def test_rotary_tables_hold_what_the_models_rotary_module_returns(tiny):
    """Graph forwards gather cos/sin from a table made by the model's own rotary module: the same
    values at any positions, the module back in place afterwards, and no table for a RoPE whose
    frequencies depend on the sequence length."""
    from specbench_cli.engine.rotary import RotaryTable, build_rotary_tables, rotary_tables

    compiled = CompiledRunner(tiny.model, 120, max_nodes=15)
    [(parent, table)] = compiled.rotary
    module = tiny.model.model.rotary_emb
    assert parent is tiny.model.model and table.cos.shape[0] == compiled.cache_len
    x = torch.zeros(1, 3, tiny.model.config.hidden_size)
    positions = torch.tensor([[0, 7, 7, 3, 119, compiled.cache_len - 1]])
    for got, want in zip(table(x, positions), module(x, positions)):
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert torch.equal(
        table(x, torch.tensor([[10**6]]))[0], table.cos[-1:][None]
    )  # clamped, never out of bounds
    with rotary_tables(compiled.rotary):
        assert isinstance(tiny.model.model.rotary_emb, RotaryTable)
    assert tiny.model.model.rotary_emb is module
    original = module.rope_type
    try:
        module.rope_type = "dynamic"
        assert build_rotary_tables(tiny.model, 64, torch.float32, torch.device("cpu")) == []
    finally:
        module.rope_type = original
    # Without the tables (fuse=False) the compiled forward is the same.
    plain = CompiledRunner(tiny.model, 120, max_nodes=15, fuse=False)
    assert plain.rotary == []
    outputs = []
    for runner in (compiled, plain):
        runner.forward(list(range(3, 12)))
        runner.commit(list(range(9)))
        outputs.append(runner.forward([9, 5, 6, 7], [-1, 0, 0, 1])[0])
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)


def test_fused_projections_trace_under_torch_compile(tiny):
    """Dynamo must follow the stash from the fused module to the later projections (no graph break that
    would change results): a compiled forward equals the eager one."""
    from specbench_cli.engine.fusion import build_fusions, fused

    plan = build_fusions(tiny.model)
    ids = torch.tensor([[3, 4, 5, 6]])

    def logits(input_ids):
        return tiny.model(input_ids=input_ids, use_cache=False).logits

    expected = logits(ids)
    torch._dynamo.reset()
    compiled = torch.compile(logits, backend="eager", fullgraph=True)
    with fused(plan), torch.no_grad():
        got = compiled(ids)
    assert torch.allclose(got, expected, atol=1e-5)


def test_prepare_seen_makes_every_bucket_of_the_forward_kinds_already_used(tiny):
    """A warm-up reaches only some bucket sizes; `prepare_seen` makes the rest of each kind (hidden
    states or not, after pending slots or not) so that no later forward of those kinds makes one."""
    rng = random.Random(2)
    runner = CompiledRunner(tiny.model, 300, max_nodes=40)
    prompt = [rng.randrange(tiny.vocab_size) for _ in range(10)]
    runner.forward(prompt, want_hidden=True)  # plain, with hidden states: one bucket of 16
    runner.commit(list(range(len(prompt))))
    level = [rng.randrange(tiny.vocab_size) for _ in range(3)]
    runner.forward(level, [-1, -1, 0], want_hidden=False)
    runner.forward(level, [-1, -1, 0, 0, 1, 2], want_hidden=False)  # after 3 pending slots
    made = runner.captures
    runner.prepare_seen()
    assert runner.captures > made

    made = runner.captures
    for n in range(1, 42):  # every size the buckets hold, in each kind used above
        runner.reset()
        runner.forward(prompt[: min(n, len(prompt))], want_hidden=True)
        tokens = [rng.randrange(tiny.vocab_size) for _ in range(n)]
        runner.forward(tokens, [-1] * n, want_hidden=True)
        runner.forward(tokens, [-1] * n, want_hidden=False)
        pending = rng.randint(1, 41 - n) if n < 41 else 0
        if pending:
            runner.forward(tokens, [-1] * (pending + n), want_hidden=False)
    assert runner.captures == made
    # A kind never used (hidden states after pending slots) was left alone, and is made on demand.
    runner.reset()
    runner.forward(level, [-1, -1, 0, 0, 1, 2], want_hidden=True)
    assert runner.captures == made + 1


def _slot_cache(layers: int = 3, heads: int = 2, slots: int = 12, dim: int = 8):
    from specbench_cli.engine.kv_cache import SlotCache

    cache = SlotCache(layers, slots)
    for layer in cache.layers:
        layer.lazy_initialization(torch.zeros(1, heads, 1, dim), torch.zeros(1, heads, 1, dim))
        layer.keys.normal_()
        layer.values.normal_()
    return cache


def test_cache_move_takes_the_fused_mover_only_for_moves_of_its_size():
    from specbench_cli.engine.compaction import torch_move

    cache = _slot_cache()
    calls = []

    class Recording:  # stands in for compaction.FusedMove (CUDA only): same contract, counted
        rows = 4

        def __call__(self, src, dst):
            calls.append(len(src))
            torch_move(cache.tensors(), src, dst)

    cache.fused = Recording()
    before = [t.clone() for t in cache.tensors()]
    src, dst = torch.tensor([5, 7, 8, 11]), torch.tensor([4, 5, 6, 11])  # overlapping, last a pad
    cache.move(src, dst)
    assert calls == [4]
    for old, new in zip(before, cache.tensors()):
        assert torch.equal(new[:, :, 4:7], old[:, :, [5, 7, 8]]) and torch.equal(new[:, :, :4], old[:, :, :4])
    cache.move(torch.tensor([9, 10]), torch.tensor([7, 8]))  # another size: the torch ops
    assert calls == [4]
    assert all(torch.equal(t[:, :, 7:9], t[:, :, 9:11]) for t in cache.tensors())


def test_fused_move_says_why_the_torch_ops_stay():
    from specbench_cli.engine.compaction import fused_move, why_not_fused

    cache = _slot_cache()
    mover, kind = fused_move(cache.tensors(), 8)
    assert mover is None and kind == "per layer (not on CUDA)"
    assert why_not_fused([]) == "no cache tensors"
    assert "not a power of two" in why_not_fused(_slot_cache(dim=6).tensors())
    mixed = cache.tensors() + _slot_cache(heads=1).tensors()
    assert why_not_fused(mixed) == "cache tensors differ in shape, dtype or layout"
    assert why_not_fused([torch.zeros(2, 2, 4, 8)]).startswith("cache tensors of shape (2, 2, 4, 8)")


@pytest.mark.parametrize("attention", ["tree", "packed"])
def test_positions_and_model_trace_as_two_whole_graphs(tiny, attention):
    """The compiled runner compiles the positions/mask and the model apart (so inductor cannot recompute
    the tree depths inside every layer): each must trace without a graph break, with the closure's fixed
    round count, and a tree forward through both must equal the eager runner's."""
    runner = CompiledRunner(tiny.model, 64, 15, attention=attention, use_graphs=False, compile_mode=None)
    runner.compile_mode = "default"  # what a GPU run sets: fixed closure rounds, one graph for all sizes
    torch._dynamo.reset()
    runner._inputs = torch.compile(runner._static_inputs, backend="eager", fullgraph=True, dynamic=True)
    runner._model_step = torch.compile(runner._static_model, backend="eager", fullgraph=True, dynamic=True)
    eager = ModelRunner(tiny.model, 64)
    tree = [-1, 0, 1, 1, 2, 0, 5, 3]
    for run in (runner, eager):
        run.forward([5, 6, 7, 8, 9])
        run.commit([0, 1, 2, 3, 4])
    got, want = (run.forward([11, 12, 13, 14, 15, 16, 17, 18], tree)[0] for run in (runner, eager))
    assert torch.allclose(got, want, atol=1e-5) and torch.equal(got.argmax(-1), want.argmax(-1))


def test_inductor_compiles_the_two_graphs_to_the_eager_logits(tiny):
    """The GPU compiles with inductor; on the CPU inductor generates C++ for the same two graphs
    (positions/mask, model): a tree forward after a commit must give the eager runner's logits."""
    runner = CompiledRunner(tiny.model, 64, 15, use_graphs=False, compile_mode=None)
    runner.compile_mode = "default"
    torch._dynamo.reset()
    runner._inputs = torch.compile(runner._static_inputs, dynamic=True)
    runner._model_step = torch.compile(runner._static_model, dynamic=True)
    eager = ModelRunner(tiny.model, 64)
    tree = [-1, 0, 1, 1, 2, 0, 5, 3, 7, 7]
    for run in (runner, eager):
        run.forward([5, 6, 7, 8, 9, 10])
        run.commit([0, 1, 2, 3, 4, 5])
        run.forward(list(range(20, 30)), tree)
        run.commit([0, 1, 3, 7])  # a move: the next forward reads the compacted path
    got, want = (run.forward([31, 32, 33])[0] for run in (runner, eager))
    assert torch.allclose(got, want, atol=1e-4) and torch.equal(got.argmax(-1), want.argmax(-1))


def test_row_topk_takes_torch_topk_off_cuda_and_says_so():
    from specbench_cli.engine.row_topk import row_topk, topk_kind, why_not_chunked

    logits = torch.randn(5, 9000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(row_topk(logits, 8), logits.topk(8, dim=-1).indices)
    assert row_topk(logits[:, :3], 8).shape == (5, 3)  # k capped at the row length
    assert topk_kind(torch.device("cpu")) == "torch.topk (not on CUDA)"
    assert why_not_chunked(logits, 8) == "not on CUDA"
    # a last chunk narrower than k would offer its padding as candidates
    assert why_not_chunked(torch.zeros(2, 4096 + 5), 8) == "logits of shape (2, 4101) with k=8"
    assert why_not_chunked(torch.zeros(2, 4096 + 8), 8) == "not on CUDA"


class TorchChunks:  # the Triton chunk kernel's contract, written with torch ops
    def __getitem__(self, grid):
        def launch(x, values, ids, stride, cols, chunks, K, BLOCK_C, num_warps):
            rows = x.shape[0]
            padded = torch.nn.functional.pad(x, (0, chunks * BLOCK_C - cols), value=float("-inf"))
            top = padded.view(rows, chunks, BLOCK_C).topk(K, dim=-1)
            offsets = torch.arange(chunks, device=x.device)[None, :, None] * BLOCK_C
            values.copy_(top.values.flatten(1))
            ids.copy_((top.indices + offsets).clamp(max=cols - 1).flatten(1))

        return launch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_top_k_self_check_runs_in_the_logits_dtype_and_catches_a_wrong_kernel(monkeypatch, dtype):
    """The compiled target's logits are bf16, a draft's float32: the Triton pass is checked in the dtype
    it will read, on rows whose top 8 is planted (bf16 has too few values for rows without ties). The
    kernel and CUDA are stood in by torch on the CPU."""
    import sys
    import types

    from specbench_cli.engine import row_topk

    monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(row_topk, "_kernel", TorchChunks)
    check = row_topk.self_check.__wrapped__  # uncached
    assert check(torch.device("cpu"), dtype) is None

    class LowestFirst(TorchChunks):  # a broken kernel: each chunk's k smallest
        def __getitem__(self, grid):
            launch = super().__getitem__(grid)
            return lambda x, *rest, **kw: launch(-x, *rest, **kw)

    monkeypatch.setattr(row_topk, "_kernel", LowestFirst)
    assert "missed the planted top 8" in check(torch.device("cpu"), dtype)


def test_chunked_topk_merges_every_chunks_best_into_the_rows_best(monkeypatch):
    """The second pass (on the host side of the Triton kernel) with the kernel replaced by its torch
    equivalent: per chunk of BLOCK columns, its k largest with their column ids."""
    from specbench_cli.engine import row_topk

    monkeypatch.setattr(row_topk, "_kernel", TorchChunks)
    gen = torch.Generator().manual_seed(2)
    for cols, k in [(3 * row_topk.BLOCK + 17, 8), (2 * row_topk.BLOCK, 3)]:
        logits = torch.randn(6, cols, generator=gen)
        logits[1, 5] = 50.0  # a row's best in the first chunk, another's in the last, short one
        logits[2, cols - 1] = 60.0
        got = row_topk.chunked_topk(logits, k)
        assert torch.equal(got, logits.topk(k, dim=-1).indices)


def test_every_tree_size_takes_the_kernel_configuration_of_the_smallest_entry_that_holds_it():
    """The table is keyed by query rows (query heads per K/V head x inputs): a size between two entries
    takes the larger one's, past the last the last; Token Recycling's 81-input bucket has its own."""
    from specbench_cli.engine import attention as attn
    from specbench_cli.engine.compiled import BUCKETS

    table = attn.KERNEL_CONFIGS[128]
    assert 81 in BUCKETS and attn.kernel_config(6 * 81, 1000, 2, 128) == table[486]
    assert attn.kernel_config(6 * 81 + 1, 1000, 2, 128) == table[576]
    assert attn.kernel_config(6 * 80, 1000, 2, 128) == table[480]
    assert attn.kernel_config(10**4, 1000, 2, 128) == table[max(table)]
    # Fewer programs than an H200 has SMs (132): row blocks x K/V heads x key chunks, 81 inputs.
    config = table[486]
    assert -(-6 * 81 // config.block_m) * 2 * config.splits <= 132
    assert attn.kernel_config(6, 1000, 2, 96) == attn.default_config(6, 1000, 2)  # no table for dim 96
    # float32 (the exactness checks) keeps the rule it was verified with, table or not
    assert attn.kernel_config(6 * 81, 1000, 2, 128, ieee=True) == attn.default_config(6 * 81, 1000, 2)


def test_the_head_dim_128_table_is_what_the_latest_committed_sweep_measured_best():
    """`KERNEL_CONFIGS[128]` is pasted from `bench/attention_sweep.py`'s output: every entry must be the
    configuration the newest committed sweep of the 1.5B's shape found fastest for that row count, named
    as the sweep names it (a pipeline depth other than Triton's default 3 shows as /sN)."""
    import json
    from pathlib import Path

    from specbench_cli.engine import attention as attn

    sweep = (
        Path(__file__).resolve().parents[1]
        / "bench/results/2026-12-03-h200-session11/attention-sweep-2x6x128.json"
    )
    measured = json.loads(sweep.read_text())["kernel_configs"]["128"]
    assert {str(rows): config.key for rows, config in attn.KERNEL_CONFIGS[128].items()} == measured
    assert attn.KernelConfig(64, 128, 8, 4, stages=2).key == "64/128/8/4/s2"
    assert attn.KernelConfig(16, 128, 2, 4).key == "16/128/2/4"


def test_device_inputs_write_only_what_changed_and_stay_exact(tiny):
    """`forward_tensors` keeps the pads and scalars its last fill of the same layout wrote, and rewrites
    the rest: a run of same-shaped levels and chain tokens, host forwards of the same bucket in between
    (they rewrite every entry) and commits that move the start must all give the eager runner's logits."""
    rng = random.Random(11)
    prompt = [rng.randrange(tiny.vocab_size) for _ in range(12)]
    compiled = CompiledRunner(tiny.model, 200, max_nodes=40)
    eager = ModelRunner(tiny.model, 200)
    for runner in (compiled, eager):
        runner.forward(prompt)
        runner.commit(list(range(len(prompt))))
    # (inputs, pending slots before them, via device tensors?, commit the first input after?); pending
    # slots are always the previous forward's inputs, uncommitted, as a tree's levels are
    plan = [
        (3, 0, True, False), (3, 0, True, False), (3, 3, True, False), (3, 3, True, False),
        (3, 0, False, False), (3, 0, True, True), (1, 0, True, True), (1, 0, True, True),
        (3, 0, True, False), (3, 3, True, False), (2, 0, True, False), (3, 0, True, False),
        (1, 0, False, True), (1, 0, True, False),
    ]  # fmt: skip
    for n, pending, as_tensors, commit in plan:
        tokens = [rng.randrange(tiny.vocab_size) for _ in range(n)]
        parents = [rng.randint(-1, j - 1) for j in range(pending + n)]  # each before its child
        if as_tensors:
            got, _ = compiled.forward_tensors(torch.tensor(tokens), torch.tensor(parents))
        else:
            got, _ = compiled.forward(tokens, parents)
        want, _ = eager.forward(tokens, parents)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        if commit:
            for runner in (compiled, eager):
                runner.commit([pending])  # the first new input becomes the next committed token


@pytest.mark.parametrize("method", ["ar", "pld", "recycle"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_target_with_logits_in_its_own_dtype_decodes_as_with_float32_logits(tiny, method, temperature):
    """The compiled target hands the verifier its logits in the model's dtype (no (N, V) float32 copy
    in the graph): the same values, so greedy picks, Token Recycling's top-k and seeded sampling (which
    casts before its softmax) must give the same tokens as float32 logits did. A bf16 model on the CPU."""
    import copy
    from dataclasses import replace

    from specbench_cli.engine.decode import Engine, generate
    from specbench_cli.registry import DRAFTERS
    from specbench_cli.types import MethodSetup

    loaded = replace(tiny, model=copy.deepcopy(tiny.model).to(torch.bfloat16), dtype="bfloat16")
    engine = Engine(loaded, max_len=256, kind="compiled")
    assert engine.runner.float_logits is False  # the factory's choice for the target
    rng = random.Random(3)
    rep = [rng.randrange(tiny.vocab_size) for _ in range(5)]
    prompt = rep * 4 + [rng.randrange(tiny.vocab_size) for _ in range(4)]
    outputs = {}
    for float_logits in (True, False):
        engine.runner.float_logits = float_logits  # read at every forward (no torch.compile on the CPU)
        drafter = DRAFTERS.get(method)(MethodSetup(target=loaded, runners=engine.runners))
        generator = torch.Generator().manual_seed(7)
        gen = generate(engine, drafter, prompt, 24, temperature=temperature, generator=generator)
        outputs[float_logits] = gen.output_ids
    assert outputs[True] == outputs[False] and len(outputs[True]) > 0


def test_timed_graph_forwards_reuse_their_events_once_read(tiny, monkeypatch):
    """A draft runner's graph forwards are timed with CUDA events (the draft host ratio): each pair is
    recorded again only after `take_forward_times` read it, instead of two new events per forward."""
    from specbench_cli.engine.compiled import Bucket

    made, clock = [], iter(range(10**6))

    class FakeEvent:
        def __init__(self, enable_timing=False):
            made.append(self)

        def record(self):
            self.at = next(clock)

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return float(end.at - self.at)

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    runner = CompiledRunner(tiny.model, 64, max_nodes=8)
    replays = []
    bucket = Bucket(1, 1, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    bucket.graph = type("G", (), {"replay": lambda self: replays.append(next(clock))})()
    runner.profile = True
    for step in (3, 1, 2):
        for _ in range(step):
            runner._run_bucket(bucket, 1, 1, False)
        times = runner.take_forward_times()
        assert len(times) == step and all(t == 2e-3 for t in times)  # begin, replay, end: 2 ticks (ms)
    assert len(made) == 2 * 3 and runner.take_forward_times() == []  # the most pairs one read needed
