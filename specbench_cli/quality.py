"""Task quality of lossy methods: HumanEval pass@1 (sandboxed), ROUGE-L, and agreement with `ar`.

    table = lossy_quality(records, read_scores(RunPaths(run_dir))[0])   # scoring/scores.py

A lossy method (ReSpec with relaxed verification) may write text that differs from the target's own
greedy output. The report keeps it out of the lossless rankings and shows, per suite:
- token agreement with `ar`: the matching prefix of the output ids over all turns, as a fraction of
  the longer of the two, and the exact-match rate;
- a task figure: HumanEval pass@1 of the method next to `ar`'s on the same questions, or, for the
  other suites, the mean ROUGE-L F1 of the method's answers against `ar`'s answers.

HumanEval completions run in the sandbox (scoring/sandbox.py) when the answers are made, or by
`specbench score RUN`; their pass/fail is stored in the run folder (scoring/scores.py), and this table
is built from those files alone: the report runs no code, loads no suite and needs no network.

Repeats (`eval --repeats N`): an answer is identified by (question_id, repeat), so repeat r of a method
pairs with repeat r of `ar` and with its own score. Every figure is averaged per question first (over
its repeats), then over questions, so each question weighs the same whatever its number of repeats;
the row's `repeats` says over how many. A deterministic run's repeats are identical answers: the
sandbox runs the program once and the other repeats reuse that result (scoring/scores.py).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from .results import answer_key
from .types import Question

BASELINE = "ar"


# ----------------------------------------------------------------------------------------------------
# HumanEval

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(answer: str, entry_point: str) -> str:
    """The code of a chat answer: the fenced block that defines `entry_point` (else the first fenced
    block, else the whole answer). A block cut off by the length limit runs to the end of the text."""
    blocks = [m.group(2) for m in _FENCE.finditer(answer)]
    for block in blocks:
        if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", block):
            return block
    return blocks[0] if blocks else answer


def humaneval_program(answer: str, question: Question) -> str:
    """The program to run: the task's prompt (its imports and helpers), the model's code, the tests.

    When the model's code redefines the function, the later definition wins. When it is only a body
    (a completion), it continues the prompt's signature.
    """
    extra = question.extra
    prompt, entry = extra["prompt"], extra["entry_point"]
    code = extract_code(answer, entry)
    if re.search(rf"\bdef\s+{re.escape(entry)}\s*\(", code):
        body = prompt + "\n    pass\n\n" + code
    else:
        body = prompt + code
    return f"{body}\n\n{extra['test']}\n\ncheck({entry})\n"


def humaneval_pass_at_1(
    records: Iterable[dict], questions: Iterable[Question], timeout: float = 10.0
) -> dict[str, Any]:
    """pass@1 (greedy decoding: one sample per task is the estimate), run now.

    `records` are answer lines (question_id, choices[0].turns[0], repeat if any); `questions` the
    HumanEval suite. Records without a matching question are skipped. A question answered in several
    repeats counts once, with the share of its repeats that passed. Returns {"pass_at_1", "passed"
    (questions, fractional with repeats), "total" (questions), "repeats" (most answers of one
    question), "results": {question_id: [status of each repeat, in repeat order]}}. The run
    folder's stored scores come from `scoring.scores`.
    """
    from .scoring.sandbox import Limits, run_sandboxed

    by_id = {q.question_id: q for q in questions}
    statuses: dict[tuple, str] = {}
    for record in records:
        q = by_id.get(record.get("question_id"))
        if q is not None and "test" in q.extra:
            program = humaneval_program(record["choices"][0]["turns"][0], q)
            statuses[answer_key(record)] = run_sandboxed(program, Limits(wall_s=timeout)).status
    results: dict[Any, list[str]] = {}
    for (qid, _), status in sorted(statuses.items(), key=lambda kv: kv[0][1]):
        results.setdefault(qid, []).append(status)
    passed = sum(_mean([float(s == "passed") for s in repeats]) for repeats in results.values())
    return {
        "pass_at_1": passed / len(results) if results else math.nan,
        "passed": passed,
        "total": len(results),
        "repeats": max((len(r) for r in results.values()), default=0),
        "results": results,
    }


# ----------------------------------------------------------------------------------------------------
# Text and token agreement


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) on whitespace tokens: LCS / length gives precision and recall."""
    c, r = candidate.split(), reference.split()
    if not c or not r:
        return 1.0 if c == r else 0.0
    lcs = _lcs_length(c, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(c), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: list[str], b: list[str]) -> int:
    # One row of the dynamic programme at a time: O(len(a) * len(b)) time, O(len(b)) memory.
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def token_agreement(ids: list[int], reference: list[int]) -> float:
    """Matching prefix length over the longer sequence: 1.0 exactly when the two are equal."""
    longest = max(len(ids), len(reference))
    if longest == 0:
        return 1.0
    n = 0
    for x, y in zip(ids, reference):
        if x != y:
            break
        n += 1
    return n / longest


# ----------------------------------------------------------------------------------------------------
# The report's table


def lossy_quality(records: Iterable[dict], scores: dict | None = None) -> list[dict[str, Any]]:
    """One row per (suite, lossy method): agreement with `ar` and the task quality figure.

    `records` are answer lines carrying `suite` and `method` (as the report reads them); a record with
    `lossless_method: false` marks its method lossy. `scores` maps (suite, method) to {(question_id,
    repeat): stored score} (`scoring.scores.read_scores`). A suite with stored scores, or whose label
    starts with "humaneval", gets pass@1 of the method and of `ar` on the same questions; the others
    get ROUGE-L against `ar`. Answers pair by (question_id, repeat); each figure is a mean per question
    over its paired repeats, then over questions. Figures that cannot be computed (no `ar` answers, a
    paired answer without a current score) are NaN; `paired` and `scored` count answer pairs,
    `questions` distinct questions, `repeats` the most pairs of one question.
    """
    scores = scores or {}
    by_key: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        by_key.setdefault((str(record.get("suite")), str(record.get("method"))), []).append(record)
    rows = []
    for (suite, method), recs in sorted(by_key.items()):
        if method == BASELINE or all(r.get("lossless_method", True) for r in recs):
            continue
        base = {answer_key(r): r for r in by_key.get((suite, BASELINE), [])}
        paired = [(r, base[answer_key(r)]) for r in recs if answer_key(r) in base]
        agree, exact, rouge = [], [], []
        for r, b in paired:
            ids, base_ids = _all_ids(r), _all_ids(b)
            if ids is not None and base_ids is not None:
                agree.append((r["question_id"], token_agreement(ids, base_ids)))
                exact.append((r["question_id"], float(ids == base_ids)))
            turns, base_turns = r["choices"][0]["turns"], b["choices"][0]["turns"]
            rouge.append((r["question_id"], _mean([rouge_l(t, bt) for t, bt in zip(turns, base_turns)])))
        per_question = Counter(r["question_id"] for r, _ in paired)
        row: dict[str, Any] = {
            "suite": suite,
            "method": method,
            "questions": len({r["question_id"] for r in recs}),
            "paired": len(paired),
            "repeats": max(per_question.values(), default=0),
            "token_agreement": _question_mean(agree),
            "exact_match": _question_mean(exact),
            "quality_metric": "rouge_l_vs_ar",
            "quality": _question_mean(rouge),
            "quality_ar": 1.0 if paired else math.nan,
        }
        if suite.startswith("humaneval") or any(key[0] == suite for key in scores):
            row.update(
                humaneval_row(paired, scores.get((suite, method), {}), scores.get((suite, BASELINE), {}))
            )
        rows.append(row)
    return rows


def humaneval_row(paired: list[tuple[dict, dict]], mine: dict, ar: dict) -> dict[str, Any]:
    """pass@1 of the method and of `ar` from stored scores (keyed by (question_id, repeat)), a mean per
    question over its repeats, then over questions; NaN unless every pair has both scores."""
    both = [(mine[answer_key(r)], ar[answer_key(b)]) for r, b in paired
            if current(mine.get(answer_key(r)), r) and current(ar.get(answer_key(b)), b)]  # fmt: skip
    complete = bool(paired) and len(both) == len(paired)
    passed = [(s["question_id"], float(s["passed"]), float(t["passed"])) for s, t in both]
    return {
        "quality_metric": "humaneval_pass@1",
        "scored": len(both),
        "quality": _question_mean([(q, p) for q, p, _ in passed]) if complete else math.nan,
        "quality_ar": _question_mean([(q, p) for q, _, p in passed]) if complete else math.nan,
        "sandbox": "; ".join(sorted({str(s.get("sandbox")) for pair in both for s in pair})),
    }


def current(score: dict | None, record: dict) -> bool:
    """A stored score counts only for the answer it was made from (same answer_id) and a finished
    run of the sandbox (a sandbox that could not start leaves the answer to be scored again)."""
    return (
        isinstance(score, dict)
        and score.get("answer_id") == record.get("answer_id")
        and score.get("status") in ("passed", "failed", "timeout")
        and isinstance(score.get("passed"), bool)
    )


def _all_ids(record: dict) -> list[int] | None:
    turns = record["choices"][0].get("output_ids")
    if turns is None:
        return None
    return [int(t) for turn in turns for t in turn]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _question_mean(values: list[tuple[Any, float]]) -> float:
    """Mean over questions of each question's mean over its repeats: (question_id, value) pairs."""
    per_question: dict[Any, list[float]] = {}
    for qid, value in values:
        per_question.setdefault(qid, []).append(value)
    return _mean([_mean(v) for v in per_question.values()])
