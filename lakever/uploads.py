"""The record of every upload: two append-only Delta tables in the dataset.

``<dataset>/uploads`` holds one row per event of an upload: its start, each
chunk it processed (with the data commit the chunk made, if any) and its
finish, each with the counts so far. ``<dataset>/upload_errors`` holds one row
per rejected row. Spark and Polars read them like the tag table.

Every processing of a chunk has an attempt id. Error rows of a chunk count
only when a chunk row with the same attempt id exists, so errors written by
an attempt that crashed before recording its chunk are ignored, and the
chunk's next attempt records them again. A chunk's data commit carries its
upload id, chunk number, attempt and counts in its `meta`: that commit is the
truth, and a crash between it and the chunk row is healed on resume from the
commit itself (see `lakever.ingest`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl

from lakever import _records
from lakever.commits import now_utc
from lakever.errors import InvalidInputError, UploadNotFoundError
from lakever.storage import Location

STATUSES = ("running", "done", "partial", "failed")

_COUNTS = pl.Struct(
    {
        "table": pl.String(),
        "received": pl.Int64(),
        "committed": pl.Int64(),
        "rejected": pl.Int64(),
    }
)
UPLOAD_SCHEMA: dict[str, pl.DataType] = {
    "upload_id": pl.String(),
    "attempt": pl.String(),
    "event": pl.String(),  # start | chunk | finish
    "chunk": pl.Int64(),  # -1 for start and finish
    "status": pl.String(),
    "commit_seq": pl.Int64(),  # the data commit the chunk made, if any
    "head_seq": pl.Int64(),  # HEAD when the row was written: where a resume looks from
    "tables": pl.List(_COUNTS),  # counts so far, per table
    "mode": pl.String(),
    "message": pl.String(),
    "author": pl.String(),
    "started_at": pl.Datetime("us", "UTC"),
    "recorded_at": pl.Datetime("us", "UTC"),
    "digest": pl.String(),  # of every row received so far (lakever._rowstream)
}
ERROR_SCHEMA: dict[str, pl.DataType] = {
    "upload_id": pl.String(),
    "attempt": pl.String(),
    "chunk": pl.Int64(),
    "table": pl.String(),
    "row": pl.Int64(),
    "key": pl.String(),
    "rule": pl.String(),
    "column": pl.String(),
    "value": pl.String(),
    "message": pl.String(),
}
#: The columns `Upload.errors` shows.
ERROR_COLUMNS = ("table", "row", "key", "rule", "column", "value", "message")

_MAX_ATTEMPTS = 200


@dataclass
class Counts:
    """Rows received, committed and rejected per table."""

    received: dict[str, int] = field(default_factory=dict)
    committed: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)

    def tables(self) -> list[str]:
        """Every table counted, in first-seen order."""
        return list(dict.fromkeys([*self.received, *self.committed, *self.rejected]))

    def to_rows(self) -> list[dict[str, Any]]:
        """The counts as rows of the `tables` column."""
        return [
            {
                "table": t,
                "received": self.received.get(t, 0),
                "committed": self.committed.get(t, 0),
                "rejected": self.rejected.get(t, 0),
            }
            for t in self.tables()
        ]

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, Any]] | None) -> Counts:
        """Rebuild counts from the `tables` column (or a commit's meta)."""
        out = cls()
        for r in rows or []:
            out.received[r["table"]] = int(r["received"])
            out.committed[r["table"]] = int(r["committed"])
            out.rejected[r["table"]] = int(r["rejected"])
        return out

    def add(self, table: str, *, received: int = 0, committed: int = 0, rejected: int = 0) -> None:
        """Count more rows of a table."""
        self.received[table] = self.received.get(table, 0) + received
        self.committed[table] = self.committed.get(table, 0) + committed
        self.rejected[table] = self.rejected.get(table, 0) + rejected


class Upload:
    """One upload: its status, counts, commits and rejected rows.

    Attributes:
        id: the upload id (the caller's, or generated).
        status: 'running', 'done' (nothing rejected), 'partial' (some rows
            rejected) or 'failed' (nothing committed).
        rows_received: rows read from each table's source.
        rows_committed: rows that passed every rule and were written.
        rows_rejected: rows refused (see `errors`).
        commits: seqs of the commits it made, in order, over every attempt.
        started_at: when its first attempt started; finished_at: when it ended.
        author: who ran it; mode: 'upsert', 'add' or 'replace_labels'.
    """

    def __init__(
        self,
        rows: pl.DataFrame,
        errors: Callable[[], pl.DataFrame],
    ) -> None:
        first = rows.row(0, named=True)
        last = rows.row(rows.height - 1, named=True)
        counts = Counts.from_rows(last["tables"])
        self.id: str = first["upload_id"]
        self.status: str = last["status"]
        self.rows_received: dict[str, int] = counts.received
        self.rows_committed: dict[str, int] = counts.committed
        self.rows_rejected: dict[str, int] = counts.rejected
        self.commits: list[int] = [
            int(s) for s in rows["commit_seq"].drop_nulls().unique(maintain_order=True).to_list()
        ]
        self.started_at: datetime = first["started_at"]
        finished = last["event"] == "finish"
        self.finished_at: datetime | None = last["recorded_at"] if finished else None
        self.author: str = first["author"] or ""
        self.mode: str = first["mode"] or ""
        self.message: str = first["message"] or ""
        self._load_errors = errors
        self._errors: pl.DataFrame | None = None

    @property
    def errors(self) -> pl.DataFrame:
        """Rejected rows: table, row (index in its source), key, rule, column, value, message."""
        if self._errors is None:
            self._errors = self._load_errors()
        return self._errors

    def summary(self) -> str:
        """One line: id, status and counts."""
        received = sum(self.rows_received.values())
        committed = sum(self.rows_committed.values())
        rejected = sum(self.rows_rejected.values())
        return (
            f"upload {self.id}: {self.status}, {received} rows received, {committed} committed, "
            f"{rejected} rejected in {len(self.commits)} commit(s)"
        )

    def __repr__(self) -> str:
        return f"Upload({self.id!r}, status={self.status!r}, commits={len(self.commits)})"


class UploadRecords:
    """The uploads and upload_errors tables of one dataset."""

    def __init__(self, root: Location) -> None:
        self.uploads = root.child("uploads")
        self.errors = root.child("upload_errors")

    # -- writing ----------------------------------------------------------------------

    def append_events(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Record event rows of an upload."""
        _records.append(self.uploads, pl.DataFrame([dict(r) for r in rows], schema=UPLOAD_SCHEMA))

    def append_errors(self, rows: pl.DataFrame) -> None:
        """Record rejected rows (already in `ERROR_SCHEMA`)."""
        if not rows.is_empty():
            _records.append(self.errors, rows.select(list(ERROR_SCHEMA)))

    # -- reading ----------------------------------------------------------------------

    def events(self, upload_id: str | None = None) -> pl.DataFrame:
        """Event rows (of one upload, or all), in the order they were recorded."""
        rows = _records.read(self.uploads, UPLOAD_SCHEMA)
        if upload_id is not None:
            rows = rows.filter(pl.col("upload_id") == upload_id)
        rank = pl.col("event").replace_strict({"start": 0, "chunk": 1}, default=2)
        return rows.sort(rank, "chunk", "recorded_at", maintain_order=True)

    def error_rows(self, upload_id: str, valid: pl.DataFrame) -> pl.DataFrame:
        """The errors of an upload's recorded chunks (`valid`: its chunk, attempt pairs)."""
        rows = _records.read(self.errors, ERROR_SCHEMA)
        rows = rows.filter(pl.col("upload_id") == upload_id)
        rows = rows.join(valid.select("chunk", "attempt"), on=["chunk", "attempt"], how="semi")
        rows = rows.unique(maintain_order=True)  # a chunk healed by two runs is recorded twice
        return rows.sort("table", "row").select(ERROR_COLUMNS)

    def has_errors(self, upload_id: str, chunk: int, attempt: str) -> bool:
        """Whether error rows of this chunk attempt were recorded."""
        rows = _records.read(self.errors, ERROR_SCHEMA)
        hit = rows.filter(
            (pl.col("upload_id") == upload_id)
            & (pl.col("chunk") == chunk)
            & (pl.col("attempt") == attempt)
        )
        return not hit.is_empty()

    def get(self, upload_id: str, *, dataset: str = "") -> Upload:
        """The upload with this id; UploadNotFoundError if none was recorded."""
        rows = self.events(upload_id)
        if rows.is_empty():
            raise UploadNotFoundError(
                f"no upload {upload_id!r} in dataset {dataset!r}; `lakever uploads {dataset}` "
                "lists them"
            )
        # one attempt per chunk counts: the one that committed it, else the first recorded
        # (two runs of one id at once may both have processed a chunk that made no commit)
        valid = (
            rows.filter(pl.col("event") == "chunk")
            .sort(pl.col("commit_seq").is_null(), maintain_order=True)
            .unique("chunk", keep="first", maintain_order=True)
        )
        return Upload(rows, lambda: self.error_rows(upload_id, valid))

    def listing(self, *, status: str | None = None, limit: int | None = None) -> pl.DataFrame:
        """One row per upload, newest first."""
        if status is not None and status not in STATUSES:
            raise InvalidInputError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        if limit is not None and (isinstance(limit, bool) or limit < 0):
            raise InvalidInputError(f"limit must be a whole number >= 0, got {limit!r}")
        rows = self.events()
        if rows.is_empty():
            return _listing_schema()
        first = rows.group_by("upload_id", maintain_order=True).agg(
            pl.col("started_at").first(),
            pl.col("author").first(),
            pl.col("mode").first(),
            pl.col("message").first(),
            pl.col("commit_seq").drop_nulls().n_unique().alias("commits"),
            pl.col("status").last(),
            pl.col("tables").last(),
            pl.col("event").last().alias("last_event"),
            pl.col("recorded_at").last(),
        )
        out = first.with_columns(
            *(
                pl.col("tables")
                .list.eval(pl.element().struct.field(kind))
                .list.sum()
                .alias(f"rows_{kind}")
                for kind in ("received", "committed", "rejected")
            ),
            pl.when(pl.col("last_event") == "finish")
            .then(pl.col("recorded_at"))
            .alias("finished_at"),
        ).select(_listing_schema().columns)
        out = out.sort("started_at", descending=True)
        if status is not None:
            out = out.filter(pl.col("status") == status)
        return out if limit is None else out.head(limit)


def _listing_schema() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "upload_id": pl.String(),
            "status": pl.String(),
            "rows_received": pl.Int64(),
            "rows_committed": pl.Int64(),
            "rows_rejected": pl.Int64(),
            "commits": pl.UInt32(),
            "mode": pl.String(),
            "author": pl.String(),
            "message": pl.String(),
            "started_at": pl.Datetime("us", "UTC"),
            "finished_at": pl.Datetime("us", "UTC"),
        }
    )


def event_row(
    *,
    upload_id: str,
    attempt: str,
    event: str,
    chunk: int,
    status: str,
    commit_seq: int | None,
    head_seq: int,
    counts: Counts,
    mode: str,
    message: str,
    author: str,
    started_at: datetime,
    digest: str | None = None,
) -> dict[str, Any]:
    """One row of the uploads table."""
    return {
        "upload_id": upload_id,
        "attempt": attempt,
        "event": event,
        "chunk": chunk,
        "status": status,
        "commit_seq": commit_seq,
        "head_seq": head_seq,
        "tables": counts.to_rows(),
        "mode": mode,
        "message": message,
        "author": author,
        "started_at": started_at,
        "recorded_at": now_utc(),
        "digest": digest,
    }
