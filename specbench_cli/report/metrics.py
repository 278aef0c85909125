"""Summary metrics of a run: every metric of the report is defined here, once (see `summarise`).

Usage: `df = summarise(records)` where each record is one answer line (docs/results.md) carrying its
`suite` and `method`. Everything is counted from the recorded token ids and counts, never by
re-tokenising decoded text (Spec-Bench's speed.py re-tokenises the baseline, which skews its counts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pandas as pd

from ..types import SpecbenchError

BASELINE = "ar"  # speedup and lossless are measured against this method of the same run
OVERALL = "overall"  # `category` of the row that pools every category of one suite
ALL = "all"  # `suite` and `category` of the row that pools every suite of one method

COLUMNS = [
    "suite",
    "category",
    "method",
    "lossless_method",
    "baseline",
    "questions",
    "new_tokens",
    "steps",
    "mean_accepted_length",
    "acceptance_rate",
    "accepted_per_depth",
    "tokens_per_s",
    "speedup",
    "speedup_mean",
    "lossless",
    "t_draft_ms",
    "t_verify_ms",
    "t_other_ms",
    "overhead_frac",
    "prefill_ms",
    "draft_host_ratio",
]

NAN = float("nan")


def summarise(records: Iterable[dict]) -> pd.DataFrame:
    """One row per (suite, category, method), each suite closed by one `overall` row per method, and
    last one `all`/`all` row per method. Sums are taken over the questions of the row; MAT and acceptance
    over all of their steps (the prefill counts as one step: accept length 1, no draft), step times
    over their decoding steps only (each turn's prefill has its own column).

    Columns:
      lossless_method      the method claims to be lossless (answer field `lossless_method`; a missing
                           field reads as true). Lossy methods are never ranked as "best lossless".
      baseline             transformers' own `generate` run by `eval --baselines` (answer field
                           `baseline`), shown beside `ar` with its speedup over `ar` but never ranked.
      questions            answered questions in the row (each counted once, whatever its repeats).
      new_tokens           Σ generated tokens (the recorded `new_tokens` of every turn).
      steps                Σ decoding steps = target forwards, prefill included (`decoding_steps`).
      mean_accepted_length new_tokens / steps: tokens committed per target forward, bonus token
                           included, so `ar` scores exactly 1.00.
      acceptance_rate      Σ accepted draft tokens / Σ draft nodes, where a step accepted
                           accept_length - 1 drafts (clipped at 0). NaN when nothing was drafted (`ar`).
      accepted_per_depth   Σ accepted draft tokens / Σ draft depth: the accepted share of the longest
                           draft path. A 64-node tree with one useful branch looks bad by the plain
                           rate by construction; this one compares trees with chains.
      tokens_per_s         Σ new_tokens / Σ wall_time (ratio of totals over the row's questions).
      speedup              ratio of totals over the questions that both this method and `ar` answered
                           in the same suite: (Σnew / Σwall) of the method / (Σnew / Σwall) of `ar`.
      speedup_mean         Spec-Bench's speed.py arithmetic on those same questions: the mean of the
                           method's per-question tok/s over the mean of `ar`'s per-question tok/s, taken
                           per repeat and averaged over repeats (as its get_mean_speedup does over runs).
                           Tokens are our recorded ids for both sides (speed.py re-tokenises ar's text).
      lossless             fraction of those questions whose output token ids, over all turns, equal
                           `ar`'s. Questions without recorded ids on either side are left out.
      t_draft_ms, t_verify_ms, t_other_ms
                           mean milliseconds per decoding step (prefills left out; the drafter's
                           setup for a turn, timed in its prefill step, counts as drafting) spent drafting, in
                           the target's verification forward and the verifier's reads, and on
                           everything else (KV compaction, the drafter's update, bookkeeping). A
                           prefill is one long forward per turn: averaged in, it made long-prompt
                           tasks look like slow verification (Spec-Bench rag: 6.2 ms per pld step
                           with it, 2.3 without, on the 2026-12-03 H200 run).
      overhead_frac        (t_draft + t_other) / (t_draft + t_verify + t_other) over the decoding
                           steps: the share of a step outside the target forward.
      prefill_ms           mean milliseconds of a turn's prefill forward (a step of its own, the
                           first of each turn; the same work for every method).
      draft_host_ratio     t_draft / the GPU time of the draft runners' graph forwards inside it: 1.0
                           means drafting is nothing but its forwards; NaN where not measured (CPU,
                           methods without a draft runner).
    Without `ar` answers, speedup, speedup_mean and lossless are NaN.
    """
    questions = per_question(records)
    methods = _method_order(questions["method"].unique(), set(questions.loc[questions["baseline"], "method"]))
    suites = sorted(questions["suite"].unique(), key=str)
    rows: list[dict[str, Any]] = []
    for suite in suites:
        in_suite = questions[questions["suite"] == suite]
        for category in sorted(in_suite["category"].unique(), key=str):
            in_category = in_suite[in_suite["category"] == category]
            rows += _rows_per_method(in_category, suite, category, methods)
        rows += _rows_per_method(in_suite, suite, OVERALL, methods)
    rows += _rows_per_method(questions, ALL, ALL, methods)
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype(
        {
            "questions": "int64",
            "new_tokens": "int64",
            "steps": "int64",
            "lossless_method": bool,
            "baseline": bool,
        }
    )


def per_question(records: Iterable[dict]) -> pd.DataFrame:
    """One row per answered question with its sums, paired with `ar`'s answer to the same question.

    One row per (question, repeat) when the run has repeats; each pairs with ar's answer of the same repeat.
    Extra columns: `paired` (ar answered it too), `ar_new_tokens`, `ar_wall_time`, `speed_ratio`
    (this question's tok/s over ar's) and `same_output` (1.0 / 0.0, NaN when unpaired or ids are missing).
    """
    rows = [_question_row(record) for record in records]
    if not rows:
        raise SpecbenchError("no answer records to summarise")
    key = ("suite", "question_id", "repeat")
    baseline = {tuple(row[k] for k in key): row for row in rows if row["method"] == BASELINE}
    paired_rows = []
    for row in rows:
        base = baseline.get(tuple(row[k] for k in key))
        ids, base_ids = row["output_ids"], base["output_ids"] if base else None
        paired_rows.append(
            {
                **{key: value for key, value in row.items() if key != "output_ids"},
                "paired": base is not None,
                "ar_new_tokens": base["new_tokens"] if base else NAN,
                "ar_wall_time": base["wall_time"] if base else NAN,
                "speed_ratio": _ratio(
                    _ratio(row["new_tokens"], row["wall_time"]),
                    _ratio(base["new_tokens"], base["wall_time"]) if base else NAN,
                ),
                "same_output": NAN if ids is None or base_ids is None else float(ids == base_ids),
            }
        )
    return pd.DataFrame(paired_rows)


def _question_row(record: dict) -> dict[str, Any]:
    suite, method, qid = record.get("suite"), record.get("method"), record.get("question_id")
    try:
        choice = record["choices"][0]
        # The per-step lists are optional so that plain Spec-Bench answer files still summarise. They run
        # over every turn's steps in order, each turn's first step its prefill.
        timed = [choice.get(key) or [] for key in ("t_draft", "t_verify", "t_other")]
        prefills = prefill_steps(choice["decoding_steps"], max(len(t) for t in timed))
        decoding = [[t for i, t in enumerate(times) if i not in prefills] for times in timed]
        output_ids = choice.get("output_ids")
        return {
            "suite": str(suite),
            "method": str(method),
            "question_id": qid,
            "repeat": int(record.get("repeat") or 0),
            "category": str(record.get("category", "")),
            "lossless_method": bool(record.get("lossless_method", True)),
            "baseline": bool(record.get("baseline", False)),
            "new_tokens": int(sum(choice["new_tokens"])),
            "steps": int(sum(choice["decoding_steps"])),
            "wall_time": float(sum(choice["wall_time"])),
            "accepted": int(sum(max(int(n) - 1, 0) for n in choice.get("accept_lengths") or [])),
            "draft_nodes": int(sum(choice.get("draft_nodes") or [])),
            "draft_depth": int(sum(choice.get("draft_depth") or [])),
            # Every step's, the prefill's included: its drafting time is the drafter's setup for the
            # turn, drafting spread over the turn's steps like the rest of it.
            "t_draft": float(sum(timed[0])),
            "t_verify": float(sum(decoding[1])),
            "t_other": float(sum(decoding[2])),
            "t_prefill": float(sum(timed[1][i] for i in prefills if i < len(timed[1]))),
            "prefills": sum(i < len(timed[1]) for i in prefills),
            "t_draft_forward": float(sum(choice["t_draft_forward"])) if "t_draft_forward" in choice else NAN,
            "timed_steps": max(len(t) for t in decoding),
            "output_ids": None if output_ids is None else [list(map(int, turn)) for turn in output_ids],
        }
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise SpecbenchError(
            f"answer for question {qid!r} in {suite}/{method} is malformed ({type(err).__name__}: {err}); "
            "expected the fields listed in docs/results.md"
        ) from None


def prefill_steps(decoding_steps: list[int], recorded: int) -> set[int]:
    """Indices of the turns' prefill steps in the flat per-step lists (none when nothing was recorded)."""
    starts, at = set(), 0
    for n in decoding_steps:
        if at < recorded:
            starts.add(at)
        at += int(n)
    return starts


def _rows_per_method(questions: pd.DataFrame, suite: str, category: str, methods: list[str]) -> list[dict]:
    rows = []
    for method in methods:
        group = questions[questions["method"] == method]
        if len(group):
            rows.append({"suite": suite, "category": category, "method": method, **_aggregate(group)})
    return rows


def _aggregate(g: pd.DataFrame) -> dict[str, Any]:
    paired = g[g["paired"]]
    same = paired["same_output"].dropna()
    t_draft, t_verify, t_other = (float(g[key].sum()) for key in ("t_draft", "t_verify", "t_other"))
    timed_steps = int(g["timed_steps"].sum())
    new_tokens, steps, accepted = int(g["new_tokens"].sum()), int(g["steps"].sum()), int(g["accepted"].sum())
    return {
        "lossless_method": bool(g["lossless_method"].all()),
        "baseline": bool(g["baseline"].any()),
        "questions": int(g[["suite", "question_id"]].drop_duplicates().shape[0]),
        "new_tokens": new_tokens,
        "steps": steps,
        "mean_accepted_length": _ratio(new_tokens, steps),
        "acceptance_rate": _ratio(accepted, g["draft_nodes"].sum()),
        "accepted_per_depth": _ratio(accepted, g["draft_depth"].sum()),
        "tokens_per_s": _ratio(new_tokens, g["wall_time"].sum()),
        "speedup": _ratio(
            _ratio(paired["new_tokens"].sum(), paired["wall_time"].sum()),
            _ratio(paired["ar_new_tokens"].sum(), paired["ar_wall_time"].sum()),
        ),
        "speedup_mean": speed_py_speedup(paired),
        "lossless": float(same.mean()) if len(same) else NAN,
        "t_draft_ms": 1000 * _ratio(t_draft, timed_steps),
        "t_verify_ms": 1000 * _ratio(t_verify, timed_steps),
        "t_other_ms": 1000 * _ratio(t_other, timed_steps),
        "overhead_frac": _ratio(t_draft + t_other, t_draft + t_verify + t_other),
        "prefill_ms": 1000 * _ratio(float(g["t_prefill"].sum()), int(g["prefills"].sum())),
        # Drafting time over the GPU time of the draft forwards in it (NaN where not measured).
        "draft_host_ratio": _ratio(t_draft, float(g["t_draft_forward"].sum(min_count=1))),
    }


def speed_py_speedup(paired: pd.DataFrame) -> float:
    """Spec-Bench's speed.py speedup over the paired answers: per repeat, mean(tok/s of the method's
    answers) / mean(tok/s of ar's answers to the same questions); then the mean over repeats."""
    per_repeat = []
    for _, run in paired.groupby("repeat"):
        mine = [_ratio(n, t) for n, t in zip(run["new_tokens"], run["wall_time"], strict=True)]
        ar = [_ratio(n, t) for n, t in zip(run["ar_new_tokens"], run["ar_wall_time"], strict=True)]
        speedup = _ratio(sum(mine) / len(mine), sum(ar) / len(ar)) if mine else NAN
        if math.isfinite(speedup):
            per_repeat.append(speedup)
    return sum(per_repeat) / len(per_repeat) if per_repeat else NAN


def _ratio(num: float, den: float) -> float:
    """num / den, or NaN when the denominator is zero or either side is not a finite number."""
    num, den = float(num), float(den)
    if den == 0 or not math.isfinite(num) or not math.isfinite(den):
        return NAN
    return num / den


def _method_order(methods: Iterable[str], baselines: set[str] = frozenset()) -> list[str]:
    # `ar` first, then transformers' baselines beside it, so every table reads "ar and the
    # references, then what beats them".
    return sorted(methods, key=lambda m: (m != BASELINE, m not in baselines, m))
