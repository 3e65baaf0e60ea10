"""Progress on a terminal, silence in scripts and CI.

An upload shows a bar (rows, rows/s, rejected); the steps before it (reading
and converting a COCO file of hundreds of thousands of annotations) show what
they are doing, so a long import shows progress from its first second.
$LAKEVER_PROGRESS=0 hides both, =1 shows them even off a terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

#: $LAKEVER_PROGRESS=0 hides the progress bar, =1 shows it even off a terminal.
PROGRESS_ENV = "LAKEVER_PROGRESS"


def shown(show: bool | None) -> bool:
    """Whether to show progress: as asked, else on a terminal and not under CI."""
    if show is not None:
        return show
    env = os.environ.get(PROGRESS_ENV)
    return env == "1" if env in ("0", "1") else sys.stderr.isatty() and not os.environ.get("CI")


@contextlib.contextmanager
def phase(text: str, show: bool | None = None) -> Iterator[None]:
    """Show `text` with a spinner while the block runs (on a terminal)."""
    if not shown(show):
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(text):
        yield


@contextlib.contextmanager
def progress_bar(show: bool | None, start: int) -> Iterator[Any]:
    """A progress bar (rows, rows/s, rejected) on a terminal; silent in scripts and CI."""
    if not shown(show):
        yield lambda rows, rejected: None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.completed:,} rows"),
        TextColumn("{task.fields[rate]} rows/s"),
        TextColumn("{task.fields[rejected]:,} rejected"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task("upload", total=None, completed=start, rejected=0, rate="-")

        def advance(rows: int, rejected: int) -> None:
            bar.update(task, advance=rows, rejected=rejected)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:,.0f}" if speed else "-")

        yield advance
