"""Per-answer times of a run folder, small enough to commit where the answer files are not.

    python3 bench/answer_times.py RUN [RUN ...]      # writes RUN/answer_times.csv for each

A run's answer files hold every token id and per-step list (megabytes); the report's tables pool
questions. This keeps what a reader needs to check a pooled figure against single answers (an outlier
question, a warm-up that leaked onto the clock): one row per answer with its suite, method, question,
repeat, new tokens, target steps, wall time and the graphs it captured on the clock (`graph_captures`,
0 when absent).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specbench_cli.report import read_run_records  # noqa: E402
from specbench_cli.report.metrics import per_question  # noqa: E402
from specbench_cli.results import RunPaths  # noqa: E402

FIELDS = ("suite", "method", "question_id", "repeat", "new_tokens", "steps", "wall_time", "graph_captures")


def answer_rows(run: Path) -> list[dict]:
    """The report's own per-answer sums (`metrics.per_question`, one row per record, in order) with
    each answer's `graph_captures` beside them."""
    records, _ = read_run_records(RunPaths(run))
    frame = per_question(records)
    rows = []
    for record, row in zip(records, frame.to_dict("records"), strict=True):
        rows.append(
            {key: row[key] for key in FIELDS[:-1]}
            | {"wall_time": round(row["wall_time"], 6)}
            | {"graph_captures": int(record["choices"][0].get("graph_captures") or 0)}
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    for run in parser.parse_args(argv).runs:
        rows = answer_rows(run)
        with (run / "answer_times.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        print(f"{run / 'answer_times.csv'}: {len(rows)} answers")


if __name__ == "__main__":
    main()
