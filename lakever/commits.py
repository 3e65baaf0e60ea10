"""The commit log: one immutable JSON record per dataset commit.

A commit record names the Delta version of every table of the dataset, so a
reader resolves HEAD, a snapshot or a past commit to exact table versions and
never sees half a commit. Records live at ``_lakever/commits/<seq>.json`` and
are published with put-if-absent: the first writer to create seq N owns it,
which makes that write the single atomic publish point of each commit.

``_lakever/HEAD`` is only a hint (the newest seq some writer saw); readers
probe forward from it, so a stale hint costs one extra read and never hides a
commit.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from lakever.errors import (
    CommitNotFoundError,
    CorruptLakeError,
    DatasetNotFoundError,
    InvalidRefError,
)
from lakever.storage import Location

FORMAT_VERSION = 1
#: The default branch: every dataset has it, and it cannot be deleted.
MAIN = "main"
#: A branch that takes writes (a draft), and one a snapshot closed.
OPEN = "open"
PUBLISHED = "published"
_SEQ_WIDTH = 12


@dataclass(frozen=True)
class ChangeCounts:
    """Rows added, modified and deleted in one table by one commit."""

    added: int = 0
    modified: int = 0
    deleted: int = 0

    @property
    def total(self) -> int:
        """All changed rows."""
        return self.added + self.modified + self.deleted

    def to_dict(self) -> dict[str, int]:
        """The counts as a plain dict."""
        return {"added": self.added, "modified": self.modified, "deleted": self.deleted}


@dataclass(frozen=True)
class Commit:
    """One atomic change to a dataset.

    Attributes:
        id: unique hex id.
        seq: position in the log, 0 for the commit that created the dataset.
        parent: id of the previous commit (None for seq 0).
        created_at: publish time (UTC); never earlier than the parent's.
        author: who made it.
        message: why.
        operation: what kind of change ('create', 'write', 'revert', ...).
        table_versions: the Delta version of every table, e.g. {'labels': 12}.
        counts: per-table rows added, modified and deleted.
        classes: the class map in force after this commit.
        pins: inference set -> seq of the dataset commit it was made against.
        dataset_id: id of the dataset incarnation the commit belongs to (None
            for datasets made before lakever recorded it).
        meta: what made the commit, for lakever's own bookkeeping (an upload
            records its id and progress here, atomically with the rows).
        pruned_by: the seq of the garbage collection commit that made this
            commit unreadable (filled in by `Dataset.log`; not stored).
        branch: the branch the commit was made on ('main' unless a branch).
        parents: ids of its parents: the previous head of its branch first,
            then the merged commit of a merge.
        parent_seqs: the seqs of `parents`, in the same order.
        heads: every branch of the dataset as this commit leaves them: name ->
            {'head': seq, 'base': seq, 'created': seq, 'state': 'open' or
            'published'}. Empty on records made before branches existed: then
            the only branch is 'main' and its head is this commit.
    """

    id: str
    seq: int
    parent: str | None
    created_at: datetime
    author: str
    message: str
    operation: str
    table_versions: Mapping[str, int]
    counts: Mapping[str, ChangeCounts] = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    pins: Mapping[str, int] = field(default_factory=dict)
    dataset_id: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    pruned_by: int | None = field(default=None, compare=False)
    branch: str = MAIN
    parents: tuple[str, ...] = ()
    parent_seqs: tuple[int, ...] = ()
    heads: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False)

    def child(
        self,
        *,
        author: str,
        message: str,
        operation: str,
        table_versions: Mapping[str, int] | None = None,
        counts: Mapping[str, ChangeCounts] | None = None,
        classes: tuple[str, ...] | None = None,
        pins: Mapping[str, int] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Commit:
        """The next commit on top of this one, on its branch; unnamed fields carry over."""
        return self.successor(
            self,
            branch=self.branch,
            author=author,
            message=message,
            operation=operation,
            table_versions=table_versions,
            counts=counts,
            classes=classes,
            pins=pins,
            meta=meta,
        )

    def successor(
        self,
        base: Commit,
        *,
        branch: str,
        author: str,
        message: str,
        operation: str,
        table_versions: Mapping[str, int] | None = None,
        counts: Mapping[str, ChangeCounts] | None = None,
        classes: tuple[str, ...] | None = None,
        pins: Mapping[str, int] | None = None,
        meta: Mapping[str, Any] | None = None,
        merged: Commit | None = None,
        branch_entry: Mapping[str, Any] | None = None,
        drop_branch: str | None = None,
    ) -> Commit:
        """The commit after this one in the log (this is the newest), made on `branch`.

        `base` is the commit it builds on (the branch's head): its parent, whose
        versions, classes and pins carry over unless given. `merged` is the
        second parent of a merge. The branch table carries over with `branch`
        pointing at the new commit (`branch_entry` replaces its other fields;
        `drop_branch` removes a branch).
        """
        seq = self.seq + 1
        heads = {name: dict(entry) for name, entry in self.branch_table().items()}
        if drop_branch is not None:
            heads.pop(drop_branch, None)
        entry = dict(heads.get(branch, {"base": base.seq, "created": seq, "state": OPEN}))
        entry.update(branch_entry or {})
        entry["head"] = seq
        heads[branch] = entry
        parents = [base] if merged is None else [base, merged]
        return Commit(
            id=uuid.uuid4().hex,
            seq=seq,
            parent=base.id,
            created_at=max(now_utc(), self.created_at),
            author=author,
            message=message,
            operation=operation,
            table_versions=dict(base.table_versions if table_versions is None else table_versions),
            counts=dict(counts or {}),
            classes=base.classes if classes is None else classes,
            pins=dict(base.pins if pins is None else pins),
            dataset_id=self.dataset_id,
            meta=dict(meta or {}),
            branch=branch,
            parents=tuple(p.id for p in parents),
            parent_seqs=tuple(p.seq for p in parents),
            heads=heads,
        )

    def branch_table(self) -> dict[str, Mapping[str, Any]]:
        """Every branch as this commit leaves them (see `heads`)."""
        if self.heads:
            return dict(self.heads)
        return {MAIN: {"head": self.seq, "base": 0, "created": 0, "state": OPEN}}

    def parent_list(self) -> list[int]:
        """The seqs of this commit's parents (first parent first)."""
        if self.parent_seqs:
            return list(self.parent_seqs)
        return [self.seq - 1] if self.parent is not None else []

    @property
    def tables(self) -> list[str]:
        """Names of the tables that exist at this commit."""
        return sorted(self.table_versions)

    def to_dict(self) -> dict[str, Any]:
        """The commit as JSON-ready data."""
        data = {
            "format": FORMAT_VERSION,
            "id": self.id,
            "seq": self.seq,
            "parent": self.parent,
            "parents": list(self.parents) or ([self.parent] if self.parent else []),
            "created_at": self.created_at.isoformat(),
            "author": self.author,
            "message": self.message,
            "operation": self.operation,
            "table_versions": dict(self.table_versions),
            "counts": {t: c.to_dict() for t, c in self.counts.items()},
            "classes": list(self.classes),
            "pins": dict(self.pins),
            "dataset_id": self.dataset_id,
        }
        if self.meta:
            data["meta"] = dict(self.meta)
        if self.heads:
            data["branch"] = self.branch
            data["parent_seqs"] = list(self.parent_seqs)
            data["heads"] = {k: dict(v) for k, v in self.heads.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Commit:
        """Rebuild a commit from its JSON record."""
        return cls(
            id=data["id"],
            seq=int(data["seq"]),
            parent=data.get("parent"),
            created_at=datetime.fromisoformat(data["created_at"]),
            author=data.get("author", ""),
            message=data.get("message", ""),
            operation=data.get("operation", ""),
            table_versions={k: int(v) for k, v in data.get("table_versions", {}).items()},
            counts={t: ChangeCounts(**c) for t, c in data.get("counts", {}).items()},
            classes=tuple(data.get("classes", ())),
            pins={k: int(v) for k, v in data.get("pins", {}).items()},
            dataset_id=data.get("dataset_id"),
            meta=dict(data.get("meta") or {}),
            branch=data.get("branch", MAIN),
            parents=tuple(data.get("parents") or ()),
            parent_seqs=tuple(int(s) for s in data.get("parent_seqs") or ()),
            heads={k: dict(v) for k, v in (data.get("heads") or {}).items()},
        )


def ref_body(commit: Commit) -> dict[str, Any]:
    """A branch head as readers outside lakever use it: seq, id and every table's version."""
    return {
        "branch": commit.branch,
        "seq": commit.seq,
        "commit_id": commit.id,
        "tables": [
            {"table": t, "uri": t, "version": v} for t, v in sorted(commit.table_versions.items())
        ],
    }


def now_utc() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def aware(when: datetime) -> datetime:
    """A timezone-aware time: a naive one is taken as local time, Python's convention."""
    return when if when.tzinfo is not None else when.astimezone()


class CommitLog:
    """Reads and publishes the commit records of one dataset.

    Args:
        root: the dataset's root.
        dataset_id: the id of the dataset incarnation this log belongs to; a
            record with another id means the dataset was deleted and created
            again under the same name, and this handle must not read it.
        name: the dataset's name, for messages.
    """

    def __init__(self, root: Location, *, dataset_id: str | None = None, name: str = "") -> None:
        self._dir = root.child("_lakever", "commits")
        self._hint = root.child("_lakever", "HEAD")
        self._refs = root.child("_lakever", "branches")
        self._cache: dict[int, Commit] = {}
        self._dataset_id = dataset_id
        self._name = name

    def _record(self, seq: int) -> Location:
        return self._dir.child(f"{seq:0{_SEQ_WIDTH}d}.json")

    def _parse(self, seq: int, data: bytes) -> Commit:
        try:
            commit = Commit.from_dict(json.loads(data))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptLakeError(
                f"commit record {self._record(seq).uri} is unreadable: {exc}"
            ) from exc
        if commit.dataset_id != self._dataset_id:
            raise DatasetNotFoundError(
                f"dataset {self._name!r} was deleted (and created again) since this handle "
                f"was opened; open it again with lake.dataset({self._name!r})"
            )
        self._cache[seq] = commit
        return commit

    def get(self, seq: int) -> Commit:
        """Return commit number `seq`; CommitNotFoundError if there is none."""
        if seq in self._cache:
            return self._cache[seq]
        commit = self._fetch(seq)
        if commit is None:
            raise CommitNotFoundError(f"no commit with seq {seq} in {self._dir.uri}")
        return commit

    def exists(self, seq: int) -> bool:
        """Whether record `seq` is published (read from storage, not the cache)."""
        return self._record(seq).exists()

    def _fetch(self, seq: int) -> Commit | None:
        """Read record `seq` from storage, never from the cache; None if there is none."""
        data = self._record(seq).read_or_none()
        return None if data is None else self._parse(seq, data)

    def head(self) -> Commit | None:
        """Return the newest published commit, or None for an empty log.

        The records are read from storage, not from the cache, so a dataset
        deleted (or deleted and re-created) since is noticed.
        """
        seq = self._hinted_seq()
        commit = None if seq is None else self._fetch(seq)
        if seq is None or commit is None:
            seqs = self.list_seqs()
            if not seqs:
                return None
            seq = seqs[-1]
            commit = self._fetch(seq)
            if commit is None:
                return None  # removed meanwhile: a deletion is under way
        while True:
            following = self._fetch(seq + 1)
            if following is None:
                return commit
            seq, commit = seq + 1, following

    def _hinted_seq(self) -> int | None:
        try:
            return int(json.loads(self._hint.read_bytes())["seq"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    def list_seqs(self) -> list[int]:
        """Every published seq, ascending."""
        seqs = []
        for name in self._dir.list_names():
            stem = name.removesuffix(".json")
            if name.endswith(".json") and stem.isdigit():
                seqs.append(int(stem))
        return sorted(seqs)

    def list(self, head: Commit | None = None, *, limit: int | None = None) -> list[Commit]:
        """Commits newest first from `head` (default: read HEAD), at most `limit` of them."""
        head = head or self.head()
        if head is None:
            return []
        start = 0 if limit is None else max(0, head.seq - limit + 1)
        self.prefetch(start, head.seq)
        return [self.get(s) for s in range(head.seq, start - 1, -1)]

    def cached(self, seq: int) -> bool:
        """Whether record `seq` was read already (records never change)."""
        return seq in self._cache

    def prefetch(self, low: int, high: int) -> None:
        """Read the records low..high that are not cached yet, in one batch."""
        wanted = [s for s in range(low, high + 1) if s not in self._cache]
        if not wanted:
            return
        blobs = self._dir.cat_many([self._record(s) for s in wanted])
        for s in wanted:
            data = blobs.get(self._record(s).uri)
            if data is not None:
                self._parse(s, data)

    def publish(self, commit: Commit) -> bool:
        """Publish a commit; return False if another writer took its seq first."""
        data = json.dumps(commit.to_dict(), sort_keys=True).encode()
        if not self._record(commit.seq).put_if_absent(data):
            return False
        self._cache[commit.seq] = commit
        # The hint is an optimisation; readers probe past a stale one.
        with contextlib.suppress(OSError):
            self._hint.put(json.dumps({"seq": commit.seq}).encode())
        if commit.heads:
            with contextlib.suppress(OSError):
                self.branch_ref(commit.branch).put(json.dumps(ref_body(commit)).encode())
        return True

    def branch_ref(self, branch: str) -> Location:
        """Where readers outside lakever find a branch's head (written after each commit)."""
        from lakever.filenames import encode

        return self._refs.child(f"{encode(branch)}.json")

    def withdraw(self, commit: Commit) -> None:
        """Remove a record this process just published into a dataset that was deleted."""
        self._cache.pop(commit.seq, None)
        self._record(commit.seq).remove()

    def at_time(self, when: datetime) -> Commit:
        """The newest commit published at or before `when`.

        A naive `when` is local time, as everywhere in Python.

        Raises:
            CommitNotFoundError: `when` is before the first commit.
        """
        try:
            when = aware(when)
            when.astimezone(timezone.utc)
        except (ValueError, OverflowError) as exc:
            raise InvalidRefError(
                f"{when.isoformat()!r} is outside the times a commit can have ({exc}); give a time "
                "after the dataset's first commit"
            ) from exc
        head = self.head()
        first = self.get(0) if head is not None else None
        if head is None or first is None or when < first.created_at:
            start = first.created_at.isoformat() if first else "never"
            raise CommitNotFoundError(
                f"no commit at or before {when.isoformat()}: the dataset's first commit "
                f"was made at {start}"
            )
        lo, hi = 0, head.seq  # created_at is monotonic along seq (enforced at publish)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.get(mid).created_at <= when:
                lo = mid
            else:
                hi = mid - 1
        return self.get(lo)

    def find_id(self, prefix: str) -> Commit | None:
        """The commit whose id is or starts with `prefix` (at least 4 hex chars)."""
        if len(prefix) < 4 or any(ch not in "0123456789abcdef" for ch in prefix.lower()):
            return None
        prefix = prefix.lower()
        matches = [c for c in self.list() if c.id.startswith(prefix)]
        if len(matches) > 1:
            raise InvalidRefError(
                f"commit id prefix {prefix!r} is ambiguous: it matches "
                f"{', '.join(c.id for c in matches[:5])}; give more characters"
            )
        return matches[0] if matches else None
