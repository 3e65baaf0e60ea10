"""Table creation, exact-version writes and reads through deltalake.

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

import contextlib
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from lakever import _deltalog
from lakever._claims import META_SEQ
from lakever.errors import LakeverError, StorageError, VersionUnavailableError
from lakever.storage import Location, access_denied

#: Data files are kept near this size so an edit of a contiguous frame range
#: rewrites a few small files instead of one huge one (see docs/ARCHITECTURE.md).
TARGET_FILE_SIZE = 4 * 1024 * 1024

#: Files a snapshot may still need are never old enough for a VACUUM run from
#: outside (Spark, delta-rs) with default settings: it lists nothing to delete,
#: and a shorter retention is refused unless the caller disables the check.
RETENTION = "interval 36500 days"

#: Properties every lakever table carries; existing tables get any that are
#: missing on their next write (see `ensure_properties`). MERGE sizes its
#: output files from `delta.targetFileSize` (not from the writer's argument):
#: unset, one scattered edit leaves ~100 MB files behind.
REQUIRED_PROPERTIES: dict[str, str] = {
    "delta.deletedFileRetentionDuration": RETENTION,
    "delta.logRetentionDuration": RETENTION,
    "delta.targetFileSize": str(TARGET_FILE_SIZE),
}

#: Table properties every lakever table is created with. CDF makes diffs and
#: histories cost as much as the change; expired-log cleanup would make old
#: versions (and so snapshots) unloadable after 30 days.
TABLE_CONFIGURATION: dict[str, str | None] = {
    "delta.enableChangeDataFeed": "true",
    "delta.enableExpiredLogCleanup": "false",
    # Loading a version replays the JSON commits since the last checkpoint; a
    # short interval keeps every load (and so every commit) cheap on S3.
    "delta.checkpointInterval": "10",
    **REQUIRED_PROPERTIES,
}

#: Operations that change no rows. A version past HEAD made by one of these
#: outside lakever (a scheduled OPTIMIZE or VACUUM) has HEAD's content, so a
#: writer builds on it instead of rolling it back (whose files may be gone).
ROW_PRESERVING_OPERATIONS = frozenset(
    {"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "ADD CONSTRAINT"}
)

_WRITER = WriterProperties(compression="ZSTD")

META_RESTORED_TO = "lakever.restored_to"


class WriteConflict(Exception):
    """Another writer committed the Delta version this write was based on."""


def props(claim: Mapping[str, str]) -> CommitProperties:
    """Commit properties of an exact-version write carrying `claim`."""
    return CommitProperties(custom_metadata=dict(claim), max_commit_retries=0)


@contextlib.contextmanager
def boundary(action: str, uri: str) -> Iterator[None]:
    """Translate deltalake, pyarrow and OS errors into lakever's error tree.

    A failed exact-version commit becomes `WriteConflict` (the protocol retries
    it); everything else becomes a `StorageError` naming the table and the cause.
    """
    try:
        yield
    except (WriteConflict, LakeverError):
        raise
    except CommitFailedError as exc:
        raise WriteConflict(str(exc)) from exc
    except Exception as exc:
        denied = access_denied(action, uri, exc)
        if denied is not None:
            raise denied from exc
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = ""
        if isinstance(exc, OSError) and exc.errno == 28:
            hint = "; the disk is full"
        elif isinstance(exc, PermissionError) or "permission denied" in text.lower():
            hint = "; check permissions for this location"
        raise StorageError(f"cannot {action} {uri}: {type(exc).__name__}: {text}{hint}") from exc


_CACHE_SIZE = 256
_CacheKey = tuple[str, int, str, str]
_cache: OrderedDict[_CacheKey, DeltaTable] = OrderedDict()
_available: set[_CacheKey] = set()  # versions whose data files were all seen present
_cache_lock = threading.Lock()


def _key(loc: Location, version: int) -> _CacheKey:
    # The storage-option fingerprint keeps connections with different
    # credentials apart; the scope keeps a re-created dataset apart from the
    # deleted one that had the same table URIs and versions.
    return (loc.uri, version, loc.fingerprint, loc.scope)


def open_at(loc: Location, version: int) -> DeltaTable:
    """Load a fresh table object at an exact version (for writing on top of it)."""
    with boundary(f"load version {version} of", loc.uri):
        return DeltaTable(loc.uri, version=version, storage_options=loc.delta_options())


def remember(loc: Location, dt: DeltaTable) -> None:
    """Cache a table object at its current version; it must never be changed again."""
    key = _key(loc, dt.version())
    with _cache_lock:
        _cache[key] = dt
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)


def forget(prefix: str) -> None:
    """Drop cached table objects under a URI prefix (a deleted dataset may be recreated)."""
    with _cache_lock:
        for key in [k for k in _cache if k[0] == prefix or k[0].startswith(prefix + "/")]:
            del _cache[key]
        _available.difference_update(
            k for k in list(_available) if k[0] == prefix or k[0].startswith(prefix + "/")
        )


def header_actions(
    loc: Location, files: _deltalog.TableFiles, metadata: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The `protocol` (of `files`) and `metaData` actions that open a new log."""
    protocol: dict[str, Any] = dict(files.protocol)
    if not protocol.get("minReaderVersion"):  # not in the log we read: ask deltalake
        proto = open_at(loc, files.version).protocol()
        protocol = {
            "minReaderVersion": proto.min_reader_version,
            "minWriterVersion": proto.min_writer_version,
        }
        if proto.reader_features:
            protocol["readerFeatures"] = list(proto.reader_features)
        if proto.writer_features:
            protocol["writerFeatures"] = list(proto.writer_features)
    return [{"protocol": protocol}, {"metaData": dict(metadata)}]


def table_at(loc: Location, version: int) -> DeltaTable:
    """A shared, read-only table object at an exact version (cached: versions never change)."""
    key = _key(loc, version)
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
        with boundary("open Delta table", loc.uri):
            return DeltaTable(loc.uri, storage_options=loc.delta_options())
    except StorageError as exc:
        if isinstance(exc.__cause__, TableNotFoundError):
            return None
        raise


def create_table(loc: Location, schema: pa.Schema, claim: Mapping[str, str]) -> DeltaTable:
    """Create an empty table (version 0) with CDF on; WriteConflict if it appeared meanwhile."""
    try:
        with boundary("create Delta table", loc.uri):
            return DeltaTable.create(
                loc.uri,
                schema,
                mode="error",
                configuration=TABLE_CONFIGURATION,
                storage_options=loc.delta_options(),
                commit_properties=props(claim),
            )
    except StorageError as exc:
        cause = exc.__cause__
        if isinstance(cause, FileExistsError) or "already exists" in str(cause):
            raise WriteConflict(str(cause)) from cause
        raise


def ensure_properties(dt: DeltaTable, claim: Mapping[str, str]) -> None:
    """Give a table created by an older lakever the required properties it lacks.

    Runs inside the caller's commit, as the next exact version: setting table
    properties changes no rows and writes no change-feed rows.
    """
    config = dt.metadata().configuration
    missing = {k: v for k, v in REQUIRED_PROPERTIES.items() if config.get(k) != v}
    if not missing:
        return
    with boundary("set table properties of", dt.table_uri):
        dt.alter.set_table_properties(missing, commit_properties=props(claim))


def commit_infos(dt: DeltaTable, count: int) -> list[dict[str, Any]]:
    """The commitInfo of the loaded version and the `count - 1` before it, newest first."""
    with boundary("read the history of", dt.table_uri):
        return list(dt.history(count))


def append(dt: DeltaTable, rows: pl.DataFrame, claim: Mapping[str, str]) -> int:
    """Append rows as the next version; return that version."""
    return _write(dt, rows, claim, mode="append")


def overwrite(dt: DeltaTable, rows: pl.DataFrame, claim: Mapping[str, str]) -> int:
    """Replace the whole content of the table with `rows` as the next version."""
    return _write(dt, rows, claim, mode="overwrite")


def _write(
    dt: DeltaTable,
    rows: pl.DataFrame,
    claim: Mapping[str, str],
    *,
    mode: Literal["append", "overwrite"],
) -> int:
    with boundary(f"{mode} to", dt.table_uri):
        write_deltalake(
            dt,
            rows.to_arrow(),
            mode=mode,
            schema_mode="merge" if mode == "append" else None,
            target_file_size=TARGET_FILE_SIZE,
            writer_properties=_WRITER,
            commit_properties=props(claim),
        )
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
    with boundary("compact", dt.table_uri):
        sizes = pl.DataFrame(dt.get_add_actions(flatten=True)).get_column("size_bytes")
        if int((sizes < TARGET_FILE_SIZE // 2).sum()) < COMPACT_MIN_SMALL_FILES:
            return dt.version()
        dt.optimize.compact(
            target_size=TARGET_FILE_SIZE,
            writer_properties=_WRITER,
            commit_properties=props({**claim, "lakever.compaction": "true"}),
        )
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
    with boundary("merge into", dt.table_uri):
        (
            dt.merge(
                source.to_arrow(),
                predicate,
                source_alias="s",
                target_alias="t",
                merge_schema=True,
                writer_properties=_WRITER,
                commit_properties=props(claim),
            )
            .when_matched_update_all(predicate=f"s.{op_column} = 'u'", except_cols=[op_column])
            .when_matched_delete(predicate=f"s.{op_column} = 'd'")
            .when_not_matched_insert_all(predicate=f"s.{op_column} = 'i'", except_cols=[op_column])
            .execute()
        )
    return dt.version()


def delete_rows(dt: DeltaTable, predicate: str, claim: Mapping[str, str]) -> int:
    """Delete the rows matching a SQL predicate as the next version; return it."""
    with boundary("delete rows of", dt.table_uri):
        dt.delete(predicate, writer_properties=_WRITER, commit_properties=props(claim))
    return dt.version()


def update_by_key(dt: DeltaTable, rows: pl.DataFrame, key: str, claim: Mapping[str, str]) -> int:
    """Set the other columns of `rows` on the rows with the same `key`, as the next version.

    Columns the table lacks are added to its schema.
    """
    updates = {c: f"s.`{c}`" for c in rows.columns if c != key}
    with boundary("update rows of", dt.table_uri):
        dt.merge(
            rows.to_arrow(),
            f"t.`{key}` = s.`{key}`",
            source_alias="s",
            target_alias="t",
            merge_schema=True,
            writer_properties=_WRITER,
            commit_properties=props(claim),
        ).when_matched_update(updates=updates).execute()
    return dt.version()


def restore(dt: DeltaTable, version: int, claim: Mapping[str, str]) -> int:
    """Write the next version with the content of `version`; return the new version."""
    meta = {**claim, META_RESTORED_TO: str(version)}
    with boundary(f"restore version {version} of", dt.table_uri):
        dt.restore(version, commit_properties=props(meta))
    return dt.version()


def scan(loc: Location, version: int) -> pl.LazyFrame:
    """A lazy Polars scan of the table at an exact version."""
    dt = table_at(loc, version)
    with boundary(f"scan version {version} of", loc.uri):
        return pl.scan_delta(dt)


def collect(loc: Location, version: int, frame: pl.LazyFrame, *, table: str) -> pl.DataFrame:
    """Run a lazy query on a table version; missing files give `VersionUnavailableError`."""
    try:
        with boundary(f"read version {version} of", loc.uri):
            return frame.collect()
    except StorageError:
        require_available(loc, version, table=table)
        raise


def schema_at(loc: Location, version: int) -> dict[str, pl.DataType]:
    """Column name -> Polars type of the table at `version`."""
    lazy = scan(loc, version)
    with boundary(f"read the schema of version {version} of", loc.uri):
        return dict(lazy.collect_schema())


# -- files gone from under a version ----------------------------------------------


def data_files(loc: Location, version: int) -> pl.DataFrame:
    """The data files a version reads: path (relative to the table), size_bytes, num_records.

    `num_records` counts live rows: a file's deletion vector is subtracted.
    """
    files = _deltalog.files_at(loc, version)
    rows = []
    for path, add in files.adds.items():
        n = _deltalog.num_records(add)
        dv = add.get("deletionVector")
        if n is not None and dv:
            n -= int(dv.get("cardinality", 0))
        rows.append(
            {"path": urllib.parse.unquote(path), "size_bytes": int(add["size"]), "num_records": n}
        )
    return pl.DataFrame(
        rows, schema={"path": pl.String, "size_bytes": pl.Int64, "num_records": pl.Int64}
    )


def missing_files(loc: Location, version: int) -> list[str]:
    """Files a version reads that no longer exist (deleted by an outside VACUUM, say).

    Data files and the deletion-vector files their vectors live in.
    """
    files = _deltalog.files_at(loc, version)
    paths = {urllib.parse.unquote(p) for p in files.adds}
    for add in files.adds.values():
        dv = add.get("deletionVector")
        where = _deltalog.vector_path(dv) if dv else None
        if where is not None and "://" not in where and not where.startswith("/"):
            paths.add(where)
    by_dir: dict[str, list[str]] = {}
    for path in paths:
        folder, _, name = str(path).rpartition("/")
        by_dir.setdefault(folder, []).append(name)
    missing: set[str] = set()
    for folder, names in sorted(by_dir.items()):
        present = (loc.child(*folder.split("/")) if folder else loc).list_files()
        missing |= {f"{folder}/{n}" if folder else n for n in names if n not in present}
    for path, add in files.adds.items():
        dv = add.get("deletionVector")
        if dv and _deltalog.vector_path(dv) in missing:
            # Without its vector a file's live rows are unknown: it is lost too
            # (reading it whole would bring deleted rows back).
            missing.add(urllib.parse.unquote(path))
    return sorted(missing)


def require_available(loc: Location, version: int, *, table: str) -> None:
    """Raise `VersionUnavailableError` if any data file of the version is gone.

    The answer is remembered per process once every file was seen, so a
    version is listed at most once; a read that later fails checks again.
    """
    key = _key(loc, version)
    missing = missing_files(loc, version)
    if not missing:
        with _cache_lock:
            _available.add(key)
        return
    with _cache_lock:
        _available.discard(key)
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    raise VersionUnavailableError(
        f"version {version} of table {table!r} ({loc.uri}) cannot be read: {len(missing)} "
        f"of its data files are gone ({shown}), deleted outside lakever (a VACUUM with "
        "the retention check disabled, or by hand). `lakever repair` reports what is "
        "lost and makes HEAD writable again",
        table=table,
        version=version,
        missing=missing,
    )


def check_available_once(loc: Location, version: int, *, table: str) -> None:
    """`require_available`, skipped when this process already saw every file of the version."""
    with _cache_lock:
        if _key(loc, version) in _available:
            return
    require_available(loc, version, table=table)


def sql_literal(value: str) -> str:
    """Quote a string for a Delta SQL predicate."""
    return "'" + value.replace("'", "''") + "'"


def newest_row_changing(infos: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest commit info (of those given, newest first) that may have changed rows."""
    for info in infos:
        outside = META_SEQ not in info and META_RESTORED_TO not in info
        if outside and info.get("operation") in ROW_PRESERVING_OPERATIONS:
            continue
        return info
    return None


def newest_row_changing_since(dt: DeltaTable, base: int) -> dict[str, Any] | None:
    """`newest_row_changing` over the versions after `base`, reading as few as it can.

    The newest version alone settles it in the common case (an orphan, a
    claim, a neutralising restore); only outside maintenance makes it look
    further back.
    """
    gap = dt.version() - base
    found = newest_row_changing(commit_infos(dt, 1))
    if found is not None or gap <= 1:
        return found
    return newest_row_changing(commit_infos(dt, gap))


def same_rows_later(loc: Location, version: int) -> int | None:
    """The latest version, if only row-preserving maintenance (or a restore) followed `version`.

    Such a version holds exactly the rows of `version`, in files that an
    outside VACUUM kept; None if rows may have changed since.
    """
    dt = open_latest(loc)
    if dt is None or dt.version() <= version:
        return None
    relevant = newest_row_changing_since(dt, version)
    if relevant is None or relevant.get(META_RESTORED_TO) == str(version):
        return dt.version()
    return None
