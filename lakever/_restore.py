"""Restores of tables with deletion vectors: a version's content put back, feed exact.

A revert across merge-on-read edits, the neutralising of an orphan, and the
switch a branch commit makes before writing all put an earlier version's
content back as the next version. delta-rs's `restore` would make the change
feed show every row of each re-added file (vectors changed) as deleted and
inserted; `restore` here writes the `remove`/`add` actions itself and a `cdc`
file of exactly the rows that differ, taken from the change feed between the
two versions (docs/ARCHITECTURE.md, "Merge-on-read edits").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import polars as pl
from deltalake import DeltaTable
from pyroaring import BitMap64

from lakever import _deltalog, _mor
from lakever._delta import META_RESTORED_TO, boundary, require_available
from lakever._feed import POS_COLUMN, file_uri
from lakever._mor import (
    Edit,
    after_publish,
    info_action,
    live_frame,
    publish,
    remove_action,
    schemas,
    writing,
)
from lakever.errors import StorageError
from lakever.storage import Location

log = logging.getLogger("lakever")


def restore(
    dt: DeltaTable,
    loc: Location,
    target: int,
    claim: Mapping[str, str],
    *,
    table: str,
    key: str,
) -> int | None:
    """Make the next version's content equal `target`'s, with `cdc` rows; None to decline.

    A restore that puts back a file with another deletion vector (a revert
    across merge-on-read edits) makes the change feed read that whole file
    twice, once removed and once added, for every diff across it. This
    restore writes `cdc` rows for exactly the rows that differ instead, so
    diffs stay as cheap as the change. It declines (returns None, writing
    nothing) when no file comes back with another vector, since then the
    plain restore's feed is already exact and cheap, which matters for
    undoing a large failed append; and when the two versions' schemas
    differ. The caller then uses delta-rs's restore.
    """
    base = dt.version()
    cur = _deltalog.files_at(loc, base)
    old = _deltalog.files_at(loc, target)
    if cur.metadata.get("schemaString") != old.metadata.get("schemaString"):
        return None
    have = {_deltalog.identity(a): p for p, a in cur.adds.items()}
    want = {_deltalog.identity(a): p for p, a in old.adds.items()}
    gone = sorted(have[i] for i in set(have) - set(want))
    back = sorted(want[i] for i in set(want) - set(have))
    if not set(gone) & set(back):
        return None
    require_available(loc, target, table=table)
    arrow_schema, schema = schemas(dt)
    edit = _edit_from_feed(loc, key, base, target, schema)
    if edit is None:
        # A file in both versions with another vector differs only in the rows
        # one vector deletes and the other keeps: read those rows alone.
        same = sorted(set(gone) & set(back))
        before = live_frame(loc, cur, sorted(set(gone) - set(same)), table=table, schema=schema)
        after = live_frame(loc, old, sorted(set(back) - set(same)), table=table, schema=schema)
        if same:
            only_cur, only_old = _vector_differences(
                loc, cur, old, same, table=table, schema=schema
            )
            before = pl.concat([before, only_cur], how="diagonal_relaxed")
            after = pl.concat([after, only_old], how="diagonal_relaxed")
        edit = _net(before, after, key)
    now = int(time.time() * 1000)
    actions: list[dict[str, Any]] = [
        info_action(
            {**claim, META_RESTORED_TO: str(target)},
            now,
            "RESTORE",
            {"version": target},
            {"num_removed_file": len(gone), "num_restored_file": len(back)},
        )
    ]
    actions += [remove_action(cur.adds[p], now) for p in gone]
    actions += [{"add": {**old.adds[p], "dataChange": True}} for p in back]
    with writing(loc, f"restore version {target} of") as written:
        cdc = _mor.write_cdc(loc, edit, schema, arrow_schema, now, written)
        actions += [{"cdc": cdc}] if cdc else []
        publish(loc, base, actions)
    return after_publish(dt, loc, cur)


def _edit_from_feed(
    loc: Location, key: str, base: int, target: int, schema: Mapping[str, pl.DataType]
) -> Edit | None:
    """The rows that differ between `base` and `target`, from the change feed between them.

    Every version's feed is exact (restores included), so the net change of
    the range is the difference of the two states, at the cost of the change:
    a switch between branch heads reads what the branches changed, not the
    files their vectors mark. None when the feed cannot cover the range.
    """
    from lakever import _changes

    try:
        change = _changes.cdf_change(loc, key, base, target)
    except Exception as exc:  # a feed file gone (GC, cleanup): read the rows instead
        log.info("restore of %s reads rows: the feed does not cover it (%s)", loc.uri, exc)
        return None
    columns = [pl.col(n).cast(t) for n, t in schema.items()]

    def rows(change_kind: list[str], side: str) -> pl.DataFrame:
        picked = change.filter(pl.col("change").is_in(change_kind)).select(side).unnest(side)
        missing = [pl.lit(None).alias(n) for n in schema if n not in picked.columns]
        return picked.with_columns(missing).select(columns)

    return Edit(
        key=key,
        inserts=rows(["added"], "after"),
        updates=rows(["modified"], "after"),
        deletes=rows(["deleted"], "before"),
        preimages=rows(["modified"], "before"),
        positions=pl.DataFrame(),
        positions_version=-1,
    )


#: Files a restore reads at once (each is decoded whole to find a few rows).
_FILES_AT_ONCE = 4


def _vector_differences(
    loc: Location,
    cur: _deltalog.TableFiles,
    old: _deltalog.TableFiles,
    paths: list[str],
    *,
    table: str,
    schema: Mapping[str, pl.DataType],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows of files in both versions that only `cur` keeps, and those only `old` keeps."""
    queries, sides = [], []
    for path in paths:
        cur_dv, old_dv = (f.adds[path].get("deletionVector") for f in (cur, old))
        dead_cur = _deltalog.read_vector(loc, cur_dv) if cur_dv else BitMap64()
        dead_old = _deltalog.read_vector(loc, old_dv) if old_dv else BitMap64()
        kept_by_cur, kept_by_old = dead_old - dead_cur, dead_cur - dead_old
        wanted = pl.Series(list(kept_by_cur | kept_by_old), dtype=pl.Int64)
        if wanted.is_empty():
            continue
        lf = pl.scan_parquet(
            file_uri(loc, path), storage_options=loc.delta_options(), row_index_name=POS_COLUMN
        ).filter(pl.col(POS_COLUMN).cast(pl.Int64).is_in(wanted.implode()))
        queries.append(lf)
        sides.append(pl.Series(list(kept_by_cur), dtype=pl.Int64))
    empty = pl.DataFrame(schema=dict(schema))
    if not queries:
        return empty, empty
    try:
        with boundary(f"read version {cur.version} of", loc.uri):
            # a few files at a time: memory holds a few decoded files, not the table
            frames = [
                df
                for i in range(0, len(queries), _FILES_AT_ONCE)
                for df in pl.collect_all(queries[i : i + _FILES_AT_ONCE])
            ]
    except StorageError:
        require_available(loc, old.version, table=table)
        raise
    only_cur, only_old = [empty], [empty]
    for df, positions in zip(frames, sides, strict=True):
        mine = pl.col(POS_COLUMN).cast(pl.Int64).is_in(positions.implode())
        only_cur.append(df.filter(mine).drop(POS_COLUMN))
        only_old.append(df.filter(~mine).drop(POS_COLUMN))
    cast = [pl.col(n).cast(t) for n, t in schema.items()]
    return (
        pl.concat(only_cur, how="diagonal_relaxed").select(cast),
        pl.concat(only_old, how="diagonal_relaxed").select(cast),
    )


def _net(before: pl.DataFrame, after: pl.DataFrame, key: str) -> Edit:
    """The keyed difference between two sets of rows, as an `Edit` without positions."""
    old_keys, new_keys = before[key].implode(), after[key].implode()
    deletes = before.filter(~pl.col(key).is_in(new_keys))
    inserts = after.filter(~pl.col(key).is_in(old_keys))
    pre = before.filter(pl.col(key).is_in(new_keys)).sort(key)
    post = after.filter(pl.col(key).is_in(old_keys)).sort(key)
    same = pl.lit(True)
    joined = post.join(pre, on=key, how="left", suffix="__old")
    for c in post.columns:
        if c != key:
            same = same & pl.col(c).eq_missing(pl.col(f"{c}__old"))
    changed = joined.filter(~same)[key].implode()
    return Edit(
        key=key,
        inserts=inserts,
        updates=post.filter(pl.col(key).is_in(changed)),
        deletes=deletes,
        preimages=pre.filter(pl.col(key).is_in(changed)),
        positions=pl.DataFrame(),
        positions_version=-1,
    )
