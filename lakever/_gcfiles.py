"""Which files of one Delta table garbage collection may delete, given the versions to keep.

One replay of the table's log (from version 0, or from the oldest checkpoint
whose later JSON commits all survive) gives every logical file (a data file
with the deletion vector it carries) the range of versions it is live in. A
data file or a vector file is needed when one of its ranges holds a kept
version. The change feed between two kept versions that are next to each
other in the commit log must keep working, so every file an action of those
versions names (added, removed, `cdc`) is needed too.

Files under the table that no log version names were written by a writer that
failed, or is still writing; they go only when older than `UNTRACKED_GRACE`.

Log entries before the oldest kept version go too (but version 0's, the empty
table a re-created inference set restores to), once a checkpoint at that
version exists (GC writes one when it is missing): every kept version then
loads from that checkpoint or a later one.
"""

from __future__ import annotations

import bisect
import json
import logging
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from lakever import _deltalog
from lakever.storage import Location

log = logging.getLogger(__name__)

#: Files no log version names are left alone this long (a writer may be about to commit them).
UNTRACKED_GRACE = timedelta(hours=1)
#: ... and files a distributed job staged (`lakever.writer`) this long: a job may run for hours.
STAGING_GRACE = timedelta(days=2)

DATA = "data"
VECTOR = "deletion vector"
CHANGE = "change data"
LOG = "log"
CHECKPOINT = "checkpoint"

_JSON = re.compile(r"^_delta_log/(\d{20})\.(?:json|crc)$")
_CHECKPOINT = re.compile(r"^_delta_log/(\d{20})\.checkpoint(?:\.\d+\.\d+)?\.parquet$")
_BATCH = 500


@dataclass
class TablePlan:
    """What GC deletes in one table.

    Attributes:
        table: the table's name in the dataset.
        location: where it lives.
        files: (path relative to the table, bytes, kind) of each file to delete.
        checkpoint_at: the version GC must checkpoint before deleting log entries.
        kept: the table versions kept.
    """

    table: str
    location: Location
    files: list[tuple[str, int, str]] = field(default_factory=list)
    checkpoint_at: int | None = None
    kept: list[int] = field(default_factory=list)


def kind_of(rel: str) -> str:
    """What a file of a table is, from its path."""
    if rel.startswith("_delta_log/"):
        return CHECKPOINT if ".checkpoint" in rel else LOG
    if rel.startswith("_change_data/"):
        return CHANGE
    if rel.rsplit("/", 1)[-1].startswith("deletion_vector_"):
        return VECTOR
    return DATA


class _Replay:
    """Live ranges of every logical file, and the files each version's actions name."""

    def __init__(self) -> None:
        self.live: dict[str, tuple[str | None, int]] = {}  # path -> (vector file, since)
        self.ranges: list[tuple[str, str | None, int, int]] = []  # path, vector, from, to
        self.named: dict[int, set[str]] = {}  # version -> files its actions name
        self.tracked: set[str] = set()

    def open(self, path: str, vector: str | None, version: int) -> None:
        self.close(path, version)
        self.live[path] = (vector, version)
        self.tracked.add(path)
        if vector:
            self.tracked.add(vector)

    def close(self, path: str, version: int) -> None:
        hit = self.live.pop(path, None)
        if hit is not None:
            self.ranges.append((path, hit[0], hit[1], version))

    def name(self, version: int, *paths: str | None) -> None:
        for p in paths:
            if p:
                self.named.setdefault(version, set()).add(p)
                self.tracked.add(p)

    def apply(self, version: int, lines: list[bytes]) -> None:
        actions = [json.loads(line) for line in lines if line.strip()]
        for a in actions:
            rm = a.get("remove")
            if rm:
                path = urllib.parse.unquote(rm["path"])
                self.close(path, version)
                self.name(version, path, _vector(rm))
        for a in actions:
            add = a.get("add")
            if add:
                path = urllib.parse.unquote(add["path"])
                self.open(path, _vector(add), version)
                self.name(version, path, _vector(add))
            cdc = a.get("cdc")
            if cdc:
                self.name(version, urllib.parse.unquote(cdc["path"]))

    def finish(self, end: int) -> None:
        for path in list(self.live):
            self.close(path, end)


def _vector(action: dict[str, object]) -> str | None:
    dv = action.get("deletionVector")
    if not isinstance(dv, dict):
        return None
    rel = _deltalog.vector_path(dv)
    return None if rel is None or "://" in rel else urllib.parse.unquote(rel)


def plan_table(
    loc: Location,
    table: str,
    *,
    kept: Iterable[int],
    log_only: Iterable[int] = (),
    feed: Iterable[int],
    in_flight_after: int | None,
    now: datetime,
) -> TablePlan:
    """The files GC may delete from one table.

    Args:
        loc: the table.
        table: its name, for the report.
        kept: table versions that must stay readable.
        log_only: versions whose log entries stay (archived snapshots: their
            files may go, and come back from the archive).
        feed: table versions whose change-feed files must stay.
        in_flight_after: versions above this one are kept whole (written by
            commits not yet published, or published after GC planned).
        now: GC's clock.
    """
    plan = TablePlan(table, loc)
    latest = _deltalog.latest_version(loc)
    if latest is None:
        return plan
    keep = set(kept)
    feed_versions = set(feed)
    if in_flight_after is not None:
        extra = range(in_flight_after + 1, latest + 1)
        keep.update(extra)
        feed_versions.update(extra)
    keep = {v for v in keep if v <= latest}
    if not keep:
        keep = {0}
    plan.kept = sorted(keep)
    listing = loc.list_tree()
    log_versions = {int(m.group(1)) for rel, _, _ in listing if (m := _JSON.match(rel))}
    checkpoints = {int(m.group(1)) for rel, _, _ in listing if (m := _CHECKPOINT.match(rel))}
    replay = _replay(loc, latest, log_versions, checkpoints)
    if replay is None:
        log.warning("cannot replay the log of %s; garbage collection skips it", loc.uri)
        return plan
    needed = _needed(replay, plan.kept, feed_versions)
    oldest = min([plan.kept[0], *(v for v in log_only if v <= latest)])
    prune_log = oldest > 0 and any(v < oldest for v in log_versions | checkpoints)
    if prune_log and oldest not in checkpoints:
        plan.checkpoint_at = oldest
    cutoff = now - UNTRACKED_GRACE
    for rel, size, modified in listing:
        kind = kind_of(rel)
        if kind in (LOG, CHECKPOINT):
            m = _JSON.match(rel) or _CHECKPOINT.match(rel)
            # Version 0 stays loadable (one small file): a writer re-creating a
            # dropped inference set restores its table to that empty version.
            if prune_log and m and 0 < int(m.group(1)) < oldest:
                plan.files.append((rel, size, kind))
            continue
        if rel in needed:
            continue
        staged = rel.startswith("_staging/")
        if rel in replay.tracked or modified < (now - STAGING_GRACE if staged else cutoff):
            plan.files.append((rel, size, kind))
    return plan


def _replay(
    loc: Location, latest: int, log_versions: set[int], checkpoints: set[int]
) -> _Replay | None:
    """Replay from version 0, or the oldest checkpoint with every later JSON commit present."""
    replay = _Replay()
    start = 0
    if any(v not in log_versions for v in range(latest + 1)):
        usable = [
            c
            for c in sorted(checkpoints)
            if all(v in log_versions for v in range(c + 1, latest + 1))
        ]
        if not usable:
            return None
        start = usable[0]
        state = _deltalog.files_at(loc, start)
        for path, add in state.adds.items():
            replay.open(urllib.parse.unquote(path), _vector(add), start)
        start += 1
    versions = list(range(start, latest + 1))
    for i in range(0, len(versions), _BATCH):
        batch = versions[i : i + _BATCH]
        for v, lines in sorted(_deltalog.commit_lines(loc, batch).items()):
            replay.apply(v, lines)
    replay.finish(latest + 1)
    return replay


def _needed(replay: _Replay, kept: list[int], feed: set[int]) -> set[str]:
    needed: set[str] = set()
    for path, vector, lo, hi in replay.ranges:
        i = bisect.bisect_left(kept, lo)
        if i < len(kept) and kept[i] < hi:
            needed.add(path)
            if vector:
                needed.add(vector)
    for v in feed:
        needed.update(replay.named.get(v, ()))
    return needed
