"""Answers timed with a CUDA graph capture in them.

`eval` captures every graph a timed answer could need before the first one (the runners'
`prepare_seen`) and still counts captures around each answer: one that happens on the clock is written
as the answer's `graph_captures`, and the report names those answers (summary.json `graph_captures`, a
warning under the headline), because their wall time includes a capture, maybe a compilation.
"""

from __future__ import annotations


def captured_on_the_clock(records: list[dict]) -> list[dict]:
    """Answers whose timed generation captured CUDA graphs (`graph_captures`, written by eval): their
    wall time includes a capture, maybe a compilation, so their speed is not the method's."""
    rows = []
    for r in records:
        choice = (r.get("choices") or [{}])[0]
        if choice.get("graph_captures"):
            rows.append(
                {
                    "suite": r.get("suite"),
                    "method": r.get("method"),
                    "question_id": r.get("question_id"),
                    "repeat": int(r.get("repeat") or 0),
                    "graph_captures": int(choice["graph_captures"]),
                    "wall_time": float(sum(choice.get("wall_time") or [])),
                }
            )
    return rows


def captures_line(rows: list[dict]) -> str:
    """One sentence naming the answers timed with a graph capture in them ("" when there are none)."""
    if not rows:
        return ""
    named = ", ".join(f"{r['suite']}/{r['method']} question {r['question_id']}" for r in rows[:5])
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    return (
        f"warning: {len(rows)} answer(s) captured CUDA graphs on the clock, so their time includes "
        f"graph capture or compilation: {named}{more} (summary.json `graph_captures`)."
    )
