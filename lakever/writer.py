"""Distributed writes: workers write Parquet files, one lakever commit adopts them.

`Dataset.writer(table, mode=, job_id=)` gives a `StagedWriter` whose
`staging_uri` is a folder inside the table (``<table>/_staging/<job>/``),
invisible to every reader (no log version names its files). A Spark, Dask or
Ray job writes Parquet files there; `commit()` then:

1. validates every staged file as any write is validated (schema and types,
   rules, classes in the map, keys unique within and across the files,
   frames that exist), a few files at a time in threads, keeping only a key
   index (key and frame id per row) across files; a bad row fails the whole commit
   with `ValidationError` naming the file and row, and nothing is visible;
2. publishes one commit whose table version *adds the staged files where
   they are* (no row is rewritten or sent through this process) and, for
   ``mode="upsert"``, masks the rows of keys that already existed with
   deletion vectors (``mode="add"`` refuses existing keys).

Exactly once: the commit records the job id; committing the same job again
returns the first commit (a job marker is written after the publish; if the
process died before writing it, the staged files found live at the base tell
the same). Staged files of a job that never commits are reclaimed by `gc`
after `_gcfiles.STAGING_GRACE`.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from lakever import _datafiles, _deltalog, _mor
from lakever._order import flag_sorted, repeated_values
from lakever.commits import ChangeCounts, Commit
from lakever.errors import InvalidInputError, RowError, ValidationError
from lakever.filenames import encode
from lakever.info import default_author
from lakever.schema import (
    FRAMES,
    INFERENCES_PREFIX,
    key_column,
    prepare_rows,
    table_kind,
)

if TYPE_CHECKING:
    from lakever._staging import Stage
    from lakever.dataset import Dataset
    from lakever.storage import Location

MODES = ("upsert", "add")
STAGING = "_staging"
JOB_META = "job"
_WORKERS = min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class Adoption:
    """Staged files a commit adds to a table as they are.

    Attributes:
        adds: their `add` actions (paths relative to the table).
        keys: every key they hold.
        mask: mask the rows these keys had (upsert); else none may exist.
        rows: rows in the files.
    """

    adds: list[dict[str, Any]]
    keys: pl.Series
    mask: bool
    rows: int


class _Committed(Exception):
    """The job's files are live at the base already: it was committed."""


class StagedWriter:
    """Where a distributed job writes one table's rows, and the commit that adopts them.

    Attributes:
        table: 'frames', 'labels' or 'inferences/<set>'.
        mode: 'upsert' or 'add'.
        job_id: the job's id: one commit per id, whatever the retries.
        staging_uri: the folder workers write Parquet files into.
    """

    def __init__(self, ds: Dataset, table: str, *, mode: str, job_id: str) -> None:
        table_kind(table)
        if mode not in MODES:
            raise InvalidInputError(f"mode must be 'upsert' or 'add', got {mode!r}")
        if not job_id or not str(job_id).strip():
            raise InvalidInputError("job_id must be a non-empty string")
        if table not in ds.head.table_versions:
            raise InvalidInputError(
                f"dataset {ds.name!r} has no table {table!r}; create it with one ordinary "
                "write first"
            )
        self._ds = ds
        self.table = table
        self.mode = mode
        self.job_id = str(job_id)
        self._folder = f"{STAGING}/{encode(self.job_id)}"
        self._staging = ds.table_location(table).child(*self._folder.split("/"))

    @property
    def staging_uri(self) -> str:
        """The folder (local path or s3:// URI) the job's workers write Parquet files into."""
        return self._staging.uri

    @property
    def schema(self) -> Any:
        """The table's Arrow schema: staged files must have exactly these columns and types."""
        columns = self._ds.scan(self.table).collect_schema()  # the log alone: no row is read
        return pl.DataFrame(schema=columns).to_arrow().schema

    def __repr__(self) -> str:
        return f"StagedWriter({self._ds.name!r}, {self.table!r}, job_id={self.job_id!r})"

    def _marker(self) -> Location:
        return self._ds.root.child("_lakever", "jobs", f"{encode(self.job_id)}.json")

    def committed(self) -> bool:
        """Whether this job's commit was made (a retried job then skips its writes)."""
        return self._marker().read_or_none() is not None

    def commit(self, *, message: str | None = None, author: str | None = None) -> Commit:
        """Validate the staged files, then adopt them in one commit (see the module doc).

        Returns the commit; the same commit again for a job committed before.

        Raises:
            ValidationError: a staged row breaks a rule (file and row named); nothing
                is committed.
            InvalidInputError: no staged file, a file whose columns or types
                differ from the table's, or a table with constraints or computed
                columns set outside lakever (staged files cannot be checked
                against them).
        """
        ds = self._ds
        done = self._marker().read_or_none()
        if done is not None:
            return ds._log.get(int(json.loads(done)["seq"]))
        loc = ds.table_location(self.table)
        version = ds.head.table_versions.get(self.table)
        if version is not None and not _mor.can_write(loc, version):
            raise _mor.constrained(loc)  # before reading any staged row
        adoption, frames_of = self._validate()
        set_name = (
            self.table[len(INFERENCES_PREFIX) :]
            if self.table.startswith(INFERENCES_PREFIX)
            else None
        )

        def op(st: Stage) -> None:
            base = st.base_version(self.table)
            live = _deltalog.files_at(loc, base).adds if base is not None else {}
            if any(a["path"] in live for a in adoption.adds):
                raise _Committed
            if frames_of is not None:
                pinned = st.pins.get(set_name) if set_name else None
                st.require_frames(self.table, frames_of, pinned=pinned)
            existing = st.base_keys_among(self.table, adoption.keys)
            if self.mode == "add" and not existing.is_empty():
                raise ValidationError(
                    self.table,
                    [RowError("exists", k, adoption.keys.name, k, "already exists; use "
                              "mode='upsert' to replace it") for k in existing.head(100).to_list()],
                )  # fmt: skip
            counts = ChangeCounts(added=adoption.rows - existing.len(), modified=existing.len())
            st.adopt(self.table, adoption, counts)
            st.meta[JOB_META] = self.job_id

        try:
            commit = ds._run(
                [op],
                message=message or f"adopt job {self.job_id} into {self.table}",
                author=author or default_author(ds.root),
                operation="write",
            )
        except _Committed:
            commit = self._find_committed()
        self._marker().put(json.dumps({"seq": commit.seq, "id": commit.id}).encode())
        return commit

    def _find_committed(self) -> Commit:
        """The commit of this job (its marker was never written: the process died after it)."""
        for commit in self._ds.log():
            if commit.meta.get(JOB_META) == self.job_id:
                return commit
        raise InvalidInputError(f"job {self.job_id!r}: its files are live but no commit names it")

    def _validate(self) -> tuple[Adoption, pl.DataFrame | None]:
        ds = self._ds
        head = ds.head
        loc = ds.table_location(self.table)
        files = sorted(
            (rel, size)
            for rel, size, _ in self._staging.list_tree()
            if rel.endswith(".parquet") and not rel.rsplit("/", 1)[-1].startswith(("_", "."))
        )
        if not files:
            raise InvalidInputError(
                f"job {self.job_id!r} staged no Parquet file in {self.staging_uri}"
            )
        schema = dict(ds.at(head).scan(self.table).collect_schema())
        key = key_column(table_kind(self.table))
        now = int(time.time() * 1000)
        cols = [key] + (["frame_id"] if self.table != FRAMES else [])
        options = loc.delta_options()

        def check(item: tuple[str, int]) -> tuple[list[RowError], pl.DataFrame | None, Any]:
            """One staged file: its rule errors, or its keys and `add` action."""
            rel, size = item
            df = pl.read_parquet(self._staging.child(rel).uri, storage_options=options)
            _same_columns(rel, df, schema)
            try:
                prepared = prepare_rows(
                    self.table, df, classes=head.classes, existing=schema, unique_keys=False
                )  # keys are checked across every file below
            except ValidationError as exc:
                return [_in_file(e, rel, df, key) for e in exc.errors], None, None
            _same_types(rel, df, prepared)
            add = {
                "path": urllib.parse.quote(f"{self._folder}/{rel}"),
                "partitionValues": {},
                "size": size,
                "modificationTime": now,
                "dataChange": True,
                "stats": _datafiles.stats(df),
            }
            return [], df.select(cols).with_columns(pl.lit(rel).alias("__file")), add

        # Files are checked a few at a time (Polars releases the GIL): memory
        # holds one file per worker, plus the key index.
        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            checked = list(pool.map(check, files))
        errors = [e for errs, _, _ in checked for e in errs]
        # In the order of each file's first key: files written from sorted rows
        # then concatenate sorted, and the key and frame checks skip sorting.
        found = [k for _, k, _ in checked if k is not None]
        firsts = sorted((str(k[key][0]) if k.height else "", i) for i, k in enumerate(found))
        keys = [found[i] for _, i in firsts]
        adds = [a for _, _, a in checked if a is not None]
        empty = pl.DataFrame(schema={key: pl.String})
        index = flag_sorted(pl.concat(keys), cols) if keys else empty
        repeated = repeated_values(index[key]) if keys else index[key]
        twice = index.filter(pl.col(key).is_in(repeated.implode()))
        errors += [
            RowError("duplicate_key", k, key, k, f"staged more than once (file {f})")
            for k, f in twice.select(key, "__file").head(100).iter_rows()
        ]
        if errors:
            raise ValidationError(self.table, errors)
        frames_of = index.select(key, "frame_id") if self.table != FRAMES else None
        adoption = Adoption(adds, index[key], mask=self.mode == "upsert", rows=index.height)
        return adoption, frames_of


def _same_columns(rel: str, df: pl.DataFrame, schema: dict[str, pl.DataType]) -> None:
    if set(df.columns) != set(schema):
        missing = sorted(set(schema) - set(df.columns))
        extra = sorted(set(df.columns) - set(schema))
        raise InvalidInputError(
            f"staged file {rel}: its columns differ from the table's (missing {missing}, "
            f"extra {extra}); write the table's columns ({', '.join(schema)})"
        )


def _same_types(rel: str, df: pl.DataFrame, prepared: pl.DataFrame) -> None:
    for name, dtype in prepared.schema.items():
        if df.schema[name] != dtype:
            raise InvalidInputError(
                f"staged file {rel}: column {name!r} is {df.schema[name]}, the table's is "
                f"{dtype}; write it with the table's types (StagedWriter.schema)"
            )


def _in_file(e: RowError, rel: str, df: pl.DataFrame, key: str) -> RowError:
    """`e` with the file and row it came from."""
    row = None
    if e.key is not None and key in df.columns:
        hits = df.with_row_index("__row").filter(pl.col(key) == e.key)["__row"]
        row = int(hits[0]) if hits.len() else None
    where = f"file {rel}" + (f", row {row}" if row is not None else "")
    return RowError(e.rule, e.key, e.column, e.value, f"{where}: {e.detail}")
