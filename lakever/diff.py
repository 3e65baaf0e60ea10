"""Comparing two versions of a table by key.

This module holds the keyed full comparison: it reads both versions and
classifies every key as added, deleted or modified (same key, different
values). Rows rewritten with identical values count for nothing.
"""

from __future__ import annotations

import polars as pl

from lakever import _delta
from lakever.commits import ChangeCounts
from lakever.storage import Location


def _read(loc: Location, version: int | None) -> pl.LazyFrame | None:
    return None if version is None else _delta.scan(loc, version)


def compare_counts(loc: Location, key: str, before: int | None, after: int | None) -> ChangeCounts:
    """Count keys added, deleted and modified between two versions of one table.

    Args:
        loc: the table.
        key: its key column.
        before: the older version (None: the table did not exist).
        after: the newer version (None: the table does not exist).
    """
    if before == after:
        return ChangeCounts()
    a, b = _read(loc, before), _read(loc, after)
    if a is None and b is None:
        return ChangeCounts()
    if a is None:
        assert b is not None
        return ChangeCounts(added=int(b.select(pl.len()).collect().item()))
    if b is None:
        return ChangeCounts(deleted=int(a.select(pl.len()).collect().item()))
    schema_a, schema_b = a.collect_schema(), b.collect_schema()
    cols = [c for c in schema_b.names() if c != key]
    for c in cols:
        if c not in schema_a:
            a = a.with_columns(pl.lit(None, dtype=schema_b[c]).alias(c))
    joined = a.join(b, on=key, how="full", suffix="__after", coalesce=False)
    after_key = f"{key}__after"
    same = pl.lit(True)
    for c in cols:
        same = same & pl.col(c).eq_missing(pl.col(f"{c}__after"))
    for c in schema_a.names():
        if c != key and c not in schema_b:
            same = same & pl.col(c).is_null()
    stats = joined.select(
        added=pl.col(key).is_null().sum(),
        deleted=pl.col(after_key).is_null().sum(),
        modified=(pl.col(key).is_not_null() & pl.col(after_key).is_not_null() & ~same).sum(),
    ).collect()
    row = stats.row(0, named=True)
    return ChangeCounts(
        added=int(row["added"]), modified=int(row["modified"]), deleted=int(row["deleted"])
    )
