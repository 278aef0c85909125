"""Batched generation (specbench_cli/generation.py) equals one-at-a-time greedy decoding, token for token."""

from __future__ import annotations

import random

import torch

from specbench_cli.drafters.ar import Autoregressive
from specbench_cli.engine.decode import Engine, generate
from specbench_cli.generation import generate_batch
from specbench_cli.types import MethodSetup

MAX_NEW = 24


def _prompts(vocab: int, n: int = 33) -> list[list[int]]:
    rng = random.Random(5)
    return [[rng.randrange(vocab) for _ in range(rng.randint(1, 30))] for _ in range(n)]


def test_batched_greedy_equals_one_at_a_time(tiny):
    prompts = _prompts(tiny.vocab_size)
    eos = [prompts[0][-1]]  # some rows stop early on it, others run the full budget
    engine = Engine(tiny, max_len=128)
    engine.eos = set(eos)
    ar = Autoregressive(MethodSetup(target=tiny))
    rows = generate_batch(tiny.model, prompts, MAX_NEW, eos_ids=eos)
    lengths = set()
    for p, row in zip(prompts, rows, strict=True):
        assert row.tokens == generate(engine, ar, p, MAX_NEW).output_ids
        lengths.add(len(row.tokens))
    assert len(lengths) > 1  # EOS stopped some rows and not others


def test_hidden_states_come_from_the_same_pass(tiny):
    prompts = _prompts(tiny.vocab_size, 4)
    rows = generate_batch(tiny.model, prompts, 10, want_hidden=True)
    for p, row in zip(prompts, rows):
        seq = p + row.tokens
        assert row.hidden.shape == (len(seq) - 1, tiny.model.config.hidden_size)
        with torch.inference_mode():
            ref = tiny.model(torch.tensor([seq[:-1]]), output_hidden_states=True).hidden_states[-1][0]
        torch.testing.assert_close(row.hidden, ref, atol=1e-4, rtol=1e-4)


def test_sampling_is_seeded(tiny):
    prompts = _prompts(tiny.vocab_size, 3)
    a = generate_batch(tiny.model, prompts, 12, temperature=1.0, seed=3)
    b = generate_batch(tiny.model, prompts, 12, temperature=1.0, seed=3)
    c = generate_batch(tiny.model, prompts, 12, temperature=1.0, seed=4)
    assert [r.tokens for r in a] == [r.tokens for r in b] != [r.tokens for r in c]


def test_the_default_batch_is_wide_on_a_gpu_and_narrow_on_a_cpu():
    # Without --batch-size, generate: corpora and train-head answer 256 prompts at once on a GPU
    # (a step costs about the same as for 64 rows there) and 64 on a CPU (memory).
    from specbench_cli.generation import default_batch

    assert default_batch(torch.device("cuda", 0)) == default_batch("cuda") == 256
    assert default_batch(torch.device("cpu")) == default_batch("cpu") == 64
