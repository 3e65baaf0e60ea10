"""Repair: what a dataset can no longer read, and making HEAD writable again.

Data files can disappear from under lakever: a VACUUM run from outside with
its retention check turned off, a bucket lifecycle rule, a hand-run `rm`.
lakever never restores onto a version whose files are gone (that would make
the table unreadable for every later reader), so such a loss at HEAD stops
every write until it is repaired.

`repair` reports, for HEAD and for every snapshot, each table version with
missing data files and how many rows those files held (from the Delta file
statistics). Applied, it makes one recorded commit (operation ``repair``)
that rewrites each broken HEAD table from the files that survive, so HEAD
is readable and writable again. Nothing is dropped silently: the commit's
counts give the rows lost per table, and the report names every file.
Snapshots whose files are gone cannot be brought back; they are reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from lakever import _delta
from lakever._staging import Stage
from lakever.commits import ChangeCounts, Commit

if TYPE_CHECKING:
    from lakever.dataset import Dataset

REPAIR_OPERATION = "repair"

_SCHEMA: dict[str, pl.DataType] = {
    "ref": pl.String(),
    "commit_seq": pl.Int64(),
    "table": pl.String(),
    "version": pl.Int64(),
    "missing_files": pl.List(pl.String()),
    "rows_lost": pl.Int64(),
}


@dataclass(frozen=True)
class RepairReport:
    """What is unreadable in a dataset, and what a repair did or would do.

    Attributes:
        head_seq: the HEAD commit that was examined.
        unreadable: one row per unreadable table version of HEAD or of a
            snapshot: ref ('HEAD' or the snapshot's name), commit_seq, table,
            version, missing_files, rows_lost (from file statistics).
        applied: whether a repair commit was asked for.
        commit: the repair commit, when one was made.
    """

    head_seq: int
    unreadable: pl.DataFrame
    applied: bool
    commit: Commit | None

    @property
    def head_broken(self) -> bool:
        """Whether HEAD itself had unreadable tables when examined."""
        return not self.unreadable.filter(pl.col("ref") == "HEAD").is_empty()

    def describe(self) -> str:
        """A short human-readable account."""
        if self.unreadable.is_empty():
            return (
                f"nothing to repair: every table of HEAD (commit {self.head_seq}) and of "
                "every snapshot is readable"
            )
        lines = []
        for r in self.unreadable.iter_rows(named=True):
            lines.append(
                f"{r['ref']} (commit {r['commit_seq']}): table {r['table']} version "
                f"{r['version']} lost {len(r['missing_files'])} file(s), {r['rows_lost']} row(s)"
            )
        if self.commit is not None:
            lines.append(
                f"repaired: commit {self.commit.seq} rewrote HEAD's broken tables from the "
                "files that survive"
            )
        elif self.head_broken and not self.applied:
            lines.append("HEAD is broken: apply the repair to make it writable again")
        return "\n".join(lines)


def _inspect(ds: Dataset, ref: str, commit: Commit, seen: dict[Any, Any]) -> list[dict[str, Any]]:
    rows = []
    for table, version in sorted(commit.table_versions.items()):
        key = (table, version)
        if key not in seen:
            seen[key] = _inspect_one(ds, table, version)
        missing, lost_rows = seen[key]
        if missing:
            rows.append(
                {
                    "ref": ref,
                    "commit_seq": commit.seq,
                    "table": table,
                    "version": version,
                    "missing_files": missing,
                    "rows_lost": lost_rows,
                }
            )
    return rows


def _surviving_rows(ds: Dataset, table: str, version: int) -> pl.DataFrame:
    loc = ds.table_location(table)
    files = _delta.data_files(loc, version).get_column("path").to_list()
    gone = set(_delta.missing_files(loc, version))
    present = [loc.child(*str(p).split("/")).uri for p in files if p not in gone]
    schema = _delta.schema_at(loc, version)
    if not present:
        return pl.DataFrame(schema=schema)
    with _delta.boundary(f"read the surviving files of version {version} of", loc.uri):
        frame = pl.scan_parquet(present, storage_options=loc.delta_options()).collect()
    return frame.select(list(schema)).cast(schema)  # type: ignore[arg-type]


def repair(ds: Dataset, *, apply: bool, author: str | None = None) -> RepairReport:
    """Report unreadable versions; with `apply`, make HEAD readable and writable again."""
    head = ds.head
    seen: dict[Any, Any] = {}
    rows = _inspect(ds, "HEAD", head, seen)
    for snap in ds.list_snapshots(changes=False):
        rows += _inspect(ds, snap.name, ds._snapshot_commit(snap), seen)
    report = pl.DataFrame(rows, schema=_SCHEMA)
    broken = report.filter(pl.col("ref") == "HEAD")
    if not apply or broken.is_empty():
        return RepairReport(head.seq, report, apply, None)

    def op(st: Stage) -> None:
        for table, version in sorted(st.head.table_versions.items()):
            missing, lost = seen.get((table, version)) or _inspect_one(ds, table, version)
            if not missing:
                continue
            later = _delta.same_rows_later(ds.table_location(table), version)
            if later is not None:  # maintenance moved the rows: nothing is lost
                loc = ds.table_location(table)
                rows_kept = _delta.collect(loc, later, _delta.scan(loc, later), table=table)
                st.replace_table(table, rows_kept, ChangeCounts())
            else:
                rows_kept = _surviving_rows(ds, table, version)
                st.replace_table(table, rows_kept, ChangeCounts(deleted=lost))

    files = sum(len(m) for m in broken.get_column("missing_files").to_list())
    commit = ds._run(
        [op],
        message=f"repair: rewrite {broken.height} table(s) without {files} lost file(s)",
        author=author,
        operation=REPAIR_OPERATION,
    )
    return RepairReport(head.seq, report, True, None if commit.seq == head.seq else commit)


def _inspect_one(ds: Dataset, table: str, version: int) -> tuple[list[str], int]:
    loc = ds.table_location(table)
    missing = _delta.missing_files(loc, version)
    files = _delta.data_files(loc, version)
    lost = files.filter(pl.col("path").is_in(missing)).get_column("num_records")
    return missing, int(lost.fill_null(0).sum())
