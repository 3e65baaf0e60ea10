"""Writing a dataset version out: one file per table, COCO JSON, or a YOLO folder.

Paths are local or s3:// (written with the lake's storage options). Parquet
keeps every type; CSV cannot hold lists or structs, so those columns are
written as JSON text there.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import polars as pl

from lakever import coco, yolo
from lakever.errors import InvalidInputError
from lakever.storage import user_location

if TYPE_CHECKING:
    from lakever.view import TableReader

FORMATS = ("parquet", "csv", "jsonl")


def export_tables(reader: TableReader, path: str, *, format: str) -> list[str]:
    """Write every table of the version to `path/<table>.<format>`; return the URIs."""
    if format not in FORMATS:
        raise InvalidInputError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    loc = user_location(path, reader._dataset.root.options)
    written = []
    for table in reader.tables:
        rows = reader.read(table)
        buffer = io.BytesIO()
        if format == "parquet":
            rows.write_parquet(buffer)
        elif format == "csv":
            _flat(rows).write_csv(buffer)
        else:
            rows.write_ndjson(buffer)
        target = loc.child(*f"{table}.{format}".split("/"))
        target.put(buffer.getvalue())
        written.append(target.uri)
    return written


def _flat(rows: pl.DataFrame) -> pl.DataFrame:
    nested = [c for c, t in rows.schema.items() if t.is_nested()]
    if not nested:
        return rows
    return rows.with_columns(
        pl.col(c).map_elements(
            lambda v: json.dumps(v.to_list() if isinstance(v, pl.Series) else v),
            return_dtype=pl.String,
        )
        for c in nested
    )


def export_coco(reader: TableReader, path: str | None) -> dict[str, Any]:
    """The COCO document of the version, also written to `path` when given."""
    doc = coco.export_document(reader)
    if path is not None:
        loc = user_location(path, reader._dataset.root.options)
        loc.put(json.dumps(doc).encode())
    return doc


def export_yolo(reader: TableReader, directory: str) -> int:
    """Write the version as a YOLO folder; return the number of frames written."""
    return yolo.export_dataset(reader, str(directory), reader._dataset.root.options)
