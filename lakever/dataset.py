"""A dataset handle: its tables at HEAD, its writes, snapshots, time travel and revert.

Storage layout of one dataset (see docs/ARCHITECTURE.md)::

    <lake>/datasets/<name>/
        _lakever/dataset.json      name, project, description, tags, creator, classes
        _lakever/commits/<seq>.json  the commit log (put-if-absent publish point)
        _lakever/HEAD              hint: newest seq seen
        frames/  labels/  inferences/<set>/   Delta tables, CDF on
        snapshots/                 the tag table (Delta)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import polars as pl

from lakever import _changes, _delta, branches
from lakever._claims import META_SEQ
from lakever._protocol import DELETE_OPERATION, CommitRunner, Operation
from lakever._pruned import PrunedIndex
from lakever._staging import Stage
from lakever.archive import (
    ArchiveSettings,
    SnapshotStates,
)
from lakever.branches import Branching
from lakever.combining import DatasetCombining
from lakever.commits import MAIN, ChangeCounts, Commit, CommitLog
from lakever.dataio import DataIO
from lakever.diff import Diff
from lakever.errors import (
    DatasetNotFoundError,
    InvalidInputError,
)
from lakever.history import history as _history
from lakever.info import DatasetInfo, default_author
from lakever.lifecycle import Lifecycle
from lakever.refs import Ref, resolve, snapshot_commit
from lakever.repair import RepairReport
from lakever.repair import repair as _repair
from lakever.review import Review
from lakever.schema import FRAMES, LABELS, empty_schema, key_column, normalize_classes, table_kind
from lakever.snapshots import Snapshots
from lakever.storage import Location
from lakever.tags import Snapshot, TagTable
from lakever.transaction import Transaction
from lakever.view import TableReader, View

if TYPE_CHECKING:
    from lakever.catalog import Lake
    from lakever.clone import ClonedFrom


class Dataset(DataIO, Review, Lifecycle, Snapshots, Branching, DatasetCombining, TableReader):
    """A versioned dataset of frames, labels and inference sets.

    Reads go to HEAD; each write method is one atomic commit. Use `at` for any
    past version and `transaction` to group writes.
    """

    def __init__(
        self,
        root: Location,
        info: DatasetInfo,
        *,
        lake: Lake | None = None,
        archive: ArchiveSettings | None = None,
        branch: str = MAIN,
    ) -> None:
        self._dataset = self
        self.branch_name = branch
        self._lake = lake
        self._archive = archive or ArchiveSettings()
        self.root = dataclasses.replace(root, scope=info.identity)
        self.info = info
        self._log = CommitLog(self.root, dataset_id=info.id, name=info.name)
        self._pruned = PrunedIndex(self.root, self._log, name=info.name)
        self._states = SnapshotStates(self.root)
        self._tags = TagTable(
            self.root.child("snapshots"), refs=self.root.child("_lakever", "snapshot_refs")
        )
        self._runner = CommitRunner(
            self._log,
            self.table_location,
            self._global_head,
            self._confirm,
            edits=info.edits,
            branch=branch,
            dataset=info.name,
        )
        self._counts_memo: dict[tuple[str, str], dict[str, ChangeCounts]] = {}

    def same_dataset(self, other: Dataset) -> bool:
        """Whether `other` is a handle of this very dataset (same place, same incarnation)."""
        return self.root.uri == other.root.uri and self.info.identity == other.info.identity

    def __repr__(self) -> str:
        on = "" if self.branch_name == MAIN else f", branch={self.branch_name!r}"
        return f"Dataset({self.name!r}, uri={self.root.uri!r}{on})"

    def on_branch(self, name: str) -> Dataset:
        """A handle on branch `name` of this dataset (BranchNotFoundError if there is none)."""
        handle = Dataset(self.root, self.info, lake=self._lake, archive=self._archive, branch=name)
        handle.head  # noqa: B018 - refuses an unknown branch now, not at the first read
        return handle

    # -- identity -------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The dataset's unique name."""
        return self.info.name

    @property
    def project(self) -> str | None:
        """The project it belongs to."""
        return self.info.project

    @property
    def description(self) -> str:
        """Free-text description."""
        return self.info.description

    @property
    def tags(self) -> tuple[str, ...]:
        """Free-form tags given at creation."""
        return self.info.tags

    @property
    def created_at(self) -> datetime:
        """When the dataset was created."""
        return self.info.created_at

    @property
    def cloned_from(self) -> ClonedFrom | None:
        """For a clone: the source dataset's name and id, and the commit it was cloned at."""
        from lakever.clone import cloned_from

        return cloned_from(self.info)

    @property
    def edited_at(self) -> datetime:
        """When the last commit was made."""
        return self.head.created_at

    def table_location(self, table: str) -> Location:
        """Where a table's Delta log lives."""
        table_kind(table)
        return self.root.child(*table.split("/"))

    @property
    def tag_table_uri(self) -> str:
        """URI of the snapshot (tag) Delta table."""
        return self._tags.location.uri

    # -- the log ------------------------------------------------------------------------

    def _initialize(self) -> Commit:
        """Create the empty tables and commit 0 (idempotent: repairs a crashed creation).

        Only `Lake.create_dataset` calls this: reads and writes through a
        handle never create anything.
        """
        claim = {META_SEQ: "0"}
        versions = {}
        for table in (FRAMES, LABELS):
            loc = self.table_location(table)
            if _delta.open_latest(loc) is None:
                with contextlib.suppress(_delta.WriteConflict):
                    _delta.create_table(loc, empty_schema(table_kind(table)), claim)
            versions[table] = 0
        self._tags.ensure()
        commit = Commit(
            id=os.urandom(16).hex(),
            seq=0,
            parent=None,
            created_at=self.info.created_at,
            author=self.info.creator,
            message=f"create dataset {self.name}",
            operation="create",
            table_versions=versions,
            classes=self.info.classes,
            dataset_id=self.info.id,
        )
        self._log.publish(commit)
        return self._log.get(0)

    @property
    def head(self) -> Commit:
        """The latest commit of this handle's branch.

        Raises:
            DatasetNotFoundError: the dataset was deleted (or deleted and created
                again) since this handle was opened, or its creation never finished.
            BranchNotFoundError: the handle's branch was deleted.
        """
        glob = self._global_head()
        return branches.head_of(self._log, glob, self.branch_name, dataset=self.name)

    def _global_head(self) -> Commit:
        """The newest commit of the log, on any branch."""
        head = self._log.head()
        if head is None:
            raise self._missing()
        if head.operation == DELETE_OPERATION:
            raise DatasetNotFoundError(
                f"dataset {self.name!r} was deleted at {head.created_at.isoformat()} "
                f"by {head.author!r}; this handle can no longer read or write it"
            )
        return head

    def _stored_info(self) -> DatasetInfo | None:
        data = self.root.child("_lakever", "dataset.json").read_or_none()
        if data is None:
            return None
        try:
            return DatasetInfo.from_json(data)
        except (ValueError, KeyError):
            return None

    def _missing(self) -> DatasetNotFoundError:
        stored = self._stored_info()
        if stored is None:
            return DatasetNotFoundError(
                f"dataset {self.name!r} was deleted; this handle can no longer read or write it"
            )
        if stored.identity != self.info.identity:
            return DatasetNotFoundError(
                f"dataset {self.name!r} was deleted and created again since this handle "
                f"was opened; open it again with lake.dataset({self.name!r})"
            )
        return DatasetNotFoundError(
            f"dataset {self.name!r} has no first commit: its creation is under way or was "
            f"interrupted. Finish it with lake.create_dataset({self.name!r}, classes=..., "
            f"exist_ok=True), or remove it with lake.delete_dataset({self.name!r})"
        )

    def _confirm(self, commit: Commit) -> None:
        """Withdraw a commit just published if the dataset was deleted meanwhile."""
        stored = self._stored_info()
        if stored is not None and stored.identity == self.info.identity:
            return
        with contextlib.suppress(OSError):
            self._log.withdraw(commit)
        raise self._missing()

    def _reading_commit(self) -> Commit:
        return self.head

    def _pinned(self) -> View:
        return View(self, self.head, "HEAD")

    def log(self, *, limit: int | None = None) -> list[Commit]:
        """Commits, newest first (at most `limit`; 0 gives none)."""
        if limit is not None and (isinstance(limit, bool) or limit < 0):
            raise InvalidInputError(f"limit must be a whole number >= 0, got {limit!r}")
        head = self.head  # refuses a deleted dataset
        if limit == 0:
            return []
        commits: list[Commit] = []
        for commit in branches.ancestry(self._log, head):
            if limit is not None and len(commits) >= limit:
                break
            commits.append(commit)
        records = self._pruned.records()
        if not records:
            return commits
        by = {}
        for rec in records:
            for lo, hi in rec.pruned:
                by.update(dict.fromkeys(range(lo, hi + 1), rec.seq))
        return [dataclasses.replace(c, pruned_by=by.get(c.seq)) for c in commits]

    def resolve(self, ref: Ref) -> Commit:
        """Turn a ref into a commit of this dataset.

        A ref is a `Commit`, `Snapshot` or `View` of this dataset, a commit seq
        (any integer), a datetime (the newest commit at or before it; a naive
        one is local time), or a string: 'HEAD', a snapshot name, a commit seq
        in digits, a commit id or unique prefix (4+ hex chars), or an ISO-8601
        time, tried in that order.

        Raises:
            InvalidRefError: the ref matches nothing, or belongs to another dataset.
            CommitNotFoundError: a seq or time outside the log.
        """
        return resolve(self, ref)

    def _snapshot_commit(self, snap: Snapshot) -> Commit:
        return snapshot_commit(self, snap)

    def at(self, ref: Ref) -> View:
        """A read-only view of the dataset at a snapshot, commit or time.

        Example:
            >>> ds.at("v1-train").read("labels")  # doctest: +SKIP
        """
        return View(self, self.resolve(ref), ref)

    # -- writes ----------------------------------------------------------------------

    def transaction(self, *, message: str | None = None, author: str | None = None) -> Transaction:
        """Group several writes into one commit, published when the `with` block ends.

        Example:
            >>> with ds.transaction(message="relabel 7", author="etl") as tx:  # doctest: +SKIP
            ...     tx.upsert_labels(new_labels)
            ...     tx.delete_labels(["l-17"])
        """
        return Transaction(self, message=message, author=author, operation="write")

    def _run(
        self,
        ops: list[Operation],
        *,
        message: str,
        author: str | None,
        operation: str,
    ) -> Commit:
        return self._runner.run(
            [*ops, self._pins_readable],
            message=message,
            author=author or default_author(self.root),
            operation=operation,
            count_restore=self._count_restore,
        )

    def _pins_readable(self, st: Stage) -> None:
        """Refuse a commit that pins an inference set to a pruned commit.

        Runs on every replay: a GC that took the seq this commit wanted is
        found here when the commit replays on top of it.
        """
        for seq in set(st.pins.values()) - set(st.head.pins.values()):
            if seq < st.head.seq:
                self._pruned.check(seq)

    def _one(self, message: str | None, author: str | None, fill: Any) -> Commit:
        tx = Transaction(self, message=message, author=author, operation="write")
        fill(tx)
        return tx.commit()

    def add_frames(
        self, frames: Any, *, message: str | None = None, author: str | None = None
    ) -> Commit:
        """Add new frames in one commit; any frame_id that exists already is refused."""
        return self._one(message, author, lambda tx: tx.add_frames(frames))

    def upsert_frames(
        self, frames: Any, *, message: str | None = None, author: str | None = None
    ) -> Commit:
        """Create frames or update existing ones, in one commit."""
        return self._one(message, author, lambda tx: tx.upsert_frames(frames))

    def update_frames(
        self, frames: Any, *, message: str | None = None, author: str | None = None
    ) -> Commit:
        """Change columns of existing frames (frame_id + the columns to change)."""
        return self._one(message, author, lambda tx: tx.update_frames(frames))

    def delete_frames(
        self,
        frame_ids: Iterable[str] | str,
        *,
        missing_ok: bool = False,
        message: str | None = None,
        author: str | None = None,
    ) -> Commit:
        """Delete frames and their labels in one commit."""
        return self._one(
            message, author, lambda tx: tx.delete_frames(frame_ids, missing_ok=missing_ok)
        )

    def upsert_labels(
        self, labels: Any, *, message: str | None = None, author: str | None = None
    ) -> Commit:
        """Create labels or update existing ones, in one commit."""
        return self._one(message, author, lambda tx: tx.upsert_labels(labels))

    def delete_labels(
        self,
        label_ids: Iterable[str] | str,
        *,
        missing_ok: bool = False,
        message: str | None = None,
        author: str | None = None,
    ) -> Commit:
        """Delete labels by label_id in one commit."""
        return self._one(
            message, author, lambda tx: tx.delete_labels(label_ids, missing_ok=missing_ok)
        )

    def replace_labels(
        self,
        labels: Any,
        *,
        frame_ids: Iterable[str] | None = None,
        message: str | None = None,
        author: str | None = None,
    ) -> Commit:
        """Make each listed frame's labels exactly `labels`, in one commit."""
        return self._one(message, author, lambda tx: tx.replace_labels(labels, frame_ids=frame_ids))

    def upsert_inferences(
        self,
        set_name: str,
        inferences: Any,
        *,
        pinned_to: Ref | None = None,
        message: str | None = None,
        author: str | None = None,
    ) -> Commit:
        """Create or update predictions of an inference set, in one commit."""
        return self._one(
            message,
            author,
            lambda tx: tx.upsert_inferences(set_name, inferences, pinned_to=pinned_to),
        )

    def delete_inferences(
        self,
        set_name: str,
        label_ids: Iterable[str] | str,
        *,
        missing_ok: bool = False,
        message: str | None = None,
        author: str | None = None,
    ) -> Commit:
        """Delete predictions from an inference set, in one commit."""
        return self._one(
            message,
            author,
            lambda tx: tx.delete_inferences(set_name, label_ids, missing_ok=missing_ok),
        )

    def drop_inferences(
        self, set_name: str, *, message: str | None = None, author: str | None = None
    ) -> Commit:
        """Remove a whole inference set from HEAD (older versions keep it)."""
        table = self._inference_set(set_name)

        def op(st: Stage) -> None:
            st.restore_table(table, None)
            st.pins.pop(set_name, None)

        return self._run(
            [op],
            message=message or f"drop inference set {set_name}",
            author=author,
            operation="drop_inferences",
        )

    def extend_classes(
        self, classes: Iterable[str], *, message: str | None = None, author: str | None = None
    ) -> Commit:
        """Add classes to the class map, as a recorded commit (existing classes stay)."""
        new = normalize_classes(classes)

        def op(st: Stage) -> None:
            st.classes = st.classes + tuple(c for c in new if c not in st.classes)

        return self._run(
            [op],
            message=message or f"extend classes: {', '.join(new)}",
            author=author,
            operation="extend_classes",
        )

    def revert(
        self,
        ref: Ref,
        *,
        discard_newer_snapshots: bool = False,
        message: str | None = None,
        author: str | None = None,
    ) -> Commit:
        """Make a new commit whose content equals `ref`; history before it is kept.

        Args:
            ref: the version to go back to.
            discard_newer_snapshots: also delete the snapshots of commits after `ref`.
            message: commit message (default names the ref).
            author: commit author.

        Returns:
            The revert commit (HEAD unchanged if HEAD already equals `ref`).
        """
        target = self.resolve(ref)

        def op(st: Stage) -> None:
            if target.seq != st.head.seq:
                self._pruned.check(target.seq)  # again on each replay: a GC may have run
            for table in sorted(set(st.head.table_versions) | set(target.table_versions)):
                want = target.table_versions.get(table)
                if want != st.head.table_versions.get(table):
                    st.restore_table(table, want)
            st.classes = target.classes
            st.pins = dict(target.pins)

        commit = self._run(
            [op],
            message=message or f"revert to {ref} (commit {target.seq})",
            author=author,
            operation="revert",
        )
        if discard_newer_snapshots:
            newer = [s.name for s in self._tags.snapshots() if s.commit_seq > target.seq]
            self._tags.delete(newer)
        return commit

    def _count_restore(self, head: Commit, table: str, target: int | None) -> ChangeCounts:
        change = _changes.table_change(
            self.table_location(table),
            key_column(table_kind(table)),
            head.table_versions.get(table),
            target,
        )
        return _changes.counts(change)

    # -- diffs and history -------------------------------------------------------------

    def diff(self, a: Ref, b: Ref | None = None) -> Diff:
        """Compare two versions of the dataset (`b` defaults to HEAD).

        Cost follows the size of the change: the rows come from each table's
        Change Data Feed between the two versions.

        Example:
            >>> ds.diff("v1", "v2").summary()  # doctest: +SKIP
        """
        return Diff(self.at(a), self.at("HEAD" if b is None else b))

    def history(self, *, frame_id: str | None = None, label_id: str | None = None) -> pl.DataFrame:
        """Every version of a frame and its labels, or of one label, oldest first.

        Returns:
            One row per change: seq, commit_id, created_at, author, message,
            table, key, change ('added' | 'modified' | 'deleted'), changed
            (columns), and the row before and after as JSON.
        """
        return _history(self, frame_id=frame_id, label_id=label_id)

    # -- maintenance -------------------------------------------------------------------

    def repair(self, *, apply: bool = False, author: str | None = None) -> RepairReport:
        """Find table versions whose data files are gone; with `apply`, fix HEAD.

        Files vanish when maintenance runs from outside with its safety checks
        off (``VACUUM ... RETAIN 0 HOURS``) or by hand. This reports every
        unreadable table version of HEAD and of each snapshot, with the files
        and rows lost. Applied, it records one commit that rewrites HEAD's
        broken tables from the files that survive, so HEAD is readable and
        writable again; the commit's counts name the rows lost. Dry run by
        default.

        Example:
            >>> print(ds.repair().describe())  # doctest: +SKIP
            >>> ds.repair(apply=True)  # doctest: +SKIP
        """
        return _repair(self, apply=apply, author=author)

    def optimize(self, *, message: str | None = None, author: str | None = None) -> Commit:
        """Rewrite the files that carry deletion vectors, so HEAD reads like a fresh table.

        Merge-on-read edits mark replaced rows instead of rewriting files, and
        scattered edits leave a vector on nearly every file; Polars pays for
        applying them on every read (about 1.6x a freshly written table).
        This records one commit that rewrites those files (their live rows,
        sorted, at the target size) and small files with them. Rows,
        diffs, histories and snapshots are unchanged; the commit counts no
        changes. Old files stay for the snapshots that read them, until GC.

        Returns:
            The optimize commit, or HEAD unchanged when no table has vectors.

        Example:
            >>> ds.optimize()  # doctest: +SKIP
        """

        def op(st: Stage) -> None:
            for table in st.head.table_versions:
                st.purge_table(table)

        return self._run([op], message=message or "optimize", author=author, operation="optimize")
