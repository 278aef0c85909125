"""Repeats (`eval --repeats N`): the spread of tokens/s and speedup over runs, and identical ids.

Usage: `spread = repeat_spread(records)`. Each repeat is summarised on its own (`metrics.summarise`
on that repeat's answers, ar's of the same repeat as the reference), then per (suite, category,
method) the repeats' values give mean, sample standard deviation (n - 1, as Spec-Bench's speed.py)
and coefficient of variation (std / mean). A speedup whose mean +- std contains 1.0 is flagged:
the run cannot tell that method from `ar`. Greedy decoding is deterministic, so every repeat of an
answer must have the same token ids; `identical_ids` counts the questions where they do.

An interrupted run (a pass cut short, not yet resumed) has questions answered in fewer repeats than
others. Each repeat's overall row would then average another mix of questions (a late pass that got
only to the short answers looks faster), and that difference would pass for run-to-run noise. So
the spread counts only questions that every method answered in every repeat, and says how many
it left out (`partial_questions`); the pooled tables still use every answer.
"""

from __future__ import annotations

import math
from typing import Any

from .metrics import BASELINE, _ratio, summarise
from .tables import _finite

NAN = float("nan")
KEYS = ("suite", "category", "method")


def repeat_spread(records: list[dict]) -> dict[str, Any]:
    """{"repeats": N, "rows": [per (suite, category, method)], "identical_ids": [per method]}."""
    records, partial = complete_questions(records)
    by_repeat: dict[int, list[dict]] = {}
    for r in records:
        by_repeat.setdefault(int(r.get("repeat") or 0), []).append(r)
    values: dict[tuple, dict[str, list[float]]] = {}
    for repeat in sorted(by_repeat):
        df = summarise(by_repeat[repeat])
        for row in df.to_dict("records"):
            slot = values.setdefault(tuple(row[k] for k in KEYS), {"tokens_per_s": [], "speedup": []})
            for column in slot:
                if _finite(row[column]):
                    slot[column].append(float(row[column]))
    rows = []
    for key, slot in values.items():
        row: dict[str, Any] = dict(zip(KEYS, key, strict=True))
        row["repeats"] = len(slot["tokens_per_s"])
        for column, xs in slot.items():
            mean, std = mean_std(xs)
            row |= {f"{column}_mean": mean, f"{column}_std": std, f"{column}_cv": _ratio(std, mean)}
        row["speedup_crosses_1"] = bool(
            key[2] != BASELINE
            and _finite(row["speedup_std"])
            and row["speedup_mean"] - row["speedup_std"] <= 1.0 <= row["speedup_mean"] + row["speedup_std"]
        )
        rows.append(row)
    return {
        "repeats": len(by_repeat),
        "partial_questions": partial,
        "rows": rows,
        "identical_ids": identical_ids(records),
    }


def complete_questions(records: list[dict]) -> tuple[list[dict], int]:
    """The records of questions that every method answered in every repeat, and how many questions
    (suite, question_id) fell short and were left out."""
    repeats = {int(r.get("repeat") or 0) for r in records}
    methods = {str(r["method"]) for r in records}
    seen: dict[tuple, set] = {}
    for r in records:
        seen.setdefault((r["suite"], r["question_id"]), set()).add(
            (str(r["method"]), int(r.get("repeat") or 0))
        )
    need = len(repeats) * len(methods)
    full = {q for q, runs in seen.items() if len(runs) == need}
    return [r for r in records if (r["suite"], r["question_id"]) in full], len(seen) - len(full)


def identical_ids(records: list[dict]) -> list[dict[str, Any]]:
    """Per method: questions answered more than once, and how many of them have the same ids every time."""
    ids: dict[str, dict[tuple, list]] = {}
    for r in records:
        output = r["choices"][0].get("output_ids")
        if output is not None:
            ids.setdefault(str(r["method"]), {}).setdefault((r["suite"], r["question_id"]), []).append(output)
    out = []
    for method, by_question in sorted(ids.items()):
        repeated = [runs for runs in by_question.values() if len(runs) > 1]
        same = sum(all(run == runs[0] for run in runs) for runs in repeated)
        out.append({"method": method, "repeated_questions": len(repeated), "identical": same})
    return out


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); std is NaN for fewer than two values."""
    if not xs:
        return NAN, NAN
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, NAN
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
