"""Refs: the ways a user names one version of a dataset, resolved to one commit.

A ref is one of:

- a `Commit`, `Snapshot` or `View` of the same dataset (one of another
  dataset is refused, never silently read by seq);
- a commit seq: any integer, numpy's and pandas' included;
- a `datetime`: the newest commit at or before it. A naive datetime is local
  time, as everywhere in Python; give a timezone to be exact;
- a string, tried in this order: ``HEAD`` (any case: the handle's branch
  head), a snapshot name, a branch name (its head), a commit seq in ASCII
  digits, a commit id or a unique prefix of one (4+ hex characters), an
  ISO-8601 time (naive = local time).

``head`` in any case is reserved and cannot name a snapshot, so ``HEAD``
always means the latest commit.
"""

from __future__ import annotations

import numbers
import re
from datetime import datetime
from typing import TYPE_CHECKING

from lakever.branches import ancestry, head_of
from lakever.commits import Commit
from lakever.errors import CommitNotFoundError, CorruptLakeError, InvalidRefError
from lakever.tags import Snapshot
from lakever.view import View

if TYPE_CHECKING:
    from lakever.dataset import Dataset

Ref = str | int | datetime | Commit | Snapshot | View

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def resolve(ds: Dataset, ref: Ref) -> Commit:
    """Turn a ref into a commit of `ds`.

    Raises:
        InvalidRefError: the ref matches nothing, or belongs to another dataset.
        CommitNotFoundError: a seq or time outside the log.
        DatasetNotFoundError: the dataset was deleted.
        VersionPrunedError: garbage collection made that commit unreadable.
        SnapshotArchivedError: the snapshot is archived (unarchive it first).
    """
    glob = ds._global_head()  # a deleted dataset resolves nothing
    head = head_of(ds._log, glob, ds.branch_name, dataset=ds.name)
    snap = _snapshot_ref(ds, ref)
    if snap is not None:
        # a snapshot is a root: never pruned, but maybe archived
        from lakever.archive import check_readable

        check_readable(ds, snap)
        return snapshot_commit(ds, snap)
    commit = _resolve(ds, ref, head, glob)
    if commit.seq != head.seq:
        ds._pruned.check(commit.seq)
    return commit


def _snapshot_ref(ds: Dataset, ref: Ref) -> Snapshot | None:
    """The snapshot a ref names, if it names one."""
    if isinstance(ref, View):
        return None
    if isinstance(ref, Snapshot):
        own = ds._tags.find(ref.name)
        if own is None or own.commit_id != ref.commit_id:
            raise _foreign(ds, ref.name, f"snapshot {ref.name!r} of commit {ref.commit_id[:12]}")
        return own
    if isinstance(ref, str) and ref.strip().upper() != "HEAD":
        return ds._tags.find(ref.strip())
    return None


def _resolve(ds: Dataset, ref: Ref, head: Commit, glob: Commit) -> Commit:
    if isinstance(ref, View):
        if not ref.dataset.same_dataset(ds):
            raise _foreign(ds, ref, f"a view of dataset {ref.dataset.name!r}")
        return _resolve(ds, ref.commit, head, glob)
    if isinstance(ref, Commit):
        return _own_commit(ds, ref)
    if isinstance(ref, bool):
        raise InvalidRefError(f"{ref!r} is not a ref: give a commit seq, id, snapshot or time")
    if isinstance(ref, numbers.Integral):
        seq = int(ref)
        if seq < 0:
            raise InvalidRefError(f"commit seq {seq} is negative; seqs start at 0")
        return ds._log.get(seq)
    if isinstance(ref, datetime):
        return _at_time(ds, ref, head, glob)
    if not isinstance(ref, str):
        raise InvalidRefError(
            f"cannot use a {type(ref).__name__} as a ref ({ref!r}): give a snapshot name, "
            "commit id or seq, a datetime, or a Commit, Snapshot or View of this dataset"
        )
    return _resolve_text(ds, ref, head, glob)


def _resolve_text(ds: Dataset, ref: str, head: Commit, glob: Commit) -> Commit:
    text = ref.strip()  # not a snapshot name: `resolve` looked for one first
    if text.upper() == "HEAD":
        return head
    if text in glob.branch_table():
        return head_of(ds._log, glob, text, dataset=ds.name)
    if text.isascii() and text.isdigit():
        try:
            return ds._log.get(int(text))
        except CommitNotFoundError:
            found = ds._log.find_id(text)  # an id prefix made only of digits
            if found is None:
                raise
            return found
    found = ds._log.find_id(text)
    if found is not None:
        return found
    if _ISO_DATE.match(text):
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return _at_time(ds, when, head, glob)
    raise InvalidRefError(
        f"{ref!r} is not a snapshot, commit id, commit seq or ISO time of dataset "
        f"{ds.name!r}; `lakever snapshot list {ds.name}` and `lakever log {ds.name}` "
        "show what exists"
    )


def _at_time(ds: Dataset, when: datetime, head: Commit, glob: Commit) -> Commit:
    """The newest commit of the handle's branch (its ancestry) at or before `when`."""
    found = ds._log.at_time(when)
    if len(glob.branch_table()) == 1:
        return found  # one line of history: the log's order is the branch's

    for commit in ancestry(ds._log, head):
        if commit.seq <= found.seq:
            return commit
    return found


def _own_commit(ds: Dataset, commit: Commit) -> Commit:
    try:
        own = ds._log.get(commit.seq)
    except CommitNotFoundError:
        own = None
    if own is None or own.id != commit.id:
        raise _foreign(ds, commit.id[:12], f"commit {commit.seq} ({commit.id[:12]})")
    return own


def snapshot_commit(ds: Dataset, snap: Snapshot) -> Commit:
    """The commit a snapshot of `ds` points at."""
    commit = ds._log.get(snap.commit_seq)
    if commit.id != snap.commit_id:
        raise CorruptLakeError(
            f"snapshot {snap.name!r} points at commit {snap.commit_id} as seq "
            f"{snap.commit_seq}, but that seq holds commit {commit.id}"
        )
    return commit


def _foreign(ds: Dataset, shown: object, what: str) -> InvalidRefError:
    return InvalidRefError(
        f"{what} is not part of dataset {ds.name!r}: refs must come from the dataset they "
        f"are used with (got {shown!r}); pass a snapshot name, commit id or seq of "
        f"{ds.name!r} instead"
    )
