"""Branches: named, movable heads inside one set of Delta tables.

Every commit, on any branch, takes the next seq of the one commit log, so
put-if-absent on the record stays the single atomic publish point. Each
record carries the branch table as it leaves it (`Commit.heads`: name ->
head, base, created, state), so reading a branch's head costs reading HEAD.
A branch is born as a commit (operation ``branch``) whose table versions are
those of the commit it starts at: nothing is copied. A commit on a branch is
replayed against that branch's head; the Delta tables it touches are first
put back to the head's content by a restore that is exact in the change feed
(see docs/ARCHITECTURE.md, "Branches"), then written as usual, so Delta's
own history stays one line of exact states and every diff, history and
change count keeps reading it as such.

The Dataset methods (`create_branch`, `branches`, `delete_branch`,
`publish`, `merge_base`, and `merge`/`cherry_pick` through `lakever.merge`)
live in `Branching`; each is a thin call into this module.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from lakever.commits import MAIN, OPEN, PUBLISHED, Commit, CommitLog
from lakever.errors import (
    BranchNotFoundError,
    InvalidNameError,
    ReadOnlyError,
    SnapshotExistsError,
)
from lakever.names import check_snapshot_name

if TYPE_CHECKING:
    from lakever.dataset import Dataset
    from lakever.merge import MergeResult
    from lakever.refs import Ref

BRANCH_OPERATION = "branch"
#: Commit records read at once while walking a history.
_BATCH = 256
DELETE_BRANCH_OPERATION = "delete-branch"
PUBLISH_OPERATION = "publish"


@dataclass(frozen=True)
class Branch:
    """A named line of history of a dataset.

    Attributes:
        name: unique within the dataset (shared with snapshot names).
        head: its newest commit.
        base: the commit it started from (commit 0 for 'main').
        created_at: when it was created.
        creator: who created it.
        state: 'open' (a draft: takes writes) or 'published' (closed by a snapshot).
    """

    name: str
    head: Commit
    base: Commit
    created_at: datetime
    creator: str
    state: str


def table_of(glob: Commit) -> dict[str, Any]:
    """The branch table as the newest commit leaves it."""
    return dict(glob.branch_table())


def head_of(log: CommitLog, glob: Commit, name: str, *, dataset: str = "") -> Commit:
    """The head commit of branch `name`, read from the newest commit `glob`.

    Raises:
        BranchNotFoundError: no open or published branch of that name.
    """
    entry = glob.branch_table().get(name)
    if entry is None:
        known = ", ".join(sorted(glob.branch_table()))
        raise BranchNotFoundError(
            f"dataset {dataset!r} has no branch {name!r}; its branches: {known}"
        )
    seq = int(entry["head"])
    return glob if seq == glob.seq else log.get(seq)


def writable_head(log: CommitLog, glob: Commit, name: str, *, dataset: str = "") -> Commit:
    """The head of branch `name` for a write; ReadOnlyError if the branch was published."""
    entry = glob.branch_table().get(name)
    if entry is not None and entry.get("state") == PUBLISHED:
        raise ReadOnlyError(
            f"branch {name!r} of dataset {dataset!r} was published and takes no more writes; "
            f"start a child version with create_branch(<name>, at={name!r})"
        )
    return head_of(log, glob, name, dataset=dataset)


def ancestry(log: CommitLog, head: Commit) -> Iterator[Commit]:
    """Every commit `head` descends from (itself included), newest first, each once.

    Records are read in batches below the newest one needed, so the first few
    ancestors cost one batch, not the whole log.
    """
    seen = {head.seq}
    frontier = [head.seq]
    while frontier:
        seq = max(frontier)
        frontier.remove(seq)
        if not log.cached(seq):
            log.prefetch(max(0, seq - _BATCH + 1), seq)
        commit = log.get(seq)
        yield commit
        for parent in commit.parent_list():
            if parent not in seen:
                seen.add(parent)
                frontier.append(parent)


def merge_base(log: CommitLog, a: Commit, b: Commit) -> Commit:
    """The newest commit both `a` and `b` descend from."""
    mine = {c.seq for c in ancestry(log, a)}
    for commit in ancestry(log, b):
        if commit.seq in mine:
            return commit
    return log.get(0)


def is_ancestor(log: CommitLog, older: Commit, newer: Commit) -> bool:
    """Whether `newer` descends from `older`."""
    for commit in ancestry(log, newer):
        if commit.seq <= older.seq:  # newest first: nothing further can match
            return commit.seq == older.seq
    return False


def check_name(name: str) -> str:
    """A branch name: the rules of snapshot names, and no spaces (it is typed as a ref)."""
    check_snapshot_name(name)
    if any(ch.isspace() for ch in name) or ":" in name:
        raise InvalidNameError(f"branch name {name!r} must not contain spaces or ':'")
    return name


class Branching:
    """Branch methods of a dataset (mixed into `Dataset`)."""

    def _ds(self) -> Dataset:
        return cast("Dataset", self)

    def create_branch(
        self,
        name: str,
        *,
        at: Ref | Sequence[Ref] | None = None,
        on_conflict: str = "fail",
        author: str | None = None,
    ) -> Dataset:
        """Start a branch (a draft) at a ref; nothing is copied. Return a handle on it.

        Args:
            name: the branch's name; branch and snapshot names share one namespace.
            at: where it starts: any ref (default this handle's head), or several
                refs, merged into the new branch in order (`on_conflict` applies).
            on_conflict: for several refs, as `merge`.
            author: who creates it.

        Raises:
            InvalidNameError: the name is taken by a branch or a snapshot, or not allowed.

        Example:
            >>> qa = ds.create_branch("qa", at="train-v1")  # doctest: +SKIP
        """
        ds = self._ds()
        check_name(name)
        refs: list[Any] = list(at) if isinstance(at, (list, tuple)) else [at]
        if not refs:
            raise InvalidNameError("create_branch(at=[]) needs at least one ref")
        start = ds.head if refs[0] is None else ds.resolve(refs[0])
        if ds._tags.find(name) is not None:
            raise InvalidNameError(
                f"{name!r} names a snapshot of dataset {ds.name!r}; branch and snapshot "
                "names share one namespace: pick another name"
            )
        ds._runner.create_branch(name, start, author=author or _author(ds))
        branch = ds.on_branch(name)
        for ref in refs[1:]:
            branch.merge(ref, on_conflict=on_conflict, author=author)
        return branch

    def branches(self) -> list[Branch]:
        """Every branch, 'main' first, then by name."""
        ds = self._ds()
        glob = ds._global_head()
        out = []
        for name, entry in sorted(table_of(glob).items(), key=lambda kv: (kv[0] != MAIN, kv[0])):
            head = head_of(ds._log, glob, name, dataset=ds.name)
            created = ds._log.get(int(entry.get("created", 0)))
            out.append(
                Branch(
                    name=name,
                    head=head,
                    base=ds._log.get(int(entry.get("base", 0))),
                    created_at=created.created_at,
                    creator=created.author,
                    state=str(entry.get("state", OPEN)),
                )
            )
        return out

    def branch(self, name: str) -> Branch:
        """One branch by name (BranchNotFoundError if there is none)."""
        found = [b for b in self.branches() if b.name == name]
        if not found:
            ds = self._ds()
            head_of(ds._log, ds._global_head(), name, dataset=ds.name)  # raises, naming them
        return found[0]

    def delete_branch(self, name: str, *, author: str | None = None) -> None:
        """Delete a branch ('main' cannot be). Its commits stay until GC reclaims them."""
        ds = self._ds()
        if name == MAIN:
            raise InvalidNameError("branch 'main' cannot be deleted")
        glob = ds._global_head()
        head_of(ds._log, glob, name, dataset=ds.name)  # raises when there is none
        ds._runner.delete_branch(name, author=author or _author(ds))

    def publish(
        self,
        name: str,
        *,
        description: str = "",
        metadata: dict[str, Any] | None = None,
        author: str | None = None,
    ) -> Any:
        """Snapshot this branch's head as `name` and close the branch (no more writes).

        Returns the snapshot. Running it again after a crash finishes the job.

        Raises:
            InvalidNameError: this handle is on 'main' (publish main with
                `create_snapshot`).
        """
        ds = self._ds()
        if ds.branch_name == MAIN:
            raise InvalidNameError(
                "branch 'main' is published with create_snapshot; publish closes drafts"
            )
        check_snapshot_name(name)
        found = ds._tags.find(name)
        if found is not None and found.commit_id != ds.head.id:
            raise SnapshotExistsError(
                f"a snapshot named {name!r} already exists at another commit; pick another name"
            )
        # Closed first, then snapshotted: a crash in between leaves a closed
        # branch that running publish again snapshots.
        ds._runner.set_branch_state(ds.branch_name, PUBLISHED, author=author or _author(ds))
        head = ds.head
        snap = ds._tags.find(name)
        if snap is None or snap.commit_id != head.id:
            snap = ds.create_snapshot(name, description=description, metadata=metadata)
        return snap

    def merge_base(self, other: Ref) -> Commit:
        """The newest commit this handle's head and `other` both descend from."""
        ds = self._ds()
        return merge_base(ds._log, ds.head, ds.resolve(other))

    def merge(
        self,
        source: Ref,
        *,
        on_conflict: str = "fail",
        granularity: str = "cell",
        dry_run: bool = False,
        message: str | None = None,
        author: str | None = None,
    ) -> MergeResult:
        """Merge `source` (a branch or any ref) into this handle's branch, three-way.

        See `lakever.merge`: a row changed on one side takes that side; a row
        changed on both merges column by column (``granularity='cell'``) or is a
        conflict (``'row'``). ``on_conflict``: 'fail' (raise
        `MergeConflictError`, nothing committed), 'ours' or 'theirs'.
        """
        from lakever import merge as merging

        return merging.merge(
            self._ds(),
            source,
            on_conflict=on_conflict,
            granularity=granularity,
            dry_run=dry_run,
            message=message,
            author=author,
        )

    def cherry_pick(
        self,
        commit: Ref,
        *,
        on_conflict: str = "fail",
        granularity: str = "cell",
        message: str | None = None,
        author: str | None = None,
    ) -> MergeResult:
        """Apply one commit's change (three-way against its parent) to this branch."""
        from lakever import merge as merging

        return merging.cherry_pick(
            self._ds(),
            commit,
            on_conflict=on_conflict,
            granularity=granularity,
            message=message,
            author=author,
        )


def _author(ds: Dataset) -> str:
    from lakever.info import default_author

    return default_author(ds.root)
