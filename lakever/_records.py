"""Append-only Delta tables a dataset keeps about itself (uploads, evaluations, segments).

Each is an ordinary Delta table under the dataset root, so Spark and Polars
read it like the tag table. It is created on its first append, never by a
read. Appends retry on a concurrent writer; `append_checked` writes exactly
the next version after a check, so two writers racing for one name cannot
both win (the tag table's rule). Many small appends are compacted now and then.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Mapping

import polars as pl
from deltalake import DeltaTable

from lakever import _delta, _deltalog
from lakever.errors import ConflictError, LakeverError
from lakever.storage import Location

_MAX_ATTEMPTS = 200


def _table(loc: Location, rows: pl.DataFrame) -> DeltaTable:
    dt = _delta.open_latest(loc)
    if dt is None:
        with contextlib.suppress(_delta.WriteConflict):  # created concurrently: fine
            _delta.create_table(loc, rows.clear().to_arrow().schema, {})
        dt = _delta.open_latest(loc)
        assert dt is not None
    return dt


def append(loc: Location, rows: pl.DataFrame) -> None:
    """Append rows (creating the table on first use)."""
    append_checked(loc, rows, None)


def append_checked(
    loc: Location, rows: pl.DataFrame, check: Callable[[pl.DataFrame], None] | None
) -> None:
    """Append rows as exactly the next version, after `check` accepts the table's rows there.

    `check` gets the rows at the version written upon and raises to refuse.
    """
    delay = 0.01
    for _ in range(_MAX_ATTEMPTS):
        dt = _table(loc, rows)
        if check is not None:
            version = dt.version()
            check(_delta.collect(loc, version, _delta.scan(loc, version), table=loc.name))
        try:
            _delta.append(dt, rows, {})
        except _delta.WriteConflict:
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 1.6, 0.5)
            continue
        with contextlib.suppress(LakeverError):
            _delta.maybe_compact(dt, {})
        return
    raise ConflictError(f"could not append to {loc.uri}: other writers kept changing it")


def read(loc: Location, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """Every row at the latest version (none, with `schema`, if the table was never made)."""
    version = _deltalog.latest_version(loc)
    if version is None:
        return pl.DataFrame(schema=dict(schema))
    return _delta.collect(loc, version, _delta.scan(loc, version), table=loc.name)
