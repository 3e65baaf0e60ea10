"""Compaction of tables with deletion vectors: small-file merges and `optimize`.

delta-rs OPTIMIZE would rewrite every file that has a deletion vector, which
after scattered edits is the whole table, in one pass held in memory. Here two
rewrites share one commit format (``dataChange: false`` actions, so the change
feed does not see them; put-if-absent on the log entry, like every edit):

- **Merging small files**, checked on every merge-on-read write. Edits leave
  one small file of new rows each; files are grouped in size tiers and a tier
  is merged, sorted, once it holds `COMPACT_MIN_FILES`.
- **Purging vectors** (`Dataset.optimize`): every file carrying a vector is
  rewritten with only its live rows, one file at a time, so memory holds
  about two files' rows however large the table. The version after it reads
  like a freshly written table.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import polars as pl
from deltalake import DeltaTable

from lakever import _datafiles, _delta, _deltalog, _mor
from lakever.storage import Location

#: Every write to a table with vectors merges a tier of small files once it holds this many.
COMPACT_MIN_FILES = 4


def compact(
    dt: DeltaTable,
    loc: Location,
    claim: Mapping[str, str],
    *,
    table: str,
    cluster: list[str],
    min_files: int = COMPACT_MIN_FILES,
    purge: bool = False,
) -> int:
    """Merge the small files of a table with vectors into larger ones, sorted.

    Only small files are merged (their live rows; see `to_merge`), sorted by
    `cluster`; large files are left alone. With `purge`, every file carrying
    a vector is rewritten too, one after another in key order, and small
    files are merged from two on. Returns the table version after it
    (unchanged when there is nothing to do).
    """
    files = _deltalog.files_at(loc, dt.version())
    small = to_merge(files, 2 if purge else min_files)
    masked = _by_range(files, set(files.masked()) - set(small), cluster) if purge else []
    if not small and not masked:
        return dt.version()
    arrow_schema, schema = _mor.schemas(dt)
    now = int(time.time() * 1000)
    step = _datafiles.rows_per_file(files)
    with _mor.writing(loc, "compact") as written:
        adds: list[dict[str, Any]] = []
        pending = pl.DataFrame(schema=dict(schema))
        # One group at a time, carrying less than a file's rows to the next:
        # memory holds about two files' rows however large the table, and no
        # group leaves a small tail file behind. A lakever file's rows are
        # sorted already, and files are taken in key order; the merged group
        # of small files is sorted here.
        for group in [[p] for p in masked] + ([small] if small else []):
            rows = _mor.live_frame(loc, files, group, table=table, schema=schema)
            pending = pl.concat([pending, rows.sort(cluster) if len(group) > 1 else rows])
            full = pending.height // step * step
            if full:
                out = pending.head(full)
                adds += _datafiles.write(
                    loc, out, arrow_schema, files, now, written, data_change=False
                )
                pending = pending.slice(full)
        if pending.height:
            adds += _datafiles.write(
                loc, pending, arrow_schema, files, now, written, data_change=False
            )
        gone = [*small, *masked]
        actions: list[dict[str, Any]] = [
            _mor.info_action(
                {**claim, "lakever.compaction": "true"},
                now,
                "OPTIMIZE",
                {"targetSize": str(_delta.TARGET_FILE_SIZE)},
                {"numFilesRemoved": len(gone), "numFilesAdded": len(adds)},
            )
        ]
        actions += [_mor.remove_action(files.adds[p], now, data_change=False) for p in gone]
        actions += [{"add": a} for a in adds]
        _mor.publish(loc, files.version, actions)
    return _mor.after_publish(dt, loc, files)


def _by_range(files: _deltalog.TableFiles, paths: set[str], cluster: list[str]) -> list[str]:
    """`paths` ordered by their first cluster column's minimum.

    Rows carried from one file to the next then stay near in key order.
    """

    def low(path: str) -> str:
        found = _deltalog.bounds(files.adds[path], cluster[0]) if cluster else None
        return str(found[0]) if found else ""

    return sorted(paths, key=lambda p: (low(p), p))


def to_merge(files: _deltalog.TableFiles, min_files: int) -> list[str]:
    """The small files to merge now: the smallest tier holding `min_files`, with those below.

    Tiers are files under 1/16 of the target size (one edit's new rows) and
    files under half of it (earlier merges). Merging a tier only when it
    holds `min_files` rewrites each row about twice on its way to a
    full-size file, while a table never holds more than about
    2 x `min_files` small files, which readers pay for (several small files
    among large ones cost a Polars scan up to 20%).
    """
    target = _delta.TARGET_FILE_SIZE  # read at call time: tests shrink it
    for limit in (target // 16, target // 2):
        tier = sorted(p for p, a in files.adds.items() if int(a["size"]) < limit)
        if len(tier) >= min_files:
            return tier
    return []
