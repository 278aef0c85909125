"""Issue 15 on a real tiny run: repeats and their spread, acceptance by draft position, the Spec-Bench
export against speed.py's arithmetic, `compare`, report.html and the divergence audit.

One eval of tiny-random (ar and pld, 3 questions, 2 repeats) is shared by the module; every expected
number is recomputed here from the answer files with plain loops.
"""

from __future__ import annotations

import html
import json
import shutil
import socket
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from specbench_cli.cli import app
from specbench_cli.report import make_report
from specbench_cli.report.acceptance import position_stats
from specbench_cli.report.divergence import first_divergence

QUESTIONS = Path(__file__).parent / "fixtures" / "questions_small.jsonl"
runner = CliRunner()


def answers(run: Path) -> dict[str, list[dict]]:
    return {
        p.stem: [json.loads(line) for line in p.read_text().splitlines()]
        for p in run.glob("answers/*/*.jsonl")
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("issue15") / "run"
    args = ["eval", "--model", "tiny-random", "--suite", f"jsonl:{QUESTIONS}", "--methods", "ar,pld"]
    args += ["--max-new-tokens", "12", "--warmup", "0", "--limit", "3", "--repeats", "2", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def test_repeats_give_identical_ids_and_an_independent_spread(run):
    recs = answers(run)
    questions = sorted({r["question_id"] for r in recs["ar"]})
    assert len(questions) == 3
    for method, lines in recs.items():
        keys = [(r["question_id"], r["repeat"]) for r in lines]
        assert sorted(keys) == sorted((q, k) for q in questions for k in (0, 1)), method
        by_question: dict = {}
        for r in lines:
            by_question.setdefault(r["question_id"], []).append(r["choices"][0]["output_ids"])
        assert all(runs[0] == runs[1] for runs in by_question.values())  # greedy: deterministic
    summary = json.loads((run / "summary.json").read_text())
    spread = {(r["suite"], r["category"], r["method"]): r for r in summary["repeats"]["rows"]}
    assert summary["repeats"]["repeats"] == 2

    def tok_s(lines, repeat):
        chosen = [r["choices"][0] for r in lines if r["repeat"] == repeat]
        return sum(sum(c["new_tokens"]) for c in chosen) / sum(sum(c["wall_time"]) for c in chosen)

    for method, lines in recs.items():
        speeds = [tok_s(lines, k) for k in (0, 1)]
        speedups = [tok_s(lines, k) / tok_s(recs["ar"], k) for k in (0, 1)]
        row = spread[("all", "all", method)]
        assert row["tokens_per_s_mean"] == pytest.approx(statistics.mean(speeds))
        assert row["tokens_per_s_std"] == pytest.approx(statistics.stdev(speeds))
        assert row["speedup_std"] == pytest.approx(statistics.stdev(speedups))
        assert row["speedup_cv"] == pytest.approx(statistics.stdev(speedups) / statistics.mean(speedups))
        mean, std = statistics.mean(speedups), statistics.stdev(speedups)
        assert row["speedup_crosses_1"] == (method != "ar" and mean - std <= 1.0 <= mean + std)
    same = {m["method"]: m for m in summary["repeats"]["identical_ids"]}
    assert same["pld"] == {"method": "pld", "repeated_questions": 3, "identical": 3}
    md = (run / "summary.md").read_text()
    assert md.index("| method") < md.index("| suite")  # the short headline table comes first
    assert "±" in md.split("| suite")[0]


def test_an_interrupted_pass_is_left_out_of_the_spread(run, tmp_path):
    # Cut the second pass short after one question, as a machine lost mid-run leaves it: the spread
    # must compare the repeats on the same questions, and say how many it left out.
    from specbench_cli.report import make_report

    out = copy_run(run, tmp_path / "run")
    recs = answers(out)
    kept_q = sorted({r["question_id"] for r in recs["ar"]})[0]
    for path in (out / "answers").glob("*/*.jsonl"):
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        keep = [r for r in lines if r["repeat"] == 0 or r["question_id"] == kept_q]
        path.write_text("".join(json.dumps(r) + "\n" for r in keep))
    make_report(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["repeats"]["partial_questions"] == 2
    trimmed = {m: [r for r in lines if r["question_id"] == kept_q] for m, lines in answers(out).items()}

    def tok_s(lines, repeat):
        chosen = [r["choices"][0] for r in lines if r["repeat"] == repeat]
        return sum(sum(c["new_tokens"]) for c in chosen) / sum(sum(c["wall_time"]) for c in chosen)

    spread = {(r["suite"], r["category"], r["method"]): r for r in summary["repeats"]["rows"]}
    for method, lines in trimmed.items():
        speeds = [tok_s(lines, k) for k in (0, 1)]
        assert spread[("all", "all", method)]["tokens_per_s_std"] == pytest.approx(statistics.stdev(speeds))
    assert "2 answered in fewer repeats" in (out / "summary.md").read_text()


def test_answers_timed_with_a_graph_capture_are_named(run, tmp_path):
    # eval writes `graph_captures` into an answer whose timed generation made a CUDA graph: the report
    # must name it under the headline and in summary.json, and say nothing when no answer did.
    out = copy_run(run, tmp_path / "run")
    make_report(out)
    assert json.loads((out / "summary.json").read_text())["graph_captures"] == []
    assert "on the clock" not in (out / "summary.md").read_text()
    path = out / "answers" / next(iter(answers(out)["pld"]))["suite"] / "pld.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    lines[1]["choices"][0]["graph_captures"] = 3
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    make_report(out)
    (row,) = json.loads((out / "summary.json").read_text())["graph_captures"]
    assert (row["method"], row["question_id"], row["repeat"], row["graph_captures"]) == (
        "pld",
        lines[1]["question_id"],
        lines[1]["repeat"],
        3,
    )
    assert f"pld question {lines[1]['question_id']}" in (out / "summary.md").read_text()


def test_resume_adds_only_the_missing_repeats(run, tmp_path):
    out = copy_run(run, tmp_path / "run")
    args = ["eval", "--model", "tiny-random", "--suite", f"jsonl:{QUESTIONS}", "--methods", "ar,pld"]
    args += ["--max-new-tokens", "12", "--warmup", "0", "--limit", "3", "--out", str(out)]
    result = runner.invoke(app, [*args, "--repeats", "3", "--resume"])
    assert result.exit_code == 0, result.output
    for method, lines in answers(out).items():
        keys = [(r["question_id"], r["repeat"]) for r in lines]
        assert len(keys) == len(set(keys)) == 9, method
    assert json.loads((out / "config.json").read_text())["repeats"] == 3


def test_acceptance_per_position_from_raw_steps():
    # (draft depth, accepted) per drafting step, by hand: depth 1 drafted 4 times, reached 3 times.
    steps = [(3, 0), (3, 3), (2, 1), (1, 1)]
    stats = position_stats(steps)
    assert stats["histogram"] == [1, 2, 0, 1]
    assert [(d["drafted"], d["reached"]) for d in stats["per_depth"]] == [(4, 3), (3, 1), (2, 1)]
    assert [d["rate"] for d in stats["per_depth"]] == [3 / 4, 1 / 3, 1 / 2]
    # conditional at depth 2: steps that drafted depth 2 and accepted depth 1 = (3,3), (2,1) -> 1 of 2
    assert [d["conditional"] for d in stats["per_depth"]] == [3 / 4, 1 / 2, 1 / 1]


def test_acceptance_rows_match_the_answer_files(run):
    summary = json.loads((run / "summary.json").read_text())
    pooled = {r["method"]: r for r in summary["acceptance"] if r["suite"] == "all"}
    assert "ar" not in pooled  # ar never drafts
    pld = [r["choices"][0] for r in answers(run)["pld"]]
    steps = [(d, a) for c in pld for d, a in zip(c["draft_depth"], c["accepted"], strict=True) if d > 0]
    assert pooled["pld"]["drafting_steps"] == len(steps)
    for row in pooled["pld"]["per_depth"]:
        d = row["depth"]
        assert row["drafted"] == sum(depth >= d for depth, _ in steps)
        assert row["reached"] == sum(acc >= d for _, acc in steps)
    assert sum(pooled["pld"]["histogram"]) == len(steps)
    for name in ("acceptance_by_depth.png", "accepted_length_hist.png", "acceptance_by_task.png"):
        assert (run / "plots" / name).read_bytes().startswith(b"\x89PNG")


def speed_py(method_lines, base_lines, count_base_tokens):
    """Spec-Bench's evaluation/speed.py `speed()` for task "overall", re-implemented: the mean of the
    method's per-question tok/s over the mean of the baseline's, whose tokens it re-tokenises."""
    speeds = [sum(r["choices"][0]["new_tokens"]) / sum(r["choices"][0]["wall_time"]) for r in method_lines]
    speeds0 = []
    for r in base_lines:
        tokens = sum(count_base_tokens(r, i, text) for i, text in enumerate(r["choices"][0]["turns"]))
        speeds0.append(tokens / sum(r["choices"][0]["wall_time"]))
    return (sum(speeds) / len(speeds)) / (sum(speeds0) / len(speeds0))


def test_export_matches_speed_py_and_round_trips(run, tmp_path):
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", str(run), "--format", "spec-bench", "--out", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jsonl"))
    assert files == [f"jsonl-questions_small/run_{k}/{m}.jsonl" for k in (1, 2) for m in ("ar", "pld")]

    def read(path):
        return [json.loads(line) for line in path.read_text().splitlines()]

    # speed.py re-tokenises the baseline's text and subtracts the BOS; a tokenizer that gives back
    # exactly the recorded ids (plus a BOS) is the case where its count and ours agree.
    def retokenise(record, turn, text):
        return len([1, *record["choices"][0]["output_ids"][turn]]) - 1

    folder = out / "jsonl-questions_small"
    runs = [
        speed_py(read(folder / f"run_{k}" / "pld.jsonl"), read(folder / f"run_{k}" / "ar.jsonl"), retokenise)
        for k in (1, 2)
    ]
    mean_speedup = sum(runs) / len(runs)  # speed.py's get_mean_speedup over the runs
    summary = json.loads((run / "summary.json").read_text())
    ours = next(r for r in summary["rows"] if r["suite"] == "all" and r["method"] == "pld")
    assert round(ours["speedup_mean"], 2) == round(mean_speedup, 2)
    assert ours["speedup_mean"] == pytest.approx(mean_speedup, rel=1e-9)
    # Every field speed.py and equal.py read is there, in its shape.
    line = read(folder / "run_1" / "pld.jsonl")[0]
    assert {"question_id", "category", "answer_id", "model_id", "choices", "tstamp"} <= set(line)
    assert {"turns", "new_tokens", "wall_time", "accept_lengths", "decoding_steps"} <= set(line["choices"][0])
    # Round trip: the exported files, laid out as a run folder again, give the same summary.
    back = tmp_path / "back"
    for k in (1, 2):
        for m in ("ar", "pld"):
            dest = back / "answers" / "s" / f"{m}.jsonl"
            dest.parent.mkdir(parents=True, exist_ok=True)
            with dest.open("a") as f:
                for rec in read(folder / f"run_{k}" / f"{m}.jsonl"):
                    f.write(json.dumps({**rec, "repeat": k - 1}) + "\n")
    again = make_report(back, write=False).set_index(["suite", "category", "method"])
    original = make_report(run, write=False).set_index(["suite", "category", "method"])
    for col in (
        "questions",
        "new_tokens",
        "steps",
        "mean_accepted_length",
        "speedup",
        "speedup_mean",
        "lossless",
    ):
        assert list(again.loc[("all", "all")][col]) == pytest.approx(list(original.loc[("all", "all")][col]))
    refused = runner.invoke(app, ["export", str(run), "--format", "spec-bench", "--out", str(out)])
    assert refused.exit_code == 2 and "already exists" in refused.output


def test_compare_refuses_different_question_sets(run, tmp_path):
    other = copy_run(run, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "max_new_tokens": 99}))
    same = runner.invoke(app, ["compare", str(run), str(other)])
    assert same.exit_code == 0, same.output
    assert "max_new_tokens" in same.output and "99" in same.output and "pld" in same.output
    last = max(r["question_id"] for r in answers(other)["ar"])
    for path in other.glob("answers/*/*.jsonl"):  # drop one question from the second run
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["question_id"] != last]
        path.write_text("\n".join(kept) + "\n")
    refused = runner.invoke(app, ["compare", str(run), str(other)])
    assert refused.exit_code == 2
    assert "different questions" in refused.output and "--allow-different-questions" in refused.output
    allowed = runner.invoke(app, ["compare", str(run), str(other), "--allow-different-questions"])
    assert allowed.exit_code == 0, allowed.output


def test_report_html_is_self_contained_and_lists_every_method(run, tmp_path, monkeypatch):
    out = copy_run(run, tmp_path / "run")
    (out / "report.html").unlink()

    def no_network(*args, **kwargs):
        raise AssertionError("the report must not touch the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    make_report(out)
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    for method in answers(out):
        assert f"<td>{method}</td>" in page
    assert page.count("data:image/png;base64,") >= 5
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert (
        page.index("<h2>Per task</h2>") < page.index("<h2>Environment</h2>") < page.index("<h2>Command</h2>")
    )
    command = json.loads((out / "config.json").read_text())["command"]
    assert command.startswith("specbench ") and f"<pre>{html.escape(command)}</pre>" in page


def test_divergence_audit_flags_a_forced_divergence(run, tmp_path):
    out = copy_run(run, tmp_path / "run")
    ar = {(r["question_id"], r["repeat"]): r for r in answers(out)["ar"]}
    pld_file = next(out.glob("answers/*/pld.jsonl"))
    lines = [json.loads(line) for line in pld_file.read_text().splitlines()]
    target = next(r for r in lines if len(r["choices"][0]["output_ids"][0]) > 5)
    ids = target["choices"][0]["output_ids"][0]
    ids[3] = (ids[3] + 1) % 256  # a token ar did not choose, as a verifier bug would commit
    ref = ar[(target["question_id"], target["repeat"])]["choices"][0]
    assert len(ref["top2_margin"][0]) == len(ref["output_ids"][0])  # one margin per ar token
    pld_file.write_text("".join(json.dumps(r) + "\n" for r in lines))
    make_report(out)
    audit = json.loads((out / "summary.json").read_text())["divergence"]
    [found] = audit["divergences"]
    assert (found["question_id"], found["turn"], found["position"]) == (target["question_id"], 0, 3)
    assert found["ar_margin"] == ref["top2_margin"][0][3]
    assert found["kind"] == "clear"  # float32: any visible margin is far beyond rounding
    # The same divergence where ar's top two logits tie is numerics, not a bug.
    ar_file = next(out.glob("answers/*/ar.jsonl"))
    ar_lines = [json.loads(line) for line in ar_file.read_text().splitlines()]
    for r in ar_lines:
        if (r["question_id"], r["repeat"]) == (target["question_id"], target["repeat"]):
            r["choices"][0]["top2_margin"][0][3] = 0.0
    ar_file.write_text("".join(json.dumps(r) + "\n" for r in ar_lines))
    make_report(out)
    audit = json.loads((out / "summary.json").read_text())["divergence"]
    assert [d["kind"] for d in audit["divergences"]] == ["near-tie"]
    assert {m["method"]: (m["diverged"], m["near-tie"], m["clear"]) for m in audit["methods"]}["pld"] == (
        1,
        1,
        0,
    )
    assert (out / "plots" / "divergence_margins.png").is_file()


def test_first_divergence():
    assert first_divergence([[1, 2, 3]], [[1, 2, 3]]) is None
    assert first_divergence([[1, 2], [5, 6]], [[1, 2], [5, 7]]) == (1, 1)
    assert first_divergence([[1, 2]], [[1, 2, 3]]) == (0, 2)


@pytest.mark.parametrize(("method", "new"), [("ar", 10), ("ar", 150), ("pld", 150)])
def test_margins_are_the_top2_gap_of_a_plain_forward(tiny, method, new):
    # 150 tokens: past MARGIN_BATCH, so the batched top-2 and the final flush both run; pld keeps
    # several rows per step, some of them out of input order.
    import torch

    from specbench_cli.engine.decode import Engine, generate
    from specbench_cli.registry import DRAFTERS
    from specbench_cli.types import MethodSetup

    prompt = [5, 17, 42, 9, 100, 5, 17, 42, 9]
    drafter = DRAFTERS.get(method)(MethodSetup(target=tiny))
    gen = generate(Engine(tiny, 256), drafter, prompt, new, margins=True)
    assert len(gen.output_ids) == new and len(gen.top2_margins) == new
    with torch.no_grad():
        logits = tiny.model(torch.tensor([prompt + gen.output_ids])).logits[0].float()
    rows = logits[len(prompt) - 1 : len(prompt) - 1 + len(gen.output_ids)]
    top = rows.topk(2, dim=-1).values
    assert gen.top1_logits == pytest.approx(top[:, 0].tolist(), abs=1e-4)
    assert gen.top2_margins == pytest.approx((top[:, 0] - top[:, 1]).tolist(), abs=1e-4)


def test_learning_drafters_restart_every_repeat(tmp_path):
    # SuffixDecoding learns from every finished answer: were repeat 1 of a question run right after
    # repeat 0, it would draft from that question's own answer and accept more. Each repeat is a pass
    # that starts the drafter from nothing, so its steps are the same in every repeat.
    out = tmp_path / "run"
    args = ["eval", "--model", "tiny-random", "--suite", f"jsonl:{QUESTIONS}", "--methods", "ar,suffix"]
    args += ["--max-new-tokens", "12", "--warmup", "0", "--limit", "2", "--repeats", "2", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = answers(out)["suffix"]
    by_question: dict = {}
    for r in lines:
        by_question.setdefault(r["question_id"], {})[r["repeat"]] = r["choices"][0]
    assert len(by_question) == 2
    for runs in by_question.values():
        assert runs[0]["output_ids"] == runs[1]["output_ids"]
        assert runs[0]["accept_lengths"] == runs[1]["accept_lengths"]
        assert runs[0]["draft_nodes"] == runs[1]["draft_nodes"]
