"""Scores are made when answers are made (eval) or by `specbench score`; `report` only reads files.

One tiny-random eval on the HumanEval fixture with `ar` and the lossy `respec`; then its answers are
replaced by hand-written code (the random model writes no working code) and scored again.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from rich.console import Console
from test_cli import run

from specbench_cli.report import make_report
from specbench_cli.results import RunPaths, read_answers

FIXTURE = Path(__file__).parent / "fixtures" / "humaneval_small.jsonl"
RIGHT = {0: "def add(a, b):\n    return a + b\n", 1: "def neg(x):\n    return -x\n"}
WRONG_NEG = "def neg(x):\n    return x\n"


@pytest.fixture(scope="module")
def humaneval_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scores") / "run"
    result = run(
        "eval", "--model", "tiny-random", "--draft-model", "tiny-random-draft", "--suite", f"humaneval:{FIXTURE}",
        "--methods", "ar,respec", "--max-new-tokens", "8", "--warmup", "0", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return RunPaths(out)


def stored_scores(paths: RunPaths, method: str) -> dict:
    return {s["question_id"]: s for s in read_answers(paths.scores_file("humaneval", method))}


def rewrite_answers(paths: RunPaths, method: str, code: dict[int, str]) -> None:
    """Give `method`'s answers new text (and new answer ids, as a new answer would have)."""
    path = paths.answers_file("humaneval", method)
    records = read_answers(path)
    for r in records:
        r["choices"][0]["turns"][0] = f"```python\n{code[r['question_id']]}```"
        r["answer_id"] = uuid.uuid4().hex
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_eval_scores_each_humaneval_answer_as_it_makes_it(humaneval_run):
    paths = humaneval_run
    for method in ("ar", "respec"):
        answers = {r["question_id"]: r for r in read_answers(paths.answers_file("humaneval", method))}
        scores = stored_scores(paths, method)
        assert set(scores) == set(answers) == {0, 1}
        for qid, score in scores.items():
            assert score["answer_id"] == answers[qid]["answer_id"]
            assert score["status"] in ("passed", "failed", "timeout") and "network" in score["sandbox"]
    row = json.loads((paths.root / "quality.json").read_text())["lossy_methods"][0]
    assert row["quality_metric"] == "humaneval_pass@1" and row["scored"] == 2
    assert row["quality"] is not None and row["quality_ar"] is not None  # a number, not NaN


# The report in a fresh interpreter where running code, opening sockets, loading torch,
# transformers or a suite all fail: it must still write the quality table from the stored scores.
REPORT_OFFLINE = """
import os, socket, subprocess, sys
def refuse(*args, **kwargs):
    raise AssertionError("report tried to run a process or open a socket")
subprocess.Popen = socket.socket = socket.create_connection = os.fork = os.posix_spawn = refuse
for name in ("torch", "transformers", "specbench_cli.suites", "specbench_cli.models"):
    sys.modules[name] = None  # any import of these raises ImportError
from rich.console import Console
from specbench_cli.report import make_report
make_report(sys.argv[1], console=Console(width=200))
"""


def report_offline(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run(
        [sys.executable, "-c", REPORT_OFFLINE, str(root)], capture_output=True, text=True, env=env
    )


def test_score_command_then_report_reads_only_files(humaneval_run, tmp_path):
    paths = humaneval_run
    rewrite_answers(paths, "ar", RIGHT)
    rewrite_answers(paths, "respec", {0: RIGHT[0], 1: WRONG_NEG})
    # New answer ids: the stored scores are stale, and the report says so instead of using them.
    stale = io.StringIO()
    make_report(paths.root, console=Console(file=stale, width=300))
    assert "have no stored score" in stale.getvalue() and "specbench score" in stale.getvalue()
    row = json.loads((paths.root / "quality.json").read_text())["lossy_methods"][0]
    assert row["scored"] == 0 and row["quality"] is None

    result = run("score", str(paths.root))
    assert result.exit_code == 0 and "scored 4 answer(s)" in result.output, result.output
    assert run("score", str(paths.root)).output.count("scored 0 answer(s)") == 1  # nothing left to do
    assert {q: s["status"] for q, s in stored_scores(paths, "respec").items()} == {0: "passed", 1: "failed"}

    offline = report_offline(paths.root)
    assert offline.returncode == 0, offline.stderr
    row = json.loads((paths.root / "quality.json").read_text())["lossy_methods"][0]
    assert (row["scored"], row["quality"], row["quality_ar"]) == (2, 0.5, 1.0)
    assert "have no stored score" not in offline.stdout


def test_score_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = run("score", str(tmp_path / "nothing"))
    assert result.exit_code == 2 and "no config.json" in result.output
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "file").write_text("x")
    result = run("score", str(tmp_path / "file"))
    assert result.exit_code == 2 and "is a file" in result.output


def test_repeats_are_scored_per_repeat_and_a_repeated_program_runs_once(tmp_path):
    out = tmp_path / "run"
    result = run(
        "eval", "--model", "tiny-random", "--draft-model", "tiny-random-draft", "--suite", f"humaneval:{FIXTURE}",
        "--methods", "ar,respec", "--max-new-tokens", "8", "--warmup", "0", "--repeats", "2", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    paths = RunPaths(out)
    for method in ("ar", "respec"):
        answers = {
            (r["question_id"], r["repeat"]): r for r in read_answers(paths.answers_file("humaneval", method))
        }
        lines = read_answers(paths.scores_file("humaneval", method))
        scores = {(s["question_id"], s["repeat"]): s for s in lines}
        assert set(scores) == set(answers) == {(0, 0), (1, 0), (0, 1), (1, 1)}  # no repeat overwrites another
        for key, score in scores.items():
            assert score["answer_id"] == answers[key]["answer_id"]
            first = answers[(key[0], 0)]
            if key[1] == 1 and answers[key]["choices"][0]["turns"] == first["choices"][0]["turns"]:
                # Greedy decoding repeats itself: the same program is not run twice.
                assert (
                    score["reused_from"] == first["answer_id"]
                    and score["status"] == scores[(key[0], 0)]["status"]
                )
            else:
                assert "reused_from" not in score
        if method == "ar":  # greedy ar writes the same answers in both repeats
            assert sum("reused_from" in s for s in lines) == 2
    row = json.loads((paths.root / "quality.json").read_text())["lossy_methods"][0]
    assert (row["questions"], row["paired"], row["scored"], row["repeats"]) == (2, 4, 4, 2)
    assert row["quality"] is not None and row["quality_ar"] is not None
    # Rewritten answers of repeat 1 only: `score` redoes those two and leaves repeat 0's alone.
    path = paths.answers_file("humaneval", "respec")
    records = read_answers(path)
    for r in records:
        if r["repeat"] == 1:
            r["choices"][0]["turns"][0] = f"```python\n{RIGHT[r['question_id']]}```"
            r["answer_id"] = uuid.uuid4().hex
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run("score", str(paths.root))
    assert "scored 2 answer(s)" in result.output, result.output
    scores = {
        (s["question_id"], s["repeat"]): s for s in read_answers(paths.scores_file("humaneval", "respec"))
    }
    assert scores[(0, 1)]["status"] == scores[(1, 1)]["status"] == "passed"
