"""Per-row edit history: every version of a frame (and its labels) or of a label.

The history is read from each table's Change Data Feed, filtered to the keys
asked for, so its cost follows how often those rows changed. A row's state at
a Delta version is its last CDF event at or before that version (an insert or
update post-image means it exists with those values; a delete means it does
not; no event yet means it does not exist, since every table starts empty).
Walking the commit log in order and reading each commit's recorded version
gives the row's value at every commit; each change of value is one entry.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

from lakever import _delta, _feed
from lakever.commits import Commit
from lakever.errors import InvalidInputError, RowNotFoundError
from lakever.schema import FRAMES, LABELS

if TYPE_CHECKING:
    from lakever.dataset import Dataset

_AFTER_IMAGES = ("insert", "update_postimage")
_META = ("_change_type", "_commit_version", "_commit_timestamp")

HISTORY_SCHEMA: dict[str, pl.DataType] = {
    "seq": pl.Int64(),
    "commit_id": pl.String(),
    "created_at": pl.Datetime("us", "UTC"),
    "author": pl.String(),
    "message": pl.String(),
    "table": pl.String(),
    "key": pl.String(),
    "change": pl.String(),
    "changed": pl.List(pl.String()),
    "before": pl.String(),
    "after": pl.String(),
}


def _plain(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def row_json(row: dict[str, Any]) -> str:
    """A row as canonical JSON (sorted keys, ISO times): how history shows values.

    Types JSON lacks show as text: decimals as written (``"1.50"``), binary as
    hex, times as ISO 8601, at any depth (inside lists and structs too).
    """
    return json.dumps({k: _plain(v) for k, v in row.items()}, sort_keys=True, default=_text)


def _text(value: Any) -> Any:
    """What JSON shows for a value of a type it has none for."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    return str(value)  # Decimal and anything else: its own text


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


class _KeyStates:
    """The state of one key at any Delta version, from its CDF events."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        rank = {"update_preimage": 0, "delete": 0, "insert": 1, "update_postimage": 1}
        events.sort(key=lambda e: (e["_commit_version"], rank[e["_change_type"]]))
        self.versions = [e["_commit_version"] for e in events]
        self.events = events

    def at(self, version: int | None) -> dict[str, Any] | None:
        if version is None:
            return None
        i = bisect.bisect_right(self.versions, version) - 1
        if i < 0 or self.events[i]["_change_type"] not in _AFTER_IMAGES:
            return None
        return {k: v for k, v in self.events[i].items() if k not in _META}


def _runs(commits: list[Commit]) -> list[list[Commit]]:
    """Readable commits cut where garbage collection pruned the ones in between."""
    out: list[list[Commit]] = []
    for c in commits:
        if out and out[-1][-1].seq == c.seq - 1:
            out[-1].append(c)
        else:
            out.append([c])
    return out


def _events(ds: Dataset, commits: list[Commit], table: str, where: pl.Expr) -> pl.DataFrame:
    """The table's change events for the keys `where` selects, over the readable commits.

    Between commits next to each other the feed survives GC. A run that
    starts after pruned commits starts from the rows at its first version
    instead: every key seen is marked deleted there, then the rows present
    are inserted (so a key that vanished inside the gap ends there).
    """
    loc = ds.table_location(table)
    parts: list[pl.DataFrame] = []
    starts: list[int] = []
    for run in _runs(commits):
        a, b = run[0].table_versions.get(table, 0), run[-1].table_versions.get(table, 0)
        if run[0].seq > 0 and a > 0:
            rows = _delta.collect(loc, a, _delta.scan(loc, a).filter(where), table=table)
            starts.append(a)
            parts.append(
                rows.with_columns(
                    pl.lit("insert").alias("_change_type"),
                    pl.lit(a, dtype=pl.Int64).alias("_commit_version"),
                )
            )
            a_feed = a + 1
        else:
            a_feed = 1
        if b >= a_feed:
            parts.append(_feed.changes(loc, a_feed, b, where=where))
    parts = [p.drop("_commit_timestamp", strict=False) for p in parts if not p.is_empty()]
    if not parts:
        return pl.DataFrame()
    events = pl.concat(parts, how="diagonal_relaxed")
    if starts:
        key = "frame_id" if table == FRAMES else "label_id"
        keys = events.select(key).unique()
        gone = keys.join(
            pl.DataFrame({"_commit_version": starts}, schema={"_commit_version": pl.Int64}),
            how="cross",
        )
        events = pl.concat(
            [gone.with_columns(pl.lit("delete").alias("_change_type")), events],
            how="diagonal_relaxed",
        )
    return events


def _walk(
    commits: list[Commit], table: str, key: str, events: pl.DataFrame
) -> Iterable[dict[str, Any]]:
    if events.is_empty():
        return
    by_key: dict[str, list[dict[str, Any]]] = {}
    for e in events.iter_rows(named=True):
        by_key.setdefault(e[key], []).append(e)
    for k, evs in sorted(by_key.items()):
        states = _KeyStates(evs)
        prev: dict[str, Any] | None = None
        for c in commits:
            cur = states.at(c.table_versions.get(table))
            if prev is None and cur is None:
                continue
            before, after = prev or {}, cur or {}
            changed = sorted(
                n
                for n in set(before) | set(after)
                if n != key and not _same(before.get(n), after.get(n))
            )
            if prev is not None and cur is not None:
                if not changed:
                    continue
                change = "modified"
            else:
                change = "added" if prev is None else "deleted"
            yield {
                "seq": c.seq,
                "commit_id": c.id,
                "created_at": c.created_at,
                "author": c.author,
                "message": c.message,
                "table": table,
                "key": k,
                "change": change,
                "changed": changed,
                "before": None if prev is None else row_json(prev),
                "after": None if cur is None else row_json(cur),
            }
            prev = cur


def history(
    ds: Dataset, *, frame_id: str | None = None, label_id: str | None = None
) -> pl.DataFrame:
    """Every version of a frame and its labels, or of one label, oldest first."""
    if (frame_id is None) == (label_id is None):
        raise InvalidInputError("give exactly one of frame_id=... or label_id=...")
    commits = [c for c in reversed(ds.log()) if c.pruned_by is None]

    rows: list[dict[str, Any]] = []
    if frame_id is not None:
        this_frame = pl.col("frame_id") == frame_id
        rows += _walk(commits, FRAMES, "frame_id", _events(ds, commits, FRAMES, this_frame))
        on_frame = _events(ds, commits, LABELS, this_frame)
        if not on_frame.is_empty():
            ids = pl.Series(
                sorted(set(on_frame["label_id"].drop_nulls().to_list())), dtype=pl.String
            )
            where = pl.col("label_id").is_in(ids.implode())
            rows += _walk(commits, LABELS, "label_id", _events(ds, commits, LABELS, where))
    else:
        assert label_id is not None
        where = pl.col("label_id") == label_id
        rows += _walk(commits, LABELS, "label_id", _events(ds, commits, LABELS, where))
    if not rows:
        what = f"frame {frame_id!r}" if frame_id is not None else f"label {label_id!r}"
        pruned = sum(1 for c in ds.log() if c.pruned_by is not None)
        if pruned:
            raise RowNotFoundError(
                f"{what} is in no readable commit of dataset {ds.name!r} ({pruned} commits "
                "were pruned by garbage collection); check the id"
            )
        raise RowNotFoundError(
            f"{what} has never existed in dataset {ds.name!r} (no commit added, changed or "
            "deleted it); check the id"
        )
    rows.sort(key=lambda r: (r["seq"], r["table"] != FRAMES, r["key"]))
    return pl.DataFrame(rows, schema=HISTORY_SCHEMA)
