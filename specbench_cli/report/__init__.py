"""`specbench report`: read a run folder's answers, compute the summary, write tables and plots.

Usage: `df = make_report(Path("results/run1"))`. The CLI imports this inside the command body only,
because it pulls in pandas (and matplotlib when writing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..results import RunPaths, read_answers
from ..types import SpecbenchError


def make_report(run_dir: Path, console: Any = None, write: bool = True) -> Any:
    """Summarise every answer file of `run_dir`, write summary.{json,md,csv,tex} and plots/*.png
    (when `write`), print the table on `console` (a rich Console on stdout when None) and return the
    summary DataFrame (columns in `metrics.COLUMNS`).
    """
    from rich.console import Console

    from .metrics import summarise
    from .plots import write_plots
    from .tables import render, write_tables

    paths = RunPaths(Path(run_dir))
    if not paths.root.is_dir():
        raise SpecbenchError(
            f"run folder '{run_dir}' does not exist; pass a folder made by `specbench eval --out`"
        )
    files = list(paths.iter_answer_files())
    if not files:
        raise SpecbenchError(
            f"'{run_dir}' is not a run folder with answers: no answers/<suite>/<method>.jsonl files in it"
        )
    records = []
    for suite, method, path in files:
        # The file's place names its suite and method, so renamed or copied files group as they lie.
        records += [{**record, "suite": suite, "method": method} for record in read_answers(path)]
    if not records:
        raise SpecbenchError(f"the answer files in '{paths.answers_dir}' hold no answers yet")
    df = summarise(records)
    if write:
        write_tables(df, paths)
        write_plots(df, paths.plots_dir)
    render(df, console if console is not None else Console())
    return df
