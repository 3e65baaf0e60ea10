"""A dataset's snapshots: named, read-only pointers to commits, and their change counts.

`Snapshots` holds these `Dataset` methods, so the dataset module keeps to
the log and its writes; the tag table itself is `lakever.tags`, archiving is
`lakever.archive`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import polars as pl

from lakever._pruned import pruned_error
from lakever.archive import archived_sources, decorate, forget_archive, make_room
from lakever.commits import now_utc
from lakever.diff import Diff
from lakever.errors import InvalidNameError, SnapshotNotFoundError
from lakever.info import default_author
from lakever.names import check_snapshot_name
from lakever.refs import Ref
from lakever.tags import Snapshot
from lakever.view import View

if TYPE_CHECKING:
    from lakever.dataset import Dataset


class Snapshots:
    """Snapshots of a dataset (mixed into `Dataset`)."""

    def _ds(self) -> Dataset:
        return cast("Dataset", self)

    def changes_since_snapshot(self, name: str | None = None) -> Diff:
        """What changed from a snapshot (default: the latest one) to HEAD, like `git status`.

        An archived snapshot is read from its archive copy.
        """
        ds = self._ds()
        if name is None:
            snaps = ds._tags.snapshots()
            if not snaps:
                raise SnapshotNotFoundError(
                    f"dataset {ds.name!r} has no snapshots yet; create one with "
                    "ds.create_snapshot() or `lakever snapshot create`"
                )
            name = snaps[-1].name
        snap = ds._tags.get(name)
        sources = archived_sources(ds, snap)
        if sources is None:
            return ds.diff(name)
        # an archived snapshot is compared from its archive copy
        return Diff(View(ds, ds._snapshot_commit(snap), name, sources=sources), ds.at("HEAD"))

    def _with_changes(self, snaps: list[Snapshot], only: str | None = None) -> list[Snapshot]:
        """Attach change counts against the snapshot before each (or only to `only`)."""
        ds = self._ds()
        out = []
        for i, s in enumerate(snaps):
            if only is not None and s.name != only:
                out.append(s)
                continue
            before = snaps[i - 1] if i else None
            prev_commit = ds._log.get(0) if before is None else ds._snapshot_commit(before)
            commit = ds._snapshot_commit(s)
            memo = (prev_commit.id, commit.id)
            if memo not in ds._counts_memo:
                # an archived neighbour is read from the archive
                prev_src = None if before is None else archived_sources(ds, before)
                d = Diff(
                    View(ds, prev_commit, prev_commit.seq, sources=prev_src),
                    View(ds, commit, s.name, sources=archived_sources(ds, s)),
                )
                ds._counts_memo[memo] = d.counts()
            out.append(
                dataclasses.replace(
                    s,
                    previous=None if before is None else before.name,
                    changes=ds._counts_memo[memo],
                )
            )
        return out

    # -- snapshots ---------------------------------------------------------------------

    def create_snapshot(
        self,
        name: str | None = None,
        *,
        ref: Ref | None = None,
        description: str = "",
        metadata: Mapping[str, Any] | None = None,
        creator: str | None = None,
    ) -> Snapshot:
        """Freeze a named, read-only snapshot of HEAD (or of `ref`).

        Without a name, the snapshot is named ``snap-<seq>-<UTC time>``
        (``snap-7-20261202T074526123456Z``): letters, digits and dashes only,
        so it can be typed as a ref. Costs one small row in the tag table: no
        data is copied. With an archive configured, a snapshot over the
        connection's limits first archives the least recently loaded one.

        Raises:
            SnapshotExistsError: the name is taken.
            LimitError: a snapshot limit is reached and no snapshot may be archived.
            VersionPrunedError: `ref` names a commit garbage collection pruned.
        """
        ds = self._ds()
        created = now_utc()
        head = ds.head
        commit = head if ref is None else ds.resolve(ref)
        if name is None:  # a typeable ref: no spaces, no colons
            name = f"snap-{commit.seq}-{created.strftime('%Y%m%dT%H%M%S%fZ')}"
        check_snapshot_name(name)
        if name in ds._global_head().branch_table():
            raise InvalidNameError(
                f"{name!r} names a branch of dataset {ds.name!r}; branch and snapshot names "
                "share one namespace: pick another name"
            )
        make_room(ds)  # archives the least recently loaded snapshot if a limit says so
        snap = ds._tags.create(
            name,
            commit,
            description=description,
            creator=creator or default_author(ds.root),
            created_at=created,
            metadata=metadata or {},
        )
        # A GC that published after HEAD was read sees this snapshot when it
        # reads the roots again, unless its record named the commit first.
        gc = ds._pruned.pruned_by(commit.seq, after=head.seq)
        if gc is not None:
            ds._tags.delete([name])
            raise pruned_error(ds.name, commit.seq, gc)
        return snap

    def list_snapshots(self, *, changes: bool = True) -> list[Snapshot]:
        """Every snapshot, oldest first.

        Args:
            changes: attach each snapshot's change counts against the one before
                it (computed from the change feed, so they stay right when a
                snapshot in between is deleted). False skips that work.
        """
        ds = self._ds()
        snaps = decorate(ds, ds._tags.snapshots())
        return ds._with_changes(snaps) if changes else snaps

    def snapshots_frame(self) -> pl.DataFrame:
        """The tag table as a Polars DataFrame (what Spark or Polars jobs read)."""
        ds = self._ds()
        return ds._tags.frame()

    def snapshot(self, name: str) -> Snapshot:
        """The snapshot called `name`, with change counts; SnapshotNotFoundError if none."""
        ds = self._ds()
        snaps = decorate(ds, ds._tags.snapshots())
        if all(s.name != name for s in snaps):
            raise ds._tags.not_found(name)
        return next(s for s in ds._with_changes(snaps, only=name) if s.name == name)

    def delete_snapshot(self, name: str) -> None:
        """Delete a snapshot (the data it pointed at stays in the history; an archive copy goes)."""
        ds = self._ds()
        ds.head  # noqa: B018 - refuses a deleted dataset
        snap = ds._tags.get(name)
        ds._tags.delete([name])
        forget_archive(ds, snap)
