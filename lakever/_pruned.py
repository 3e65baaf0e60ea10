"""Which commits garbage collection made unreadable, and by which GC.

Each GC run writes ``_lakever/gc/<seq>-<id>.json`` before it publishes its
commit at ``seq`` (operation ``gc``, ``meta.gc.id`` = the run's id). A record
counts only once that commit is published with that id: a run that lost the
seq to another writer left a record no commit confirms, and it is ignored.
The record lists the commit seqs the run pruned (as ranges), so a read of one
of them fails with `VersionPrunedError` naming the run, and `log()` marks them.

Publishing the GC commit through the commit log serialises GC with every
write: a revert or pin to a commit being pruned either published before the
GC's commit (and the GC plans again, seeing it) or is replayed on top of it
and finds the record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from lakever.commits import CommitLog
from lakever.errors import VersionPrunedError
from lakever.storage import Location

GC_OPERATION = "gc"


@dataclass(frozen=True)
class GCRecord:
    """One garbage collection run, as its record file says.

    Attributes:
        id: the run's id.
        seq: the seq of the run's commit.
        created_at: when it started.
        author: who ran it.
        pruned: the commit seqs it made unreadable, as inclusive ranges.
        finished_at: when it finished deleting (None while it runs, or if it died).
    """

    id: str
    seq: int
    created_at: datetime
    author: str
    pruned: tuple[tuple[int, int], ...]
    finished_at: datetime | None = None

    def covers(self, seq: int) -> bool:
        """Whether this run pruned commit `seq`."""
        return any(lo <= seq <= hi for lo, hi in self.pruned)

    def to_json(self) -> bytes:
        """The record file's bytes."""
        return json.dumps(
            {
                "id": self.id,
                "seq": self.seq,
                "created_at": self.created_at.isoformat(),
                "author": self.author,
                "pruned": [list(r) for r in self.pruned],
                "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> GCRecord:
        """Parse a record file."""
        raw = json.loads(data)
        return cls(
            id=str(raw["id"]),
            seq=int(raw["seq"]),
            created_at=datetime.fromisoformat(raw["created_at"]),
            author=str(raw.get("author", "")),
            pruned=tuple((int(lo), int(hi)) for lo, hi in raw.get("pruned", [])),
            finished_at=None
            if not raw.get("finished_at")
            else datetime.fromisoformat(raw["finished_at"]),
        )


def ranges(seqs: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Sorted inclusive ranges covering exactly `seqs`."""
    out: list[list[int]] = []
    for s in sorted(set(seqs)):
        if out and out[-1][1] == s - 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return tuple((lo, hi) for lo, hi in out)


def record_name(seq: int, run_id: str) -> str:
    """The file name of a run's record."""
    return f"{seq:012d}-{run_id}.json"


class PrunedIndex:
    """The confirmed GC records of one dataset, read from storage on each question.

    Records are few (one per GC run) and a LIST of their folder is cheap;
    which records a commit confirmed never changes, so that is cached.
    """

    def __init__(self, root: Location, log: CommitLog, *, name: str) -> None:
        self.folder = root.child("_lakever", "gc")
        self._log = log
        self._name = name
        self._confirmed: dict[str, bool] = {}

    def records(self, *, after: int = -1, unfinished: bool = False) -> list[GCRecord]:
        """Records of runs whose commit seq is above `after`, oldest first.

        Only runs whose commit is published count, except with `unfinished`,
        which gives the runs that have not finished (published or not yet).
        """
        names = [n for n in self.folder.list_names() if n.endswith(".json")]
        names = [n for n in names if n[:12].isdigit() and int(n[:12]) > after]
        if not names:
            return []
        blobs = self.folder.cat_many([self.folder.child(n) for n in names])
        out = []
        for n in names:
            data = blobs.get(self.folder.child(n).uri)
            if data is None:
                continue
            try:
                rec = GCRecord.from_json(data)
            except (ValueError, KeyError, TypeError):
                continue
            if unfinished:
                # a run whose seq another commit took lost and stopped
                if rec.finished_at is None and not self._lost(n, rec):
                    out.append(rec)
            elif self._is_confirmed(n, rec):
                out.append(rec)
        return sorted(out, key=lambda r: r.seq)

    def _is_confirmed(self, name: str, rec: GCRecord) -> bool:
        if self._confirmed.get(name):
            return True
        try:
            commit = self._log._fetch(rec.seq)
        except Exception:
            return False
        ok = (
            commit is not None
            and commit.operation == GC_OPERATION
            and (commit.meta.get("gc") or {}).get("id") == rec.id
        )
        if commit is not None:
            self._confirmed[name] = ok  # a published seq never changes hands
        return ok

    def _lost(self, name: str, rec: GCRecord) -> bool:
        try:
            published = self._log._fetch(rec.seq) is not None
        except Exception:
            return False
        return published and not self._is_confirmed(name, rec)

    def pruned_by(self, seq: int, *, after: int = -1) -> GCRecord | None:
        """The run that pruned commit `seq`, if one did."""
        for rec in self.records(after=after):
            if rec.covers(seq):
                return rec
        return None

    def check(self, seq: int) -> None:
        """Raise `VersionPrunedError` if commit `seq` was pruned."""
        rec = self.pruned_by(seq)
        if rec is not None:
            raise pruned_error(self._name, seq, rec)


def pruned_error(dataset: str, seq: int, rec: GCRecord) -> VersionPrunedError:
    """The error for reading commit `seq` that run `rec` pruned."""
    return VersionPrunedError(
        f"commit {seq} of dataset {dataset!r} was pruned by garbage collection {rec.id[:12]} "
        f"(commit {rec.seq}, run by {rec.author!r} at {rec.created_at.isoformat()}): its "
        "data files are gone. Snapshots, pinned commits, segments and recent commits stay "
        f"readable; `lakever log {dataset}` marks pruned commits, `lakever gc {dataset} "
        "--history` lists the runs",
        seq=seq,
        gc_id=rec.id,
        gc_seq=rec.seq,
        pruned_at=rec.created_at,
    )
