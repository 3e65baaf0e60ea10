"""Segments: named collections of frames, labels and predictions, frozen when added.

Two append-only Delta tables under the dataset root hold them, readable
without lakever:

- ``segments``: one row per event of a segment (create, state, delete),
  with its id, name, description and state;
- ``segment_elements``: one row per element added or removed: table, key,
  and the commit seq and table version the element was frozen at.

An element reads back with its values at that version, whatever happened
since, deletion included: the rows come from the table at the recorded
version (`_feed.lookup`), so nothing is copied. Adding it again freezes it
anew. The recorded versions are what a future cleanup must keep readable.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

from lakever import _delta, _feed, _records
from lakever._pruned import pruned_error
from lakever.commits import Commit, now_utc
from lakever.errors import (
    InvalidInputError,
    RowNotFoundError,
    SegmentExistsError,
    SegmentNotFoundError,
    TableNotFoundError,
)
from lakever.names import check_snapshot_name
from lakever.schema import FRAMES, LABELS, key_column, table_kind

if TYPE_CHECKING:
    from lakever.dataset import Dataset

STATES = ("open", "resolved", "archived")

SEGMENT_SCHEMA: dict[str, pl.DataType] = {
    "segment_id": pl.String(),
    "name": pl.String(),
    "event": pl.String(),  # create | state | delete
    "description": pl.String(),
    "state": pl.String(),
    "at": pl.Datetime("us", "UTC"),
    "author": pl.String(),
}
ELEMENT_SCHEMA: dict[str, pl.DataType] = {
    "segment_id": pl.String(),
    "table": pl.String(),
    "key": pl.String(),
    "op": pl.String(),  # add | remove
    "commit_seq": pl.Int64(),
    "table_version": pl.Int64(),
    "at": pl.Datetime("us", "UTC"),
    "author": pl.String(),
}


_last_at: list[datetime] = []


def _now() -> datetime:
    """Now, strictly after the last time this process recorded (events stay ordered)."""
    at = now_utc()
    if _last_at and at <= _last_at[0]:
        at = _last_at[0] + timedelta(microseconds=1)
    _last_at[:] = [at]
    return at


def _events(ds: Dataset) -> pl.DataFrame:
    return _records.read(ds.root.child("segments"), SEGMENT_SCHEMA).sort("at")


def _live(events: pl.DataFrame) -> pl.DataFrame:
    """The latest event of each segment not deleted, with its creation time and creator."""
    created = events.filter(pl.col("event") == "create").select(
        "segment_id", created_at="at", creator="author"
    )
    latest = events.group_by("segment_id", maintain_order=True).last()
    return latest.filter(pl.col("event") != "delete").join(created, on="segment_id")


def _targets(
    ds: Dataset,
    frame_ids: Iterable[str],
    label_ids: Iterable[str],
    predictions: Mapping[str, Iterable[str]] | None,
) -> dict[str, list[str]]:
    from lakever.transaction import inference_table

    def ids(values: Iterable[str], what: str) -> list[str]:
        if isinstance(values, str):
            return [values]
        try:
            return list(dict.fromkeys(str(v) for v in values))
        except TypeError:
            raise InvalidInputError(f"{what} must be a list of ids, got {values!r:.80}") from None

    out = {FRAMES: ids(frame_ids, "frame_ids"), LABELS: ids(label_ids, "label_ids")}
    if predictions is not None and not isinstance(predictions, Mapping):
        raise InvalidInputError("predictions must map inference set names to prediction ids")
    for name, keys in (predictions or {}).items():
        out[inference_table(name)] = ids(keys, f"predictions[{name!r}]")
    return {t: k for t, k in out.items() if k}


class Segment:
    """A named collection of frames, labels and predictions, each frozen when added.

    Attributes:
        id: unique id of this segment (a deleted name can be used again).
        name, description, state ('open', 'resolved', 'archived'),
        created_at, creator.
    """

    def __init__(self, ds: Dataset, row: Mapping[str, Any]) -> None:
        self._ds = ds
        self.id: str = row["segment_id"]
        self.name: str = row["name"]
        self.description: str = row["description"] or ""
        self.state: str = row["state"]
        self.created_at: datetime = row["created_at"]
        self.creator: str = row["creator"] or ""

    def __repr__(self) -> str:
        return f"Segment({self.name!r}, state={self.state!r})"

    # -- membership ------------------------------------------------------------------

    def add(
        self,
        *,
        frame_ids: Iterable[str] = (),
        label_ids: Iterable[str] = (),
        predictions: Mapping[str, Iterable[str]] | None = None,
        at: Commit | None = None,
        author: str | None = None,
    ) -> int:
        """Add elements frozen at HEAD (or `at`); adding one again refreshes it. Returns how many.

        Raises:
            RowNotFoundError: an id names no row at that version.
        """
        ds = self._ds
        commit = at or ds.head
        if at is not None:
            ds._pruned.check(at.seq)
        rows = []
        when = _now()
        for table, keys in _targets(ds, frame_ids, label_ids, predictions).items():
            version = commit.table_versions.get(table)
            if version is None:
                raise TableNotFoundError(f"no table {table!r} at commit {commit.seq}")
            found = set(_lookup(ds, table, version, keys, key_only=True)[_key(table)].to_list())
            missing = [k for k in keys if k not in found]
            if missing:
                raise RowNotFoundError(
                    f"{len(missing)} key(s) of {table!r} not found at commit {commit.seq}: "
                    f"{', '.join(map(repr, missing[:20]))}; nothing was added"
                )
            rows += self._rows(table, keys, "add", commit.seq, version, when, author)
        self._write(rows)
        # A GC that published after HEAD was read may prune the commit these
        # elements are frozen at; its second look at the roots sees them, unless
        # it named the commit in its record first: then take them out again.
        gc = ds._pruned.pruned_by(commit.seq, after=commit.seq)
        if gc is not None:
            self._write([{**r, "op": "remove", "commit_seq": None, "table_version": None,
                          "at": _now()} for r in rows])  # fmt: skip
            raise pruned_error(ds.name, commit.seq, gc)
        return len(rows)

    def remove(
        self,
        *,
        frame_ids: Iterable[str] = (),
        label_ids: Iterable[str] = (),
        predictions: Mapping[str, Iterable[str]] | None = None,
        author: str | None = None,
    ) -> int:
        """Take elements out (ids that are not members are refused). Returns how many."""
        members = self.elements()
        rows = []
        when = _now()
        for table, keys in _targets(self._ds, frame_ids, label_ids, predictions).items():
            have = set(members.filter(pl.col("table") == table)["key"].to_list())
            missing = [k for k in keys if k not in have]
            if missing:
                raise RowNotFoundError(
                    f"{len(missing)} key(s) of {table!r} are not in segment {self.name!r}: "
                    f"{', '.join(map(repr, missing[:20]))}; nothing was removed"
                )
            rows += self._rows(table, keys, "remove", None, None, when, author)
        self._write(rows)
        return len(rows)

    def _rows(
        self,
        table: str,
        keys: list[str],
        op: str,
        seq: int | None,
        version: int | None,
        when: datetime,
        author: str | None,
    ) -> list[dict[str, Any]]:
        return [
            {"segment_id": self.id, "table": table, "key": k, "op": op, "commit_seq": seq,
             "table_version": version, "at": when, "author": author or self._ds.info.creator}
            for k in keys
        ]  # fmt: skip

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._alive()
            loc = self._ds.root.child("segment_elements")
            _records.append(loc, pl.DataFrame(rows, schema=ELEMENT_SCHEMA))

    def _alive(self) -> None:
        if self.id not in set(_live(_events(self._ds))["segment_id"].to_list()):
            raise SegmentNotFoundError(f"segment {self.name!r} was deleted")

    def elements(self) -> pl.DataFrame:
        """Current members: table, key, commit_seq, table_version, at (when added)."""
        rows = _records.read(self._ds.root.child("segment_elements"), ELEMENT_SCHEMA)
        rows = rows.filter(pl.col("segment_id") == self.id).sort("at")
        latest = rows.group_by("table", "key", maintain_order=True).last()
        return latest.filter(pl.col("op") == "add").select(
            "table", "key", "commit_seq", "table_version", "at"
        )

    # -- reading --------------------------------------------------------------------

    def read(self, table: str) -> pl.DataFrame:
        """The rows of one table's elements as they were when added, plus `added_seq`."""
        table_kind(table)
        members = self.elements().filter(pl.col("table") == table)
        parts = []
        for (version, seq), group in members.group_by(
            "table_version", "commit_seq", maintain_order=True
        ):
            rows = _lookup(self._ds, table, int(version), group["key"].to_list())
            parts.append(rows.with_columns(added_seq=pl.lit(seq, dtype=pl.Int64)))
        if not parts:
            return pl.DataFrame(schema={_key(table): pl.String(), "added_seq": pl.Int64()})
        return pl.concat(parts, how="diagonal_relaxed").sort(_key(table))

    def outdated(self) -> pl.DataFrame:
        """Elements that changed since they were added.

        Returns:
            table, key, change ('modified' | 'deleted'), changed (columns),
            then and now (the row as JSON; now is null for a deletion).
        """
        head = self._ds.head
        out: list[tuple[str, str, str, list[str], str, str | None]] = []
        for table in self.elements()["table"].unique().sort().to_list():
            then = self.read(table).drop("added_seq")
            key = _key(table)
            version = head.table_versions.get(table)
            keys = then[key].to_list()
            now = _lookup(self._ds, table, version, keys) if version is not None else then.clear()
            now_by = {r[key]: r for r in now.iter_rows(named=True)}
            for row in then.iter_rows(named=True):
                current = now_by.get(row[key])
                if current is None:
                    out.append((table, row[key], "deleted", [], _json(row), None))
                    continue
                changed = [
                    c for c in sorted(set(row) | set(current))
                    if row.get(c) != current.get(c)
                ]  # fmt: skip
                if changed:
                    out.append((table, row[key], "modified", changed, _json(row), _json(current)))
        return pl.DataFrame(
            out,
            schema={
                "table": pl.String(),
                "key": pl.String(),
                "change": pl.String(),
                "changed": pl.List(pl.String()),
                "then": pl.String(),
                "now": pl.String(),
            },
            orient="row",
        )

    def set_state(self, state: str, *, author: str | None = None) -> None:
        """Move the segment to 'open', 'resolved' or 'archived' (recorded)."""
        if state not in STATES:
            raise InvalidInputError(f"state must be one of {', '.join(STATES)}, got {state!r}")
        self._alive()
        _event(self._ds, self.id, self.name, "state", self.description, state, author)
        self.state = state


def _json(row: Mapping[str, Any]) -> str:
    return json.dumps(dict(row), default=str, sort_keys=True)


def _key(table: str) -> str:
    return key_column(table_kind(table))


def _lookup(
    ds: Dataset, table: str, version: int, keys: list[str], *, key_only: bool = False
) -> pl.DataFrame:
    loc = ds.table_location(table)
    schema = _delta.schema_at(loc, version)
    rows = _feed.lookup(
        loc, version, _key(table), pl.Series(keys, dtype=pl.String), table=table, schema=schema,
        key_only=key_only,
    )  # fmt: skip
    return rows.drop(_feed.FILE_COLUMN, _feed.POS_COLUMN)


def _event(
    ds: Dataset,
    segment_id: str,
    name: str,
    event: str,
    description: str,
    state: str,
    author: str | None,
    check: Any = None,
) -> None:
    row = {
        "segment_id": segment_id, "name": name, "event": event, "description": description,
        "state": state, "at": _now(), "author": author or ds.info.creator,
    }  # fmt: skip
    _records.append_checked(
        ds.root.child("segments"), pl.DataFrame([row], schema=SEGMENT_SCHEMA), check
    )


def create(ds: Dataset, name: str, *, description: str, state: str, author: str | None) -> Segment:
    """Record a new segment; SegmentExistsError if a live one has the name."""
    check_snapshot_name(name)
    if state not in STATES:
        raise InvalidInputError(f"state must be one of {', '.join(STATES)}, got {state!r}")
    ds.head  # noqa: B018 - refuses a deleted dataset

    def free(rows: pl.DataFrame) -> None:
        if name in _live(rows.sort("at"))["name"].to_list():
            raise SegmentExistsError(
                f"a segment named {name!r} already exists in dataset {ds.name!r}"
            )

    segment_id = uuid.uuid4().hex
    _event(ds, segment_id, name, "create", description, state, author, check=free)
    return get(ds, name)


def get(ds: Dataset, name: str) -> Segment:
    """The live segment called `name`."""
    live = _live(_events(ds)).filter(pl.col("name") == name)
    if live.is_empty():
        raise SegmentNotFoundError(
            f"no segment named {name!r} in dataset {ds.name!r}; ds.segments() lists them"
        )
    return Segment(ds, live.row(0, named=True))


def listing(ds: Dataset) -> pl.DataFrame:
    """Live segments: name, description, state, elements, created_at, creator."""
    live = _live(_events(ds))
    elements = _records.read(ds.root.child("segment_elements"), ELEMENT_SCHEMA).sort("at")
    counts = (
        elements.group_by("segment_id", "table", "key", maintain_order=True)
        .last()
        .filter(pl.col("op") == "add")
        .group_by("segment_id")
        .len("elements")
    )
    return (
        live.join(counts, on="segment_id", how="left")
        .with_columns(pl.col("elements").fill_null(0).cast(pl.Int64))
        .select("name", "description", "state", "elements", "created_at", "creator")
        .sort("created_at")
    )


def frozen_commits(ds: Dataset) -> list[tuple[int, str]]:
    """(commit seq, segment name) of every element of a live segment: roots for GC."""
    live = _live(_events(ds)).select("segment_id", "name")
    if live.is_empty():
        return []
    elements = _records.read(ds.root.child("segment_elements"), ELEMENT_SCHEMA).sort("at")
    members = (
        elements.group_by("segment_id", "table", "key", maintain_order=True)
        .last()
        .filter(pl.col("op") == "add")
        .join(live, on="segment_id")
        .select("commit_seq", "name")
        .unique()
        .sort("commit_seq", "name")
    )
    return [(int(seq), str(name)) for seq, name in members.iter_rows()]


def delete(ds: Dataset, name: str, *, author: str | None = None) -> None:
    """Delete a segment (its records stay in the tables, marked deleted)."""
    seg = get(ds, name)
    _event(ds, seg.id, seg.name, "delete", seg.description, seg.state, author)
