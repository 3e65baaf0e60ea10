"""The commit protocol: claim table versions, write, publish, recover.

One dataset commit runs as follows (docs/ARCHITECTURE.md has the why):

1. Read HEAD (seq N) and replay the commit's operations against it.
2. For each touched table, in name order, make sure its latest Delta version
   has the content HEAD records. Versions past HEAD are either a live writer's
   claim (wait and retry) or an orphan of a crashed or beaten writer, which is
   neutralised with a restore to HEAD's version.
3. Write each table as exactly the next Delta version (`_delta` refuses to
   rebase), tagging it with a claim: seq N+1, host, pid, attempt id.
4. Publish commit N+1 with put-if-absent. If another writer published N+1
   first, our table versions are orphans: undo them and go back to 1.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl
from deltalake import DeltaTable

from lakever import _delta
from lakever._staging import OP_COLUMN, Stage, TableChange
from lakever.commits import ChangeCounts, Commit, CommitLog, now_utc
from lakever.errors import ConflictError, StorageError
from lakever.schema import empty_schema, table_kind
from lakever.storage import Location

log = logging.getLogger("lakever")

#: Seconds after which a claim from another host counts as abandoned.
CLAIM_TIMEOUT_ENV = "LAKEVER_CLAIM_TIMEOUT"
#: Seconds a writer keeps retrying before it raises ConflictError.
COMMIT_TIMEOUT_ENV = "LAKEVER_COMMIT_TIMEOUT"

_HOST = socket.gethostname()
_ACTIVE: set[str] = set()  # attempt ids of this process still in flight
_ACTIVE_LOCK = threading.Lock()

Operation = Callable[[Stage], None]


class _Busy(Exception):
    """A live writer holds a claim on a table we need."""


@dataclass(frozen=True)
class _Written:
    table: str
    location: Location
    base: int
    version: int


def _env_seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim_is_live(info: Mapping[str, Any], head: Commit) -> bool:
    """Whether a table version past HEAD may still be published by its writer."""
    try:
        seq = int(info.get(_delta.META_SEQ, -1))
    except ValueError:
        return False
    if seq <= head.seq:
        return False  # its writer aimed at a seq that is already taken
    if seq > head.seq + 1:
        return True  # our HEAD is stale; re-read before judging
    host, _, rest = str(info.get(_delta.META_WRITER, "")).partition(":")
    pid_text, _, attempt = rest.partition(":")
    if host == _HOST and pid_text.isdigit():
        pid = int(pid_text)
        if pid == os.getpid():
            with _ACTIVE_LOCK:
                return attempt in _ACTIVE
        return _pid_alive(pid)
    stamp = float(info.get("timestamp", 0)) / 1000.0
    return time.time() - stamp < _env_seconds(CLAIM_TIMEOUT_ENV, 60.0)


class CommitRunner:
    """Runs the commit protocol for one dataset."""

    def __init__(
        self,
        log_: CommitLog,
        table_location: Callable[[str], Location],
        initialize: Callable[[], Commit],
    ) -> None:
        self._log = log_
        self._loc = table_location
        self._initialize = initialize

    def run(
        self,
        operations: list[Operation],
        *,
        message: str,
        author: str,
        operation: str,
        count_restore: Callable[[Commit, str, int | None], ChangeCounts] | None = None,
    ) -> Commit:
        """Replay `operations` on HEAD and publish them as one commit; retry on conflict.

        Returns the new commit, or HEAD unchanged when the operations change nothing.
        """
        deadline = time.monotonic() + _env_seconds(COMMIT_TIMEOUT_ENV, 300.0)
        delay = 0.01
        attempts = 0
        last_reason = ""
        while True:
            attempts += 1
            # No commit 0 yet: the dataset's creation was interrupted; finish it.
            head = self._log.head() or self._initialize()
            stage = Stage(head, self._loc)
            for op in operations:
                op(stage)
            changes = stage.changes(functools.partial(_count, count_restore, head))
            new_classes = stage.classes
            if not changes and new_classes == head.classes and stage.pins == dict(head.pins):
                return head
            attempt = uuid.uuid4().hex[:12]
            claim = {
                _delta.META_SEQ: str(head.seq + 1),
                _delta.META_WRITER: f"{_HOST}:{os.getpid()}:{attempt}",
                _delta.META_ATTEMPT: attempt,
            }
            with _ACTIVE_LOCK:
                _ACTIVE.add(attempt)
            written: list[_Written] = []
            try:
                versions = dict(head.table_versions)
                for change in changes:
                    if change.drop:
                        versions.pop(change.table, None)
                        continue
                    w = self._write(change, head, claim)
                    written.append(w)
                    versions[change.table] = w.version
                commit = Commit(
                    id=uuid.uuid4().hex,
                    seq=head.seq + 1,
                    parent=head.id,
                    created_at=max(now_utc(), head.created_at),
                    author=author,
                    message=message,
                    operation=operation,
                    table_versions=versions,
                    counts={c.table: c.counts for c in changes},
                    classes=new_classes,
                    pins=stage.pins,
                )
                if self._log.publish(commit):
                    return commit
                last_reason = f"commit seq {head.seq + 1} was published by another writer"
            except _Busy as exc:
                last_reason = str(exc)
            except _delta.WriteConflict as exc:
                last_reason = f"a concurrent writer took the next table version ({exc})"
            finally:
                with _ACTIVE_LOCK:
                    _ACTIVE.discard(attempt)
            self._undo(written, head, claim)
            if time.monotonic() > deadline:
                raise ConflictError(
                    f"gave up after {attempts} attempts: {last_reason}. Nothing was "
                    "published; retry later, or raise $LAKEVER_COMMIT_TIMEOUT"
                )
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 1.6, 0.5)

    # -- one table ----------------------------------------------------------------

    def _prepare(
        self, table: str, head: Commit, claim: Mapping[str, str]
    ) -> tuple[DeltaTable, int]:
        """Load `table` at a version whose content equals HEAD's; return it and that base.

        A table HEAD does not record has base version 0: lakever creates every
        table empty at version 0 before it writes rows. Versions past the base
        are a live writer's claim (raise `_Busy`) or orphans, which are
        neutralised with a restore to the base.
        """
        loc = self._loc(table)
        recorded = head.table_versions.get(table)
        dt = _delta.open_latest(loc)
        if dt is None:
            if recorded is not None:
                raise StorageError(
                    f"table {loc.uri} is missing, but commit {head.seq} records version "
                    f"{recorded}: the lake was modified outside lakever"
                )
            return _delta.create_table(loc, empty_schema(table_kind(table)), claim), 0
        base = 0 if recorded is None else recorded
        latest = dt.version()
        if latest == base:
            return dt, base
        if latest < base:
            raise StorageError(
                f"table {loc.uri} is at version {latest}, behind the {base} that commit "
                f"{head.seq} records: the lake was modified outside lakever"
            )
        info = _delta.last_commit_info(dt)
        if info.get(_delta.META_RESTORED_TO) == str(base):
            # Content already equals HEAD's (orphans were neutralised). Writing on
            # top is safe even if its writer is alive: exact-version writes mean
            # at most one of us gets the next version.
            return dt, base
        if _claim_is_live(info, head):
            raise _Busy(
                f"table {table!r} version {latest} is being written by "
                f"{info.get(_delta.META_WRITER, '?')} for commit {info.get(_delta.META_SEQ)}"
            )
        if _delta.META_SEQ not in info:
            log.warning(
                "table %s has version %s written outside lakever; it is not part of "
                "any commit and is being rolled back to version %s",
                loc.uri,
                latest,
                base,
            )
        _delta.restore(dt, base, claim)
        return dt, base

    def _write(self, change: TableChange, head: Commit, claim: Mapping[str, str]) -> _Written:
        loc = self._loc(change.table)
        recorded = head.table_versions.get(change.table)
        if recorded is not None:
            # Fast path: write straight on HEAD's version. If anything lies past
            # it, the exact-version write fails and the careful path takes over.
            try:
                dt = _delta.open_at(loc, recorded)
                return _Written(change.table, loc, recorded, self._apply(dt, change, claim, loc))
            except _delta.WriteConflict:
                pass
        dt, base = self._prepare(change.table, head, claim)
        return _Written(change.table, loc, base, self._apply(dt, change, claim, loc))

    def _apply(
        self, dt: DeltaTable, change: TableChange, claim: Mapping[str, str], loc: Location
    ) -> int:
        if change.restore_to is not None:
            version = _delta.restore(dt, change.restore_to, claim)
        elif change.updates.is_empty() and change.deletes.is_empty():
            version = _delta.append(dt, _cluster(change.inserts), claim)
        else:
            version = _delta.merge(
                dt,
                _merge_source(change),
                key=change.key,
                op_column=OP_COLUMN,
                skip_predicate=_frame_range(change),
                claim=claim,
            )
        version = _delta.maybe_compact(dt, claim)
        _delta.remember(loc, dt)
        return version

    def _undo(self, written: list[_Written], head: Commit, claim: Mapping[str, str]) -> None:
        """Neutralise our own unpublished table versions so others need not wait."""
        for w in written:
            dt = _delta.open_latest(w.location)
            if dt is None or dt.version() != w.version:
                continue  # someone already wrote past it; they handled it
            # If this fails, the next writer neutralises it instead.
            with contextlib.suppress(_delta.WriteConflict, StorageError, OSError):
                _delta.restore(dt, w.base, claim)


def _count(
    count_restore: Callable[[Commit, str, int | None], ChangeCounts] | None,
    head: Commit,
    table: str,
    target: int | None,
) -> ChangeCounts:
    return count_restore(head, table, target) if count_restore else ChangeCounts()


def _cluster(rows: pl.DataFrame) -> pl.DataFrame:
    """Sort rows by frame so files hold contiguous frame ranges (edits then touch few files)."""
    by = [c for c in ("frame_id", "label_id") if c in rows.columns]
    return rows.sort(by) if by else rows


def _merge_source(change: TableChange) -> pl.DataFrame:
    parts = [
        change.updates.with_columns(pl.lit("u").alias(OP_COLUMN)),
        change.inserts.with_columns(pl.lit("i").alias(OP_COLUMN)),
        change.deletes.with_columns(pl.lit("d").alias(OP_COLUMN)),
    ]
    return _cluster(pl.concat([p for p in parts if not p.is_empty()], how="diagonal_relaxed"))


def _frame_range(change: TableChange) -> str | None:
    """A predicate on t.frame_id that every touched target row satisfies, for file skipping."""
    ids = pl.concat(
        [
            s
            for s in (
                change.updates.get_column("frame_id", default=None),
                change.deletes.get_column("frame_id", default=None),
                change.touched_base.get_column("frame_id", default=None),
            )
            if s is not None
        ]
    )
    if ids.is_empty() or ids.null_count():
        return None
    lo, hi = ids.min(), ids.max()
    low, high = _delta.sql_literal(str(lo)), _delta.sql_literal(str(hi))
    return f"t.frame_id >= {low} AND t.frame_id <= {high}"
