"""Where an upload's rows come from: in-memory batches, streams, or files.

`batches` turns any accepted source into an iterator of Polars frames of at
most `chunk_rows` rows, reading files a block at a time, so a stream or a glob
of files larger than memory never has to fit in it. Files are Parquet, CSV or
JSON lines (by extension), local or on S3, a single path or a glob; a glob's
files are read in sorted order, so a retried upload sees its rows in the same
order and can skip what an earlier attempt committed.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lakever.errors import InvalidInputError, SourceNotFoundError
from lakever.schema import to_polars
from lakever.storage import user_location

#: Columns read as text from CSV files whatever they look like (ids keep leading zeros).
TEXT_COLUMNS = ("frame_id", "label_id", "uri", "media_type", "group_id", "cls")

#: What reading a broken or truncated file raises (gzip: EOFError, zlib.error).
_UNREADABLE = (
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    pa.ArrowInvalid,
    pl.exceptions.PolarsError,
)

_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


def is_path(source: Any) -> bool:
    """Whether a source names files rather than holding rows."""
    return isinstance(source, (str, os.PathLike))


def batches(source: Any, *, chunk_rows: int, options: Mapping[str, str]) -> Iterator[pl.DataFrame]:
    """Yield the rows of `source` as frames of at most `chunk_rows` rows.

    Args:
        source: a Polars/Arrow/pandas frame, a list of dicts, a dict of lists,
            an iterable of rows (dicts) or of batches, or a path or glob of
            Parquet, CSV or JSON-lines files (local or s3://).
        chunk_rows: the most rows per frame.
        options: storage options for s3:// paths (the lake's).

    Raises:
        InvalidInputError: a path matches no file, or a file or item cannot be read.
    """
    if source is None:
        return
    if is_path(source):
        for path in _expand(os.fspath(source), options):
            yield from _file_batches(path, chunk_rows, options)
        return
    if _is_batch(source):
        yield from _slices(to_polars(source), chunk_rows)
        return
    if isinstance(source, Iterable) and not isinstance(source, (str, bytes)):
        yield from _stream(source, chunk_rows)
        return
    raise InvalidInputError(
        f"cannot read rows from a {type(source).__name__} ({source!r:.80}): pass a Polars, "
        "Arrow or pandas frame, a list of dicts, an iterable of those, or a path or glob of "
        "Parquet, CSV or JSON-lines files"
    )


def _is_batch(source: Any) -> bool:
    if isinstance(source, (pl.DataFrame, pl.LazyFrame, pa.Table, pa.RecordBatch, Mapping)):
        return True
    if type(source).__module__.startswith("pandas"):
        return True
    return isinstance(source, (list, tuple)) and all(isinstance(r, Mapping) for r in source)


def _slices(df: pl.DataFrame, chunk_rows: int) -> Iterator[pl.DataFrame]:
    for start in range(0, df.height, chunk_rows):
        yield df.slice(start, chunk_rows)


def _stream(items: Iterable[Any], chunk_rows: int) -> Iterator[pl.DataFrame]:
    """Rows (dicts) are gathered into frames; batches are cut to size."""
    rows: list[Mapping[str, Any]] = []
    for item in items:
        if isinstance(item, Mapping) and not _looks_columnar(item):
            rows.append(item)
            if len(rows) >= chunk_rows:
                yield to_polars(rows)
                rows = []
            continue
        if rows:
            yield to_polars(rows)
            rows = []
        yield from _slices(to_polars(item), chunk_rows)
    if rows:
        yield to_polars(rows)


def _looks_columnar(item: Mapping[str, Any]) -> bool:
    """A dict of lists is a batch; a dict of scalars is a row."""
    return bool(item) and all(isinstance(v, (list, tuple)) for v in item.values())


def _expand(pattern: str, options: Mapping[str, str]) -> list[str]:
    """The files a path or glob names, sorted; a folder means the files in it."""
    loc = user_location(pattern, options)
    fs = loc.fs
    scheme = "" if loc.is_local else pattern.split("://", 1)[0] + "://"
    try:
        if any(ch in loc.path for ch in "*?["):
            found = sorted(fs.glob(loc.path))
        elif fs.isdir(loc.path):
            found = sorted(p for p in fs.find(loc.path) if _format(p, strict=False))
        elif fs.exists(loc.path):
            found = [loc.path]
        else:
            found = []
    except OSError as exc:
        raise InvalidInputError(f"cannot list {pattern!r}: {exc}") from exc
    if not found:
        raise SourceNotFoundError(f"no file matches {pattern!r}")
    return [scheme + p for p in found]


def _format(path: str, *, strict: bool = True) -> str | None:
    name = path.lower().removesuffix(".gz")
    for ext, fmt in _FORMATS.items():
        if name.endswith(ext):
            return fmt
    if strict:
        raise InvalidInputError(
            f"cannot tell the format of {path!r}: name files *.parquet, *.csv or *.jsonl"
        )
    return None


def _open(path: str, options: Mapping[str, str]) -> Any:
    loc = user_location(path, options)
    handle = loc.fs.open(loc.path, "rb")
    return gzip.GzipFile(fileobj=handle) if path.lower().endswith(".gz") else handle


def _file_batches(path: str, chunk_rows: int, options: Mapping[str, str]) -> Iterator[pl.DataFrame]:
    fmt = _format(path)
    try:
        with _open(path, options) as handle:
            if fmt == "parquet":
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=chunk_rows):
                    yield pl.DataFrame(pl.from_arrow(batch))
            elif fmt == "csv":
                yield from _csv_batches(handle, chunk_rows)
            else:
                yield from _jsonl_batches(handle, chunk_rows)
    except _UNREADABLE as exc:
        raise InvalidInputError(f"cannot read {path!r} as {fmt}: {exc}") from exc


def _csv_batches(handle: Any, chunk_rows: int) -> Iterator[pl.DataFrame]:
    reader = pacsv.open_csv(
        handle,
        read_options=pacsv.ReadOptions(block_size=1 << 22),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in TEXT_COLUMNS}, strings_can_be_null=True
        ),
    )
    pending: list[pl.DataFrame] = []
    size = 0
    for batch in reader:
        pending.append(pl.DataFrame(pl.from_arrow(batch)))
        size += batch.num_rows
        while size >= chunk_rows:
            whole = pl.concat(pending, how="diagonal_relaxed")
            yield whole.slice(0, chunk_rows)
            rest = whole.slice(chunk_rows)
            pending, size = [rest], rest.height
    if size:
        yield pl.concat(pending, how="diagonal_relaxed")


def _jsonl_batches(handle: Any, chunk_rows: int) -> Iterator[pl.DataFrame]:
    lines: list[bytes] = []
    numbers: list[int] = []  # each kept line's number in the file, for errors
    for number, line in enumerate(handle, start=1):
        if line.strip():
            lines.append(line if line.endswith(b"\n") else line + b"\n")
            numbers.append(number)
        if len(lines) >= chunk_rows:
            yield _jsonl(lines, numbers)
            lines, numbers = [], []
    if lines:
        yield _jsonl(lines, numbers)


def _jsonl(lines: list[bytes], numbers: list[int]) -> pl.DataFrame:
    try:
        return pl.read_ndjson(io.BytesIO(b"".join(lines)), infer_schema_length=None)
    except pl.exceptions.PolarsError:
        for line, number in zip(lines, numbers, strict=True):
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(
                    f"line {number} is not valid JSON ({exc}): {line[:80]!r}"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(f"line {number} is not a JSON object: {line[:80]!r}") from None
        raise
