"""The one progress-bar layout every long loop shows: what runs, the bar, done of total, the loop's own
live figures, elapsed (and remaining) time. rich is imported on use, so `specbench --help` stays light."""

from __future__ import annotations


def progress_bar(label: str, figures: str, console, remaining: bool = True, **options):
    """A rich Progress with that layout. `figures` is a TextColumn template over the task's fields
    (e.g. "{task.fields[rate]}"); `remaining=False` where the total is unknown or not worth guessing."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(figures), TimeElapsedColumn()]
    if remaining:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, console=console, **options)
