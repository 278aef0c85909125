"""`specbench compare RUN...`: runs side by side (other machines, models, engines, dates).

Usage: `compare_runs([Path("results/a"), Path("results/b")], console)`.

First the settings that differ between the runs (from each run's config.json and env.json), then
one table per suite (and one over all suites) with, per method and run, the speedup over that run's
own `ar`, MAT and tokens/s, each with its spread over repeats (mean +- sample std) when the run has
repeats. Runs whose question sets differ (per suite, by question id) are refused unless
`allow_different_questions`: a speedup over other questions is not the same quantity.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..results import RunPaths
from ..types import SpecbenchError

# config.json keys and env.json facts worth showing when they differ.
CONFIG_KEYS = (
    "model",
    "draft_model",
    "dtype",
    "device",
    "engine",
    "max_new_tokens",
    "temperature",
    "seed",
    "limit",
    "prompt_format",
    "max_turns",
    "repeats",
    "methods",
    "method_options",
    "kv_compaction",  # how the engine ran its steps: a different path is a different measurement
    "node_topk",
)


def compare_runs(runs: list[Path], console: Any, allow_different_questions: bool = False) -> dict:
    """Print the comparison; return {"settings": differing settings, "tables": {suite: rows}}."""
    from . import print_table
    from .metrics import ALL, OVERALL, summarise
    from .spread import repeat_spread
    from .tables import with_spread

    if len(runs) < 2:
        raise SpecbenchError("compare needs at least two run folders")
    labels = run_labels(runs)
    loaded = [_load(Path(run)) for run in runs]
    check_same_questions(labels, [records for records, _ in loaded], allow_different_questions)
    settings = differing_settings(labels, [settings for _, settings in loaded])
    if settings:
        cells = [(key, *(_short(v) for v in values)) for key, values in settings.items()]
        print_table(console, "settings that differ", ("setting", *labels), cells)
    else:
        console.print("no recorded setting differs between these runs", highlight=False)

    tables: dict[str, list[dict]] = {}
    for label, (records, _) in zip(labels, loaded, strict=True):
        df = summarise(records)
        spread = {(r["suite"], r["category"], r["method"]): r for r in repeat_spread(records)["rows"]}
        for row in df.to_dict("records"):
            if row["category"] not in (OVERALL, ALL):
                continue
            s = spread.get((row["suite"], row["category"], row["method"]), {})
            tables.setdefault(row["suite"], []).append(
                {
                    "run": label,
                    "method": row["method"],
                    "speedup": with_spread(row["speedup"], s.get("speedup_std"), 2, "x"),
                    "MAT": f"{row['mean_accepted_length']:.2f}",
                    "tok/s": with_spread(row["tokens_per_s"], s.get("tokens_per_s_std"), 1),
                }
            )
    if len(tables) == 2:  # one suite: its table and the all-suite one are the same numbers
        tables.pop(ALL, None)
    for suite, rows in tables.items():
        methods = list(dict.fromkeys(r["method"] for r in rows))
        cells = []
        for method in methods:
            by_run = {r["run"]: r for r in rows if r["method"] == method}
            for column in ("speedup", "MAT", "tok/s"):
                cells.append(
                    (method, column, *(by_run[lb][column] if lb in by_run else "–" for lb in labels))
                )
        print_table(console, f"suite {suite}", ("method", "", *labels), cells)
    return {"settings": settings, "tables": tables}


def run_labels(runs: list[Path]) -> list[str]:
    """The folder names, made unique with their position when two runs share a name."""
    names = [Path(r).name or str(r) for r in runs]
    return [n if names.count(n) == 1 else f"{n}[{i + 1}]" for i, n in enumerate(names)]


def question_sets(records: list[dict]) -> dict[str, set]:
    out: dict[str, set] = {}
    for r in records:
        out.setdefault(str(r["suite"]), set()).add(r["question_id"])
    return out


def check_same_questions(labels: list[str], runs: list[list[dict]], allow: bool) -> None:
    """Refuse runs whose suites or question ids differ (one line naming the first difference)."""
    if allow:
        return
    first = question_sets(runs[0])
    for label, records in zip(labels[1:], runs[1:], strict=True):
        other = question_sets(records)
        for suite in sorted(set(first) | set(other)):
            mine, theirs = first.get(suite, set()), other.get(suite, set())
            if mine != theirs:
                raise SpecbenchError(
                    f"runs {labels[0]} and {label} answered different questions in suite '{suite}' "
                    f"({len(mine)} vs {len(theirs)} questions, {len(mine ^ theirs)} not in both); "
                    "pass --allow-different-questions to compare them anyway"
                )


def differing_settings(labels: list[str], settings: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = list(dict.fromkeys(k for s in settings for k in s))
    out = {}
    for key in keys:
        values = [s.get(key) for s in settings]
        if any(v != values[0] for v in values[1:]):
            out[key] = values
    return out


def _load(run: Path) -> tuple[list[dict], dict[str, Any]]:
    from . import read_run_records

    paths = RunPaths(run)
    records, _ = read_run_records(paths)
    config, env = _read_json(paths.config), _read_json(paths.env)
    settings: dict[str, Any] = {key: config.get(key) for key in CONFIG_KEYS}
    settings["repeats"] = settings["repeats"] or 1
    settings["suites"] = [
        (s.get("name"), (s.get("sha256") or "")[:12]) for s in config.get("suites_info") or []
    ]
    packages = env.get("packages") or {}
    settings |= {
        "gpu": env.get("gpu"),
        "cpu": env.get("cpu"),
        "platform": env.get("platform"),
        "torch": packages.get("torch"),
        "transformers": packages.get("transformers"),
        "specbench": env.get("git") or env.get("specbench"),
        "started": env.get("started"),
    }
    return records, settings


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
