"""Writing a dataset version out: one file per table, COCO JSON, or a YOLO folder.

Paths are local or s3:// (written with the lake's storage options). Parquet
keeps every type; CSV cannot hold lists or structs, so those columns are
written as JSON text there.

A folder export (tables, YOLO) leaves its folder holding exactly that
version's export. It recognises an earlier export by the manifest every
export writes, ``.lakever-export.json`` (dataset, commit, format and the
files written): files an earlier export listed are replaced or removed. A
folder holding anything no export listed is refused with `InvalidInputError`
naming the file, unless ``overwrite=True``, which removes it too. Before
writing, the manifest is rewritten to list the old files and the new, so an
export that dies midway leaves a folder the next export still recognises.
A single-file export (COCO JSON) replaces its file whole.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from lakever import coco, yolo
from lakever.commits import now_utc
from lakever.errors import InvalidInputError
from lakever.storage import Location, storage_error, user_location

if TYPE_CHECKING:
    from lakever.view import TableReader

FORMATS = ("parquet", "csv", "jsonl")
#: The manifest of a folder export, at the folder's top.
MANIFEST = ".lakever-export.json"


def export_tables(
    reader: TableReader, path: str, *, format: str, overwrite: bool = False
) -> list[str]:
    """Write every table of the version to `path/<table>.<format>`; return the URIs."""
    if format not in FORMATS:
        raise InvalidInputError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    files = []
    for table in reader.tables:
        rows = reader.read(table)
        buffer = io.BytesIO()
        if format == "parquet":
            rows.write_parquet(buffer)
        elif format == "csv":
            _flat(rows).write_csv(buffer)
        else:
            rows.write_ndjson(buffer)
        files.append((f"{table}.{format}", buffer.getvalue()))
    loc = user_location(path, reader._dataset.root.options)
    write_folder(reader, loc, files, format=format, overwrite=overwrite)
    return [loc.child(*rel.split("/")).uri for rel, _ in files]


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


def export_yolo(reader: TableReader, directory: str, *, overwrite: bool = False) -> int:
    """Write the version as a YOLO folder; return the number of frames written."""
    loc = user_location(directory, reader._dataset.root.options)
    files, links, count = yolo.export_files(reader, loc.uri)
    write_folder(reader, loc, files, format="yolo", overwrite=overwrite, links=links)
    return count


def write_folder(
    reader: TableReader,
    loc: Location,
    files: Sequence[tuple[str, bytes]],
    *,
    format: str,
    overwrite: bool,
    links: Sequence[tuple[str, str]] = (),
) -> None:
    """Make `loc` hold exactly `files` (paths relative to it) and their manifest.

    `links` are (path, local file) pairs made symbolic links when `loc` is a
    local folder (a YOLO export's images), and left out elsewhere.

    Raises:
        InvalidInputError: `loc` holds a file no earlier export listed, and
            `overwrite` is False.
    """
    present = {rel for rel, _, _ in loc.list_tree()}
    listed = _listed(loc) if present else set()
    foreign = sorted(present - listed - {MANIFEST})
    if foreign and not overwrite:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise InvalidInputError(
            f"{loc.uri} holds {foreign[0]!r}{more}, which no lakever export wrote; export into "
            "an empty folder, or pass overwrite=True (CLI --overwrite) to replace everything in it"
        )
    links = list(links) if loc.is_local else []
    new = [rel for rel, _ in files] + [rel for rel, _ in links]
    ds = reader._dataset
    body = {
        "format": 1,
        "export": format,
        "dataset": ds.name,
        "commit": reader._reading_commit().id,
        "seq": reader._reading_commit().seq,
        "written_at": now_utc().isoformat(),
    }
    # Listed first, old and new together: a crash midway leaves nothing unrecognised.
    interim = sorted(set(new) | (present - {MANIFEST}))
    loc.child(MANIFEST).put(json.dumps({**body, "complete": False, "files": interim}).encode())
    for rel, data in files:
        loc.child(*rel.split("/")).put(data)
    for rel, target in links:
        _link(loc.child(*rel.split("/")).path, target)
    stale = present - set(new) - {MANIFEST}
    loc.remove_many([loc.child(*rel.split("/")) for rel in sorted(stale)])
    loc.child(MANIFEST).put(json.dumps({**body, "complete": True, "files": sorted(new)}).encode())


def _listed(loc: Location) -> set[str]:
    """The files the folder's manifest lists (none when it has no readable one)."""
    data = loc.child(MANIFEST).read_or_none()
    if data is None:
        return set()
    try:
        files = json.loads(data).get("files", [])
    except (ValueError, AttributeError):
        return set()
    return {f for f in files if isinstance(f, str)}


def _link(path: str, target: str) -> None:
    """Point a symbolic link at `path` to `target`, replacing whatever is there."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        os.symlink(os.path.abspath(target), tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise storage_error("link", path, exc) from exc
