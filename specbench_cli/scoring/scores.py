"""Task scores kept in the run folder: the sandboxed HumanEval pass/fail of each answer.

    append_answer(paths.scores_file(suite, method), score_answer(question, record))   # eval, per answer
    score_run(Path("results/run1"))                                              # `specbench score`
    scores, problems = read_scores(paths)                                        # the report: files only

`scores/<suite_label>/<method>.jsonl` mirrors the answer files: one line per scored answer with its
question_id and answer_id (a score counts only for the answer it was made from), the sandbox's
status, its reason when it failed, and the isolation the sandbox achieved on this machine. A
question is scored when its suite carries tests (HumanEval's `test` and `entry_point`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..quality import current, humaneval_program
from ..results import RunPaths, append_answer, read_answers, run_folder_lock
from ..types import Question, SpecbenchError
from .sandbox import Limits, describe_isolation, run_sandboxed

METRIC = "humaneval_pass"


def scorable(question: Question) -> bool:
    return all(key in question.extra for key in ("prompt", "test", "entry_point"))


def score_answer(question: Question, record: dict, limits: Limits = Limits()) -> dict:
    """Run the answer's first turn against the task's tests in the sandbox; the line to store."""
    result = run_sandboxed(humaneval_program(record["choices"][0]["turns"][0], question), limits)
    return {
        "question_id": record["question_id"],
        "answer_id": record.get("answer_id"),
        "metric": METRIC,
        "status": result.status,  # "error": the sandbox did not start; scored again next time
        "passed": result.passed,
        "detail": result.detail[-500:],
        "sandbox": describe_isolation(result.isolation),
    }


def score_missing(paths: RunPaths, questions: dict[str, list[Question]], rescore: bool = False) -> list[dict]:
    """Score every answer of `questions`' suites that has no current score (all with `rescore`).

    The caller holds the run-folder lock. Returns the scores made (in the order stored).
    """
    made = []
    for suite, method, answers in paths.iter_answer_files():
        by_id = {q.question_id: q for q in questions.get(suite, []) if scorable(q)}
        if not by_id:
            continue
        target = paths.scores_file(suite, method)
        stored = {s["question_id"]: s for s in read_answers(target)} if target.exists() else {}
        for record in read_answers(answers):
            q = by_id.get(record["question_id"])
            if q is not None and (rescore or not current(stored.get(q.question_id), record)):
                made.append(score_answer(q, record))
                append_answer(target, made[-1])
    return made


def score_run(run_dir: Path, rescore: bool = False) -> tuple[list[dict], list[str]]:
    """`specbench score RUN`: reload the run's HumanEval suites (config.json) and score what is not
    scored yet. Returns (the scores made, suite labels whose questions could not be loaded)."""
    paths = RunPaths(Path(run_dir))
    if not paths.config.is_file():
        raise SpecbenchError(f"'{run_dir}' is not a run folder: it has no config.json")
    with run_folder_lock(paths.root, resume=True):  # not while an eval is writing the folder
        questions, missing = questions_from_config(paths)
        return score_missing(paths, questions, rescore), missing


def questions_from_config(paths: RunPaths) -> tuple[dict[str, list[Question]], list[str]]:
    """The HumanEval questions of a run folder, reloaded from the suite specs in its config.json,
    by answer-folder label; and the labels whose suite could not be loaded again (moved, missing)."""
    from ..suites import load_suite

    try:
        config = json.loads(paths.config.read_text())
    except (OSError, ValueError) as e:
        raise SpecbenchError(f"{paths.config} is not readable JSON ({e.__class__.__name__})") from None
    # The run may have renamed clashing labels (suites.load_suites): suites_info, in --suite order,
    # holds the label each spec's answers were filed under.
    labels = [info.get("name") for info in config.get("suites_info") or []]
    out: dict[str, list[Question]] = {}
    missing: list[str] = []
    for i, spec in enumerate(config.get("suites", [])):
        if not str(spec).startswith("humaneval"):
            continue
        label = labels[i] if i < len(labels) and labels[i] else str(spec)
        try:
            suite = load_suite(str(spec), None, int(config.get("seed", 0)))
        except (SpecbenchError, OSError):
            missing.append(label)
            continue
        out[labels[i] if i < len(labels) and labels[i] else suite.name] = suite.questions
    return out, missing


def read_scores(paths: RunPaths) -> tuple[dict[tuple[str, str], dict], list[str]]:
    """Every stored score by (suite, method) and question_id, and one line per unreadable file."""
    scores: dict[tuple[str, str], dict] = {}
    problems: list[str] = []
    if not paths.scores_dir.is_dir():
        return scores, problems
    for path in sorted(paths.scores_dir.glob("*/*.jsonl")):
        try:
            records = read_answers(path)
        except (SpecbenchError, OSError) as e:
            problems.append(
                f"{path.relative_to(paths.root)} is not readable ({e}); its answers count as unscored"
            )
            continue
        scores[(path.parent.name, path.stem)] = {r["question_id"]: r for r in records}
    return scores, problems
