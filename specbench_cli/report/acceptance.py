"""Where acceptance happens: per draft position (depth), the accepted-length histogram, and by task.

Usage: `rows = acceptance_rows(records)`, each record one answer line carrying `suite` and `method`.
Everything is recomputed from the per-step lists of the answer records (`draft_depth` and `accepted`
per step; files without `accepted` fall back to `accept_lengths - 1`). Only steps that drafted
something count: the prefill and steps with an empty draft (all of `ar`'s) have no draft position.

Definitions (docs/results.md, "Acceptance by draft position"), over the drafting steps of a row:
  drafted[d]      steps whose draft reached depth d (a chain of length >= d, or a tree that deep)
  reached[d]      steps that accepted at least d draft tokens
  rate[d]         reached[d] / drafted[d]: how often position d was accepted when it was drafted
  conditional[d]  reached[d] / (steps that accepted d-1 tokens and drafted depth >= d): the chance
                  of accepting position d once positions 1..d-1 were accepted
  histogram[k]    drafting steps that accepted exactly k draft tokens (the bonus token not counted)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .metrics import ALL, OVERALL, _method_order

NAN = float("nan")


def drafting_steps(record: dict) -> list[tuple[int, int]]:
    """(draft depth, accepted draft tokens) of every step of the answer that drafted something."""
    choice = record["choices"][0]
    depths = choice.get("draft_depth") or []
    accepted = choice.get("accepted")
    if accepted is None:  # plain Spec-Bench files: the committed length, bonus included
        accepted = [max(int(n) - 1, 0) for n in choice.get("accept_lengths") or []]
    return [(int(d), int(a)) for d, a in zip(depths, accepted, strict=False) if int(d) > 0]


def position_stats(steps: list[tuple[int, int]]) -> dict[str, Any]:
    """Per-depth counts and rates and the accepted-length histogram of a list of drafting steps."""
    max_depth = max((d for d, _ in steps), default=0)
    per_depth = []
    for d in range(1, max_depth + 1):
        drafted = sum(1 for depth, _ in steps if depth >= d)
        reached = sum(1 for _, acc in steps if acc >= d)
        tried = sum(1 for depth, acc in steps if depth >= d and acc >= d - 1)
        per_depth.append(
            {
                "depth": d,
                "drafted": drafted,
                "reached": reached,
                "rate": reached / drafted if drafted else NAN,
                "conditional": reached / tried if tried else NAN,
            }
        )
    histogram = [0] * (max((a for _, a in steps), default=-1) + 1)
    for _, acc in steps:
        histogram[acc] += 1
    return {"drafting_steps": len(steps), "per_depth": per_depth, "histogram": histogram}


def acceptance_rows(records: Iterable[dict]) -> list[dict[str, Any]]:
    """One row per (suite, category, method), per (suite, `overall`, method) and per (`all`, `all`,
    method), in the summary's order, for methods that drafted at all (never `ar`)."""
    steps: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
    for r in records:
        suite, category, method = str(r["suite"]), str(r.get("category", "")), str(r["method"])
        mine = drafting_steps(r)
        for key in ((suite, category, method), (suite, OVERALL, method), (ALL, ALL, method)):
            steps.setdefault(key, []).extend(mine)
    methods = _method_order({m for _, _, m in steps})
    suites = sorted({s for s, _, _ in steps if s != ALL}, key=str)
    rows = []
    for suite in [*suites, ALL]:
        categories = sorted({c for s, c, _ in steps if s == suite and c not in (OVERALL, ALL)}, key=str)
        for category in [*categories, OVERALL] if suite != ALL else [ALL]:
            for method in methods:
                mine = steps.get((suite, category, method))
                if mine:
                    rows.append(
                        {"suite": suite, "category": category, "method": method, **position_stats(mine)}
                    )
    return rows
