"""Data files as lakever writes them: Parquet bytes, Delta statistics, file sizes.

Every file lakever writes itself (merge-on-read edits, appends, compaction,
clones, adopted files' statistics) goes through here, so they all share one
layout: ZSTD Parquet, rows sorted by frame then label, files of about
`_delta.TARGET_FILE_SIZE` bytes, and statistics readers prune with (row count,
nulls, min/max of strings, integers, finite floats, dates and UTC
timestamps). Files of one write are encoded and stored a few at a time in
threads: encoding releases the GIL, and on two cores that halves a bulk
import's write.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from typing import Any, cast

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import Schema

from lakever import _delta, _deltalog
from lakever.storage import Location

#: Rows encoded to estimate bytes per row when a table has no files yet.
SAMPLE_ROWS = 20_000

#: At most this many files are encoded and stored at once.
WORKERS = max(1, min(4, os.cpu_count() or 1))

#: Properties and field metadata that ask a writer to compute or check values
#: (constraints, generated and identity columns, invariants) or to write
#: physical column names: tables carrying them are written by delta-rs.
_WRITER_DUTIES = ("delta.constraints.", "delta.columnMapping.mode")
_FIELD_DUTIES = ("delta.generationExpression", "delta.identity", "delta.invariants")


def own_writer_can_write(files: _deltalog.TableFiles) -> bool:
    """Whether lakever's writer may write this table (nothing it would have to enforce)."""
    for key, value in files.configuration.items():
        if key.startswith(_WRITER_DUTIES) and not (
            key == "delta.columnMapping.mode" and value == "none"
        ):
            return False
    schema = files.metadata.get("schemaString")
    if not schema:
        return False
    for field in json.loads(schema).get("fields", []):
        if any(k.startswith(_FIELD_DUTIES) for k in (field.get("metadata") or {})):
            return False
    return True


def added_fields(files: _deltalog.TableFiles, rows: pl.DataFrame) -> list[dict[str, Any]] | None:
    """Delta fields for the columns of `rows` the table lacks (appended, nullable).

    None when one needs a table feature lakever's writer does not add
    (``timestamp_ntz``): delta-rs writes that append.
    """
    have = {f["name"] for f in json.loads(files.metadata["schemaString"])["fields"]}
    new = [c for c in rows.columns if c not in have]
    if not new:
        return []
    fields: list[dict[str, Any]] = json.loads(
        Schema.from_arrow(rows.select(new).clear().to_arrow().schema).to_json()
    )["fields"]
    if "timestamp_ntz" in json.dumps(fields):
        return None
    return [{**f, "nullable": True} for f in fields]


def widened(files: _deltalog.TableFiles, fields: list[dict[str, Any]]) -> dict[str, Any]:
    """The table's `metaData` action with `fields` appended to its schema."""
    meta = dict(files.metadata)
    schema = json.loads(meta["schemaString"])
    schema["fields"] = [*schema["fields"], *fields]
    meta["schemaString"] = json.dumps(schema, separators=(",", ":"))
    return meta


def arrow_schema_of(meta: Mapping[str, Any]) -> pa.Schema:
    """The Arrow schema files of a table with this `metaData` are written with."""
    return pa.schema(Schema.from_json(meta["schemaString"]).to_arrow())


def encode(df: pl.DataFrame, arrow_schema: pa.Schema) -> bytes:
    """`df` as ZSTD Parquet bytes with exactly `arrow_schema`."""
    table = df.to_arrow().cast(arrow_schema) if df.height else arrow_schema.empty_table()
    sink = io.BytesIO()
    # No dictionary for the key (unique: one only costs time and space); every
    # other column keeps one, frame_id of labels above all (measured at 5M
    # labels: without a dictionary for frame_id too, reads took 1.3x longer).
    key = "label_id" if "label_id" in arrow_schema.names else "frame_id"
    dictionary = [n for n in arrow_schema.names if n != key]
    pq.write_table(table, sink, compression="zstd", use_dictionary=dictionary)
    return sink.getvalue()


def stats(df: pl.DataFrame) -> str:
    """Delta statistics of a file holding `df`."""
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for name, dtype in df.schema.items():
        col = df.get_column(name)
        if dtype.is_nested():
            continue
        nulls[name] = col.null_count()
        if col.null_count() == col.len():
            continue
        bounds = _bounds(col, dtype)
        if bounds is not None:
            mins[name], maxs[name] = bounds
    return json.dumps(
        {"numRecords": df.height, "minValues": mins, "maxValues": maxs, "nullCount": nulls},
        separators=(",", ":"),
    )


def _bounds(col: pl.Series, dtype: pl.DataType) -> tuple[Any, Any] | None:
    """JSON min and max of a column, or None where Delta has none we can write exactly."""
    if dtype == pl.String or dtype.is_integer():
        return col.min(), col.max()
    if dtype.is_float():
        if not bool(col.drop_nulls().is_finite().all()):
            return None  # NaN and infinities have no JSON number
        return float(col.min()), float(col.max())  # type: ignore[arg-type]
    if dtype == pl.Date:
        day_lo, day_hi = cast(date, col.min()), cast(date, col.max())
        return day_lo.isoformat(), day_hi.isoformat()
    if isinstance(dtype, pl.Datetime) and dtype.time_zone == "UTC":
        lo, hi = cast(datetime, col.min()), cast(datetime, col.max())
        # Delta keeps milliseconds: the minimum rounds down and the maximum up,
        # so no reader skips a file holding a row it asked for.
        low = lo.replace(microsecond=lo.microsecond // 1000 * 1000)
        high = hi.replace(microsecond=hi.microsecond // 1000 * 1000)
        if high < hi:
            high += timedelta(milliseconds=1)
        return _timestamp(low), _timestamp(high)
    return None


def _timestamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def rows_per_file(files: _deltalog.TableFiles, sample: pl.DataFrame | None = None) -> int:
    """Rows that make a file of about the target size.

    Judged from the table's files, or, when it has none, from encoding a
    sample of the rows about to be written.
    """
    size = rows = 0
    for add in files.adds.values():
        n = _deltalog.num_records(add)
        if n:
            size += int(add.get("size", 0))
            rows += n
    if not rows and sample is not None and sample.height:
        head = sample.head(SAMPLE_ROWS)
        size, rows = len(encode(head, head.to_arrow().schema)), head.height
    per_row = size / rows if rows else 64.0
    return max(1000, int(_delta.TARGET_FILE_SIZE / max(per_row, 1.0)))


def write(
    loc: Location,
    data: pl.DataFrame,
    arrow_schema: pa.Schema,
    files: _deltalog.TableFiles,
    now: int,
    written: list[Location],
    *,
    data_change: bool = True,
) -> list[dict[str, Any]]:
    """Store `data` (already sorted) as new files of about the target size; their `add`s.

    Every file is appended to `written` before it is stored, so a caller's
    cleanup finds the ones a failure left behind.
    """
    if data.is_empty():
        return []
    step = rows_per_file(files, data)
    parts = max(1, -(-data.height // step))
    step = max(1, -(-data.height // parts))  # files of even size read evenly in parallel
    targets = [
        (offset, loc.child(f"part-00000-{uuid.uuid4()}-c000.zstd.parquet"))
        for offset in range(0, data.height, step)
    ]
    written.extend(t for _, t in targets)

    def store(job: tuple[int, Location]) -> dict[str, Any]:
        offset, target = job
        chunk = data.slice(offset, step)
        blob = encode(chunk, arrow_schema)
        target.put(blob)
        return _add(target.name, blob, now, data_change, chunk)

    if len(targets) == 1:
        return [store(targets[0])]
    with ThreadPoolExecutor(min(WORKERS, len(targets))) as pool:
        return list(pool.map(store, targets))


def _add(
    name: str, blob: bytes, now: int, data_change: bool, chunk: pl.DataFrame
) -> dict[str, Any]:
    return {
        "path": name,
        "partitionValues": {},
        "size": len(blob),
        "modificationTime": now,
        "dataChange": data_change,
        "stats": stats(chunk),
    }


def conform(rows: pl.DataFrame, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """`rows` with the table's columns in its order; columns it lacks are null."""
    missing = [pl.lit(None, dtype).alias(n) for n, dtype in schema.items() if n not in rows.columns]
    return (rows.with_columns(missing) if missing else rows).select(list(schema))
