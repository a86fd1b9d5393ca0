"""What every stage shares for talking to a person: one console, progress bars, and UserError."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)  # progress, warnings, errors: what a person watches
out = Console(
    highlight=False
)  # results (tables, paths, lineage, next commands): what `| grep` and `> file` get


class UserError(Exception):
    """A mistake the user can fix: the CLI prints the message as one sentence and exits 2, no traceback."""


def progress(*extra_columns) -> Progress:
    """A progress bar with count, rate-bearing extra columns, elapsed time and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
