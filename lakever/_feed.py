"""Reading data files as Delta means them, and the change feed straight from the log.

A data file's rows are the rows its deletion vector keeps (`live_rows`).

The change feed of a version range (`changes`) is read from each commit's
actions: a commit with `cdc` files is described by them alone; any other
commit by its data-changing `add`s (inserts) and `remove`s (deletes), each
read with the deletion vector its action carries. delta-rs's `load_cdf` reads
added and removed files whole, vectors ignored, so on a table with vectors it
would show deleted rows coming back; and reading a handful of small files
ourselves costs less than building its query plan.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

import polars as pl

from lakever import _deltalog
from lakever._delta import boundary, require_available
from lakever.errors import StorageError
from lakever.storage import Location

#: Column naming the file a row lives in (relative to the table).
FILE_COLUMN = "_lakever_file"
#: Column holding the row's position in its file.
POS_COLUMN = "_lakever_pos"


def file_uri(loc: Location, path: str) -> str:
    """The full URI of a data file named in the log."""
    return loc.child(urllib.parse.unquote(path)).uri


def _scan(
    loc: Location, path: str, dv: Mapping[str, Any] | None, where: pl.Expr | None
) -> pl.LazyFrame:
    # The row index is physical even with the filter pushed into the reader
    # (row groups skipped by their statistics).
    lf = pl.scan_parquet(
        file_uri(loc, path), storage_options=loc.delta_options(), row_index_name=POS_COLUMN
    )
    if where is not None:
        lf = lf.filter(where)
    if dv:
        dead = pl.Series(list(_deltalog.read_vector(loc, dv)), dtype=pl.Int64)
        lf = lf.filter(~pl.col(POS_COLUMN).cast(pl.Int64).is_in(dead.implode()))
    return lf.with_columns(pl.lit(path).alias(FILE_COLUMN))


def live_rows(
    loc: Location,
    files: _deltalog.TableFiles,
    paths: list[str],
    *,
    table: str,
    where: pl.Expr | None = None,
) -> list[pl.DataFrame]:
    """The rows of each file that its deletion vector keeps (optionally filtered).

    Each frame has the file's columns plus `FILE_COLUMN` and `POS_COLUMN`.
    """
    try:
        with boundary(f"read version {files.version} of", loc.uri):
            queries = [_scan(loc, p, files.adds[p].get("deletionVector"), where) for p in paths]
            return pl.collect_all(queries)
    except StorageError:
        require_available(loc, files.version, table=table)
        raise


def changes(loc: Location, start: int, end: int) -> pl.DataFrame:
    """Change-feed rows of versions `start`..`end` (inclusive), like `load_cdf`.

    Columns: the table's columns, `_change_type`, `_commit_version`,
    `_commit_timestamp` (ms). Raises `StorageError` when a file is gone
    (callers then compare in full).
    """
    commits = _deltalog.commit_actions(loc, range(start, end + 1))
    queries: list[pl.LazyFrame] = []
    with boundary(f"read the change feed {start}..{end} of", loc.uri):
        for version, actions in commits.items():
            stamp = next(
                (a["commitInfo"].get("timestamp", 0) for a in actions if "commitInfo" in a), 0
            )
            meta = [
                pl.lit(version, dtype=pl.Int64).alias("_commit_version"),
                pl.lit(stamp, dtype=pl.Int64).alias("_commit_timestamp"),
            ]
            cdc = [a["cdc"] for a in actions if a.get("cdc")]
            if cdc:
                for c in cdc:
                    lf = pl.scan_parquet(
                        file_uri(loc, c["path"]), storage_options=loc.delta_options()
                    )
                    queries.append(lf.with_columns(meta))
                continue
            for kind, change in (("add", "insert"), ("remove", "delete")):
                for a in actions:
                    act = a.get(kind)
                    if not act or not act.get("dataChange", True):
                        continue
                    lf = _scan(loc, act["path"], act.get("deletionVector"), None)
                    queries.append(
                        lf.drop(FILE_COLUMN, POS_COLUMN).with_columns(
                            pl.lit(change).alias("_change_type"), *meta
                        )
                    )
        if not queries:
            return pl.DataFrame(
                schema={
                    "_change_type": pl.String,
                    "_commit_version": pl.Int64,
                    "_commit_timestamp": pl.Int64,
                }
            )
        return pl.concat(pl.collect_all(queries), how="diagonal_relaxed")
