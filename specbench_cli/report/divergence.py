"""Divergence audit: where a lossless method's output leaves `ar`'s, and how close ar's choice was there.

Usage: `audit = divergence_audit(records, dtype="bfloat16")`.

Greedy speculative decoding must reproduce `ar` token for token, but in bf16 a tree forward rounds
differently from a one-token forward, so two logits that are nearly equal can swap places. `eval`
records, for every token `ar` emits, ar's top-1 logit and its margin over the top-2 (`top1_logit`,
`top2_margin` in ar's answers). For every answer of a lossless method whose ids differ from ar's
(same suite, question and repeat) the audit finds the first divergent position and reads ar's margin
there:

  near-tie   margin <= NEAR_TIE_ULPS units in the last place of the run's dtype at the size of the
             top-1 logit: the two candidates are as close as the rounding of the logits themselves,
             and a different summation order (the tree forward's) can swap them. Numerics, not a bug.
  clear      a larger margin: rounding this size does not explain the swap. Flagged as a bug.
  unknown    ar's answer carries no margins (a run from before they were recorded).

Why 4 ulps: the logits are rounded to the dtype at the output (up to half an ulp each, one ulp
between two of them), and the hidden state they come from carries rounding of the same relative size
that differs between the two kinds of forward; 4 ulps leaves room for both. In bf16 one ulp is 2^-7
of the value's power of two, so the bound is 1.6-3.1 % of the top-1 logit; in float32 it is about
4.8e-7 relative, where a lossless method must not diverge at all.
"""

from __future__ import annotations

import math
from typing import Any

from .metrics import BASELINE

NEAR_TIE_ULPS = 4
# Relative spacing of representable numbers (2^-mantissa bits) per dtype.
EPSILON = {"bfloat16": 2.0**-7, "float16": 2.0**-10, "float32": 2.0**-23}


def ulp(value: float, dtype: str) -> float:
    """One unit in the last place of `dtype` at |value| (at least at 1.0, so tiny logits keep a bound)."""
    scale = max(abs(value), 1.0)
    return EPSILON.get(dtype, EPSILON["bfloat16"]) * 2.0 ** math.floor(math.log2(scale))


def first_divergence(ids: list[list[int]], ref: list[list[int]]) -> tuple[int, int] | None:
    """(turn, position) of the first token where `ids` leaves `ref`, or None when they are equal."""
    for turn, (mine, theirs) in enumerate(zip(ids, ref, strict=False)):
        for pos, (a, b) in enumerate(zip(mine, theirs, strict=False)):
            if a != b:
                return turn, pos
        if len(mine) != len(theirs):
            return turn, min(len(mine), len(theirs))
    return None if len(ids) == len(ref) else (min(len(ids), len(ref)), 0)


def divergence_audit(records: list[dict], dtype: str | None, temperature: float = 0.0) -> dict[str, Any]:
    """{"dtype", "near_tie_ulps", "methods": [counts per method], "divergences": [one per answer]}.

    Sampling runs (`temperature` > 0) are not audited: there ids may differ from ar's by design.
    """
    dtype = dtype if dtype in EPSILON else "bfloat16"
    if temperature and temperature > 0:
        return {
            "dtype": dtype,
            "near_tie_ulps": NEAR_TIE_ULPS,
            "methods": [],
            "divergences": [],
            "skipped": "sampling",
        }
    ar = {_key(r): r["choices"][0] for r in records if r["method"] == BASELINE}
    divergences, counts = [], {}
    for r in records:
        if r["method"] == BASELINE or r.get("baseline") or not r.get("lossless_method", True):
            continue
        ref = ar.get(_key(r))
        ids = r["choices"][0].get("output_ids")
        if ref is None or ids is None or ref.get("output_ids") is None:
            continue
        count = counts.setdefault(r["method"], {"method": r["method"], "compared": 0, "diverged": 0})
        count["compared"] += 1
        where = first_divergence(ids, ref["output_ids"])
        if where is None:
            continue
        count["diverged"] += 1
        divergences.append(_describe(r, ref, ids, where, dtype))
    for count in counts.values():
        for kind in ("near-tie", "clear", "unknown"):
            count[kind] = sum(1 for d in divergences if d["method"] == count["method"] and d["kind"] == kind)
    return {
        "dtype": dtype,
        "near_tie_ulps": NEAR_TIE_ULPS,
        "methods": sorted(counts.values(), key=lambda c: c["method"]),
        "divergences": divergences,
    }


def _describe(record: dict, ref: dict, ids: list, where: tuple[int, int], dtype: str) -> dict[str, Any]:
    turn, pos = where
    margin = top1 = None
    margins, tops = ref.get("top2_margin"), ref.get("top1_logit")
    if margins and tops and turn < len(margins) and pos < len(margins[turn]):
        margin, top1 = float(margins[turn][pos]), float(tops[turn][pos])
    bound = ulp(top1, dtype) if top1 is not None else None
    kind = "unknown" if margin is None else "near-tie" if margin <= NEAR_TIE_ULPS * bound else "clear"
    return {
        "suite": record["suite"],
        "method": record["method"],
        "question_id": record["question_id"],
        "repeat": int(record.get("repeat") or 0),
        "turn": turn,
        "position": pos,
        "ar_token": _token_at(ref["output_ids"], turn, pos),
        "method_token": _token_at(ids, turn, pos),
        "ar_top1_logit": top1,
        "ar_margin": margin,
        "margin_ulps": None if margin is None else margin / bound,
        "kind": kind,
    }


def _token_at(ids: list[list[int]], turn: int, pos: int) -> int | None:
    return ids[turn][pos] if turn < len(ids) and pos < len(ids[turn]) else None


def _key(record: dict) -> tuple:
    return record["suite"], record["question_id"], int(record.get("repeat") or 0)
