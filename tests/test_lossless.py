"""Greedy speculative decoding must reproduce autoregressive decoding token for token (float32).

Parametrised over every registered method, so a new drafter is covered the moment it is registered.
A method that needs a datastore gets one built here from token documents; add its builder to
TEST_DATASTORES when adding a datastore kind (the test fails loudly until you do). A method that
drafts with an EAGLE head gets a tiny one trained here (test_eagle2.build_tiny_head).
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from test_dresd import _dresd_store
from test_eagle2 import build_tiny_head

from specbench_cli.drafters.ar import Autoregressive
from specbench_cli.drafters.base import Drafter
from specbench_cli.engine.decode import Engine, generate
from specbench_cli.registry import DRAFTERS
from specbench_cli.types import DraftContext, DraftTree, MethodSetup

MAX_NEW = 48


def _rest_store(tmp, loaded, docs):
    from specbench_cli.datastores import build_from_token_docs
    from specbench_cli.models import tokenizer_fingerprint

    return build_from_token_docs(
        "rest", docs, tmp / "rest", "tiny-random", tokenizer_fingerprint(loaded.tokenizer)
    )


TEST_DATASTORES = {
    "rest": _rest_store,
    "dresd": _dresd_store,
    "sam": lambda tmp, loaded, docs: __import__(
        "specbench_cli.datastores", fromlist=["build_from_token_docs"]
    ).build_from_token_docs("sam", docs, tmp / "sam", loaded=loaded),
}


def prompts(vocab: int) -> list[list[int]]:
    rng = random.Random(1)
    rep = [rng.randrange(vocab) for _ in range(6)]
    return [
        [rng.randrange(vocab) for _ in range(20)],
        rep * 4 + [rng.randrange(vocab) for _ in range(3)],  # repetitive: lookup methods find matches
        [rng.randrange(vocab) for _ in range(5)],
        [7],
    ]


@pytest.fixture(scope="module")
def engine(tiny):
    return Engine(tiny, max_len=256)


def ar_outputs(tiny, engine) -> list[list[int]]:
    ar = Autoregressive(MethodSetup(target=tiny))
    return [generate(engine, ar, p, MAX_NEW).output_ids for p in prompts(tiny.vocab_size)]


def datastore_docs(tiny, reference) -> list[list[int]]:
    # Aligned documents: the model's own continuations, so retrieval drafts often get accepted and
    # the accept/compact path is exercised, plus random noise documents.
    rng = random.Random(2)
    noise = [[rng.randrange(tiny.vocab_size) for _ in range(50)] for _ in range(5)]
    return [p + r for p, r in zip(prompts(tiny.vocab_size), reference)] + noise


@pytest.fixture(scope="module")
def reference(tiny, engine):
    return ar_outputs(tiny, engine)


@pytest.fixture(scope="module")
def store_docs(tiny, reference):
    return datastore_docs(tiny, reference)


def test_ar_matches_transformers_generate(tiny, reference):
    for p, ref in zip(prompts(tiny.vocab_size), reference):
        with torch.inference_mode():
            out = tiny.model.generate(torch.tensor([p]), max_new_tokens=MAX_NEW, do_sample=False)
        hf = out[0, len(p) :].tolist()
        assert ref == hf


# Configurations that draft through another network than the method's default, checked beside it:
# label -> (method, options, needs an EAGLE head).
CONFIGURATIONS = {
    "sam[eagle2]": ("sam", {"fallback": "eagle2"}, True),  # SAMD[EAGLE2]: the head drafts on short matches
}


@pytest.mark.parametrize("method", DRAFTERS.names())
def test_every_method_is_lossless(method, tiny, tiny_draft, engine, reference, store_docs, tmp_path_factory):
    assert_lossless(method, tiny, tiny_draft, engine, reference, store_docs, tmp_path_factory.mktemp(method))


@pytest.mark.parametrize("label", list(CONFIGURATIONS))
def test_every_configuration_is_lossless(
    label, tiny, tiny_draft, engine, reference, store_docs, tmp_path_factory
):
    method, options, with_head = CONFIGURATIONS[label]
    tmp = tmp_path_factory.mktemp("config")
    stats = assert_lossless(method, tiny, tiny_draft, engine, reference, store_docs, tmp, options, with_head)
    if method == "sam":  # the fallback drafted too, not only the automata
        assert stats["fallback_steps"] > 0


def assert_lossless(
    method,
    tiny,
    tiny_draft,
    engine,
    reference,
    store_docs,
    tmp_dir,
    options: dict | None = None,
    with_head: bool = False,
) -> dict:
    """The registered `method`, built as `eval` builds it (with `options`, else the defaults), reproduces
    `ar` on every prompt and drafts; returns its statistics."""
    cls = DRAFTERS.get(method)
    # A lossy method (ReSpec's relaxed verification) is checked in the mode its options make lossless.
    if options is None:
        options = {} if cls.lossless else dict(cls.lossless_options)
    assert cls.lossless or options, f"lossy method {method} must declare lossless_options"
    stores = {}
    if cls.datastore_kind:
        assert cls.datastore_kind in TEST_DATASTORES, (
            f"add a test datastore builder for '{cls.datastore_kind}'"
        )
        stores[cls.datastore_kind] = TEST_DATASTORES[cls.datastore_kind](tmp_dir, tiny, store_docs)
    # A method drafting with an EAGLE head gets one trained here, in a few steps, on tiny-random's answers.
    head = build_tiny_head(tmp_dir / "head", tiny) if cls.needs_draft_head or with_head else None
    setup = MethodSetup(
        target=tiny,
        draft=tiny_draft if cls.needs_draft_model else None,
        datastores=stores,
        options=options,
        draft_head=head,
    )
    drafter = cls(setup)
    assert drafter.lossless
    drafted = 0
    for p, ref in zip(prompts(tiny.vocab_size), reference):
        gen = generate(engine, drafter, p, MAX_NEW)
        assert gen.output_ids == ref, f"{method} diverged from ar on prompt {p[:5]}..."
        drafted += sum(s.draft_nodes for s in gen.steps)
    if method != "ar":
        assert drafted > 0, f"{method} never drafted anything on these prompts"
    # The typed channels: only declared statistics, as finite non-negative numbers; options recorded.
    stats = drafter.stats()
    assert set(stats) == set(cls.stat_names)
    assert all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in stats.values()), stats
    json.dumps(drafter.describe())  # config.json must be able to hold it
    return stats


class RandomTrees(Drafter):
    name = "random-trees"

    def __init__(self, setup, seed=0):
        super().__init__(setup)
        self.rng = random.Random(seed)

    def propose(self, ctx: DraftContext) -> DraftTree:
        n = self.rng.randint(0, 40)
        toks = [self.rng.choice([self.rng.randrange(300), *ctx.tokens[-8:]]) for _ in range(n)]
        return DraftTree(tuple(toks), tuple(self.rng.randint(-1, i - 1) for i in range(n)))


class Oracle(Drafter):
    """Proposes the true continuation, with a corrupted sibling branch and a wrong tail."""

    name = "oracle"

    def __init__(self, setup, full):
        super().__init__(setup)
        self.full = full

    def propose(self, ctx: DraftContext) -> DraftTree:
        n = len(ctx.tokens)
        truth = self.full[n : n + 6]
        wrong = [(t + 1) % 200 for t in truth]
        return DraftTree.from_paths([wrong, truth + wrong[:2]], ctx.max_nodes)


class Malformed(Drafter):
    name = "malformed"

    def propose(self, ctx: DraftContext) -> DraftTree:
        # out-of-vocabulary token and a forward parent reference: the engine must cut, not crash
        return DraftTree((ctx.tokens[-1], 10**9, 3), (-1, 0, 5))


@pytest.mark.parametrize("kind", ["random", "oracle", "malformed", "empty"])
def test_bad_and_perfect_drafts_stay_lossless(kind, tiny, engine, reference):
    setup = MethodSetup(target=tiny)
    for p, ref in zip(prompts(tiny.vocab_size), reference):
        if kind == "random":
            drafter = RandomTrees(setup)
        elif kind == "oracle":
            drafter = Oracle(setup, p + ref)
        elif kind == "malformed":
            drafter = Malformed(setup)
        else:
            drafter = Autoregressive(setup)
        gen = generate(engine, drafter, p, MAX_NEW)
        assert gen.output_ids == ref
        if kind == "oracle":
            assert len(gen.steps) < len(ref) / 2  # the perfect branch is found among the wrong one


def test_eos_and_length_truncation_match_ar(tiny, engine):
    # Make every token an EOS candidate in turn: SD must stop where AR stops, EOS included.
    p = prompts(tiny.vocab_size)[1]
    ar_out = generate(engine, Autoregressive(MethodSetup(target=tiny)), p, 30).output_ids
    eos_tok = ar_out[12]
    saved = engine.eos
    try:
        engine.eos = {eos_tok}
        ar_cut = generate(engine, Autoregressive(MethodSetup(target=tiny)), p, 30)
        sd_cut = generate(engine, Oracle(MethodSetup(target=tiny), p + ar_out), p, 30)
    finally:
        engine.eos = saved
    assert ar_cut.output_ids == sd_cut.output_ids == ar_out[: ar_out.index(eos_tok) + 1]
    assert ar_cut.stop_reason == sd_cut.stop_reason == "eos"
    for n in (1, 2, 7):
        sd = generate(engine, Oracle(MethodSetup(target=tiny), p + ar_out), p, n)
        assert sd.output_ids == ar_out[:n]


class ArrayChecker(Oracle):
    """The oracle's drafts, checking at every step that ctx.array() is ctx.tokens (read-only) and that
    the arrays handed out at earlier steps still hold what they held then."""

    def __init__(self, setup, full):
        super().__init__(setup, full)
        self.seen: list[tuple] = []

    def propose(self, ctx: DraftContext) -> DraftTree:
        array = ctx.array()
        assert array is ctx.token_array and array.dtype.name == "int64" and not array.flags.writeable
        assert array.tolist() == ctx.tokens
        self.seen.append((array, list(ctx.tokens)))
        return super().propose(ctx)


def test_the_token_array_is_the_committed_tokens_at_every_step(tiny, engine, reference):
    p, ref = prompts(tiny.vocab_size)[0], reference[0]
    drafter = ArrayChecker(MethodSetup(target=tiny), p + ref)
    assert generate(engine, drafter, p, MAX_NEW).output_ids == ref
    assert len(drafter.seen) > 2
    assert all(array.tolist() == tokens for array, tokens in drafter.seen)
    plain = DraftContext([5, 6, 7], 4)  # a context built without the buffer converts its list
    assert plain.array().tolist() == [5, 6, 7]
