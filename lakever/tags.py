"""The snapshot (tag) table: named, read-only pointers to commits.

Snapshots live in a Delta table at ``<dataset>/snapshots``, one row per
snapshot, so Spark and Polars jobs can read it and resolve a name to table
versions without lakever. Every change to it is an exact-version Delta write:
a writer reads the latest version, checks the name, and commits exactly the
next version or re-reads and checks again. Two writers racing for one name
therefore cannot both win.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import polars as pl
from deltalake import DeltaTable

from lakever import _delta, _deltalog
from lakever.commits import ChangeCounts, Commit
from lakever.errors import (
    ConflictError,
    InvalidInputError,
    LakeverError,
    SnapshotExistsError,
    SnapshotNotFoundError,
)
from lakever.storage import Location

log = logging.getLogger("lakever")

TAG_SCHEMA: dict[str, pl.DataType] = {
    "name": pl.String(),
    "commit_id": pl.String(),
    "commit_seq": pl.Int64(),
    "frames_version": pl.Int64(),
    "labels_version": pl.Int64(),
    "tables": pl.List(pl.Struct({"table": pl.String(), "uri": pl.String(), "version": pl.Int64()})),
    "description": pl.String(),
    "creator": pl.String(),
    "created_at": pl.Datetime("us", "UTC"),
    "metadata": pl.String(),
    # For readers outside lakever: 'archived' rows are read from archive_uri
    # (each table a plain Delta table at version 0 under it). Null means
    # materialized. lakever's own truth is the state record (lakever.archive).
    "state": pl.String(),
    "archive_uri": pl.String(),
}

_MAX_ATTEMPTS = 200


@dataclass(frozen=True)
class Snapshot:
    """A named, read-only pointer to one commit, hence one version of every table.

    Attributes:
        name: unique within the dataset.
        commit_id: the commit it points at.
        commit_seq: that commit's seq.
        table_versions: table -> Delta version.
        description: free text.
        creator: who made it.
        created_at: when (UTC).
        metadata: user key/value pairs.
        previous: the snapshot before it (None for the first).
        changes: per-table rows added, modified and deleted since `previous`
            (since the empty dataset for the first). Filled in by
            `Dataset.snapshot` and `Dataset.list_snapshots`, always fresh, so
            they stay right when a snapshot in between is deleted.
        state: 'materialized' (readable), 'archived' (in cold storage: unarchive
            it to read it) or 'restoring' (coming back).
        last_loaded_at: when it was last read (None if never, or not filled in).
    """

    name: str
    commit_id: str
    commit_seq: int
    table_versions: Mapping[str, int]
    description: str
    creator: str
    created_at: datetime
    metadata: Mapping[str, Any] = field(default_factory=dict)
    previous: str | None = None
    changes: Mapping[str, ChangeCounts] | None = None
    state: str = "materialized"
    last_loaded_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data."""
        return {
            "name": self.name,
            "commit_id": self.commit_id,
            "commit_seq": self.commit_seq,
            "table_versions": dict(self.table_versions),
            "description": self.description,
            "creator": self.creator,
            "created_at": self.created_at.isoformat(),
            "metadata": dict(self.metadata),
            "previous": self.previous,
            "changes": None
            if self.changes is None
            else {t: c.to_dict() for t, c in self.changes.items()},
            "state": self.state,
            "last_loaded_at": None
            if self.last_loaded_at is None
            else self.last_loaded_at.isoformat(),
        }


class TagTable:
    """The snapshot table of one dataset."""

    def __init__(self, location: Location, *, refs: Location | None = None) -> None:
        self.location = location
        self._refs = refs  # one small JSON per snapshot, for one-read resolution
        self._rows: tuple[int, pl.DataFrame] | None = None  # newest version read, its rows

    def ref(self, name: str) -> Location | None:
        """Where the ref file of snapshot `name` lives (None: this table keeps none)."""
        if self._refs is None:
            return None
        from lakever.filenames import encode

        return self._refs.child(f"{encode(name)}.json")

    def _write_ref(self, snap: Snapshot, *, archive_uri: str | None = None) -> None:
        """Best effort, after the row: a reader that finds no ref file reads the tag table."""
        where = self.ref(snap.name)
        if where is None:
            return
        body = {
            "name": snap.name,
            "commit_id": snap.commit_id,
            "commit_seq": snap.commit_seq,
            "tables": [
                {"table": t, "uri": t, "version": v} for t, v in sorted(snap.table_versions.items())
            ],
            "state": snap.state,
            "archive_uri": archive_uri,
        }
        try:
            where.put(json.dumps(body, sort_keys=True).encode())
        except LakeverError as exc:  # readers then read the tag table
            log.debug("snapshot ref %s not written: %s", where.uri, exc)

    def ensure(self) -> None:
        """Create the empty tag table if it does not exist yet."""
        if _delta.open_latest(self.location) is None:
            schema = pl.DataFrame(schema=TAG_SCHEMA).to_arrow().schema
            with contextlib.suppress(_delta.WriteConflict):  # created concurrently: fine
                _delta.create_table(self.location, schema, {})

    def _latest(self) -> DeltaTable:
        dt = _delta.open_latest(self.location)
        if dt is None:
            self.ensure()
            dt = _delta.open_latest(self.location)
            assert dt is not None
        return dt

    def frame(self) -> pl.DataFrame:
        """All snapshot rows, oldest first (none if the table was never made: reads never write).

        The newest version comes from one listing of the table's log; the rows
        of a version never change, so they are read once per handle.
        """
        version = _deltalog.latest_version(self.location)
        if version is None:
            return pl.DataFrame(schema=TAG_SCHEMA)
        if self._rows is not None and self._rows[0] == version:
            return self._rows[1]
        lazy = _delta.scan(self.location, version).sort("created_at", "name")
        rows = _delta.collect(self.location, version, lazy, table="snapshots")
        self._rows = (version, rows)
        return rows

    def snapshots(self) -> list[Snapshot]:
        """Every snapshot, oldest first."""
        return [_from_row(r) for r in self.frame().iter_rows(named=True)]

    def get(self, name: str) -> Snapshot:
        """The snapshot named `name`; SnapshotNotFoundError if there is none."""
        rows = self.frame().filter(pl.col("name") == name)
        if rows.is_empty():
            raise self.not_found(name)
        return _from_row(rows.row(0, named=True))

    def not_found(self, name: str) -> SnapshotNotFoundError:
        """The error for a snapshot name that does not exist."""
        return SnapshotNotFoundError(
            f"no snapshot named {name!r} in {self.location.uri}; "
            "`lakever snapshot list` shows the existing ones"
        )

    def find(self, name: str) -> Snapshot | None:
        """The snapshot named `name`, or None."""
        try:
            return self.get(name)
        except SnapshotNotFoundError:
            return None

    def create(
        self,
        name: str,
        commit: Commit,
        *,
        description: str,
        creator: str,
        created_at: datetime,
        metadata: Mapping[str, Any],
    ) -> Snapshot:
        """Add a snapshot row unless the name is taken (checked at the exact version written)."""
        try:
            meta_json = json.dumps(dict(metadata), sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"snapshot metadata must be JSON-serialisable: {exc} (got {dict(metadata)!r})"
            ) from exc
        # Paths relative to the dataset root, so a copied or moved lake keeps
        # pointing at its own tables (older rows hold absolute URIs).
        tables = [
            {"table": t, "uri": t, "version": v} for t, v in sorted(commit.table_versions.items())
        ]
        row = pl.DataFrame(
            [
                {
                    "name": name,
                    "commit_id": commit.id,
                    "commit_seq": commit.seq,
                    "frames_version": commit.table_versions.get("frames"),
                    "labels_version": commit.table_versions.get("labels"),
                    "tables": tables,
                    "description": description,
                    "creator": creator,
                    "created_at": created_at,
                    "metadata": meta_json,
                }
            ],
            schema=TAG_SCHEMA,
        )

        def attempt(dt: DeltaTable) -> None:
            if name in self._names_at(dt.version(), [name]):
                raise SnapshotExistsError(
                    f"a snapshot named {name!r} already exists; pick another name or "
                    "delete the old snapshot first"
                )
            _delta.append(dt, row, {"lakever.snapshot": name})

        self._exact(attempt)
        snap = _from_row(row.row(0, named=True))
        self._write_ref(snap)
        return snap

    def delete(self, names: list[str]) -> None:
        """Remove snapshot rows by name; SnapshotNotFoundError if any is missing.

        Their ref files go first: a crash in between leaves a row without a
        ref file (readers fall back to the table), never a ref to nothing.
        """
        if not names:
            return
        for name in names:
            where = self.ref(name)
            if where is not None:
                where.remove()

        def attempt(dt: DeltaTable) -> None:
            present = self._names_at(dt.version(), names)
            missing = [n for n in names if n not in present]
            if missing:
                raise self.not_found(missing[0])
            predicate = " OR ".join(f"name = {_delta.sql_literal(n)}" for n in names)
            _delta.delete_rows(dt, predicate, {"lakever.snapshot_delete": ",".join(names)})

        self._exact(attempt)

    def set_archive(self, name: str, *, state: str, archive_uri: str | None) -> None:
        """Record a snapshot's archive state and copy where readers outside lakever look."""
        row = pl.DataFrame(
            {"name": [name], "state": [state], "archive_uri": [archive_uri]},
            schema={"name": pl.String(), "state": pl.String(), "archive_uri": pl.String()},
        )

        def attempt(dt: DeltaTable) -> None:
            if name not in self._names_at(dt.version(), [name]):
                raise self.not_found(name)
            _delta.update_by_key(dt, row, "name", {"lakever.snapshot_state": name})

        where = self.ref(name)
        if where is not None:
            where.remove()  # before the state changes: no reader sees a stale state
        self._exact(attempt)
        snap = self.find(name)
        if snap is not None:
            self._write_ref(replace(snap, state=state), archive_uri=archive_uri)

    def _names_at(self, version: int, names: list[str]) -> set[str]:
        """Which of `names` name a snapshot at this version of the tag table."""
        query = _delta.scan(self.location, version).filter(pl.col("name").is_in(names))
        rows = _delta.collect(self.location, version, query.select("name"), table="snapshots")
        return set(rows["name"].to_list())

    def _exact(self, attempt: Any) -> None:
        delay = 0.01
        for _ in range(_MAX_ATTEMPTS):
            try:
                attempt(self._latest())
                return
            except _delta.WriteConflict:
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 1.6, 0.5)
        raise ConflictError(
            f"could not update the snapshot table {self.location.uri} after "
            f"{_MAX_ATTEMPTS} attempts: other writers kept changing it; retry later"
        )


def _from_row(row: Mapping[str, Any]) -> Snapshot:
    return Snapshot(
        name=row["name"],
        commit_id=row["commit_id"],
        commit_seq=int(row["commit_seq"]),
        table_versions={t["table"]: int(t["version"]) for t in row["tables"] or []},
        description=row["description"] or "",
        creator=row["creator"] or "",
        created_at=row["created_at"],
        metadata=json.loads(row["metadata"] or "{}"),
    )
