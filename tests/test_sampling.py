"""At temperature > 0 the shared-draw verifier must emit exactly the target's distribution."""

from __future__ import annotations

import math
from collections import Counter

import torch

from specbench_cli.drafters.ar import Autoregressive
from specbench_cli.drafters.base import Drafter
from specbench_cli.engine.decode import Engine, generate
from specbench_cli.engine.verifier import verify
from specbench_cli.types import DraftContext, DraftTree, MethodSetup


def chi_square_p(observed: Counter, expected_probs: dict, n: int) -> float:
    """Pearson chi-square p-value, pooling cells with expected count < 5 into one."""
    stat, dof, pooled_obs, pooled_exp = 0.0, -1, 0, 0.0
    for key, prob in expected_probs.items():
        exp = prob * n
        if exp < 5:
            pooled_obs += observed.get(key, 0)
            pooled_exp += exp
            continue
        stat += (observed.get(key, 0) - exp) ** 2 / exp
        dof += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / max(pooled_exp, 1e-9)
        dof += 1
    # Wilson-Hilferty normal approximation of the chi-square tail
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_verifier_emits_target_distribution_on_a_fixed_tree():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, generator=g) * 1.5
    tree = DraftTree((1, 2, 3), (-1, -1, 0))  # root -> {1 -> 3, 2}
    probs = torch.softmax(logits, -1)
    n = 20000
    seen: Counter = Counter()
    for _ in range(n):
        v = verify(tree, logits, temperature=1.0, generator=g)
        emitted = [tree.tokens[i] for i in v.accepted_nodes] + [v.bonus]
        seen[tuple(emitted[:2])] += 1
    # Exact law of the first two emitted tokens: first ~ p_root; if it is a drafted child, second ~ p_child.
    expected = {}
    input_of = {1: 1, 2: 2}
    for a in range(6):
        if a in input_of:
            for b in range(6):
                expected[(a, b)] = float(probs[0, a] * probs[input_of[a], b])
        else:
            expected[(a,)] = float(probs[0, a])
    assert set(seen) <= set(expected)
    assert chi_square_p(seen, expected, n) > 1e-3


class TopTwoFromTarget(Drafter):
    """A test double that peeks at the target to draft its two likeliest tokens, two levels deep."""

    name = "top2"

    def propose(self, ctx: DraftContext) -> DraftTree:
        with torch.inference_mode():
            logits = self.setup.target.model(input_ids=torch.tensor([ctx.tokens])).logits[0, -1]
        first = logits.topk(2).indices.tolist()
        return DraftTree.from_paths([[first[0], first[1]], [first[1], first[0]]], ctx.max_nodes)


def test_speculative_sampling_matches_autoregressive_sampling(tiny):
    engine = Engine(tiny, max_len=64)
    prompt = [5, 9, 13, 5, 9]
    n = 1500

    def sample(drafter) -> Counter:
        g = torch.Generator().manual_seed(1234)
        out: Counter = Counter()
        for _ in range(n):
            ids = generate(engine, drafter, prompt, 3, temperature=1.0, generator=g).output_ids
            out[tuple(ids[1:3])] += 1
        return out

    ar = sample(Autoregressive(MethodSetup(target=tiny)))
    sd = sample(TopTwoFromTarget(MethodSetup(target=tiny)))
    # Two-sample chi-square over the pooled support of (token 2, token 3).
    keys = set(ar) | set(sd)
    stat, dof, rare_a, rare_s = 0.0, -1, 0, 0
    for k in keys:
        a, s = ar.get(k, 0), sd.get(k, 0)
        if a + s < 10:
            rare_a, rare_s = rare_a + a, rare_s + s
            continue
        stat += (a - s) ** 2 / (a + s)
        dof += 1
    if rare_a + rare_s:
        stat += (rare_a - rare_s) ** 2 / (rare_a + rare_s)
        dof += 1
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    p_value = 0.5 * math.erfc(z / math.sqrt(2))
    assert p_value > 1e-3, (stat, dof)


def test_sampling_draws_from_float32_probabilities_whatever_the_logits_dtype():
    """The compiled target hands over bf16 logits: the draw must be the one the float32 values give
    (a softmax in bf16 rounds every probability to 3 significant digits and moves draws)."""
    from specbench_cli.engine.verifier import choose_tokens

    logits = (torch.randn(512, 1000, generator=torch.Generator().manual_seed(0)) * 3).to(torch.bfloat16)
    as_bf16 = choose_tokens(logits, 0.8, torch.Generator().manual_seed(1))
    as_f32 = choose_tokens(logits.float(), 0.8, torch.Generator().manual_seed(1))
    assert torch.equal(as_bf16, as_f32)
