"""`specbench report`: read a run folder's answers, compute the summary, write tables and plots.

Usage: `df = make_report(Path("results/run1"))`. The CLI imports this inside the command body only,
because it pulls in pandas (and matplotlib when writing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..results import RunPaths, read_answer_lines
from ..types import SpecbenchError
from .captures import captured_on_the_clock, captures_line
from .method_stats import method_stats_rows, render_method_stats
from .validate import BadRecord, record_problem


def make_report(run_dir: Path, console: Any = None, write: bool = True) -> Any:
    """Summarise every answer file of `run_dir`, write summary.{json,md,csv,tex}, plots/*.png and
    report.html (when `write`), print the table on `console` (a rich Console on stdout when None) and
    return the summary DataFrame (columns in `metrics.COLUMNS`).

    summary.json also gets the sections `acceptance` (per draft position, accepted-length histogram,
    by task), `repeats` (spread over `eval --repeats`, identical ids) and `divergence` (the audit).
    """
    from rich.console import Console

    from .acceptance import acceptance_rows
    from .divergence import divergence_audit
    from .html import write_html
    from .metrics import summarise
    from .plots import write_plots
    from .spread import repeat_spread
    from .tables import render, write_tables

    console = console if console is not None else Console()
    paths = RunPaths(Path(run_dir))
    records, excluded = read_run_records(paths)
    for bad in excluded:
        console.print(f"warning: {bad.message()}", markup=False, highlight=False, soft_wrap=True)
    df = summarise(records)
    config = _run_config(paths)
    sections = {
        "acceptance": acceptance_rows(records),
        "repeats": repeat_spread(records),
        "divergence": divergence_audit(records, config.get("dtype"), config.get("temperature") or 0.0),
        "graph_captures": captured_on_the_clock(records),
    }
    quality = lossy_quality_rows(records, paths, console)
    costs = method_costs(records, df, paths)
    stats = method_stats_rows(records)
    if write:
        write_tables(df, paths, excluded, sections)
        write_plots(df, paths.plots_dir, sections["acceptance"], sections["divergence"])
        write_html(paths, df, sections)
        if quality:
            write_quality(quality, paths)
        if costs:
            write_costs(costs, paths)
        if stats:
            write_rows(
                paths, "method_stats", "# Method statistics: the drafters' own counters", "rows", stats
            )
    render(df, console)
    for line in repeat_and_divergence_lines(sections):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if excluded:
        console.print(
            f"{len(excluded)} malformed answer record(s) excluded (warnings above; listed in summary.json)",
            markup=False,
            highlight=False,
        )
    if quality:
        render_quality(quality, console)
    if costs:
        render_costs(costs["methods"], console)
    if stats:
        render_method_stats(stats, console)
    return df


def repeat_and_divergence_lines(sections: dict) -> list[str]:
    """What the screen says about repeats (spread, identical ids), the divergence audit and answers
    timed with a graph capture."""
    lines = [captures_line(sections["graph_captures"])] if sections.get("graph_captures") else []
    repeats = sections["repeats"]
    if repeats["repeats"] > 1:
        same = [m for m in repeats["identical_ids"] if m["repeated_questions"]]
        differ = [
            f"{m['method']} ({m['repeated_questions'] - m['identical']})"
            for m in same
            if m["identical"] < m["repeated_questions"]
        ]
        lines.append(
            f"{repeats['repeats']} repeats: token ids identical across repeats for every question of every method"
            if not differ
            else f"{repeats['repeats']} repeats: token ids DIFFER across repeats for: {', '.join(differ)} question(s)"
        )
        crossing = sorted({r["method"] for r in repeats["rows"] if r["speedup_crosses_1"]})
        if crossing:
            lines.append(
                f"speedup within one std of 1.0 (not distinguishable from ar): {', '.join(crossing)}"
            )
    for m in sections["divergence"]["methods"]:
        if m["diverged"]:
            lines.append(
                f"divergence audit, {m['method']}: {m['diverged']} of {m['compared']} answers differ from ar: "
                f"{m['near-tie']} near-tie, {m['clear']} at a clear margin (bug), {m['unknown']} without margins"
            )
    return lines


def _run_config(paths: RunPaths) -> dict:
    import json

    try:
        return json.loads(paths.config.read_text())
    except (OSError, ValueError):
        return {}


def method_costs(records: list[dict], df: Any, paths: RunPaths) -> dict:
    """Cost ratios and predicted speedups (report/costs.py) from the run's forward-cost probe:
    {"forward_costs": ..., "methods": rows}, or {} for a run without a probe."""
    import json

    from .costs import cost_rows, drafts_with_head
    from .metrics import ALL

    try:
        config = json.loads(paths.config.read_text())
    except (OSError, ValueError):
        return {}
    probe = config.get("forward_costs")
    params = config.get("methods_params") or {}
    on_head = {m for m, p in params.items() if drafts_with_head(p)}
    pooled = df[(df["suite"] == ALL) & (df["category"] == ALL)]
    rows = cost_rows(records, probe, dict(zip(pooled["method"], pooled["speedup"])), on_head)
    return {"forward_costs": probe, "methods": rows} if rows else {}


def write_costs(costs: dict, paths: RunPaths) -> None:
    write_rows(
        paths,
        "costs",
        "# Step costs: draft/target ratio c and the speedup the measured MAT predicts\n\n"
        "predicted speedup = MAT * t_target(1) / (each draft forward's t_draft(its inputs) + t_target(verified inputs)); "
        "see docs/results.md",
        "methods",
        costs["methods"],
        {"forward_costs": costs["forward_costs"]},
    )


def render_costs(rows: list[dict], console: Any) -> None:
    columns = (
        "method",
        "drafts with",
        "MAT",
        "draft fwd/step",
        "c",
        "verify / step",
        "draft ms/step",
        "predicted",
        "measured",
    )
    cells = [
        (
            r["method"],
            r.get("draft_network", ""),
            f"{r['decode_mat']:.2f}",
            f"{r['draft_forwards_per_step']:.2f}",
            f"{r['c']:.3f}",
            f"{r['verify_cost']:.2f}",
            f"{r['draft_ms_per_step']:.2f}",
            f"{r['predicted_speedup']:.2f}x",
            f"{r['speedup']:.2f}x",
        )
        for r in rows
    ]
    print_table(console, "step costs: c = draft/target step, and the speedup MAT predicts", columns, cells)


def read_run_records(paths: RunPaths) -> tuple[list[dict], list[BadRecord]]:
    """The valid answer records of a run folder (each with its `suite` and `method`) and the malformed
    ones left out; SpecbenchError when the folder is no run or holds no valid answer."""
    if not paths.root.is_dir():
        raise SpecbenchError(
            f"run folder '{paths.root}' does not exist; pass a folder made by `specbench eval --out`"
        )
    files = list(paths.iter_answer_files())
    if not files:
        raise SpecbenchError(
            f"'{paths.root}' is not a run folder with answers: no answers/<suite>/<method>.jsonl files in it"
        )
    records, excluded = read_valid_records(paths, files)
    if not records:
        if excluded:
            raise SpecbenchError(
                f"all {len(excluded)} answer records in '{paths.answers_dir}' are malformed, "
                f"e.g. {excluded[0].message()}"
            )
        raise SpecbenchError(f"the answer files in '{paths.answers_dir}' hold no answers yet")
    return records, excluded


def read_valid_records(paths: RunPaths, files) -> tuple[list[dict], list[BadRecord]]:
    """Every answer record of `files` that passes `validate.record_problem`, and the ones that did not.

    A malformed record is left out rather than failing the whole report: one bad line in a long run
    should cost that question, visibly, not every other number.
    """
    records: list[dict] = []
    excluded: list[BadRecord] = []
    for suite, method, path in files:
        for kept in read_answer_lines(path):
            problem = record_problem(kept.record)
            if problem is not None:
                where = str(path.relative_to(paths.root))
                excluded.append(BadRecord(where, kept.line, kept.record.get("question_id"), *problem))
                continue
            # The file's place names its suite and method, so renamed or copied files group as they lie.
            records.append({**kept.record, "suite": suite, "method": method})
    return records, excluded


def lossy_quality_rows(records: list[dict], paths: RunPaths, console: Any) -> list[dict]:
    """Agreement with `ar` and a task figure for each lossy method (none: an empty list, no work).

    HumanEval pass@1 comes from the scores stored when the answers were made: nothing runs here.
    """
    if all(r.get("lossless_method", True) for r in records):
        return []
    from ..quality import lossy_quality
    from ..scoring.scores import read_scores

    scores, problems = read_scores(paths)
    rows = lossy_quality(records, scores)
    for row in rows:
        if row["quality_metric"] == "humaneval_pass@1" and row["scored"] < row["paired"]:
            problems.append(
                f"{row['suite']}/{row['method']}: {row['paired'] - row['scored']} of {row['paired']} answer "
                f"pairs have no stored score, so pass@1 is NaN; run `specbench score {paths.root}`"
            )
    for line in problems:
        console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    return rows


def write_quality(rows: list[dict], paths: RunPaths) -> None:
    """quality.json and quality.md beside the summary: lossy methods are judged by these, not by speed."""
    write_rows(paths, "quality", "# Lossy methods: agreement with ar and task quality", "lossy_methods", rows)


def write_rows(
    paths: RunPaths, stem: str, heading: str, key: str, rows: list[dict], extra: dict | None = None
) -> None:
    """`<stem>.json` ({key: rows} with NaN as null, plus `extra`) and `<stem>.md` (heading, then the table)."""
    import math

    import pandas as pd

    from ..results import write_json_atomic, write_text_atomic

    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    write_json_atomic(paths.root / f"{stem}.json", {**(extra or {}), key: clean})
    table = pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f")
    write_text_atomic(paths.root / f"{stem}.md", heading + "\n\n" + table + "\n")


def render_quality(rows: list[dict], console: Any) -> None:
    columns = (
        "suite", "method", "paired", "token agreement", "exact match", "quality metric", "quality", "ar's quality",
    )  # fmt: skip
    cells = [
        (
            r["suite"],
            r["method"],
            str(r["paired"]),
            f"{r['token_agreement']:.3f}",
            f"{r['exact_match']:.3f}",
            r["quality_metric"],
            f"{r['quality']:.3f}",
            f"{r['quality_ar']:.3f}",
        )
        for r in rows
    ]
    print_table(console, "lossy methods: agreement with ar and task quality", columns, cells)


def print_table(console: Any, title: str, columns: tuple[str, ...], cells: list[tuple[str, ...]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_style="bold")
    for col in columns:
        table.add_column(col)
    for row in cells:
        table.add_row(*row)
    console.print(table)
