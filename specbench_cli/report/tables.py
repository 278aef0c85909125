"""Summary tables: files for people and programs (json, md, csv, tex) and the table on screen.

Usage: `write_tables(df, RunPaths(run_dir)); render(df, Console())`, with `df` from `metrics.summarise`.
summary.json/csv/md hold every row and column; summary.tex and the screen hold the headline columns.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import pandas as pd

from .. import __version__
from ..results import RunPaths, write_json_atomic, write_text_atomic
from .captures import captures_line
from .metrics import ALL, BASELINE, COLUMNS, OVERALL

# Digits after the point for each float column; every other column prints as it is.
DIGITS = {
    "mean_accepted_length": 2,
    "acceptance_rate": 3,
    "accepted_per_depth": 3,
    "tokens_per_s": 1,
    "speedup": 2,
    "speedup_mean": 2,
    "lossless": 3,
    "t_draft_ms": 2,
    "t_verify_ms": 2,
    "t_other_ms": 2,
    "overhead_frac": 3,
    "prefill_ms": 2,
    "draft_host_ratio": 2,
}

# The columns that fit on a screen and in a paper, with their short headers.
HEADLINE = {
    "suite": "suite",
    "category": "category",
    "method": "method",
    "questions": "n",
    "mean_accepted_length": "MAT",
    "acceptance_rate": "acc. rate",
    "accepted_per_depth": "acc./depth",
    "tokens_per_s": "tok/s",
    "speedup": "speedup",
    "speedup_mean": "speedup (mean)",
    "lossless": "lossless",
    "overhead_frac": "overhead",
}

LOSSY_MARK = " (lossy)"
BASELINE_MARK = " (baseline)"


def write_tables(
    df: pd.DataFrame, paths: RunPaths, excluded: list | None = None, sections: dict | None = None
) -> list:
    """Write summary.json, summary.md, summary.csv and summary.tex atomically; return their paths.

    `excluded`: the malformed answer records (`validate.BadRecord`) left out of `df`. `sections`:
    more summary.json keys (acceptance, repeats, divergence); its `repeats` gives the headline's spread.
    """
    sections = sections or {}
    write_json_atomic(paths.summary_json, summary_json(df, paths, excluded or [], sections))
    write_text_atomic(
        paths.summary_md,
        summary_markdown(df, paths.root.name, sections.get("repeats"), sections.get("graph_captures")),
    )
    write_text_atomic(paths.summary_csv, df.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(paths.summary_tex, summary_latex(df, paths.root.name))
    return [paths.summary_json, paths.summary_md, paths.summary_csv, paths.summary_tex]


def summary_json(
    df: pd.DataFrame, paths: RunPaths, excluded: list | None = None, sections: dict | None = None
) -> dict[str, Any]:
    # The config's sha256 ties these numbers to the exact config.json they came from.
    config_sha = hashlib.sha256(paths.config.read_bytes()).hexdigest() if paths.config.is_file() else None
    return {
        "run": paths.root.name,
        "config_file": paths.config.name if config_sha else None,
        "config_sha256": config_sha,
        "specbench_version": __version__,
        "baseline": BASELINE,
        "columns": COLUMNS,
        "rows": [{key: _plain(value) for key, value in row.items()} for row in df.to_dict("records")],
        # Malformed answer records left out of every row (file, line, question_id, field, problem).
        "excluded_records": len(excluded or []),
        "excluded": [bad.to_json() for bad in excluded or []],
        **{key: _plain_tree(value) for key, value in (sections or {}).items()},
    }


def summary_markdown(
    df: pd.DataFrame, run_name: str, repeats: dict | None = None, captures: list | None = None
) -> str:
    table = format_frame(df, na="–")
    align = ["left" if col in _TEXT_COLUMNS else "right" for col in table.columns]
    body = table.to_markdown(index=False, disable_numparse=True, colalign=align)
    head = pd.DataFrame(headline_rows(df, repeats))
    short = head.to_markdown(index=False, disable_numparse=True, colalign=["left"] + ["right"] * 4)
    return (
        f"# specbench summary: {run_name}\n\n"
        + short
        + "\n\n"
        + spread_line(repeats)
        + best_lossless_line(df)
        + (f"\n\n{captures_line(captures)}" if captures else "")
        + "\n\n## Every suite and category\n\n"
        f"Speedup and lossless are measured against `{BASELINE}` on the same questions of the same run; "
        "definitions in docs/results.md. Methods with `lossless_method` false are lossy and never ranked "
        "as lossless. Rows marked (baseline) are transformers' own `generate` (`eval --baselines`): their "
        "speedup is over `ar` too, and they are never ranked.\n\n" + body + "\n"
    )


def summary_latex(df: pd.DataFrame, run_name: str) -> str:
    table = df.assign(method=_method_labels(df))[list(HEADLINE)]
    formats = {col: f"{{:.{DIGITS[col]}f}}" for col in HEADLINE if col in DIGITS}
    styler = (
        table.rename(columns=HEADLINE)
        .style.format({HEADLINE[c]: f for c, f in formats.items()}, na_rep="--", escape="latex")
        .format_index(escape="latex", axis=1)
        .hide(axis="index")
    )
    caption = (
        f"specbench run {run_name}: speedup over {BASELINE} on the same questions (MAT: mean accepted length)"
    )
    return styler.to_latex(
        hrules=True,  # \toprule \midrule \bottomrule: needs \usepackage{booktabs}
        column_format="lll" + "r" * (len(HEADLINE) - 3),
        caption=caption.replace("_", r"\_"),
        label=f"tab:specbench-{_latex_label(run_name)}",
        position_float="centering",
    )


def headline_rows(df: pd.DataFrame, repeats: dict | None = None) -> list[dict[str, str]]:
    """The short table every report opens with: per method over all suites, MAT, speedup and tok/s
    (pooled over repeats, +- their standard deviation over repeats; a star when the speedup's interval
    contains 1.0) and lossless."""
    spread = {
        row["method"]: row
        for row in (repeats or {}).get("rows", [])
        if row["suite"] == ALL and row["category"] == ALL
    }
    out = []
    pooled = df[(df["suite"] == ALL) & (df["category"] == ALL)]
    for label, (_, row) in zip(_method_labels(pooled), pooled.iterrows(), strict=True):
        s = spread.get(row["method"], {})
        speedup = with_spread(row["speedup"], s.get("speedup_std"), 2, "x")
        speedup += " *" if s.get("speedup_crosses_1") else ""
        out.append(
            {
                "method": label,
                "MAT": f"{row['mean_accepted_length']:.2f}",
                "speedup": speedup,
                "tok/s": with_spread(row["tokens_per_s"], s.get("tokens_per_s_std"), 1),
                "lossless": "–" if _missing(row["lossless"]) else f"{row['lossless']:.3f}",
            }
        )
    return out


def spread_line(repeats: dict | None) -> str:
    """What the ± in the headline is, when the run has repeats (and what an interrupted pass left out)."""
    n = int((repeats or {}).get("repeats") or 1)
    if n < 2:
        return ""
    line = f"± is the standard deviation over {n} repeats (one pass over the questions each)"
    partial = int(repeats.get("partial_questions") or 0)
    if partial:
        line += (
            f", on the questions answered in every repeat: {partial} answered in fewer repeats "
            "(an interrupted pass) are left out of the spread but not of the pooled values"
        )
    return line + ". "


def with_spread(value: Any, std: Any, digits: int, unit: str = "") -> str:
    """`1.52x ± 0.03`: a value and its standard deviation over repeats ("–" when missing)."""
    if not _finite(value):
        return "–"
    text = f"{value:.{digits}f}{unit}"
    return f"{text} ± {std:.{digits}f}" if _finite(std) else text


def format_frame(df: pd.DataFrame, na: str = "–") -> pd.DataFrame:
    """All cells as display strings: floats to their column's digits, NaN as `na`."""
    out = df.copy().astype(object)
    for col in df.columns:
        if col in DIGITS:
            out[col] = [na if _missing(v) else f"{v:.{DIGITS[col]}f}" for v in df[col]]
        else:
            out[col] = [na if _missing(v) else str(v) for v in df[col]]
    return out


def render(df: pd.DataFrame, console: Any, categories: bool = False) -> None:
    """Print the summary as a rich Table, then the best lossless method.

    By default one row per suite and method (the `overall` rows), plus the all-suite rows when the run
    has more than one suite; `categories=True` shows every row.
    """
    from rich.table import Table

    shown = df if categories else _overview_rows(df)
    table = Table(title="specbench summary", title_style="bold", header_style="bold")
    for col, header in HEADLINE.items():
        table.add_column(
            header, justify="left" if col in _TEXT_COLUMNS else "right", no_wrap=col != "category"
        )
    text = format_frame(shown.assign(method=_method_labels(shown)), na="–")
    for _, row in text.iterrows():
        table.add_row(*[row[col] for col in HEADLINE])
    console.print(table)
    console.print(best_lossless_line(df))
    line = baselines_line(df)
    if line:
        console.print(line)


def best_lossless_line(df: pd.DataFrame) -> str:
    """One sentence naming the fastest lossless method over all suites; lossy methods are never ranked."""
    pooled = df[(df["suite"] == ALL) & (df["category"] == ALL)]
    lossy = sorted(pooled.loc[~pooled["lossless_method"], "method"])
    note = f" Lossy methods ({', '.join(lossy)}) are not ranked." if lossy else ""
    if BASELINE not in set(pooled["method"]):
        return f"No `{BASELINE}` answers in this run, so speedup and lossless are n/a.{note}"
    # Transformers' baselines are references, not drafting methods: never the "best method".
    candidates = pooled[
        pooled["lossless_method"]
        & ~_baseline_rows(pooled)
        & (pooled["method"] != BASELINE)
        & pooled["speedup"].map(_finite)
    ]
    if candidates.empty:
        return f"No lossless method besides `{BASELINE}` to rank.{note}"
    best = candidates.loc[candidates["speedup"].idxmax()]
    match = (
        ""
        if _missing(best["lossless"])
        else f"; output equals {BASELINE}'s on {best['lossless']:.0%} of them"
    )
    if best["speedup"] < 1.0:
        # Naming a method "best" when it is slower than plain decoding would mislead.
        return (
            f"No lossless method beat {BASELINE} here; the fastest, {best['method']}, ran at "
            f"{best['speedup']:.2f}x (ratio of totals over the questions both answered{match}).{note}"
        )
    return (
        f"Best lossless method: {best['method']}, {best['speedup']:.2f}x {BASELINE} "
        f"(ratio of totals over the questions both answered{match}).{note}"
    )


def baselines_line(df: pd.DataFrame) -> str:
    """`ar` against transformers' own generate over all suites, e.g. "ar runs at 1.93x hf-static";
    empty when the run has no baselines (or no `ar`)."""
    pooled = df[(df["suite"] == ALL) & (df["category"] == ALL) & _baseline_rows(df)]
    parts = [
        f"{1 / row['speedup']:.2f}x {row['method']}"
        + ("" if _missing(row["lossless"]) else f" (same output on {row['lossless']:.0%})")
        for _, row in pooled.iterrows()
        if _finite(row["speedup"]) and row["speedup"] > 0
    ]
    if not parts:
        return ""
    return (
        f"{BASELINE} runs at {', '.join(parts)}: transformers' own generate, ratio of totals over the "
        "questions both answered."
    )


_TEXT_COLUMNS = ("suite", "category", "method")


def _overview_rows(df: pd.DataFrame) -> pd.DataFrame:
    # With one suite the all-suite rows repeat its overall rows, so they are shown only for several.
    several_suites = df.loc[df["category"] == OVERALL, "suite"].nunique() > 1
    keep = (df["category"] == OVERALL) | ((df["suite"] == ALL) & several_suites)
    return df[keep]


def _method_labels(df: pd.DataFrame) -> list[str]:
    return [
        m + ("" if ok else LOSSY_MARK) + (BASELINE_MARK if base else "")
        for m, ok, base in zip(df["method"], df["lossless_method"], _baseline_rows(df), strict=True)
    ]


def _baseline_rows(df: pd.DataFrame) -> pd.Series:
    # Summaries written before baselines existed have no such column: no row is a baseline there.
    return df["baseline"] if "baseline" in df else pd.Series(False, index=df.index)


def _latex_label(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-:" else "-" for ch in name)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _plain_tree(value: Any) -> Any:
    """`_plain` through nested dicts and lists (the extra summary.json sections)."""
    if isinstance(value, dict):
        return {key: _plain_tree(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_tree(v) for v in value]
    return _plain(value)


def _plain(value: Any) -> Any:
    # numpy scalars -> Python, NaN -> null: summary.json stays strict JSON.
    if hasattr(value, "item"):
        value = value.item()
    return None if _missing(value) else value
