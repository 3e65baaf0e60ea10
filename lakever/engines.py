"""One call per engine: a table of a dataset at a ref, read exactly.

Every helper resolves the ref with lakever (a snapshot, branch, commit id,
seq or time) to the table's Delta version, then hands the engine that
version. Engines that apply deletion vectors themselves (Polars, DuckDB,
Spark through Sail) read the Delta table; for those that cannot (Dask,
Daft) lakever reads each data file with its vector applied, one file per
partition, so memory stays bounded by one file and no deleted or superseded
row is returned. A vector is decoded only inside the partition that reads
its file.

Heavy engines are optional extras (``lakever[dask]``, ``[daft]``,
``[duckdb]``, ``[spark]``); a missing one raises `UnsupportedEngineError`
naming the extra.
"""

from __future__ import annotations

import glob
import importlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from lakever import _deltalog
from lakever._feed import file_uri
from lakever.errors import StorageError, UnsupportedEngineError
from lakever.storage import Location

if TYPE_CHECKING:
    from lakever.refs import Ref


def require(module: str, extra: str) -> Any:
    """Import an optional engine, or raise `UnsupportedEngineError` naming its extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UnsupportedEngineError(
            f"{module} is not installed: pip install 'lakever[{extra}]' ({exc})"
        ) from exc


def scan(
    uri: str,
    dataset: str,
    table: str,
    *,
    at: Ref | None = None,
    storage_options: Mapping[str, str] | None = None,
) -> pl.LazyFrame:
    """A Polars LazyFrame of `table` of `dataset` at `at` (default HEAD of main), in one call.

    Example:
        >>> lf = lv.scan("s3://bucket/lake", "street", "labels", at="train-v1")  # doctest: +SKIP
    """
    from lakever.catalog import connect

    lake = connect(uri, storage_options=storage_options)
    if isinstance(at, str) and at.strip().upper() != "HEAD":
        quick = _snapshot_scan(lake, dataset, table, at)
        if quick is not None:
            return quick
    ds = lake.dataset(dataset)
    return (ds if at is None else ds.at(at)).scan(table)


def _snapshot_scan(lake: Any, dataset: str, table: str, name: str) -> pl.LazyFrame | None:
    """A snapshot's table in two small reads (dataset.json, the snapshot's ref file), or None.

    None when there is no ref file (not a snapshot, or one made before ref
    files) or the snapshot is not materialized: the caller then resolves the
    ref the usual way, which also gives the usual errors.
    """
    import json

    from lakever import _delta
    from lakever.filenames import encode
    from lakever.schema import table_kind

    table_kind(table)
    lake._info(dataset)  # first read: it exists, is visible, and is not being deleted
    root = lake._dataset_root(dataset)
    data = root.child("_lakever", "snapshot_refs", f"{encode(name)}.json").read_or_none()
    if data is None:
        return None
    ref = json.loads(data)
    if ref.get("state") not in (None, "materialized"):
        return None
    for entry in ref.get("tables") or []:
        if entry["table"] == table:
            return _delta.scan(root.child(*table.split("/")), int(entry["version"]))
    return None


def read_part(part: tuple[str, Mapping[str, Any] | None], loc: Location) -> pl.DataFrame:
    """The live rows of one data file: its deletion vector applied (decoded here, only here)."""
    path, dv = part
    df = pl.read_parquet(file_uri(loc, path), storage_options=loc.delta_options())
    if not dv:
        return df
    dead = np.fromiter(_deltalog.read_vector(loc, dv), dtype=np.int64)
    if dead.size and int(dead.max()) >= df.height:
        raise StorageError(
            f"the deletion vector of {file_uri(loc, path)} marks row {int(dead.max())} "
            f"of a file of {df.height} rows; the table is damaged"
        )
    keep = np.ones(df.height, dtype=bool)  # a mask: no row index, no hash of positions
    keep[dead] = False
    return df.filter(pl.Series(keep))


def parts(loc: Location, version: int) -> list[tuple[str, Mapping[str, Any] | None]]:
    """(data file, its deletion vector) of every live file of the version, in order."""
    files = _deltalog.files_at(loc, version)
    return [(p, a.get("deletionVector")) for p, a in sorted(files.adds.items())]


def _pandas_part(part: tuple[str, Mapping[str, Any] | None], loc: Location) -> Any:
    return read_part(part, loc).to_pandas()


def duckdb_connection(connection: Any | None = None, *, options: Mapping[str, str]) -> Any:
    """A DuckDB connection with the delta extension (from its package when offline).

    S3 storage options become a ``CREATE SECRET`` (with the httpfs extension).
    """
    duckdb = require("duckdb", "duckdb")
    con = (
        connection
        if connection is not None
        else duckdb.connect(config={"allow_unsigned_extensions": "true"})
    )
    wanted = ["delta"] + (["httpfs"] if options else [])
    for name in wanted:
        try:
            con.execute(f"LOAD {name}")
            continue
        except Exception:  # not installed in DuckDB's home: take the package's copy
            pass
        package = require(f"duckdb_extension_{name}", "duckdb")
        folder = os.path.dirname(package.__file__)
        found = glob.glob(os.path.join(folder, "extensions", "*", f"{name}.duckdb_extension"))
        if not found:
            raise UnsupportedEngineError(f"the DuckDB {name} extension file is missing")
        con.execute(f"LOAD '{found[0]}'")
    if options:
        from lakever.access import duckdb_secret

        con.execute(duckdb_secret(options, name="lakever"))
    return con


class EngineReads:
    """The engine helpers of a dataset handle (HEAD) or a view (its commit)."""

    def _version(self, table: str) -> int:
        raise NotImplementedError

    def _location(self, table: str) -> Location:
        raise NotImplementedError

    def to_pandas(self, table: str) -> Any:
        """The table as a pandas DataFrame (read through Polars, vectors applied)."""
        require("pandas", "pandas")
        return self.read(table).to_pandas()  # type: ignore[attr-defined]

    def to_duckdb(self, table: str, *, connection: Any | None = None) -> Any:
        """A DuckDB relation of the table at this version (``delta_scan``, vectors applied).

        Args:
            table: 'frames', 'labels' or 'inferences/<set>'.
            connection: a DuckDB connection to use (default: a new one).
        """
        version = self._version(table)
        loc = self._location(table)
        con = duckdb_connection(connection, options=loc.delta_options() or {})
        quoted = loc.uri.replace("'", "''")
        return con.sql(f"SELECT * FROM delta_scan('{quoted}', version => {int(version)})")

    def to_dask(self, table: str) -> Any:
        """A Dask DataFrame of the table: one partition per data file, its vector applied."""
        dd = require("dask.dataframe", "dask")
        version = self._version(table)
        loc = self._location(table)
        meta = pl.DataFrame(schema=self.scan(table).collect_schema()).to_pandas()  # type: ignore[attr-defined]
        found = parts(loc, version)
        if not found:
            return dd.from_pandas(meta, npartitions=1)
        return dd.from_map(_pandas_part, found, loc=loc, meta=meta, enforce_metadata=False)

    def to_daft(self, table: str) -> Any:
        """A Daft DataFrame of the table: one task per data file, its vector applied (lazy)."""
        require("daft", "daft")
        version = self._version(table)
        loc = self._location(table)
        arrow = pl.DataFrame(schema=self.scan(table).collect_schema()).to_arrow().schema  # type: ignore[attr-defined]
        return _daft_source(loc, parts(loc, version), arrow).read()


def _daft_source(
    loc: Location, found: list[tuple[str, Mapping[str, Any] | None]], arrow: Any
) -> Any:
    """A Daft `DataSource` reading `found` (each file with its vector) as `arrow` schema."""
    from daft import Schema
    from daft.io.source import DataSource, DataSourceTask
    from daft.recordbatch import RecordBatch

    schema = Schema.from_pyarrow_schema(arrow)

    class FileTask(DataSourceTask):
        def __init__(self, part: tuple[str, Mapping[str, Any] | None]) -> None:
            self.part = part

        @property
        def schema(self) -> Schema:
            return schema

        async def read(self) -> Any:
            rows = read_part(self.part, loc).to_arrow().cast(arrow)
            yield RecordBatch.from_arrow_record_batches(rows.to_batches(), arrow)

    class Files(DataSource):
        @property
        def name(self) -> str:
            return f"lakever:{loc.uri}"

        @property
        def schema(self) -> Schema:
            return schema

        async def get_tasks(self, pushdowns: Any) -> Any:
            for part in found:
                yield FileTask(part)

    return Files()
