"""One registry for methods, datastore kinds and suites; a method is one file plus one registry line.

The toy drafter below lives in this test module alone. Registering it (one `DRAFTERS.register` line)
is all it takes for the lossless check, `ls`, `ls --method`, option checking before any load, and the
statistics channel into the answer records and the report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_cli import QUESTIONS, assert_one_line_error, run
from test_lossless import ar_outputs, assert_lossless, datastore_docs

from specbench_cli.drafters.base import Drafter
from specbench_cli.engine.decode import Engine
from specbench_cli.options import option
from specbench_cli.registry import DATASTORES, DRAFTERS, SUITES, Registry
from specbench_cli.types import DraftContext, DraftTree, SpecbenchError, StepFeedback

REPO = Path(__file__).resolve().parents[1]


@dataclass
class EchoOptions:
    length: int = option(3, "tokens copied after the root's previous occurrence", "this test", minimum=1)


class EchoDrafter(Drafter):
    """Drafts what followed the last earlier occurrence of the root (a one-token prompt lookup)."""

    name = "echo"
    options_class = EchoOptions
    stat_names = {"hits": "steps whose root occurred before", "drafted": "tokens proposed"}

    def propose(self, ctx: DraftContext) -> DraftTree:
        root, earlier = ctx.tokens[-1], ctx.tokens[:-1]
        if root not in earlier:
            return DraftTree.empty()
        start = len(earlier) - earlier[::-1].index(root)
        draft = ctx.tokens[start : start + min(self.opts.length, ctx.max_nodes)]
        self.count("hits")
        self.count("drafted", len(draft))
        return DraftTree.chain(draft)

    def update(self, feedback: StepFeedback) -> None:
        assert feedback.relaxed_accepts == 0  # the strict verifier never relaxes


@pytest.fixture
def echo(monkeypatch):
    monkeypatch.setattr(DRAFTERS, "entries", dict(DRAFTERS.entries))  # undone after the test
    DRAFTERS.register("echo", "test_registry:EchoDrafter", "echo: copy what followed the root before")
    return "echo"


def test_a_registered_toy_method_is_lossless_and_listed(echo, tiny, tiny_draft, tmp_path):
    assert DRAFTERS.get(echo) is EchoDrafter
    engine = Engine(tiny, max_len=256)
    reference = ar_outputs(tiny, engine)
    assert_lossless(echo, tiny, tiny_draft, engine, reference, datastore_docs(tiny, reference), tmp_path)
    listed = run("ls")
    assert listed.exit_code == 0 and "echo: copy what followed the root before" in listed.output
    shown = run("ls", "--method", echo)
    assert shown.exit_code == 0, shown.output
    for text in ("length", "int >= 1", "tokens copied after", "this test", "hits", "drafted"):
        assert text in shown.output, text


def test_a_toy_method_reports_its_statistics_into_answers_and_report(echo, tmp_path):
    out = tmp_path / "run"
    args = ["eval", "--model", "tiny-random", "--suite", f"jsonl:{QUESTIONS}", "--methods", f"ar,{echo}"]
    result = run(*args, "--max-new-tokens", "24", "--warmup", "0", "--limit", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    records = [
        json.loads(line) for line in next(out.glob(f"answers/*/{echo}.jsonl")).read_text().splitlines()
    ]
    for record in records:
        choice = record["choices"][0]
        stats = choice["method_stats"]  # this answer's counters, not the run's: cleared per question
        assert set(stats) == {"hits", "drafted"}
        assert stats["drafted"] == sum(choice["draft_nodes"]) and stats["hits"] <= len(choice["draft_nodes"])
    ar = json.loads(next(out.glob("answers/*/ar.jsonl")).read_text().splitlines()[0])
    assert ar["choices"][0]["method_stats"] == {}  # ar counts nothing
    assert "method statistics" in result.output and "drafted" in result.output
    rows = json.loads((out / "method_stats.json").read_text())["rows"]
    drafted = next(r for r in rows if r["method"] == echo and r["statistic"] == "drafted")
    total = sum(r["choices"][0]["method_stats"]["drafted"] for r in records)
    steps = sum(
        sum(r["choices"][0]["decoding_steps"]) - len(r["choices"][0]["decoding_steps"]) for r in records
    )
    assert drafted["total"] == total and drafted["per_step"] == pytest.approx(total / steps)


@pytest.mark.parametrize(
    "opt, words",
    [
        ("pld.num_preds=4", ["unknown pld option(s) num_preds", "num_pred"]),
        ("pld.num_pred=abc", ["pld option num_pred='abc'", "not an integer"]),
        ("sps-tree.top_k=0", ["sps-tree option top_k=0", "at least 1"]),
        ("sam.fallback=eagle", ["fallback='eagle'", "not one of"]),
        ("sam.fallback.num_preds=2", ["unknown recycle option(s) num_preds"]),  # routed to the fallback
        ("sam.other.k=2", ["unknown sam option(s) other.k"]),
        ("rest.min_span=20", ["rest option min_span (20) exceeds max_span (16)"]),
        ("rasd.retriever=bm25", ["rasd option retriever='bm25'", "pld, rest, dresd"]),
        ("respec.alpha=0", ["respec option alpha=0", "(0, 1]"]),
        ("echo.length=0", ["echo option length=0", "at least 1"]),
    ],
)
def test_bad_method_options_fail_before_anything_loads_or_is_written(echo, opt, words, tmp_path):
    out = tmp_path / "run"
    method = opt.split(".")[0]
    args = ["eval", "--model", "no-such-model-so-a-load-would-fail", "--suite", "no-such-suite:x"]
    result = run(*args, "--methods", method, "--method-opt", opt, "--out", str(out))
    assert_one_line_error(result, *words)
    assert not out.exists()


def test_every_method_parses_its_defaults_and_rejects_unknown_keys():
    for name in DRAFTERS.names():
        cls = DRAFTERS.get(name)
        assert cls.parse_options({}) == cls.options_class()
        with pytest.raises(SpecbenchError, match=f"unknown {name} option"):
            cls.check_options({"no_such_key": 1}, has_draft_model=True)


def test_ls_stays_light_and_ls_method_imports_no_torch():
    code = (
        "import sys\n"
        "from specbench_cli.cli import app\n"
        "from typer.testing import CliRunner\n"
        "heavy = ('torch', 'transformers', 'faiss', 'numba', 'pandas')\n"
        "assert CliRunner().invoke(app, ['ls']).exit_code == 0\n"
        "assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]\n"
        "from specbench_cli.registry import DRAFTERS\n"
        "for name in DRAFTERS.names():\n"
        "    result = CliRunner().invoke(app, ['ls', '--method', name])\n"
        "    assert result.exit_code == 0 and ('default' in result.output or 'no options' in result.output)\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_ls_method_names_an_unknown_method_in_one_line():
    assert_one_line_error(run("ls", "--method", "nope"), "unknown method 'nope'", "pld")


def test_registries_resolve_every_entry_and_check_the_base():
    for registry in (DRAFTERS, DATASTORES, SUITES):
        for name in registry.names():
            assert registry.get(name) is not None and "\n" not in registry.describe(name)
    bad = Registry("method", {"x": ("specbench_cli.options:option", "not a drafter")}, base=DRAFTERS.base)
    with pytest.raises(TypeError, match="is not a specbench_cli.drafters.base:Drafter"):
        bad.get("x")
    with pytest.raises(SpecbenchError, match="unknown method 'y'; choose from: x"):
        bad.get("y")
    with pytest.raises(SpecbenchError, match="module:attribute"):
        bad.register("z", "no_colon", "text")
