"""quality: HumanEval programs and pass@1, ROUGE-L, token agreement and the lossy-method table from stored scores."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from specbench_cli.quality import (
    extract_code,
    humaneval_pass_at_1,
    lossy_quality,
    rouge_l,
    token_agreement,
)
from specbench_cli.suites import load_suite

FIXTURE = Path(__file__).parent / "fixtures" / "humaneval_small.jsonl"


@pytest.fixture(scope="module")
def humaneval():
    return load_suite(f"humaneval:{FIXTURE}").questions


def answer(code: str) -> str:
    return f"Here is the function:\n\n```python\n{code}```\n\nIt returns the result."


def record(
    qid, text: str, method: str = "respec", suite: str = "humaneval", ids=None, lossless=False, repeat=0
) -> dict:
    return {
        "question_id": qid,
        "repeat": repeat,
        "suite": suite,
        "method": method,
        "lossless_method": lossless,
        "choices": [{"turns": [text], "output_ids": [ids if ids is not None else [1, 2, 3]]}],
    }


def test_humaneval_pass_at_1_runs_the_task_tests(humaneval):
    right = {
        0: answer('def add(a: int, b: int) -> int:\n    """Sum."""\n    return a + b\n'),
        1: answer("def neg(x: int) -> int:\n    return -x\n"),
    }
    wrong_one = dict(right)
    wrong_one[1] = answer("def neg(x: int) -> int:\n    return x\n")
    hang = dict(right)
    hang[0] = answer("def add(a, b):\n    while True:\n        pass\n")
    result = humaneval_pass_at_1([record(q, t) for q, t in right.items()], humaneval)
    assert result["pass_at_1"] == 1.0 and result["total"] == 2
    result = humaneval_pass_at_1([record(q, t) for q, t in wrong_one.items()], humaneval)
    assert result["pass_at_1"] == 0.5 and result["results"] == {0: ["passed"], 1: ["failed"]}
    result = humaneval_pass_at_1([record(q, t) for q, t in hang.items()], humaneval, timeout=1.0)
    assert result["results"] == {0: ["timeout"], 1: ["passed"]}
    # A bare body (completion style) continues the prompt's signature.
    body = humaneval_pass_at_1([record(1, "```python\n    return -x\n```")], humaneval)
    assert body["pass_at_1"] == 1.0


def test_extract_code_picks_the_block_that_defines_the_function():
    text = "```\npip install x\n```\nthen\n```python\ndef f(a):\n    return a\n```"
    assert extract_code(text, "f").startswith("def f(a)")
    assert extract_code("no fences here", "f") == "no fences here"
    cut = "```python\ndef f(a):\n    return a"  # the answer ran out of tokens inside the block
    assert extract_code(cut, "f") == "def f(a):\n    return a"


def test_rouge_l_on_hand_examples():
    # LCS "the cat on the mat" = 5 of 6 on both sides: P = R = F = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # "a b c d" vs "b d a": LCS "b d" = 2, P = 2/4, R = 2/3, F = 2PR / (P + R) = 4/7.
    assert rouge_l("a b c d", "b d a") == pytest.approx(4 / 7)
    # Word order matters: the reversed sentence keeps only one word in sequence (P = R = 1/3).
    assert rouge_l("x y z", "z y x") == pytest.approx(1 / 3)
    assert rouge_l("same words", "same   words\n") == 1.0
    assert rouge_l("", "") == 1.0 and rouge_l("a", "") == 0.0 and rouge_l("a b", "c d") == 0.0


def test_token_agreement():
    assert token_agreement([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert token_agreement([1, 2, 9, 4], [1, 2, 3, 4]) == 0.5  # equal up to the first divergence
    assert token_agreement([1, 2], [1, 2, 3, 4]) == 0.5  # a shorter output is not "equal"
    assert token_agreement([], []) == 1.0


def stored(qid, passed: bool, answer_id="a", repeat=0) -> dict:
    status = "passed" if passed else "failed"
    return {
        "question_id": qid, "repeat": repeat, "answer_id": answer_id, "status": status, "passed": passed, "sandbox": "x",
    }  # fmt: skip


def keyed(*scores: dict) -> dict:
    """Stored scores as read_scores gives them: by (question_id, repeat)."""
    return {(s["question_id"], s["repeat"]): s for s in scores}


def test_lossy_quality_table():
    good = {
        0: answer("def add(a, b):\n    return a + b\n"),
        1: answer("def neg(x):\n    return -x\n"),
    }
    records = [
        record(0, good[0], "ar", ids=[1, 2, 3, 4], lossless=True),
        record(1, good[1], "ar", ids=[5, 6], lossless=True),
        record(0, good[0], "respec", ids=[1, 2, 3, 4]),
        record(1, answer("def neg(x):\n    return x\n"), "respec", ids=[5, 7]),
        record(0, good[0], "pld", ids=[1, 2, 3, 4], lossless=True),  # lossless: no row
        record("q1", "the cat sat on the mat", "ar", suite="spec-bench", lossless=True),
        record("q1", "the cat lay on the mat", "respec", suite="spec-bench"),
    ]
    for r in records:
        r["answer_id"] = "a"
    scores = {
        ("humaneval", "ar"): keyed(stored(0, True), stored(1, True)),
        ("humaneval", "respec"): keyed(stored(0, True), stored(1, False)),
    }
    rows = {(r["suite"], r["method"]): r for r in lossy_quality(records, scores)}
    assert set(rows) == {("humaneval", "respec"), ("spec-bench", "respec")}
    he = rows[("humaneval", "respec")]
    assert he["quality_metric"] == "humaneval_pass@1" and he["scored"] == 2
    assert he["quality"] == 0.5 and he["quality_ar"] == 1.0
    assert he["exact_match"] == 0.5 and he["token_agreement"] == pytest.approx((1.0 + 0.5) / 2)
    sb = rows[("spec-bench", "respec")]
    assert sb["quality_metric"] == "rouge_l_vs_ar" and sb["quality"] == pytest.approx(5 / 6)
    # Without scores, or with a score made from another answer (answer_id) or by a sandbox that
    # never started, pass@1 is NaN: never a figure over a subset of the questions.
    assert math.isnan([r for r in lossy_quality(records) if r["suite"] == "humaneval"][0]["quality"])
    for bad in ({**stored(1, False), "answer_id": "old"}, {**stored(1, False), "status": "error"}):
        partial = {**scores, ("humaneval", "respec"): keyed(stored(0, True), bad)}
        row = [r for r in lossy_quality(records, partial) if r["suite"] == "humaneval"][0]
        assert row["scored"] == 1 and math.isnan(row["quality"]) and math.isnan(row["quality_ar"])


def test_repeats_pair_by_question_and_repeat_and_average_per_question(humaneval):
    """With --repeats, repeat r pairs with ar's repeat r and its own score; no repeat overwrites
    another, and each question weighs the same (a mean over its repeats, then over questions)."""
    records, mine, base = [], [], []
    # Question 0: two repeats, the method passes the first and fails the second (a lossy method need
    # not repeat itself); ar passes both. Question 1: one repeat only (an interrupted run), passed.
    for qid, repeat, passed, ids in ((0, 0, True, [1, 2]), (0, 1, False, [1, 9]), (1, 0, True, [5, 6])):
        aid = f"m{qid}{repeat}"
        records.append({**record(qid, "x y z", ids=ids, repeat=repeat), "answer_id": aid})
        mine.append(stored(qid, passed, aid, repeat))
        ar_id = f"a{qid}{repeat}"
        ar = record(
            qid, "x y z" if repeat == 0 else "x y", "ar", ids=[1, 2] if qid == 0 else [5, 6], lossless=True
        )
        records.append({**ar, "repeat": repeat, "answer_id": ar_id})
        base.append(stored(qid, True, ar_id, repeat))
    scores = {("humaneval", "respec"): keyed(*mine), ("humaneval", "ar"): keyed(*base)}
    (row,) = lossy_quality(records, scores)
    assert (row["questions"], row["paired"], row["scored"], row["repeats"]) == (2, 3, 3, 2)
    # Per question: q0 = mean(1, 0) = 0.5, q1 = 1; then over questions: 0.75 (a plain mean over the
    # three answers would be 2/3; the last repeat alone, 0.5).
    assert row["quality"] == pytest.approx(0.75) and row["quality_ar"] == 1.0
    assert row["exact_match"] == pytest.approx((0.5 + 1.0) / 2)
    assert row["token_agreement"] == pytest.approx((0.75 + 1.0) / 2)  # q0: mean(1.0, 1/2)
    # A score stored for repeat 0 does not stand in for repeat 1's answer.
    scores[("humaneval", "respec")] = keyed(mine[0], mine[2])
    (row,) = lossy_quality(records, scores)
    assert row["scored"] == 2 and math.isnan(row["quality"])
    # ROUGE-L vs ar pairs repeats the same way: repeat 1 of q0 compares with ar's repeat 1 ("x y").
    text = [{**r, "suite": "spec-bench"} for r in records]
    (row,) = lossy_quality(text)
    assert row["quality_metric"] == "rouge_l_vs_ar"
    assert row["quality"] == pytest.approx(((1.0 + rouge_l("x y z", "x y")) / 2 + 1.0) / 2)


def test_pass_at_1_counts_each_question_once_over_its_repeats(humaneval):
    right = answer("def neg(x: int) -> int:\n    return -x\n")
    wrong = answer("def neg(x: int) -> int:\n    return x\n")
    add = answer("def add(a, b):\n    return a + b\n")
    records = [record(1, right, repeat=0), record(1, wrong, repeat=1), record(0, add, repeat=0)]
    result = humaneval_pass_at_1(records, humaneval)
    assert result["results"] == {1: ["passed", "failed"], 0: ["passed"]}
    assert result["total"] == 2 and result["repeats"] == 2
    assert result["pass_at_1"] == pytest.approx((0.5 + 1.0) / 2)
