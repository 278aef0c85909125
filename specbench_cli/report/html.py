"""report.html: one self-contained page to send to someone (tables inline, plots as base64 PNG).

Usage: `write_html(paths, df, sections)` after the tables and plots are written. The page loads
nothing from the network: no scripts, no fonts, no external images, one inline style sheet.
Order: the headline table, the per-task table, repeats, the time breakdown, acceptance by draft
position, the divergence audit, the environment and the exact command.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

import pandas as pd

from ..results import RunPaths, write_text_atomic
from .metrics import ALL
from .tables import HEADLINE, _method_labels, best_lossless_line, format_frame, headline_rows, with_spread

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
img { max-width: 100%; } pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.note { color: #555; font-size: 0.9em; } table.facts td { text-align: left; } .bad { color: #b00; font-weight: bold; }
"""


def write_html(paths: RunPaths, df: pd.DataFrame, sections: dict[str, Any]) -> None:
    write_text_atomic(paths.root / "report.html", render_html(paths, df, sections))


def render_html(paths: RunPaths, df: pd.DataFrame, sections: dict[str, Any]) -> str:
    config = _read_json(paths.config)
    env = _read_json(paths.env)
    repeats, audit = sections.get("repeats") or {}, sections.get("divergence") or {}
    parts = [
        f"<h1>specbench report: {_e(paths.root.name)}</h1>",
        _table(pd.DataFrame(headline_rows(df, repeats))),
        f"<p>{_e(best_lossless_line(df))}</p>",
        '<p class="note">MAT: tokens per target forward. Speedup: ratio of total tokens/s over `ar` on the same '
        "questions; with repeats, ± one standard deviation over them (* when that interval contains 1.0). "
        "Lossless: share of answers whose token ids equal ar's.</p>",
        "<h2>Per task</h2>",
        _table(_overview_table(df)),
        _image(paths, "speedup.png"),
        _image(paths, "accepted_length.png"),
        "<h2>Repeats</h2>",
        _repeats_section(repeats),
        "<h2>Time per step</h2>",
        _table(_time_table(df)),
        _image(paths, "time_breakdown.png"),
        "<h2>Acceptance by draft position</h2>",
        _acceptance_section(sections.get("acceptance") or []),
        _image(paths, "acceptance_by_depth.png"),
        _image(paths, "accepted_length_hist.png"),
        _image(paths, "acceptance_by_task.png"),
        "<h2>Divergence audit</h2>",
        _divergence_section(audit),
        _image(paths, "divergence_margins.png"),
        "<h2>Environment</h2>",
        _environment(config, env),
        "<h2>Command</h2>",
        _commands(config),
    ]
    body = "\n".join(p for p in parts if p)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>specbench {_e(paths.root.name)}</title><style>{STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def _overview_table(df: pd.DataFrame) -> pd.DataFrame:
    # Every (suite, category) row, each suite's overall row and the all-suite rows: the summary's order.
    text = format_frame(df.assign(method=_method_labels(df)))
    return text[list(HEADLINE)].rename(columns=HEADLINE)


def _time_table(df: pd.DataFrame) -> pd.DataFrame:
    pooled = df[(df["suite"] == ALL) & (df["category"] == ALL)]
    columns = {
        "method": "method",
        "t_draft_ms": "draft ms",
        "t_verify_ms": "verify ms",
        "t_other_ms": "other ms",
    }
    text = format_frame(pooled.assign(method=_method_labels(pooled)))
    named = {**columns, "overhead_frac": "overhead", "prefill_ms": "prefill ms (per turn)"}
    return text[list(named)].rename(columns=named)


def _repeats_section(repeats: dict) -> str:
    n = repeats.get("repeats", 1)
    if n <= 1:
        return "<p>One run of every question (eval --repeats 1): no spread to show.</p>"
    rows = [r for r in repeats["rows"] if r["category"] in ("overall", ALL)]
    table = pd.DataFrame(
        {
            "suite": r["suite"],
            "method": r["method"],
            "repeats": r["repeats"],
            "tok/s": with_spread(r["tokens_per_s_mean"], r["tokens_per_s_std"], 1),
            "tok/s CV": _pct(r["tokens_per_s_cv"]),
            "speedup": with_spread(r["speedup_mean"], r["speedup_std"], 2)
            + (" *" if r["speedup_crosses_1"] else ""),
            "speedup CV": _pct(r["speedup_cv"]),
        }
        for r in rows
    )
    same = "; ".join(
        f"{m['method']}: {m['identical']} of {m['repeated_questions']}" for m in repeats["identical_ids"]
    )
    return (
        f"<p>{n} runs of every question, interleaved. Mean ± sample standard deviation over runs, CV = std / "
        "mean; * marks a speedup whose interval contains 1.0.</p>"
        + _table(table)
        + f"<p>Questions whose token ids are identical in every repeat: {_e(same)}.</p>"
    )


def _acceptance_section(rows: list[dict]) -> str:
    pooled = [r for r in rows if r["suite"] == ALL]
    if not pooled:
        return "<p>Nothing was drafted in this run.</p>"
    depth = max(len(r["per_depth"]) for r in pooled)
    table = pd.DataFrame(
        {
            "method": r["method"],
            "drafting steps": r["drafting_steps"],
            **{
                f"d{d + 1}": f"{r['per_depth'][d]['rate']:.3f}" if d < len(r["per_depth"]) else "–"
                for d in range(min(depth, 12))
            },
        }
        for r in pooled
    )
    return (
        '<p class="note">Share of drafting steps that accepted draft position d when the draft reached it '
        "(all suites; definitions in docs/results.md).</p>" + _table(table)
    )


def _divergence_section(audit: dict) -> str:
    if not audit.get("methods"):
        return "<p>No lossless method to compare with ar's ids.</p>"
    counts = pd.DataFrame(audit["methods"])
    text = (
        f"<p>First position where a lossless method's ids leave ar's, and ar's top-1/top-2 logit margin "
        f"there. Near-tie: margin within {audit['near_tie_ulps']} ulps of {audit['dtype']} at the top-1 "
        "logit (rounding can swap them); clear: a larger margin, flagged as a bug.</p>" + _table(counts)
    )
    clear = [d for d in audit["divergences"] if d["kind"] == "clear"]
    if clear:
        text += f'<p class="bad">{len(clear)} divergence(s) at a clear margin:</p>' + _table(
            pd.DataFrame(clear[:50])
        )
    return text


def _environment(config: dict, env: dict) -> str:
    gpu = env.get("gpu")
    facts = {
        "model": config.get("model"),
        "draft model": config.get("draft_model"),
        "dtype / device": f"{config.get('dtype')} / {config.get('device')}",
        "engine": f"{config.get('engine')} ({config.get('engine_reason')})",
        "max new tokens": config.get("max_new_tokens"),
        "temperature": config.get("temperature"),
        "suites": ", ".join(
            f"{s.get('name')} ({s.get('questions')} q)" for s in config.get("suites_info") or []
        ),
        "gpu": json.dumps(gpu) if gpu else "none",
        "cpu": env.get("cpu"),
        "torch": (env.get("packages") or {}).get("torch"),
        "transformers": (env.get("packages") or {}).get("transformers"),
        "specbench": json.dumps(env.get("git") or env.get("specbench")),
        "started": env.get("started"),
    }
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts.items())
    full = _e(json.dumps(env, indent=2, default=str))
    return (
        f'<table class="facts">{rows}</table><details><summary>env.json</summary><pre>{full}</pre></details>'
    )


def _commands(config: dict) -> str:
    commands = config.get("commands") or [config.get("command") or ""]
    shown = "\n".join(c for c in commands if c) or "(not recorded: a run from before commands were kept)"
    return f"<pre>{_e(shown)}</pre>"


def _image(paths: RunPaths, name: str) -> str:
    path = paths.plots_dir / name
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{_e(name)}" src="data:image/png;base64,{data}"></p>'


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, na_rep="–", border=0)


def _pct(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.1%}"


def _read_json(path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))
