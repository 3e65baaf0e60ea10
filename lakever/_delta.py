"""The one module that talks to deltalake: table creation, exact-version writes, reads.

Every lakever write to a Delta table is an *exact-version* write: it is based
on the version the caller loaded and is committed with ``max_commit_retries=0``,
so it lands as exactly the next version or fails with `WriteConflict`. Delta's
own conflict resolution would otherwise rebase our write on top of a
concurrent writer's unpublished rows.

Each write carries a *claim* in its commit metadata (which lakever commit seq
it is for, which process wrote it), which the commit protocol reads back to
tell a live writer's in-flight version from a crashed writer's orphan.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from lakever.errors import StorageError
from lakever.storage import Location

#: Table properties every lakever table is created with. CDF makes diffs and
#: histories cost as much as the change; expired-log cleanup would make old
#: versions (and so snapshots) unloadable after 30 days.
TABLE_CONFIGURATION: dict[str, str | None] = {
    "delta.enableChangeDataFeed": "true",
    "delta.enableExpiredLogCleanup": "false",
    # Loading a version replays the JSON commits since the last checkpoint; a
    # short interval keeps every load (and so every commit) cheap on S3.
    "delta.checkpointInterval": "10",
}

#: Data files are kept near this size so an edit of a contiguous frame range
#: rewrites a few small files instead of one huge one (see docs/ARCHITECTURE.md).
TARGET_FILE_SIZE = 4 * 1024 * 1024

_WRITER = WriterProperties(compression="ZSTD")

META_SEQ = "lakever.seq"
META_WRITER = "lakever.writer"
META_ATTEMPT = "lakever.attempt"
META_RESTORED_TO = "lakever.restored_to"


class WriteConflict(Exception):
    """Another writer committed the Delta version this write was based on."""


def _props(claim: Mapping[str, str]) -> CommitProperties:
    return CommitProperties(custom_metadata=dict(claim), max_commit_retries=0)


_CACHE_SIZE = 256
_cache: OrderedDict[tuple[str, int], DeltaTable] = OrderedDict()
_cache_lock = threading.Lock()


def open_at(loc: Location, version: int) -> DeltaTable:
    """Load a fresh table object at an exact version (for writing on top of it)."""
    try:
        return DeltaTable(loc.uri, version=version, storage_options=loc.delta_options())
    except (DeltaError, OSError) as exc:
        raise StorageError(f"cannot load version {version} of {loc.uri}: {exc}") from exc


def remember(loc: Location, dt: DeltaTable) -> None:
    """Cache a table object at its current version; it must never be changed again."""
    with _cache_lock:
        _cache[(loc.uri, dt.version())] = dt
        _cache.move_to_end((loc.uri, dt.version()))
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)


def forget(prefix: str) -> None:
    """Drop cached table objects under a URI prefix (a deleted dataset may be recreated)."""
    with _cache_lock:
        for key in [k for k in _cache if k[0] == prefix or k[0].startswith(prefix + "/")]:
            del _cache[key]


def table_at(loc: Location, version: int) -> DeltaTable:
    """A shared, read-only table object at an exact version (cached: versions never change)."""
    key = (loc.uri, version)
    with _cache_lock:
        dt = _cache.get(key)
        if dt is not None:
            _cache.move_to_end(key)
            return dt
    dt = open_at(loc, version)
    remember(loc, dt)
    return dt


def open_latest(loc: Location) -> DeltaTable | None:
    """Load the latest version of a table, or None if no table exists there."""
    try:
        return DeltaTable(loc.uri, storage_options=loc.delta_options())
    except TableNotFoundError:
        return None
    except (DeltaError, OSError) as exc:
        raise StorageError(f"cannot open Delta table {loc.uri}: {exc}") from exc


def create_table(loc: Location, schema: pa.Schema, claim: Mapping[str, str]) -> DeltaTable:
    """Create an empty table (version 0) with CDF on; WriteConflict if it appeared meanwhile."""
    try:
        return DeltaTable.create(
            loc.uri,
            schema,
            mode="error",
            configuration=TABLE_CONFIGURATION,
            storage_options=loc.delta_options(),
            commit_properties=_props(claim),
        )
    except (CommitFailedError, FileExistsError) as exc:
        raise WriteConflict(str(exc)) from exc
    except DeltaError as exc:
        if "already exists" in str(exc):
            raise WriteConflict(str(exc)) from exc
        raise StorageError(f"cannot create Delta table {loc.uri}: {exc}") from exc


def last_commit_info(dt: DeltaTable) -> dict[str, Any]:
    """The commitInfo of the table's loaded version (custom metadata included)."""
    history = dt.history(1)
    return history[0] if history else {}


def append(dt: DeltaTable, rows: pl.DataFrame, claim: Mapping[str, str]) -> int:
    """Append rows as the next version; return that version."""
    try:
        write_deltalake(
            dt,
            rows.to_arrow(),
            mode="append",
            schema_mode="merge",
            target_file_size=TARGET_FILE_SIZE,
            writer_properties=_WRITER,
            commit_properties=_props(claim),
        )
    except CommitFailedError as exc:
        raise WriteConflict(str(exc)) from exc
    return dt.version()


#: Every this many versions, a write checks whether small files piled up.
COMPACT_EVERY = 20
#: Compact when at least this many files are smaller than half the target size.
COMPACT_MIN_SMALL_FILES = 20


def maybe_compact(dt: DeltaTable, claim: Mapping[str, str]) -> int:
    """Merge small files (from many small commits) into target-size ones, now and then.

    Runs inside the caller's commit, as the next exact version: compaction
    changes no rows and writes no change-feed rows, so diffs and histories do
    not see it, while reads stop paying for thousands of tiny files.
    """
    if dt.version() % COMPACT_EVERY != 0:
        return dt.version()
    sizes = pl.DataFrame(dt.get_add_actions(flatten=True)).get_column("size_bytes")
    if int((sizes < TARGET_FILE_SIZE // 2).sum()) < COMPACT_MIN_SMALL_FILES:
        return dt.version()
    try:
        dt.optimize.compact(
            target_size=TARGET_FILE_SIZE,
            writer_properties=_WRITER,
            commit_properties=_props({**claim, "lakever.compaction": "true"}),
        )
    except CommitFailedError as exc:
        raise WriteConflict(str(exc)) from exc
    return dt.version()


def merge(
    dt: DeltaTable,
    source: pl.DataFrame,
    *,
    key: str,
    op_column: str,
    skip_predicate: str | None,
    claim: Mapping[str, str],
) -> int:
    """Apply keyed updates ('u'), deletes ('d') and inserts ('i') in one version.

    Args:
        dt: the table, loaded at the version to write on.
        source: rows with the key, the new values and `op_column`.
        key: key column.
        op_column: column holding 'u', 'd' or 'i' per row.
        skip_predicate: extra condition on target columns (prefixed ``t.``) that
            every touched target row satisfies; lets Delta skip whole files.
        claim: commit metadata.

    Returns:
        The new table version.
    """
    predicate = f"t.{key} = s.{key}"
    if skip_predicate:
        predicate = f"{predicate} AND {skip_predicate}"
    try:
        (
            dt.merge(
                source.to_arrow(),
                predicate,
                source_alias="s",
                target_alias="t",
                merge_schema=True,
                writer_properties=_WRITER,
                commit_properties=_props(claim),
            )
            .when_matched_update_all(predicate=f"s.{op_column} = 'u'", except_cols=[op_column])
            .when_matched_delete(predicate=f"s.{op_column} = 'd'")
            .when_not_matched_insert_all(predicate=f"s.{op_column} = 'i'", except_cols=[op_column])
            .execute()
        )
    except CommitFailedError as exc:
        raise WriteConflict(str(exc)) from exc
    return dt.version()


def delete_rows(dt: DeltaTable, predicate: str, claim: Mapping[str, str]) -> int:
    """Delete the rows matching a SQL predicate as the next version; return it."""
    try:
        dt.delete(predicate, writer_properties=_WRITER, commit_properties=_props(claim))
    except CommitFailedError as exc:
        raise WriteConflict(str(exc)) from exc
    return dt.version()


def restore(dt: DeltaTable, version: int, claim: Mapping[str, str]) -> int:
    """Write the next version with the content of `version`; return the new version."""
    meta = {**claim, META_RESTORED_TO: str(version)}
    try:
        dt.restore(version, commit_properties=_props(meta))
    except CommitFailedError as exc:
        raise WriteConflict(str(exc)) from exc
    return dt.version()


def scan(loc: Location, version: int) -> pl.LazyFrame:
    """A lazy Polars scan of the table at an exact version."""
    return pl.scan_delta(table_at(loc, version))


def read_cdf(loc: Location, start: int, end: int, *, predicate: str | None = None) -> pl.DataFrame:
    """Change Data Feed rows of versions `start`..`end` (inclusive) as Polars."""
    dt = table_at(loc, end)
    reader = dt.load_cdf(starting_version=start, ending_version=end, predicate=predicate)
    return pl.DataFrame(reader)


def schema_at(loc: Location, version: int) -> dict[str, pl.DataType]:
    """Column name -> Polars type of the table at `version`."""
    return dict(scan(loc, version).collect_schema())


def sql_literal(value: str) -> str:
    """Quote a string for a Delta SQL predicate."""
    return "'" + value.replace("'", "''") + "'"
