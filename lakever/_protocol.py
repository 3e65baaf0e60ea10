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

import functools
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import polars as pl
from deltalake import DeltaTable

from lakever import _claims, _compact, _delta, _mor, branches
from lakever import _restore as _restore_mor
from lakever._order import is_sorted_by
from lakever._staging import OP_COLUMN, Stage, TableChange
from lakever.commits import MAIN, OPEN, ChangeCounts, Commit, CommitLog
from lakever.errors import (
    BranchNotFoundError,
    ConflictError,
    InvalidNameError,
    StorageError,
    VersionUnavailableError,
)
from lakever.schema import empty_schema, key_column, table_kind
from lakever.storage import Location

log = logging.getLogger("lakever")

#: Seconds a writer keeps retrying before it raises ConflictError.
COMMIT_TIMEOUT_ENV = "LAKEVER_COMMIT_TIMEOUT"

Operation = Callable[[Stage], None]

#: Edits mark old rows in deletion vectors and write only the new rows.
MERGE_ON_READ = "merge-on-read"
#: Edits rewrite every file holding a touched row (readers need no vector support).
COPY_ON_WRITE = "copy-on-write"
EDIT_MODES = (MERGE_ON_READ, COPY_ON_WRITE)


class _Busy(Exception):
    """A live writer holds a claim on a table we need."""


@dataclass
class _Started:
    """A table this attempt began writing: where, and the version to undo back to."""

    table: str
    location: Location
    base: int
    written: int | None = None  # the newest version this attempt wrote there


class CommitRunner:
    """Runs the commit protocol for one dataset.

    Args:
        log_: the dataset's commit log.
        table_location: table name -> its location.
        head: returns HEAD, raising if the dataset no longer exists.
        confirm: called after a publish; raises if the dataset was deleted
            meanwhile (the commit is then withdrawn, never acknowledged).
    """

    def __init__(
        self,
        log_: CommitLog,
        table_location: Callable[[str], Location],
        head: Callable[[], Commit],
        confirm: Callable[[Commit], None],
        edits: str = MERGE_ON_READ,
        branch: str = MAIN,
        dataset: str = "",
    ) -> None:
        self._log = log_
        self._loc = table_location
        self._head = head  # the newest commit of the log, any branch
        self._confirm = confirm
        self._edits = edits
        self._branch = branch
        self._dataset = dataset

    def run(
        self,
        operations: list[Operation],
        *,
        message: str,
        author: str,
        operation: str,
        count_restore: Callable[[Commit, str, int | None], ChangeCounts] | None = None,
        merged: Commit | None = None,
    ) -> Commit:
        """Replay `operations` on the branch's head and publish them as one commit; retry.

        `merged` makes it a merge commit: its second parent.

        Whatever is raised on the way (a storage error, a full disk,
        KeyboardInterrupt), this attempt's own table versions are rolled back
        before the exception leaves, and its claim is released, so other
        writers never wait on it.

        Returns the new commit, or HEAD unchanged when the operations change nothing.
        """
        deadline = time.monotonic() + _claims.env_seconds(COMMIT_TIMEOUT_ENV, 300.0)
        delay = 0.01
        attempts = 0
        last_reason = ""
        while True:
            attempts += 1
            glob = self._head()
            head = branches.writable_head(self._log, glob, self._branch, dataset=self._dataset)
            stage = Stage(head, self._loc, self._log.get, next_seq=glob.seq + 1)
            try:
                for op in operations:
                    op(stage)
                changes = stage.changes(functools.partial(_count, count_restore, head))
            except (StorageError, VersionUnavailableError):
                self._head()  # a dataset deleted under us says so, not "missing file"
                raise
            new_classes = stage.classes
            unchanged = new_classes == head.classes and stage.pins == dict(head.pins)
            if not changes and unchanged and merged is None:
                return head
            with _claims.Attempt(glob.seq + 1) as attempt:
                started: list[_Started] = []
                published = False
                try:
                    versions = dict(head.table_versions)
                    for change in changes:
                        if change.drop:
                            versions.pop(change.table, None)
                            continue
                        versions[change.table] = self._write(change, head, glob, attempt, started)
                    commit = glob.successor(
                        head,
                        branch=self._branch,
                        author=author,
                        message=message,
                        operation=operation,
                        table_versions=versions,
                        counts={c.table: c.counts for c in changes},
                        classes=new_classes,
                        pins=stage.pins,
                        meta=stage.meta,
                        merged=merged,
                    )
                    published = self._log.publish(commit)
                    if published:
                        self._confirm(commit)
                        return commit
                    last_reason = f"commit seq {glob.seq + 1} was published by another writer"
                except _Busy as exc:
                    last_reason = str(exc)
                except _delta.WriteConflict as exc:
                    last_reason = f"a concurrent writer took the next table version ({exc})"
                except BaseException as exc:
                    if not published:
                        self._undo(started, attempt)
                    if isinstance(exc, (StorageError, VersionUnavailableError)):
                        self._head()  # a dataset deleted under us says so, not "missing file"
                    raise
                self._undo(started, attempt)
            if time.monotonic() > deadline:
                raise ConflictError(
                    f"gave up after {attempts} attempts: {last_reason}. Nothing was "
                    "published; retry later, or raise $LAKEVER_COMMIT_TIMEOUT"
                )
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 1.6, 0.5)

    def publish_record(
        self, make: Callable[[Commit], Commit | None], *, what: str
    ) -> Commit | None:
        """Publish a commit that writes no table (a branch made, moved or closed); retry.

        `make` builds it on the newest commit (or returns None: nothing to do).
        """
        delay = 0.01
        deadline = time.monotonic() + _claims.env_seconds(COMMIT_TIMEOUT_ENV, 300.0)
        while True:
            glob = self._head()
            commit = make(glob)
            if commit is None:
                return None
            if self._log.publish(commit):
                self._confirm(commit)
                return commit
            if time.monotonic() > deadline:
                raise ConflictError(f"could not {what}: other writers kept committing; retry")
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 1.6, 0.5)

    def create_branch(self, name: str, start: Commit, *, author: str) -> Commit:
        """Publish the commit that starts branch `name` at `start` (no data is written)."""

        def make(glob: Commit) -> Commit:
            if name in glob.branch_table():
                raise InvalidNameError(
                    f"dataset {self._dataset!r} already has a branch named {name!r}"
                )
            return glob.successor(
                start,
                branch=name,
                author=author,
                message=f"create branch {name} at commit {start.seq}",
                operation=branches.BRANCH_OPERATION,
                branch_entry={"base": start.seq, "created": glob.seq + 1, "state": OPEN},
            )

        commit = self.publish_record(make, what=f"create branch {name!r}")
        assert commit is not None
        return commit

    def delete_branch(self, name: str, *, author: str) -> None:
        """Publish a commit on 'main' that removes branch `name` from the branch table."""

        def make(glob: Commit) -> Commit | None:
            if name not in glob.branch_table():
                return None  # deleted meanwhile: done
            main = branches.head_of(self._log, glob, MAIN, dataset=self._dataset)
            return glob.successor(
                main,
                branch=MAIN,
                author=author,
                message=f"delete branch {name}",
                operation=branches.DELETE_BRANCH_OPERATION,
                drop_branch=name,
            )

        self.publish_record(make, what=f"delete branch {name!r}")
        self._log.branch_ref(name).remove()

    def set_branch_state(self, name: str, state: str, *, author: str) -> None:
        """Publish a commit on branch `name` (same content) that sets its state."""

        def make(glob: Commit) -> Commit | None:
            entry = glob.branch_table().get(name)
            if entry is None:
                raise BranchNotFoundError(f"dataset {self._dataset!r} has no branch {name!r}")
            if entry.get("state") == state:
                return None
            head = branches.head_of(self._log, glob, name, dataset=self._dataset)
            return glob.successor(
                head,
                branch=name,
                author=author,
                message=f"{state} branch {name}",
                operation=branches.PUBLISH_OPERATION,
                branch_entry={"state": state},
            )

        self.publish_record(make, what=f"mark branch {name!r} {state}")

    def fast_forward(self, theirs: Commit, *, author: str, message: str) -> Commit | None:
        """Move this branch's head to `theirs`'s content as a merge commit writing no table.

        Returns None, publishing nothing, when the branch moved past the point
        where a fast-forward was possible (the merge then plans again).
        """

        def make(glob: Commit) -> Commit | None:
            ours = branches.writable_head(self._log, glob, self._branch, dataset=self._dataset)
            if not branches.is_ancestor(self._log, ours, theirs):
                return None
            return glob.successor(
                ours,
                branch=self._branch,
                author=author,
                message=message,
                operation="merge",
                table_versions=theirs.table_versions,
                classes=theirs.classes,
                pins=theirs.pins,
                merged=theirs,
                meta={"merge": {"source": theirs.id, "fast_forward": True}},
            )

        return self.publish_record(make, what=f"fast-forward branch {self._branch!r}")

    def publish_tombstone(self, *, author: str) -> Commit | None:
        """Publish a commit that marks the dataset deleted (idempotent).

        It takes the next seq with put-if-absent like any commit, so a writer
        racing the deletion either published first (its commit is part of the
        dataset that is then deleted) or loses the seq and finds the dataset gone.
        """
        delay = 0.01
        deadline = time.monotonic() + _claims.env_seconds(COMMIT_TIMEOUT_ENV, 300.0)
        while True:
            head = self._log.head()
            if head is None or head.operation == DELETE_OPERATION:
                return head  # no commit yet (an interrupted creation), or marked already
            tomb = head.child(author=author, message="delete dataset", operation=DELETE_OPERATION)
            if self._log.publish(tomb):
                return tomb
            if time.monotonic() > deadline:
                raise ConflictError(
                    "could not mark the dataset deleted: other writers kept committing; "
                    "retry the deletion"
                )
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 1.6, 0.5)

    # -- one table ----------------------------------------------------------------

    def _prepare(
        self,
        table: str,
        head: Commit,
        glob: Commit,
        claim: Mapping[str, str],
        *,
        replacing: bool,
    ) -> tuple[DeltaTable, int]:
        """Load `table` where this commit may write on it; return it and the undo version.

        The table's latest version must have the content HEAD records (or, when
        `replacing` its content wholesale, at least belong to no live writer).
        A table HEAD does not record has base version 0: lakever creates every
        table empty at version 0 before it writes rows. Versions past the base
        are either row-preserving maintenance from outside (OPTIMIZE, VACUUM:
        built upon), a live writer's claim (raise `_Busy`), or orphans, which
        are neutralised with a restore to the base. On a branch, the latest
        version may also be another branch's published commit: the same exact
        restore puts the branch's content back before writing (the switch).
        `glob` is the newest commit of the log: claims are judged against it.
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
        relevant = _delta.newest_row_changing_since(dt, base)
        if relevant is None or relevant.get(_delta.META_RESTORED_TO) == str(base):
            # Content already equals HEAD's: orphans were neutralised, or only
            # maintenance ran since. Writing on top is safe even if a neutraliser
            # is alive: exact-version writes let at most one of us take the next.
            return dt, latest
        if _claims.is_live(relevant, glob.seq):
            raise _Busy(
                f"table {table!r} version {latest} is being written by "
                f"{relevant.get(_claims.META_WRITER, '?')} for commit "
                f"{relevant.get(_claims.META_SEQ)}"
            )
        if relevant.get(_claims.META_SEQ) == str(glob.seq + 1) and self._log.exists(glob.seq + 1):
            # Its writer's attempt is over because it published: our HEAD is
            # stale, and that version is part of the new HEAD, not an orphan.
            raise _Busy(f"commit {glob.seq + 1} was published meanwhile")
        if replacing:
            return dt, latest
        if _claims.META_SEQ not in relevant:
            log.warning(
                "table %s has version %s written outside lakever; it is not part of "
                "any commit and is being rolled back to version %s",
                loc.uri,
                latest,
                base,
            )
        # Never restore onto a version whose files are gone: that would make
        # the table unreadable for every later reader (delta-rs refuses such a
        # restore; we then say which files are gone). Repair handles it.
        try:
            _restore(dt, loc, table, base, claim)
        except StorageError:
            _delta.require_available(loc, base, table=table)
            raise
        return dt, base

    def _write(
        self,
        change: TableChange,
        head: Commit,
        glob: Commit,
        attempt: _claims.Attempt,
        started: list[_Started],
    ) -> int:
        loc = self._loc(change.table)
        claim = attempt.claim
        recorded = head.table_versions.get(change.table)
        if recorded is not None:
            # Fast path: write straight on HEAD's version. If anything lies past
            # it, the exact-version write fails and the careful path takes over.
            entry = _Started(change.table, loc, recorded)
            started.append(entry)
            try:
                dt = _delta.open_at(loc, recorded)
                return self._apply(dt, change, claim, entry)
            except _delta.WriteConflict:
                if entry.written is None:
                    started.remove(entry)
        dt, base = self._prepare(
            change.table, head, glob, claim, replacing=change.replace is not None
        )
        entry = _Started(change.table, loc, base)
        started.append(entry)
        return self._apply(dt, change, claim, entry)

    def _apply(
        self, dt: DeltaTable, change: TableChange, claim: Mapping[str, str], entry: _Started
    ) -> int:
        loc = entry.location
        _delta.ensure_properties(dt, claim)
        if dt.version() > entry.base:
            entry.written = dt.version()
        if change.replace is not None:
            version = _delta.overwrite(dt, change.replace, claim)
        elif change.restore_to is not None:
            version = _restore(dt, loc, change.table, change.restore_to, claim)
        elif change.adopt is not None:
            if change.adopt.mask and not _mor.supports_vectors(loc, dt.version()):
                _mor.enable_vectors(dt, claim)
                entry.written = dt.version()
            version = _mor.adopt(dt, loc, change.adopt, claim, table=change.table, key=change.key)
            entry.written = version
            _delta.remember(loc, dt)
            return version  # no compaction here: the commit adopts files, it rewrites no row
        elif change.purge:
            version = _compact.compact(
                dt, loc, claim, table=change.table, cluster=_cluster_columns(dt), purge=True
            )
        elif change.updates.is_empty() and change.deletes.is_empty():
            rows = _cluster(change.inserts)
            if not _mor.can_append(loc, dt.version(), rows):
                version = _delta.append(dt, rows, claim)
            else:
                version = _mor.append(dt, loc, rows, claim)
        elif (
            self._edits == MERGE_ON_READ
            and not _adds_columns(dt, change)
            and _mor.can_write(loc, dt.version())
        ):
            if not _mor.supports_vectors(loc, dt.version()):
                _mor.enable_vectors(dt, claim)
                entry.written = dt.version()
            version = _mor.write_edit(
                dt,
                loc,
                _mor.Edit(
                    key=change.key,
                    inserts=change.inserts,
                    updates=change.updates,
                    deletes=change.deletes,
                    preimages=change.touched_base.filter(
                        pl.col(change.key).is_in(change.updates[change.key].implode())
                    ),
                    positions=change.positions,
                    positions_version=change.positions_version,
                ),
                claim,
                table=change.table,
                cluster=_cluster_columns(dt),
            )
        else:
            version = _delta.merge(
                dt,
                _merge_source(change),
                key=change.key,
                op_column=OP_COLUMN,
                skip_predicate=_frame_range(change),
                claim=claim,
            )
        entry.written = version
        if self._edits == MERGE_ON_READ and _mor.supports_vectors(loc, dt.version()):
            version = _compact.compact(
                dt,
                loc,
                claim,
                table=change.table,
                cluster=_cluster_columns(dt),
                min_files=_compact.COMPACT_MIN_FILES,
            )
        else:
            version = _delta.maybe_compact(dt, claim)
        entry.written = version
        _delta.remember(loc, dt)
        return version

    def _undo(self, started: list[_Started], attempt: _claims.Attempt) -> None:
        """Neutralise this attempt's own unpublished table versions so others need not wait.

        Only a latest version that this attempt wrote is rolled back; if anyone
        wrote past it, they have judged it already. Failures here are logged,
        not raised: the claim is released right after, which makes whatever is
        left an orphan that the next writer neutralises.
        """
        for entry in started:
            if entry.written is None:
                continue  # nothing of ours landed in this table
            try:
                dt = _delta.open_latest(entry.location)
                if dt is None or dt.version() != entry.written:
                    continue  # someone wrote past it: they judged it already
                _restore(dt, entry.location, entry.table, entry.base, attempt.claim)
            except Exception as exc:
                log.warning(
                    "could not roll back the unpublished version of %s (%s); the next writer will",
                    entry.location.uri,
                    exc,
                )


#: The operation of the commit that marks a dataset deleted.
DELETE_OPERATION = "delete"


def _restore(
    dt: DeltaTable, loc: Location, table: str, version: int, claim: Mapping[str, str]
) -> int:
    """Write the next version with the content of `version`, change feed exact."""
    if _mor.supports_vectors(loc, dt.version()):
        key = key_column(table_kind(table))
        done = _restore_mor.restore(dt, loc, version, claim, table=table, key=key)
        if done is not None:
            return done
    return _delta.restore(dt, version, claim)


def _adds_columns(dt: DeltaTable, change: TableChange) -> bool:
    """Whether the change brings columns the table lacks (a schema change: MERGE does it)."""
    have = {f.name for f in dt.schema().fields}
    cols = set(change.updates.columns) | set(change.inserts.columns)
    return not cols <= have


def _count(
    count_restore: Callable[[Commit, str, int | None], ChangeCounts] | None,
    head: Commit,
    table: str,
    target: int | None,
) -> ChangeCounts:
    return count_restore(head, table, target) if count_restore else ChangeCounts()


def _cluster_columns(dt: DeltaTable) -> list[str]:
    """The columns rows are sorted by in a table's files (frame, then label)."""
    names = {f.name for f in dt.schema().fields}
    return [c for c in ("frame_id", "label_id") if c in names]


def _cluster(rows: pl.DataFrame) -> pl.DataFrame:
    """Sort rows by frame so files hold contiguous frame ranges (edits then touch few files)."""
    by = [c for c in ("frame_id", "label_id") if c in rows.columns]
    return rows if not by or is_sorted_by(rows, by) else rows.sort(by)


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
