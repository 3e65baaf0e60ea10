"""Rendering command results: readable tables on a terminal, JSON with --json."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from lakever.commits import ChangeCounts, Commit
from lakever.tags import Snapshot


def _width(stream: Any) -> int | None:
    """Terminal width on a terminal; off one (a pipe, a CI log) wide enough for one row a line."""
    if stream.isatty():
        return None
    return int(os.environ.get("COLUMNS") or 0) or 160


out = Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))
err = Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def emit_json(data: Any) -> None:
    """Print data as JSON on stdout."""
    sys.stdout.write(json.dumps(_plain(data), indent=2, sort_keys=False) + "\n")


#: Columns whose values are never cut or wrapped (names, ids, times): a reader
#: copies them into the next command. The others wrap to fit.
KEY_COLUMNS = frozenset(
    {
        "name", "id", "seq", "commit", "time (UTC)", "created (UTC)", "started (UTC)",
        "last loaded", "key", "upload", "upload_id", "table", "dataset", "set", "label_id",
        "frame_id", "snapshot", "state", "status", "from_cls", "to_cls", "cls", "rule",
        "column", "row",
    }
)  # fmt: skip


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a table on stdout: key columns whole, the others wrapped to fit the width."""
    cells = [["" if v is None else str(v) for v in r] for r in rows]
    t = Table(title=title, title_justify="left", header_style="bold")
    for i, c in enumerate(columns):
        if c in KEY_COLUMNS:
            widest = max([len(c), *(len(r[i]) for r in cells)])
            t.add_column(c, no_wrap=True, min_width=widest, overflow="ignore")
        else:
            t.add_column(c, overflow="fold")  # wraps at spaces, then inside long words
    for r in cells:
        t.add_row(*r)
    out.print(t)


def when(value: datetime) -> str:
    """A short UTC timestamp."""
    return value.strftime("%Y-%m-%d %H:%M:%S")


def changes_text(counts: Mapping[str, ChangeCounts]) -> str:
    """'labels +10 ~2 -1, frames +5': added, modified, deleted per table."""
    parts = []
    for t, c in sorted(counts.items()):
        bits = [f"+{c.added}" if c.added else "", f"~{c.modified}" if c.modified else "",
                f"-{c.deleted}" if c.deleted else ""]  # fmt: skip
        text = " ".join(b for b in bits if b)
        if text:
            parts.append(f"{t} {text}")
    return ", ".join(parts)


def counts_text(commit: Commit) -> str:
    """A commit's changes, or '-' for none."""
    return changes_text(commit.counts) or "-"


def commits_table(commits: Sequence[Commit], title: str | None = None) -> None:
    """Print a log."""
    table(
        title,
        ["seq", "id", "time (UTC)", "author", "operation", "changes", "message"],
        [
            (
                c.seq,
                c.id[:12],
                when(c.created_at),
                c.author,
                c.operation
                if c.pruned_by is None
                else f"{c.operation} (pruned by gc {c.pruned_by})",
                counts_text(c),
                c.message,
            )
            for c in commits
        ],
    )


def _snapshot_changes(snap: Snapshot) -> str:
    if snap.changes is None:
        return ""
    return changes_text(snap.changes) or "no changes"


def snapshots_table(snaps: Sequence[Snapshot], title: str | None = None) -> None:
    """Print snapshots."""
    table(
        title,
        [
            "name",
            "commit",
            "seq",
            "created (UTC)",
            "creator",
            "changes",
            "state",
            "last loaded",
            "description",
        ],
        [
            (
                s.name,
                s.commit_id[:12],
                s.commit_seq,
                when(s.created_at),
                s.creator,
                _snapshot_changes(s),
                s.state,
                "never" if s.last_loaded_at is None else when(s.last_loaded_at),
                s.description,
            )
            for s in snaps
        ],
    )


def short(value: Any, width: int = 60) -> str:
    """A value on one line, cut to `width` characters."""
    text = json.dumps(_plain(value), default=str) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def change_cell(
    change: str,
    changed: Sequence[str],
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
) -> str:
    """What a row change did, readable: old → new for each changed column."""
    if change == "modified" and before is not None and after is not None:
        return "; ".join(
            f"{c}: {short(before.get(c), 30)} → {short(after.get(c), 30)}" for c in changed
        )
    row = after if change == "added" else before
    if not row:
        return ""
    return ", ".join(f"{k}={short(v, 30)}" for k, v in row.items() if v is not None)
