"""The real SmolLM2-135M (fetched from its pip package, sha256-checked): SD reproduces AR in float32."""

from __future__ import annotations

import pytest

from specbench_cli.drafters.ar import Autoregressive
from specbench_cli.engine.decode import Engine, generate
from specbench_cli.registry import DRAFTERS
from specbench_cli.types import MethodSetup


@pytest.mark.slow
def test_smollm2_speculative_outputs_equal_ar(data_root):
    from specbench_cli.models import load_model
    from specbench_cli.prompts import build_prompt_ids
    from specbench_cli.suites import load_suite

    smol = load_model("smollm2-135m", dtype="float32", device="cpu")
    assert smol.sha256 and len(smol.sha256) == 64
    suite = load_suite(f"spec-bench:{data_root.spec_bench}#summarization", limit=1)
    suite.questions.extend(load_suite("humaneval", limit=1).questions)
    prompts = [build_prompt_ids(smol.tokenizer, [q.turns[0]], []) for q in suite.questions]
    engine = Engine(smol, max_len=2048)
    ar = Autoregressive(MethodSetup(target=smol))
    pld = DRAFTERS.get("pld")(MethodSetup(target=smol))
    accepted = 0
    for ids in prompts:
        ref = generate(engine, ar, ids, 32)
        got = generate(engine, pld, ids, 32)
        assert got.output_ids == ref.output_ids
        assert smol.tokenizer.decode(ref.output_ids).strip()  # real text, not an empty answer
        accepted += sum(s.accepted for s in got.steps)
    assert accepted > 0  # summarisation copies from the article: prompt lookup must hit
