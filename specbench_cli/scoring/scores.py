"""Task scores kept in the run folder: the sandboxed HumanEval pass/fail of each answer.

    append_answer(paths.scores_file(suite, method), score_answer(question, record))   # eval, per answer
    score_run(Path("results/run1"))                                              # `specbench score`
    scores, problems = read_scores(paths)                                        # the report: files only

`scores/<suite_label>/<method>.jsonl` mirrors the answer files: one line per scored answer with its
question_id, repeat and answer_id (a score counts only for the answer it was made from), the sandbox's
status, its reason when it failed, and the isolation the sandbox achieved on this machine. A
question is scored when its suite carries tests (HumanEval's `test` and `entry_point`).

Repeats (`eval --repeats N`) of a deterministic run write the same program N times: it runs in the
sandbox once, and the other repeats' lines reuse that result, saying so (`reused_from`: the answer_id
it was run for). A sandbox that did not start is never reused.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..quality import current, humaneval_program
from ..results import RunPaths, answer_key, append_answer, read_answers, run_folder_lock
from ..types import Question, SpecbenchError
from .sandbox import Limits, describe_isolation, run_sandboxed

METRIC = "humaneval_pass"


def scorable(question: Question) -> bool:
    return all(key in question.extra for key in ("prompt", "test", "entry_point"))


def score_answer(
    question: Question, record: dict, limits: Limits = Limits(), reuse: dict | None = None
) -> dict:
    """Run the answer's first turn against the task's tests in the sandbox; the line to store.

    `reuse` (a dict the caller keeps for a run) maps each program already run to its line: the same
    program again (another repeat's identical answer) takes that result instead of running again.
    """
    program = humaneval_program(record["choices"][0]["turns"][0], question)
    own = {
        "question_id": record["question_id"],
        "repeat": answer_key(record)[1],
        "answer_id": record.get("answer_id"),
    }
    earlier = reuse.get(program) if reuse is not None else None
    if earlier is not None:
        return {**earlier, **own, "reused_from": earlier.get("reused_from", earlier["answer_id"])}
    result = run_sandboxed(program, limits)
    line = {
        **own,
        "metric": METRIC,
        "status": result.status,  # "error": the sandbox did not start; scored again next time
        "passed": result.passed,
        "detail": result.detail[-500:],
        "sandbox": describe_isolation(result.isolation),
    }
    if reuse is not None and result.status != "error":
        reuse[program] = line
    return line


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
        stored = {answer_key(s): s for s in read_answers(target)} if target.exists() else {}
        reuse: dict[str, dict] = {}  # per file: one method's repeats of one suite
        for record in read_answers(answers):
            q = by_id.get(record["question_id"])
            if q is not None and (rescore or not current(stored.get(answer_key(record)), record)):
                made.append(score_answer(q, record, reuse=reuse))
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
    """Every stored score by (suite, method) and (question_id, repeat), and one line per unreadable file."""
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
        scores[(path.parent.name, path.stem)] = {answer_key(r): r for r in records}
    return scores, problems
