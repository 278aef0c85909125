"""The CLI end to end on tiny-random: eval, resume, report, ls, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from specbench_cli.cli import app

FIXTURES = Path(__file__).parent / "fixtures"
QUESTIONS = FIXTURES / "questions_small.jsonl"
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def eval_args(out: Path, *extra: str) -> list[str]:
    return [
        "eval", "--model", "tiny-random", "--suite", f"jsonl:{QUESTIONS}", "--methods", "ar,pld",
        "--max-new-tokens", "12", "--warmup", "0", "--out", str(out), *extra,
    ]  # fmt: skip


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text.splitlines()[-1] == errors[0], text  # progress logs may precede it
    text = errors[0]
    for needle in needles:
        assert needle in text, (needle, text)


def test_help_and_ls():
    assert run("--help").exit_code == 0
    result = run("ls")
    assert result.exit_code == 0
    for name in ("ar", "pld", "sps", "spec-bench", "mt-bench", "humaneval", "tiny-random", "smollm2-135m"):
        assert name in result.output


def test_eval_writes_answers_env_config_and_report(tmp_path):
    out = tmp_path / "run"
    result = run(*eval_args(out, "--limit", "3"))
    assert result.exit_code == 0, result.output
    for name in ("config.json", "env.json", "summary.json", "summary.md", "summary.csv", "summary.tex"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "plots").glob("*.png"))
    answers = {p.stem: p for p in (out / "answers").glob("*/*.jsonl")}
    assert set(answers) == {"ar", "pld"}
    ar = [json.loads(line) for line in answers["ar"].read_text().splitlines()]
    pld = [json.loads(line) for line in answers["pld"].read_text().splitlines()]
    assert len(ar) == len(pld) == 3
    for a, p in zip(ar, pld):
        ca, cp = a["choices"][0], p["choices"][0]
        # greedy float32: the SD method reproduces ar token for token, turn by turn
        assert ca["output_ids"] == cp["output_ids"]
        assert ca["new_tokens"] == [len(ids) for ids in ca["output_ids"]]
        assert sum(ca["decoding_steps"]) == len(ca["accept_lengths"]) == sum(ca["new_tokens"])
        assert sum(cp["accept_lengths"]) == sum(cp["new_tokens"])
    env = json.loads((out / "env.json").read_text())
    assert env["packages"]["torch"] and env["python"] and env["models"][0]["name"] == "tiny-random"
    summary = json.loads((out / "summary.json").read_text())
    assert summary  # the report ran as part of eval
    assert summary["excluded_records"] == 0, summary["excluded"]  # real answers pass validation
    report = run("report", str(out))
    assert report.exit_code == 0 and "pld" in report.output


def test_two_turn_question_feeds_back_its_own_first_answer(tmp_path, tiny):
    from specbench_cli.drafters.ar import Autoregressive
    from specbench_cli.engine.decode import Engine, generate
    from specbench_cli.prompts import build_prompt_ids
    from specbench_cli.types import MethodSetup

    out = tmp_path / "run"
    args = eval_args(out, "--limit", "2")
    args[args.index("--suite") + 1] = f"jsonl:{QUESTIONS}#code"
    assert run(*args).exit_code == 0
    rec = [json.loads(x) for x in next((out / "answers").glob("*/ar.jsonl")).read_text().splitlines()]
    two = [r for r in rec if r["question_id"] == 2][0]["choices"][0]
    assert len(two["output_ids"]) == 2
    # Turn 2's prompt = turn 1, the answer this method gave, turn 2: regenerate it and compare.
    question = [json.loads(x) for x in QUESTIONS.read_text().splitlines() if x.strip()][1]
    ids = build_prompt_ids(tiny.tokenizer, question["turns"], [two["turns"][0]])
    again = generate(Engine(tiny, 512), Autoregressive(MethodSetup(target=tiny)), ids, 12)
    assert again.output_ids == two["output_ids"][1]


def test_resume_skips_finished_questions(tmp_path):
    out = tmp_path / "run"
    assert run(*eval_args(out, "--limit", "4")).exit_code == 0
    refused = run(*eval_args(out, "--limit", "4"))
    assert_one_line_error(refused, "already exists", "--resume")
    # Simulate a run killed after two questions, mid-write: the partial trailing line must be dropped.
    for p in (out / "answers").glob("*/*.jsonl"):
        p.write_text("".join(p.read_text().splitlines(keepends=True)[:2]))
    ar_file = next((out / "answers").glob("*/ar.jsonl"))
    with ar_file.open("a") as f:
        f.write('{"question_id": 99, "choi')
    before = {p.name: p.read_text().count("\n") for p in (out / "answers").glob("*/*.jsonl")}
    assert run(*eval_args(out, "--limit", "4", "--resume")).exit_code == 0
    for p in (out / "answers").glob("*/*.jsonl"):
        lines = p.read_text().splitlines()
        assert len(lines) == 4, p
        ids = [json.loads(x)["question_id"] for x in lines]
        assert len(set(ids)) == 4
        assert before[p.name] == 2
    resumed_other = run(*eval_args(out, "--limit", "4", "--resume", "--max-new-tokens", "5"))
    assert_one_line_error(resumed_other, "max_new_tokens")


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        (["--methods", "ar,nope"], ["unknown method 'nope'", "pld"]),
        (["--suite", "nosuch:x"], ["unknown suite", "spec-bench"]),
        (["--suite", f"jsonl:{QUESTIONS}#poetry"], ["poetry", "code"]),
        (["--suite", "jsonl:/no/such/file.jsonl"], ["/no/such/file.jsonl"]),
        (["--suite", f"jsonl:{FIXTURES / 'questions_malformed.jsonl'}"], ["questions_malformed.jsonl:3"]),
        (["--max-new-tokens", "0"], ["--max-new-tokens"]),
        (["--model", "no-such-alias"], ["no-such-alias", "tiny-random"]),
        (["--methods", "sps"], ["--draft-model"]),
        (["--dtype", "float8"], ["float8", "bfloat16"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, change, needles):
    out = tmp_path / "run"
    args = eval_args(out)
    for flag, value in zip(change[::2], change[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    result = run(*args)
    assert_one_line_error(result, *needles)
    assert not out.exists()


def test_datastore_for_another_tokenizer_is_refused(tmp_path):
    from specbench_cli.datastores import build_from_token_docs

    store = build_from_token_docs("rest", [[1, 2, 3, 4, 5] * 5], tmp_path / "store", "other-model", "0" * 64)
    out = tmp_path / "run"
    result = run(*eval_args(out, "--methods", "ar,rest", "--datastore", str(store)))
    assert_one_line_error(result, "tokenizer")
    assert not out.exists()


def test_report_on_a_folder_without_answers_fails_cleanly(tmp_path):
    assert_one_line_error(run("report", str(tmp_path)))


def test_baselines_run_beside_the_methods_and_match_ar(tmp_path):
    out = tmp_path / "run"
    result = run(*eval_args(out, "--limit", "2", "--baselines", "hf-eager,hf-static", "--warmup", "1"))
    assert result.exit_code == 0, result.output
    answers = {p.stem: p for p in (out / "answers").glob("*/*.jsonl")}
    assert set(answers) == {"ar", "pld", "hf-eager", "hf-static"}
    lines = {m: [json.loads(x) for x in p.read_text().splitlines()] for m, p in answers.items()}
    for name in ("hf-eager", "hf-static"):
        assert [r["question_id"] for r in lines[name]] == [r["question_id"] for r in lines["ar"]]
        for mine, ar in zip(lines[name], lines["ar"]):
            assert mine["baseline"] is True and mine["lossless_method"] is True and mine["method"] == name
            c, ca = mine["choices"][0], ar["choices"][0]
            # transformers' greedy generate in float32 on the CPU is ar, token for token
            assert c["output_ids"] == ca["output_ids"] and c["stop_reason"] == ca["stop_reason"]
            assert c["accept_lengths"] == [1] * sum(c["new_tokens"]) == [1] * len(c["t_verify"])
            assert set(c["draft_nodes"]) == {0} and all(t > 0 for t in c["wall_time"])
    assert all(r["baseline"] is False for r in lines["ar"] + lines["pld"])
    assert json.loads((out / "config.json").read_text())["baselines"] == ["hf-eager", "hf-static"]
    rows = json.loads((out / "summary.json").read_text())["rows"]
    pooled = {r["method"]: r for r in rows if r["suite"] == "all"} or {
        r["method"]: r for r in rows if r["category"] == "overall"
    }
    assert [m for m in pooled][:3] == ["ar", "hf-eager", "hf-static"]  # beside ar
    assert pooled["hf-static"]["baseline"] and pooled["hf-static"]["lossless"] == 1.0
    assert pooled["hf-static"]["speedup"] > 0
    report = run("report", str(out))
    assert "hf-static (baseline)" in report.output and "ar runs at" in report.output
    best = [line for line in report.output.splitlines() if "lossless method" in line]
    assert best and "hf-" not in best[0]
    # Resume with the same settings (a changed --limit is refused): finished baselines are not redone.
    more = run(*eval_args(out, "--limit", "2", "--resume", "--baselines", "hf-eager"))
    assert more.exit_code == 0, more.output
    assert (
        len(
            (out / "answers")
            .joinpath(answers["hf-eager"].parent.name, "hf-eager.jsonl")
            .read_text()
            .splitlines()
        )
        == 2
    )
    assert json.loads((out / "config.json").read_text())["baselines"] == ["hf-eager", "hf-static"]


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--baselines", "hf-eager,vllm"], ["unknown baseline 'vllm'", "hf-static"]),
        (["--baselines", "hf-eager,hf-eager"], ["twice"]),
        (["--baselines", "hf-eager", "--temperature", "0.7"], ["--temperature 0"]),
    ],
)
def test_bad_baselines_are_one_line_exit_2_and_write_nothing(tmp_path, extra, needles):
    out = tmp_path / "run"
    result = run(*eval_args(out, *extra))
    assert_one_line_error(result, *needles)
    assert not out.exists()


def test_a_method_label_runs_a_method_twice_with_its_own_options(tmp_path):
    out = tmp_path / "run"
    methods = ["--methods", "ar,pld,pld@short", "--method-opt", "pld@short.num_pred=2", "--limit", "2"]
    args = eval_args(out)
    at = args.index("--methods")
    args[at : at + 2] = methods
    result = run(*args)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["methods_params"]["pld@short"]["num_pred"] == 2
    assert config["methods_params"]["pld"]["num_pred"] == 10
    answers = {p.stem for p in (out / "answers").glob("*/*.jsonl")}
    assert answers == {"ar", "pld", "pld@short"}
    bad = run(*eval_args(tmp_path / "bad", "--methods", "ar,pld@"))
    assert_one_line_error(bad, "pld@")
    assert not (tmp_path / "bad").exists()
