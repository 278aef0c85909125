"""Keep a run folder's small files under bench/results/: the report made here from its answers, one row
per answer (answer_times.py), and the settings, never the answer files themselves (megabytes, and every
device call carries the tree).

    python3 bench/keep_run.py /tmp/r23/fast3 bench/results/2026-12-04-h200-fast-repeats

A run copied back from the GPU machine has answers but no report: `specbench report` runs here, so the
summaries come from the product's own report.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import answer_times  # noqa: E402

KEPT = (
    "config.json",
    "env.json",
    "summary.json",
    "summary.md",
    "summary.csv",
    "costs.json",
    "costs.md",
    "method_stats.json",
    "method_stats.md",
    "answer_times.csv",
)


def keep(run: Path, dest: Path) -> list[str]:
    """Report `run`, write its answer_times.csv, copy the kept files that exist to `dest`; their names."""
    from rich.console import Console

    from specbench_cli.report import make_report

    make_report(run, Console(file=sys.stderr))
    answer_times.main([str(run)])
    dest.mkdir(parents=True, exist_ok=True)
    kept = [name for name in KEPT if (run / name).is_file()]
    for name in kept:
        shutil.copy2(run / name, dest / name)
    return kept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    print(f"{args.dest}: {', '.join(keep(args.run, args.dest))}")


if __name__ == "__main__":
    main()
