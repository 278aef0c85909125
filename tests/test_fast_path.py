"""The fast path's plumbing: runners come from the engine's factory, `--engine auto` picks and says
why, the forward-cost probe lands in config.json, and the report's cost model is the documented one."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from specbench_cli.cli import app
from specbench_cli.engine.factory import RunnerFactory
from specbench_cli.engine.runner import ModelRunner
from specbench_cli.evaluate import resolve_engine
from specbench_cli.registry import DRAFTERS
from specbench_cli.report.costs import cost_rows
from specbench_cli.types import MethodSetup, SpecbenchError

QUESTIONS = Path(__file__).parent / "fixtures" / "questions_small.jsonl"
DRAFTERS_DIR = Path(__file__).parents[1] / "specbench_cli" / "drafters"


class RecordingFactory(RunnerFactory):
    """Counts every runner a drafter asks for."""

    def __init__(self):
        super().__init__("eager", 512)
        self.asked = 0

    def make(self, model, max_nodes, role="draft"):
        self.asked += 1
        return super().make(model, max_nodes, role)


@pytest.mark.parametrize("method", [m for m in DRAFTERS.names() if DRAFTERS.get(m).needs_draft_model])
def test_draft_model_runners_come_from_the_factory(method, tiny, tiny_draft):
    factory = RecordingFactory()
    drafter = DRAFTERS.get(method)(MethodSetup(target=tiny, draft=tiny_draft, runners=factory))
    assert factory.asked >= 1
    runners = [r for role, r in factory.made if role == "draft"]
    assert runners and all(r.model is tiny_draft.model for r in runners)
    # The drafter's runner (directly or through its host tree) is one the factory made.
    host = getattr(drafter, "host", drafter)
    assert any(host.runner is r for r in runners)


def test_no_drafter_constructs_a_runner():
    for path in DRAFTERS_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        called = {
            node.func.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        assert not called & {"ModelRunner", "CompiledRunner"}, path.name


def test_methods_drafting_with_one_model_share_its_runner(tiny, tiny_draft):
    factory = RunnerFactory("eager", 512)
    setup = MethodSetup(target=tiny, draft=tiny_draft, runners=factory)
    a, b = DRAFTERS.get("sps")(setup), DRAFTERS.get("sps-tree")(setup)
    assert a.runner is b.runner and isinstance(a.runner, ModelRunner)
    assert len(factory.made) == 1


def test_engine_auto_is_eager_on_cpu_and_says_why(tiny):
    assert resolve_engine("auto", "cpu", [tiny]) == (
        "eager",
        "auto: no CUDA device (the compiled engine replays CUDA graphs)",
    )
    kind, reason = resolve_engine("auto", "cuda", [tiny])  # a Llama: supported
    assert kind == "compiled" and "llama" in reason
    with pytest.raises(SpecbenchError, match="architecture"):
        odd = type(
            "M", (), {"model": type("X", (), {"config": type("C", (), {"model_type": "mamba"})()})()}
        )()
        resolve_engine("compiled", "cuda", [odd])
    assert resolve_engine("auto", "cuda", [odd])[0] == "eager"


def test_eval_records_engine_choice_and_forward_costs(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["eval", "--model", "tiny-random", "--draft-model", "tiny-random-draft", "--suite", f"jsonl:{QUESTIONS}",
         "--methods", "ar,sps", "--limit", "2", "--max-new-tokens", "10", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "engine: eager (auto: no CUDA device" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["engine"] == "eager" and config["engine_requested"] == "auto"
    assert config["kv_compaction"] == "per layer"  # the fused move needs CUDA and Triton
    assert config["node_topk"] == "torch.topk (not on CUDA)"  # so does the chunked top-k
    costs = config["forward_costs"]
    # an eager draft runner has no buckets: it is probed at the compiled runner's sizes, so that each
    # draft forward is priced at the next probed size (docs/results.md)
    from specbench_cli.engine.compiled import BUCKETS

    assert set(costs["target"]) >= {"1", "16"} and set(costs["draft"]) == {str(s) for s in BUCKETS}
    assert all(v > 0 for v in costs["target"].values())
    sps = [
        json.loads(line) for line in (out / "answers").glob("*/sps.jsonl").__next__().read_text().splitlines()
    ]
    forwards = sps[0]["choices"][0]["draft_forwards"]
    assert forwards[0] == 0 and all(f >= 1 for f in forwards[1:])  # the prefill step drafts nothing
    table = json.loads((out / "costs.json").read_text())
    assert {row["method"] for row in table["methods"]} == {"ar", "sps"}


def test_cost_model_matches_the_documented_formula():
    costs = {"target": {"1": 2.0, "16": 3.0, "64": 4.0}, "draft": {"1": 1.0, "16": 1.5}}
    record = {
        "method": "sps-tree",
        "choices": [
            {
                # one turn: the prefill, then two tree steps
                "decoding_steps": [3],
                "draft_nodes": [0, 10, 40],
                "draft_depth": [0, 3, 5],
                "draft_forwards": [0, 4, 6],
                "accept_lengths": [1, 3, 2],
                "t_draft": [0.0, 0.008, 0.010],
            }
        ],
    }
    (row,) = cost_rows([record], costs, {"sps-tree": 1.1})
    mat = (3 + 2) / 2
    step = ((4 * 1.5 + 3.0) + (6 * 1.5 + 4.0)) / 2  # trees: draft forwards cost t_D(16); verify bucket
    assert math.isclose(row["decode_mat"], mat)
    assert math.isclose(row["predicted_speedup"], mat * 2.0 / step)
    assert math.isclose(row["c"], 0.5)
    assert math.isclose(row["draft_time_ratio"], 18.0 / (4 * 1.5 + 6 * 1.5))
    assert math.isclose(row["measured_over_predicted"], 1.1 / (mat * 2.0 / step))
    assert cost_rows([record], None, {}) == []


def test_each_draft_forward_is_priced_at_its_own_bucket():
    costs = {"target": {"1": 2.0, "16": 3.0, "64": 4.0}, "draft": {"1": 1.0, "16": 1.5, "64": 2.5}}
    record = {
        "method": "rasd",
        "choices": [
            {
                "decoding_steps": [2],
                "draft_nodes": [0, 40],
                "draft_depth": [0, 5],
                "draft_forwards": [0, 4],
                # a catch-up of 1 input, two levels of 10, a scoring forward of 40 inputs
                "draft_forward_inputs": [[], [1, 10, 10, 40]],
                "accept_lengths": [1, 4],
                "t_draft": [0.0, 0.0072],
            }
        ],
    }
    (row,) = cost_rows([record], costs, {"rasd": 1.0})
    draft = 1.0 + 1.5 + 1.5 + 2.5
    assert math.isclose(row["predicted_draft_ms"], draft)
    assert math.isclose(row["draft_time_ratio"], 7.2 / draft)
    assert math.isclose(row["predicted_speedup"], 4 * 2.0 / (draft + 4.0))


def test_the_decode_loop_records_every_draft_forwards_inputs(tiny, tiny_draft):
    from specbench_cli.engine.decode import Engine, generate

    engine = Engine(tiny, max_len=256)
    options = {"top_k": 3, "depth": 4, "total_nodes": 12}
    drafter = DRAFTERS.get("sps-tree")(
        MethodSetup(target=tiny, draft=tiny_draft, options=options, runners=engine.runners)
    )
    prompt = list(range(5, 25))
    steps = generate(engine, drafter, prompt, 24).steps
    assert len(steps) > 2
    assert steps[0].draft_forward_inputs == []  # the prefill drafts nothing
    for step in steps[1:]:
        # the catch-up (the committed tokens since the last step), then 3 levels of at most top_k
        assert len(step.draft_forward_inputs) == step.draft_forwards == 4
        assert all(1 <= n <= 3 for n in step.draft_forward_inputs[1:])
    # a catch-up runs what the last step committed: its accepted tokens and the bonus
    assert [s.draft_forward_inputs[0] for s in steps[2:]] == [s.committed for s in steps[1:-1]]
    assert all(r.forward_log is None for role, r in engine.runners.made if role == "draft")


def test_a_method_on_the_head_is_priced_with_the_heads_costs():
    from specbench_cli.report.costs import drafts_with_head

    costs = {"target": {"1": 2.0, "64": 4.0}, "draft": {"1": 1.0, "16": 1.5}, "head": {"1": 0.2, "16": 0.25}}
    choice = {"decoding_steps": [2], "draft_nodes": [0, 30], "draft_depth": [0, 6], "draft_forwards": [0, 6],
              "accept_lengths": [1, 4], "t_draft": [0.0, 0.002]}  # fmt: skip
    records = [{"method": m, "choices": [choice]} for m in ("sps-tree", "eagle2")]
    params = {
        "sps-tree": {"draft_model": "tiny-random-draft"},
        "eagle2": {"draft_head": "/heads/h"},
        "sam": {"fallback": "eagle2", "fallback_params": {"draft_head": "/heads/h"}},
        "rasd": {"host": {"draft_head": None, "draft_model": "d"}},
    }
    on_head = {m for m, p in params.items() if drafts_with_head(p)}
    assert on_head == {"eagle2", "sam"}
    rows = {r["method"]: r for r in cost_rows(records, costs, {}, on_head)}
    assert rows["eagle2"]["draft_network"] == "head" and rows["sps-tree"]["draft_network"] == "draft model"
    assert math.isclose(rows["eagle2"]["c"], 0.1) and math.isclose(rows["sps-tree"]["c"], 0.5)
    # Same steps, cheaper drafts: the head's prediction is MAT * t_T(1) / (6 * t_H(16) + t_T(64)).
    assert math.isclose(rows["eagle2"]["predicted_speedup"], 4 * 2.0 / (6 * 0.25 + 4.0))
    assert math.isclose(rows["sps-tree"]["predicted_speedup"], 4 * 2.0 / (6 * 1.5 + 4.0))


def test_compiled_eval_makes_no_graph_on_the_clock(tmp_path):
    """Under --engine compiled every bucket a timed answer could need is made after the warm-up
    (`prepare_seen`): sps-tree's draft levels after pending slots reach window widths that the one
    short warm-up answer does not, and none of them may be made inside a timed answer."""
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["eval", "--model", "tiny-random", "--draft-model", "tiny-random-draft", "--suite", f"jsonl:{QUESTIONS}",
         "--methods", "ar,sps-tree", "--engine", "compiled", "--limit", "3", "--max-new-tokens", "48",
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [
        json.loads(line) for f in (out / "answers").glob("*/*.jsonl") for line in f.read_text().splitlines()
    ]
    assert len(records) == 6
    assert not [r["question_id"] for r in records if r["choices"][0].get("graph_captures")]
    assert json.loads((out / "summary.json").read_text())["graph_captures"] == []
    assert "on the clock" not in result.output


def test_the_cost_probe_times_the_sizes_in_turns():
    # A change of clocks during the probe must reach every size alike: one forward of each per round.
    from specbench_cli.engine.costs import time_forwards

    class Recorder:
        device = torch.device("cpu")
        max_len, length = 64, 0

        def __init__(self):
            self.sizes: list[int] = []

        def reset(self):
            self.length = 0

        def commit(self, kept):
            self.length += len(kept)

        def forward(self, tokens, last_only=False, copy=True):
            self.sizes.append(len(tokens))
            self.copies.append(copy)

    runner = Recorder()
    runner.copies = []
    costs = time_forwards(runner, [1, 16, 100], list(range(20)), reps=3, copy=False)
    assert set(costs) == {"1", "16"}  # 20 + 100 slots do not fit in 64
    assert runner.sizes == [20] + [1, 1, 16, 16] + [1, 16] * 3 and runner.length == 0
    assert runner.copies[1:] == [False] * 10  # every timed (and warm-up) forward as the caller runs it


def test_the_target_is_probed_as_the_decode_loop_verifies_and_drafts_as_drafters_run(monkeypatch):
    # The decode loop verifies on the target graph's own outputs (copy=False); drafters take copies.
    from specbench_cli.engine import costs as costs_module

    calls = []
    monkeypatch.setattr(
        costs_module,
        "time_forwards",
        lambda runner, sizes, ids, reps, copy=True: calls.append((runner, copy)) or {},
    )
    runner = type("R", (), {"model": None, "buckets": (1, 16)})
    target, draft = runner(), runner()
    engine = type("E", (), {"max_len": 4096, "max_nodes": 128, "runner": target})()
    engine.runners = type("F", (), {"made": [("target", target), ("draft", draft)]})()
    costs_module.probe_costs(engine, [1, 2, 3])
    assert calls == [(target, False), (draft, True)]
