"""Validation of answer records before they are aggregated: a bad number must never reach a speedup.

Usage: `problem = record_problem(record)` is None for a good record, else (field, what is wrong).
The report leaves a malformed record out, says so in one warning line per record (file, line number,
field) and counts it in summary.json (docs/results.md, "Malformed answer records").

Why: json reads NaN and Infinity, and a run writes them if a clock misbehaves; one NaN wall_time made
`ar` look infinitely slow, one negative count made a method look faster. Every number that feeds a
metric is checked here, and the lists that are summed together must describe the same turns and steps.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

# One value per turn of the question; the first three are required by the metrics.
PER_TURN_REQUIRED = ("new_tokens", "wall_time", "decoding_steps")
PER_TURN_OPTIONAL = ("turns", "prefill_time", "output_ids", "stop_reason", "top1_logit", "top2_margin")
# One value per decoding step, flat over all turns (all optional: plain Spec-Bench files lack most).
PER_STEP = (
    "accept_lengths", "draft_nodes", "draft_depth", "accepted", "t_draft", "t_verify", "t_other", "t_draft_forward",
    "draft_forwards", "draft_forward_inputs",
)  # fmt: skip
COUNTS = frozenset(
    {
        "new_tokens",
        "decoding_steps",
        "accept_lengths",
        "draft_nodes",
        "draft_depth",
        "accepted",
        "draft_forwards",
    }
)
SECONDS = frozenset({"wall_time", "prefill_time", "t_draft", "t_verify", "t_other", "t_draft_forward"})


@dataclass(frozen=True)
class BadRecord:
    """A record left out of the report, and where it is."""

    file: str  # relative to the run folder, e.g. answers/s1/pld.jsonl
    line: int  # 1-based line number in that file
    question_id: Any
    field: str
    problem: str

    def message(self) -> str:
        return (
            f"{self.file} line {self.line} (question {self.question_id!r}): {self.field} {self.problem}; "
            "record excluded from the report"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def record_problem(record: dict) -> tuple[str, str] | None:
    """(field, what is wrong) for the first problem of an answer record, or None when it is sound."""
    if "lossless_method" in record and not isinstance(record["lossless_method"], bool):
        return "lossless_method", f"is {record['lossless_method']!r}, not true or false"
    choices = record.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return "choices", "is not a list whose first item is an object"
    choice = choices[0]
    for check in (_per_turn_lengths, _numbers, _turn_consistency, _step_lengths, _draft_forward_inputs):
        problem = check(choice)
        if problem is not None:
            field, what = problem
            return f"choices[0].{field}", what
    return None


def _per_turn_lengths(choice: dict) -> tuple[str, str] | None:
    for key in PER_TURN_REQUIRED:
        if not isinstance(choice.get(key), list) or not choice[key]:
            return key, "is missing or empty (one value per turn is required)"
    turns = len(choice["new_tokens"])
    for key in PER_TURN_REQUIRED + PER_TURN_OPTIONAL:
        value = choice.get(key)
        if value is None and key in PER_TURN_OPTIONAL:
            continue
        if not isinstance(value, list) or len(value) != turns:
            got = len(value) if isinstance(value, list) else type(value).__name__
            return key, f"has {got} values for {turns} turns (new_tokens has {turns})"
    return None


def _numbers(choice: dict) -> tuple[str, str] | None:
    for key in sorted(COUNTS | SECONDS):
        values = choice.get(key)
        if values is None:
            continue
        if not isinstance(values, list):
            return key, f"is a {type(values).__name__}, not a list"
        ok = _is_count if key in COUNTS else _is_seconds
        for i, value in enumerate(values):
            if not ok(value):
                kind = "a whole number" if key in COUNTS else "a finite number"
                return f"{key}[{i}]", f"is {value!r}, not {kind} >= 0"
    return None


def _turn_consistency(choice: dict) -> tuple[str, str] | None:
    for i, (new, wall) in enumerate(zip(choice["new_tokens"], choice["wall_time"], strict=True)):
        if new > 0 and wall == 0:
            return f"wall_time[{i}]", f"is 0 for a turn that generated {new} tokens"
    ids = choice.get("output_ids")
    if ids is not None:
        for i, (turn, new) in enumerate(zip(ids, choice["new_tokens"], strict=True)):
            if not isinstance(turn, list) or not all(_is_count(t) for t in turn):
                return f"output_ids[{i}]", "is not a list of token ids"
            if len(turn) != new:
                return f"output_ids[{i}]", f"holds {len(turn)} ids, but new_tokens[{i}] is {new}"
    return None


def _step_lengths(choice: dict) -> tuple[str, str] | None:
    present = {key: choice[key] for key in PER_STEP if choice.get(key) is not None}
    if not all(isinstance(v, list) for v in present.values()):
        return next(k for k, v in present.items() if not isinstance(v, list)), "is not a list"
    lengths = {key: len(values) for key, values in present.items()}
    if not lengths:
        return None
    # specbench's own records (they time each step) also tie the steps to the turns. Plain
    # Spec-Bench files count their steps their own way: their lists need only agree with each other.
    timed = "t_verify" in present
    steps = sum(choice["decoding_steps"])
    expected = steps if timed else Counter(lengths.values()).most_common(1)[0][0]
    for key, n in lengths.items():
        if n != expected:
            why = f"decoding_steps sums to {steps}" if timed else f"the other per-step lists have {expected}"
            return key, f"has {n} values, but {why}"
    if timed:
        if "accept_lengths" in present and sum(present["accept_lengths"]) != sum(choice["new_tokens"]):
            return (
                "accept_lengths",
                f"commits {sum(present['accept_lengths'])} tokens, but new_tokens sums to "
                f"{sum(choice['new_tokens'])}",
            )
    return None


def _draft_forward_inputs(choice: dict) -> tuple[str, str] | None:
    """Each step's list of draft-forward sizes: whole numbers >= 1, as many as its draft_forwards."""
    inputs = choice.get("draft_forward_inputs")
    if inputs is None:
        return None
    forwards = choice.get("draft_forwards")
    if forwards is None:
        return "draft_forward_inputs", "is given without draft_forwards"
    for i, step in enumerate(inputs):
        if not isinstance(step, list) or not all(_is_count(n) and n > 0 for n in step):
            return f"draft_forward_inputs[{i}]", f"is {step!r}, not a list of whole numbers >= 1"
        if len(step) != forwards[i]:
            return (
                f"draft_forward_inputs[{i}]",
                f"lists {len(step)} forwards, but draft_forwards[{i}] is {forwards[i]}",
            )
    return None


def _is_count(value: Any) -> bool:
    # bool is an int subclass: `true` is not a token count.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_seconds(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )
