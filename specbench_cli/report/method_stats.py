"""Per-method statistics: what each drafter counted (`Drafter.stat_names`), summed over a run.

Every answer record carries `choices[0].method_stats`, the drafter's counters for that answer
(retrieval time, candidate sources, ReSpec's relaxed accepts, SAM's fallback steps, ...). Here they
are summed per method and divided by the method's drafting steps (decoding steps minus the prefill
of each turn), so methods and runs of different lengths compare: `*_seconds` become milliseconds per
step (`retrieval_ms`), counts become a mean per step (a fraction of steps for the `*_steps` counters).
"""

from __future__ import annotations

import math
from collections import defaultdict


def method_stats_rows(records: list[dict]) -> list[dict]:
    """One row per (method, statistic): its total and its mean per drafting step."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    steps: dict[str, int] = defaultdict(int)
    for record in records:
        choice = record["choices"][0]
        stats = choice.get("method_stats")
        if not isinstance(stats, dict) or not stats:
            continue
        method = record["method"]
        steps[method] += sum(choice["decoding_steps"]) - len(choice["decoding_steps"])
        for name, value in stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                totals[method][name] += value
    rows = []
    for method, named in totals.items():
        for name, total in named.items():
            seconds = name.endswith("_seconds")
            scale = 1e3 if seconds else 1.0  # times are shown in milliseconds
            rows.append(
                {
                    "method": method,
                    "statistic": name.removesuffix("_seconds") + "_ms" if seconds else name,
                    "total": total * scale,
                    "per_step": total * scale / steps[method] if steps[method] else float("nan"),
                    "steps": steps[method],
                }
            )
    return rows


def render_method_stats(rows: list[dict], console) -> None:
    from . import print_table

    cells = [
        (r["method"], r["statistic"], f"{r['total']:.4g}", f"{r['per_step']:.3f}", str(r["steps"]))
        for r in rows
    ]
    columns = ("method", "statistic", "total", "per step", "drafting steps")
    print_table(console, "method statistics (the drafters' own counters)", columns, cells)
