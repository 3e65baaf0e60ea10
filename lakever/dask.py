"""Dask helpers: write a Dask DataFrame into a dataset in one lakever commit."""

from __future__ import annotations

from typing import Any


def write(
    ddf: Any,
    ds: Any,
    table: str,
    *,
    mode: str = "upsert",
    job_id: str,
    message: str | None = None,
) -> Any:
    """Write a Dask DataFrame into `table` of `ds` in one lakever commit.

    Each partition is written as a Parquet file (the table's schema) into the
    job's staging folder (`Dataset.writer`) by the workers; the driver then
    validates and adopts the files. A retry with the same `job_id` returns the
    first commit.
    """
    w = ds.writer(table, mode=mode, job_id=job_id)
    if not w.committed():
        schema = w.schema
        ddf[[f.name for f in schema]].to_parquet(
            w.staging_uri,
            write_index=False,
            schema=schema,
            storage_options=ds.root.fs.storage_options if not ds.root.is_local else None,
        )
    return w.commit(message=message)
