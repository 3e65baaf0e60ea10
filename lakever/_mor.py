"""Merge-on-read: edits and restores written as Delta commits with deletion vectors.

An update or delete does not rewrite the files holding the old rows: it marks
those rows in each file's deletion vector and writes only the new rows, plus
the change-feed (`cdc`) rows that make diffs see an update as an update. One
edit commit therefore writes bytes in proportion to the rows it changes.

The Delta commit is written here, by hand, with put-if-absent on
``_delta_log/<version>.json`` (the same atomic publish delta-rs uses), as
exactly the next version of the table the caller loaded: it lands or raises
`WriteConflict`, like every other lakever table write.

The commit holds, for each marked file, a `remove` of the file with its old
vector and an `add` of the same file with the new one (statistics kept, with
``tightBounds: false``); an `add` for each new data file; one `cdc` file; one
``deletion_vector_<uuid>.bin`` holding every new vector. A file whose masked
rows pass `REWRITE_FRACTION` is rewritten instead: its live rows join the new
data files and it is removed, so reads never pay for mostly-dead files. How
many such files one edit rewrites is bounded by `REWRITE_BUDGET` (see `_mark`).
Compaction (`_compact`) writes the same commit format through the helpers
without a leading underscore here (`writing`, `write_data`, `publish`, ...).

Which rows to mark comes from `_feed.lookup` (file and position of each key).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable, TableFeatures
from pyroaring import BitMap64

from lakever import _datafiles, _deltalog
from lakever._delta import (
    WriteConflict,
    boundary,
    props,
)
from lakever._feed import FILE_COLUMN, POS_COLUMN, live_rows, lookup, scan_file
from lakever.errors import InvalidInputError, LakeverError, StorageError
from lakever.storage import Location

log = logging.getLogger("lakever")

#: A file whose deleted rows reach this fraction is rewritten instead of marked.
REWRITE_FRACTION = 0.1

#: An edit rewrites at most this many times the rows it changes (and at least one file).
REWRITE_BUDGET = 8

DV_FEATURE = "deletionVectors"


def supports_vectors(loc: Location, version: int) -> bool:
    """Whether the table's protocol at `version` has the deletion-vector feature."""
    return DV_FEATURE in _deltalog.files_at(loc, version).reader_features


# -- the edit commit -----------------------------------------------------------------------


@dataclass
class Edit:
    """One table's net change, as merge-on-read writes it.

    Attributes:
        key: the key column.
        inserts: new rows.
        updates: new values of changed rows.
        deletes: base rows of deleted keys.
        preimages: base rows of updated keys.
        positions: key, `FILE_COLUMN`, `POS_COLUMN` of every updated or deleted
            base row, at `positions_version`.
        positions_version: the table version the positions were looked up at.
    """

    key: str
    inserts: pl.DataFrame
    updates: pl.DataFrame
    deletes: pl.DataFrame
    preimages: pl.DataFrame
    positions: pl.DataFrame
    positions_version: int


def enable_vectors(dt: DeltaTable, claim: Mapping[str, str]) -> None:
    """Add the deletion-vector feature to the table's protocol, as the next version."""
    with boundary("enable deletion vectors on", dt.table_uri):
        dt.alter.add_feature(
            TableFeatures.DeletionVectors,
            allow_protocol_versions_increase=True,
            commit_properties=props(claim),
        )


def write_edit(
    dt: DeltaTable,
    loc: Location,
    edit: Edit,
    claim: Mapping[str, str],
    *,
    table: str,
    cluster: list[str],
) -> int:
    """Write `edit` as exactly the next version of `dt`; return that version.

    Raises:
        WriteConflict: another writer took the next version first.
    """
    base = dt.version()
    files = _deltalog.files_at(loc, base)
    if DV_FEATURE not in files.reader_features:
        raise LakeverError(f"table {loc.uri} has no deletion-vector feature at version {base}")
    arrow_schema, schema = schemas(dt)
    positions = edit.positions
    touched = pl.concat([edit.updates[edit.key], edit.deletes[edit.key]])
    if edit.positions_version != base:
        # The table moved since the lookup (a branch switch, a neutralised
        # orphan, maintenance from outside): rows still live where they were
        # found stay there; find the others again where they are now.
        positions = _still_placed(loc, files, positions)
        lost = touched.filter(~touched.is_in(positions[edit.key].implode()))
        if not lost.is_empty():
            found = lookup(loc, base, edit.key, lost, table=table, schema=schema)
            positions = pl.concat([positions, found.select(positions.columns)])
    if positions.height != touched.len() or positions[edit.key].n_unique() != touched.len():
        # Every replaced or deleted row must be marked exactly once, or a key
        # would be live twice (or a delete lost): refuse rather than corrupt.
        raise StorageError(
            f"cannot place {touched.len()} edited rows of {loc.uri} at version {base} "
            f"(found {positions.height}); nothing was written"
        )
    now = int(time.time() * 1000)
    with writing(loc, "write an edit to") as written:
        budget = REWRITE_BUDGET * (touched.len() + edit.inserts.height)
        marks, removed_rows, survivors = _mark(loc, files, positions, budget=budget)
        data = pl.concat([edit.updates, edit.inserts, *survivors], how="diagonal_relaxed")
        data = data.select(list(schema)).sort(cluster)
        adds = _datafiles.write(loc, data, arrow_schema, files, now, written)
        vector_actions = _write_vectors(loc, marks, files, now, written)
        cdc = write_cdc(loc, edit, schema, arrow_schema, now, written)
        actions = [_commit_info(claim, now, edit, len(adds), removed_rows), *vector_actions]
        actions += [{"add": a} for a in adds]
        actions += [{"cdc": cdc}] if cdc else []
        publish(loc, base, actions)
    return after_publish(dt, loc, files)


def adopt(
    dt: DeltaTable,
    loc: Location,
    adoption: Any,
    claim: Mapping[str, str],
    *,
    table: str,
    key: str,
) -> int:
    """Add staged files as they are as exactly the next version; mask the rows they replace.

    `adoption` is a `lakever.writer.Adoption`. With `mask`, the live rows of
    its keys are marked in deletion vectors; no row is rewritten.

    Raises:
        WriteConflict: another writer took the next version first.
    """
    base = dt.version()
    files = _deltalog.files_at(loc, base)
    if not can_write(loc, base):
        raise constrained(loc)  # set from outside since the writer checked
    now = int(time.time() * 1000)
    removed_rows = 0
    with writing(loc, "adopt staged files into") as written:
        actions: list[dict[str, Any]] = []
        if adoption.mask and files.adds and not adoption.keys.is_empty():
            found = lookup(loc, base, key, adoption.keys, table=table, schema={}, key_only=True)
            if found.height:
                # mask only: an adoption rewrites no row (later edits rewrite files
                # their vectors have mostly masked, as usual)
                marks, removed_rows, _ = _mark(loc, files, found, budget=-1)
                actions = _write_vectors(loc, marks, files, now, written)
        actions += [{"add": dict(a)} for a in adoption.adds]
        info = info_action(
            claim,
            now,
            "WRITE",
            {"mode": "adopt staged files"},
            {"num_added_files": len(adoption.adds), "num_deleted_rows": removed_rows},
        )
        publish(loc, base, [info, *actions])
    return after_publish(dt, loc, files)


def can_write(loc: Location, version: int) -> bool:
    """Whether lakever may write this table version by hand (edits, appends, adoptions).

    Not when the table asks its writers to enforce or compute something
    (constraints, generated columns, ... set from outside): delta-rs does.
    """
    return _datafiles.own_writer_can_write(_deltalog.files_at(loc, version))


def constrained(loc: Location) -> InvalidInputError:
    """The refusal of an adoption into a table `can_write` refuses."""
    return InvalidInputError(
        f"table {loc.uri} carries constraints or computed columns set outside lakever; "
        "staged files cannot be checked against them: write these rows with an "
        "ordinary upsert instead"
    )


def can_append(loc: Location, version: int, rows: pl.DataFrame) -> bool:
    """Whether `append` may write `rows` to this table version.

    Not when the table asks its writers to enforce or compute something
    (`_datafiles.own_writer_can_write`) or a new column needs a table feature.
    """
    files = _deltalog.files_at(loc, version)
    return can_write(loc, version) and _datafiles.added_fields(files, rows) is not None


def append(dt: DeltaTable, loc: Location, rows: pl.DataFrame, claim: Mapping[str, str]) -> int:
    """Add `rows` (sorted) as exactly the next version; new columns widen the schema.

    The files are written a few at a time in threads (`_datafiles.write`);
    a Delta reader and the change feed see a plain append (with a `metaData`
    action first when columns are added, as delta-rs writes a schema merge).

    Raises:
        WriteConflict: another writer took the next version first.
    """
    base = dt.version()
    files = _deltalog.files_at(loc, base)
    actions: list[dict[str, Any]] = []
    added = _datafiles.added_fields(files, rows) or []
    if added:
        meta = _datafiles.widened(files, added)
        actions.append({"metaData": meta})
        arrow_schema = _datafiles.arrow_schema_of(meta)
        schema = dict(pl.DataFrame(arrow_schema.empty_table()).schema)
    else:
        arrow_schema, schema = schemas(dt)
    data = _datafiles.conform(rows, schema)
    now = int(time.time() * 1000)
    with writing(loc, "append to") as written:
        adds = _datafiles.write(loc, data, arrow_schema, files, now, written)
        info = info_action(
            claim,
            now,
            "WRITE",
            {"mode": "Append"},
            {"num_added_files": len(adds), "num_added_rows": data.height},
        )
        publish(loc, base, [info, *actions, *({"add": a} for a in adds)])
    return after_publish(dt, loc, files)


def schemas(dt: DeltaTable) -> tuple[pa.Schema, dict[str, pl.DataType]]:
    """The table's schema as Arrow (for writing files) and as Polars types."""
    arrow_schema = pa.schema(dt.schema().to_arrow())
    return arrow_schema, dict(pl.DataFrame(arrow_schema.empty_table()).schema)


@contextlib.contextmanager
def writing(loc: Location, action: str) -> Iterator[list[Location]]:
    """Collect the files a commit writes; if it fails, remove them (best effort)."""
    written: list[Location] = []
    try:
        with boundary(action, loc.uri):
            yield written
    except BaseException:
        for f in written:
            with contextlib.suppress(Exception):  # files no commit names are harmless
                f.remove()
        raise


def publish(loc: Location, base: int, actions: list[dict[str, Any]]) -> None:
    """Create log entry `base + 1` with put-if-absent; `WriteConflict` if it exists."""
    body = "".join(json.dumps(a, separators=(",", ":")) + "\n" for a in actions).encode()
    target = loc.child("_delta_log", _deltalog.version_file(base + 1))
    if not target.put_if_absent(body):
        raise WriteConflict(f"version {base + 1} of {loc.uri} was written meanwhile")


def after_publish(dt: DeltaTable, loc: Location, files: _deltalog.TableFiles) -> int:
    """Move `dt` to the version just published, checkpointing when the interval says so."""
    version = files.version + 1
    with boundary(f"load version {version} of", loc.uri):
        dt.load_as_version(version)
    interval = int(files.configuration.get("delta.checkpointInterval", "100"))
    if version % interval == 0:
        try:  # an optimisation: a failed checkpoint must not fail the commit
            with boundary("checkpoint", loc.uri):
                dt.create_checkpoint()
        except StorageError as exc:
            log.warning("could not checkpoint version %s of %s: %s", version, loc.uri, exc)
    return version


@dataclass
class _Mark:
    rows: BitMap64  # every deleted position after this commit
    rewrite: bool


def _still_placed(
    loc: Location, files: _deltalog.TableFiles, positions: pl.DataFrame
) -> pl.DataFrame:
    """The `positions` whose row is still live: its file is in the table, its vector spares it.

    Files never change, so a row found at a position still holds that key;
    while it is live it is the key's only live row (keys are unique).
    """
    kept = []
    for (path,), group in positions.group_by(FILE_COLUMN, maintain_order=True):
        add = files.adds.get(str(path))
        if add is None:
            continue
        dv = add.get("deletionVector")
        if dv:
            dead = pl.Series(list(_deltalog.read_vector(loc, dv)), dtype=pl.Int64)
            group = group.filter(~pl.col(POS_COLUMN).cast(pl.Int64).is_in(dead.implode()))
        kept.append(group)
    return pl.concat([positions.clear(), *kept])


def _mark(
    loc: Location, files: _deltalog.TableFiles, positions: pl.DataFrame, *, budget: int
) -> tuple[dict[str, _Mark], int, list[pl.DataFrame]]:
    """New vectors per touched file; live rows of the files to rewrite instead.

    A negative `budget` rewrites nothing (every touched file keeps a vector).

    Files whose masked rows pass `REWRITE_FRACTION` are rewritten, the most
    masked first, while their live rows fit in `budget` (at least one file
    always does); those past it keep a vector until a later commit. Scattered
    edits push every file past the threshold within a commit or two of each
    other: without the budget, that one edit would rewrite, and hold in
    memory, the whole table. Files already past the threshold that this edit
    does not touch are candidates too, so none waits forever.
    """
    marks: dict[str, _Mark] = {}
    removed = 0
    for (path,), group in positions.group_by(FILE_COLUMN, maintain_order=True):
        path = str(path)
        add = files.adds.get(path)
        if add is None:
            raise StorageError(f"file {path} of {loc.uri} is not live; the lookup is stale")
        new = BitMap64(group[POS_COLUMN].to_list())
        dv = add.get("deletionVector")
        old = _deltalog.read_vector(loc, dv) if dv else None
        if old is not None and not new.isdisjoint(old):
            raise StorageError(f"rows of {path} in {loc.uri} were deleted twice")
        removed += len(new)
        marks[path] = _Mark(new if old is None else new | old, rewrite=False)
    over: list[tuple[float, str, int]] = []  # (masked fraction, path, live rows)
    for path, add in files.adds.items():
        dv = add.get("deletionVector")
        dead = len(marks[path].rows) if path in marks else int(dv["cardinality"]) if dv else 0
        if not dead:
            continue
        total = _deltalog.num_records(add)
        if total is None:
            if path not in marks:
                continue  # no statistics: judged when an edit touches it, not read every edit
            total = int(scan_file(loc, path).select(pl.len()).collect().item())
        if dead >= REWRITE_FRACTION * total:
            over.append((dead / total, path, total - dead))
    survivors: list[pl.DataFrame] = []
    spent = 0
    for _, path, live in sorted(over if budget >= 0 else [], reverse=True):
        if live and spent and spent + live > budget:
            continue
        spent += live
        if path not in marks:
            vector = _deltalog.read_vector(loc, files.adds[path]["deletionVector"])
            marks[path] = _Mark(vector, rewrite=True)
        marks[path].rewrite = True
        if live:
            survivors.append(scan_file(loc, path, dead=marks[path].rows).collect())
    return marks, removed, survivors


def _write_vectors(
    loc: Location,
    marks: Mapping[str, _Mark],
    files: _deltalog.TableFiles,
    now: int,
    written: list[Location],
) -> list[dict[str, Any]]:
    """Remove every marked file; add back those kept, with their new vectors."""
    kept = [(files.adds[path], m.rows) for path, m in sorted(marks.items()) if not m.rewrite]
    actions: list[dict[str, Any]] = [remove_action(files.adds[p], now) for p in sorted(marks)]
    return actions + [{"add": a} for a in vector_adds(loc, kept, written)]


def vector_adds(
    loc: Location, files: Sequence[tuple[Mapping[str, Any], BitMap64]], written: list[Location]
) -> list[dict[str, Any]]:
    """`add` actions of `files` with these deleted rows, their vectors in one new file of `loc`."""
    if not files:
        return []
    blobs = [_deltalog.encode_vector(rows) for _, rows in files]
    file_id = uuid.uuid4()
    content, offsets = _deltalog.vector_file(blobs)
    target = loc.child(f"deletion_vector_{file_id}.bin")
    written.append(target)
    target.put(content)
    adds = []
    for (old, rows), blob, offset in zip(files, blobs, offsets, strict=True):
        add = {k: v for k, v in old.items() if k != "deletionVector"}
        st = _deltalog.stats(add)
        if st:
            st["tightBounds"] = False
            add["stats"] = json.dumps(st, separators=(",", ":"))
        add["dataChange"] = True
        add["deletionVector"] = {
            "storageType": "u",
            "pathOrInlineDv": _deltalog.vector_id(file_id),
            "offset": offset,
            "sizeInBytes": len(blob),
            "cardinality": len(rows),
        }
        adds.append(add)
    return adds


def remove_action(add: Mapping[str, Any], now: int, *, data_change: bool = True) -> dict[str, Any]:
    """The `remove` action of a live file, with the vector it had."""
    remove = {
        "path": add["path"],
        "deletionTimestamp": now,
        "dataChange": data_change,
        "extendedFileMetadata": True,
        "partitionValues": add.get("partitionValues", {}),
        "size": add["size"],
    }
    if add.get("deletionVector"):
        remove["deletionVector"] = add["deletionVector"]
    return {"remove": remove}


def write_cdc(
    loc: Location,
    edit: Edit,
    schema: Mapping[str, pl.DataType],
    arrow_schema: pa.Schema,
    now: int,
    written: list[Location],
) -> dict[str, Any] | None:
    parts = [
        (edit.preimages, "update_preimage"),
        (edit.updates, "update_postimage"),
        (edit.deletes, "delete"),
        (edit.inserts, "insert"),
    ]
    frames = [
        df.select(list(schema)).with_columns(pl.lit(kind).alias("_change_type"))
        for df, kind in parts
        if not df.is_empty()
    ]
    if not frames:
        return None
    rows = pl.concat(frames, how="diagonal_relaxed")
    cdc_schema = arrow_schema.append(pa.field("_change_type", pa.string()))
    blob = _datafiles.encode(rows, cdc_schema)
    name = f"_change_data/cdc-00000-{uuid.uuid4()}.zstd.parquet"
    target = loc.child(name)
    written.append(target)
    target.put(blob)
    return {"path": name, "partitionValues": {}, "size": len(blob), "dataChange": False}


def _commit_info(
    claim: Mapping[str, str], now: int, edit: Edit, added_files: int, removed_rows: int
) -> dict[str, Any]:
    return info_action(
        claim,
        now,
        "MERGE",
        {"predicate": f"merge-on-read by {edit.key}"},
        {
            "num_added_files": added_files,
            "num_target_rows_updated": edit.updates.height,
            "num_target_rows_deleted": edit.deletes.height,
            "num_target_rows_inserted": edit.inserts.height,
            "num_deleted_rows": removed_rows,
        },
    )


def info_action(
    claim: Mapping[str, str],
    now: int,
    operation: str,
    parameters: Mapping[str, Any],
    metrics: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "commitInfo": {
            "timestamp": now,
            "operation": operation,
            "operationParameters": dict(parameters),
            "engineInfo": "lakever",
            "clientVersion": "lakever",
            "isBlindAppend": False,
            "operationMetrics": dict(metrics),
            **dict(claim),
        }
    }


# -- restore -------------------------------------------------------------------------------


def live_frame(
    loc: Location,
    files: _deltalog.TableFiles,
    paths: list[str],
    *,
    table: str,
    schema: Mapping[str, pl.DataType],
) -> pl.DataFrame:
    empty = pl.DataFrame(schema=dict(schema))
    parts = live_rows(loc, files, paths, table=table) if paths else []
    rows = pl.concat([empty, *parts], how="diagonal_relaxed")
    return rows.select([pl.col(n).cast(t) for n, t in schema.items()])
