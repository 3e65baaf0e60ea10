"""A dataset's lifecycle: garbage collection, and snapshots archived to cold storage.

`Lifecycle` holds these `Dataset` methods, so the dataset module keeps to
versioning; the work is done in `lakever.gc` and `lakever.archive`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, cast

import polars as pl

from lakever import gc as _gc
from lakever.archive import archive_snapshot, unarchive_snapshot
from lakever.gc import GCReport
from lakever.tags import Snapshot

if TYPE_CHECKING:
    from lakever.dataset import Dataset


class Lifecycle:
    """Garbage collection and snapshot archiving (mixed into `Dataset`)."""

    def _ds(self) -> Dataset:
        return cast("Dataset", self)

    def gc(
        self,
        *,
        keep_within: timedelta = _gc.DEFAULT_KEEP_WITHIN,
        apply: bool = False,
        author: str | None = None,
    ) -> GCReport:
        """Plan (or, with `apply`, run) garbage collection of files no root needs.

        Roots stay readable: HEAD, every snapshot, every commit an inference
        set is pinned to, every commit a segment element is frozen at, and
        every commit newer than `keep_within`. Other commits become
        unreadable (`at()` raises `VersionPrunedError`; `log()` marks them),
        and the files only they needed are deleted. Diffs between roots give
        the same rows before and after. Safe to run while others write.

        Args:
            keep_within: commits newer than this stay readable (default 7 days).
            apply: delete; False (the default) only plans.
            author: recorded with the run.

        Example:
            >>> print(ds.gc(keep_within=timedelta(days=1)).describe())  # doctest: +SKIP
            >>> ds.gc(keep_within=timedelta(days=1), apply=True)  # doctest: +SKIP
        """
        return _gc.collect(self._ds(), keep_within=keep_within, apply=apply, author=author)

    def gc_runs(self) -> pl.DataFrame:
        """Applied garbage collection runs, newest first.

        Columns: gc_id, seq (of the run's ``gc`` commit), started_at,
        finished_at, author, keep_within_seconds, roots (JSON), unreadable
        (seqs), files, bytes, bytes_by_kind (JSON).
        """
        self._ds().head  # noqa: B018 - refuses a deleted dataset
        return _gc.runs(self._ds())

    def archive_snapshot(self, name: str) -> Snapshot:
        """Copy a snapshot to the lake's archive and mark it archived.

        The archive holds the snapshot as self-contained Delta tables (Spark and
        Polars read them without lakever; on S3 the copy is server-side). After
        this, reading the snapshot raises `SnapshotArchivedError` and GC may
        reclaim the hot files only it needed. Needs ``archive_uri`` (or
        ``$LAKEVER_ARCHIVE_URI``) at `connect`. Archiving an archived
        snapshot does nothing.
        """
        self._ds().head  # noqa: B018 - refuses a deleted dataset
        return archive_snapshot(self._ds(), name)

    def unarchive_snapshot(self, name: str) -> Snapshot:
        """Bring an archived snapshot back: its reads equal what they were before archiving.

        Copies back the files GC reclaimed meanwhile. May archive another
        snapshot to stay under the connection's limits (`LimitError` if none
        may go).
        """
        self._ds().head  # noqa: B018 - refuses a deleted dataset
        return unarchive_snapshot(self._ds(), name)
