"""Garbage collection that never breaks a snapshot.

Roots are what must stay readable: HEAD, every snapshot, every commit an
inference set of a root is pinned to, every commit a segment element is frozen
at, and every commit newer than `keep_within`. Everything else in the commit
log becomes unreadable; the files only those commits needed are deleted (see
`_gcfiles` for the per-table rule, the change feed between neighbouring roots
included).

Applying a plan:

1. write the run's record (`_lakever/gc/<seq>-<id>.json`: the seqs it prunes);
2. publish a ``gc`` commit at HEAD+1 with put-if-absent; losing the seq to a
   writer means HEAD moved, so GC plans again. From here on a revert or a pin
   to a pruned commit is refused (they replay on top of this commit), and
   `ds.at` of one raises `VersionPrunedError`;
3. read the roots that do not go through the log (snapshots, segments) again:
   one made meanwhile is kept (and the record rewritten), and its creator,
   checking after it wrote, finds the record and withdraws if the record still
   named its commit;
4. delete data, vector and change files, then checkpoint each table at its
   oldest kept version, then delete older log entries;
5. append the run to the ``gc_runs`` table (when, who, roots, files, bytes).

Versions a table gained past HEAD's (writers at work, or commits after the
GC's) are kept whole, and files no log version names yet are left for an hour
(`_gcfiles.UNTRACKED_GRACE`), so a racing writer never loses a file.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

from lakever import _delta, _gcfiles, _records, archive, branches
from lakever._pruned import GC_OPERATION, GCRecord, ranges, record_name
from lakever.commits import MAIN, OPEN, Commit, now_utc
from lakever.errors import ConflictError, InvalidInputError
from lakever.info import default_author
from lakever.schema import INFERENCES_PREFIX

if TYPE_CHECKING:
    from lakever.dataset import Dataset

DEFAULT_KEEP_WITHIN = timedelta(days=7)

ROOT_SCHEMA: dict[str, pl.DataType] = {
    "seq": pl.Int64(),
    "commit_id": pl.String(),
    "reason": pl.String(),  # head | branch | snapshot | pin | segment | window
    "name": pl.String(),
}
FILE_SCHEMA: dict[str, pl.DataType] = {
    "table": pl.String(),
    "path": pl.String(),
    "bytes": pl.Int64(),
    "kind": pl.String(),
}
RUN_SCHEMA: dict[str, pl.DataType] = {
    "gc_id": pl.String(),
    "seq": pl.Int64(),
    "started_at": pl.Datetime("us", "UTC"),
    "finished_at": pl.Datetime("us", "UTC"),
    "author": pl.String(),
    "keep_within_seconds": pl.Float64(),
    "roots": pl.String(),  # JSON list of {seq, reason, name}
    "unreadable": pl.List(pl.Int64()),
    "files": pl.Int64(),
    "bytes": pl.Int64(),
    "bytes_by_kind": pl.String(),  # JSON {kind: bytes}
}
_MAX_ATTEMPTS = 50


@dataclass
class GCReport:
    """A garbage collection plan, or what an applied one did.

    Attributes:
        dataset: the dataset's name.
        roots: what is kept and why: seq, commit_id, reason ('head', 'snapshot',
            'pin', 'segment', 'window'), name (snapshot, set or segment name).
        files: path, bytes and kind ('data', 'deletion vector', 'change data',
            'log', 'checkpoint') of each file deleted (or to delete), with its table.
        unreadable: commit seqs that stop being readable.
        applied: False for a plan.
        keep_within: the window of recent commits kept.
        gc_id: the run's id (applied runs).
        seq: the seq of the run's ``gc`` commit (applied runs).
    """

    dataset: str
    roots: pl.DataFrame
    files: pl.DataFrame
    unreadable: list[int]
    applied: bool
    keep_within: timedelta
    gc_id: str | None = None
    seq: int | None = None

    @property
    def bytes(self) -> int:
        """Total bytes deleted (or to delete)."""
        return int(self.files["bytes"].sum() or 0)

    def bytes_by_kind(self) -> dict[str, int]:
        """Bytes per kind of file."""
        grouped = self.files.group_by("kind").agg(pl.col("bytes").sum()).sort("kind")
        return {str(k): int(b) for k, b in grouped.iter_rows()}

    def describe(self) -> str:
        """A human-readable summary."""
        verb = "deleted" if self.applied else "would delete"
        kinds = ", ".join(f"{k} {human_size(b)}" for k, b in self.bytes_by_kind().items())
        lines = [
            f"garbage collection of {self.dataset!r} ({'applied' if self.applied else 'plan'}, "
            f"keeping commits newer than {_span(self.keep_within)})",
            f"roots: {self.roots.height} "
            f"({', '.join(f'{r} {n}' for r, n in _reason_counts(self.roots))})",
            f"commits that stop being readable: {len(self.unreadable)}"
            + (f" ({_seq_ranges(self.unreadable)})" if self.unreadable else ""),
            f"{verb}: {self.files.height} files, {human_size(self.bytes)}"
            + (f" ({kinds})" if kinds else ""),
        ]
        return "\n".join(lines)


@dataclass
class _Plan:
    head: Commit
    roots: list[dict[str, Any]]
    kept: set[int]
    unreadable: list[int]
    tables: list[_gcfiles.TablePlan] = field(default_factory=list)


def check_keep_within(keep_within: Any) -> timedelta:
    """`keep_within` as a timedelta >= 0 (InvalidInputError otherwise)."""
    if not isinstance(keep_within, timedelta):
        raise InvalidInputError(
            f"keep_within must be a timedelta of zero or more, got {keep_within!r}"
        )
    return archive.check_span(keep_within, what="keep_within")


def collect(
    ds: Dataset, *, keep_within: timedelta, apply: bool, author: str | None = None
) -> GCReport:
    """Plan garbage collection of `ds`; with `apply`, carry it out (see the module doc)."""
    keep_within = check_keep_within(keep_within)
    author = author or default_author(ds.root)
    delay = 0.02
    for _ in range(_MAX_ATTEMPTS):
        now = now_utc()
        head = ds._global_head()  # GC is dataset-wide: every branch
        plan = _plan(ds, head, now, keep_within)
        if not apply:
            return _report(ds, plan, keep_within, applied=False)
        run_id = uuid.uuid4().hex
        record = GCRecord(run_id, head.seq + 1, now, author, ranges(plan.unreadable))
        where = ds._pruned.folder.child(record_name(record.seq, run_id))
        where.put(record.to_json())
        commit = head.successor(
            branches.head_of(ds._log, head, MAIN, dataset=ds.name),
            branch=MAIN,
            author=author,
            message=f"gc: {len(plan.unreadable)} commits pruned",
            operation=GC_OPERATION,
            meta={"gc": {"id": run_id, "keep_within_seconds": keep_within.total_seconds()}},
        )
        if not ds._log.publish(commit):
            where.remove()
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 1.6, 1.0)
            continue
        ds._confirm(commit)
        again = _plan(ds, head, now, keep_within, tables=False)
        if again.kept != plan.kept:
            plan = _plan(ds, head, now, keep_within)
            record = GCRecord(run_id, record.seq, now, author, ranges(plan.unreadable))
            where.put(record.to_json())
        _delete(plan)
        _delta.forget(ds.root.uri)
        record = dataclasses.replace(record, finished_at=now_utc())
        where.put(record.to_json())
        report = _report(ds, plan, keep_within, applied=True, run_id=run_id, seq=record.seq)
        _record_run(ds, report, record, author)
        return report
    raise ConflictError(
        f"garbage collection of {ds.name!r} gave up after {_MAX_ATTEMPTS} attempts: "
        "writers kept committing; retry later"
    )


def _plan(
    ds: Dataset, head: Commit, now: datetime, keep_within: timedelta, *, tables: bool = True
) -> _Plan:
    commits = {c.seq: c for c in ds._log.list(head)}
    done: set[int] = set()
    for rec in ds._pruned.records():
        for lo, hi in rec.pruned:
            done.update(range(lo, hi + 1))
    # Commits pruned before stay pruned, unless a snapshot came back from the
    # archive onto one (its files were copied back).
    roots, archived = _roots(ds, head, commits, now - keep_within)
    roots = [
        r for r in roots if r["seq"] not in done or r["reason"] in ("snapshot", "head", "branch")
    ]
    root_seqs = {r["seq"] for r in roots}
    versions: dict[str, set[int]] = {}
    for seq in root_seqs:
        for table, v in commits[seq].table_versions.items():
            versions.setdefault(table, set()).add(v)
    # A commit whose every table version a root keeps stays readable too (the
    # commit a GC commit copies, say).
    kept = root_seqs | {
        s
        for s, c in commits.items()
        if s not in done and all(v in versions.get(t, ()) for t, v in c.table_versions.items())
    }
    unreadable = sorted(s for s in commits if s not in kept and s not in done)
    plan = _Plan(head, roots, kept, unreadable)
    if tables:
        for table in _table_names(ds, commits.values()):
            plan.tables.append(_plan_table(ds, table, head, commits, kept, archived, now))
    return plan


def _roots(
    ds: Dataset, head: Commit, commits: dict[int, Commit], since: datetime
) -> tuple[list[dict[str, Any]], set[int]]:
    """The roots, and the commits of archived snapshots (whose log entries stay)."""
    from lakever.archive import ARCHIVED, decorate
    from lakever.segments import frozen_commits

    out: list[dict[str, Any]] = [
        {
            "seq": int(entry["head"]),
            "reason": "head" if name == MAIN else "branch",
            "name": "" if name == MAIN else name,
        }
        for name, entry in head.branch_table().items()
        if name == MAIN or entry.get("state") == OPEN  # published: kept by their snapshot
    ]
    snaps = [s for s in decorate(ds, ds._tags.snapshots()) if s.commit_seq <= head.seq]
    archived = {s.commit_seq for s in snaps if s.state == ARCHIVED}
    out += [
        {"seq": s.commit_seq, "reason": "snapshot", "name": s.name}
        for s in snaps
        if s.state != ARCHIVED
    ]
    out += [
        {"seq": seq, "reason": "segment", "name": name}
        for seq, name in frozen_commits(ds)
        if seq <= head.seq
    ]
    out += [
        {"seq": c.seq, "reason": "window", "name": ""}
        for c in commits.values()
        if c.created_at >= since and c.seq not in {r["seq"] for r in out}
    ]
    pending = [r["seq"] for r in out]
    seen: set[tuple[int, str]] = set()
    while pending:
        commit = commits.get(pending.pop())
        for set_name, pinned in (commit.pins if commit else {}).items():
            if (pinned, set_name) not in seen and pinned in commits:
                seen.add((pinned, set_name))
                out.append({"seq": pinned, "reason": "pin", "name": set_name})
                pending.append(pinned)
    for r in out:
        r["commit_id"] = commits[r["seq"]].id if r["seq"] in commits else None
    return sorted(out, key=lambda r: (r["seq"], r["reason"], r["name"])), archived


def _table_names(ds: Dataset, commits: Iterable[Commit]) -> list[str]:
    names = {t for c in commits for t in c.table_versions}
    names.update(
        INFERENCES_PREFIX + n for n in ds.root.child("inferences").list_names() if "." not in n
    )
    return sorted(names)


def _plan_table(
    ds: Dataset,
    table: str,
    head: Commit,
    commits: dict[int, Commit],
    kept: set[int],
    archived: set[int],
    now: datetime,
) -> _gcfiles.TablePlan:
    versions = {
        commits[s].table_versions[table] for s in kept if table in commits[s].table_versions
    }
    feed: set[int] = set()
    for s in kept:
        nxt = commits.get(s + 1)
        if s + 1 not in kept or nxt is None:
            continue
        a, b = commits[s].table_versions.get(table, 0), nxt.table_versions.get(table, 0)
        feed.update(range(min(a, b) + 1, max(a, b) + 1))
    cold = [commits[s].table_versions.get(table) for s in archived if s in commits]
    return _gcfiles.plan_table(
        ds.table_location(table),
        table,
        kept=versions,
        log_only={v for v in cold if v is not None},
        feed=feed,
        # the newest version any commit (any branch) records: above it, writers at work
        in_flight_after=max(
            (c.table_versions[table] for c in commits.values() if table in c.table_versions),
            default=None,
        ),
        now=now,
    )


def _delete(plan: _Plan) -> None:
    for tp in plan.tables:
        loc = tp.location
        loc.remove_many([loc.child(p) for p, _, kind in tp.files if kind not in _LOG_KINDS])
    for tp in plan.tables:
        if not any(kind in _LOG_KINDS for _, _, kind in tp.files):
            continue
        loc = tp.location
        if tp.checkpoint_at is not None:
            _delta.open_at(loc, tp.checkpoint_at).create_checkpoint()
        loc.remove_many([loc.child(p) for p, _, kind in tp.files if kind in _LOG_KINDS])


_LOG_KINDS = (_gcfiles.LOG, _gcfiles.CHECKPOINT)


def _report(
    ds: Dataset,
    plan: _Plan,
    keep_within: timedelta,
    *,
    applied: bool,
    run_id: str | None = None,
    seq: int | None = None,
) -> GCReport:
    files = [
        {"table": tp.table, "path": tp.location.child(p).uri, "bytes": size, "kind": kind}
        for tp in plan.tables
        for p, size, kind in tp.files
    ]
    return GCReport(
        dataset=ds.name,
        roots=pl.DataFrame(plan.roots, schema=ROOT_SCHEMA),
        files=pl.DataFrame(files, schema=FILE_SCHEMA),
        unreadable=list(plan.unreadable),
        applied=applied,
        keep_within=keep_within,
        gc_id=run_id,
        seq=seq,
    )


def _record_run(ds: Dataset, report: GCReport, record: GCRecord, author: str) -> None:
    row = {
        "gc_id": record.id,
        "seq": record.seq,
        "started_at": record.created_at,
        "finished_at": now_utc(),
        "author": author,
        "keep_within_seconds": report.keep_within.total_seconds(),
        "roots": json.dumps(report.roots.select("seq", "reason", "name").to_dicts()),
        "unreadable": report.unreadable,
        "files": report.files.height,
        "bytes": report.bytes,
        "bytes_by_kind": json.dumps(report.bytes_by_kind()),
    }
    _records.append(ds.root.child("gc_runs"), pl.DataFrame([row], schema=RUN_SCHEMA))


def runs(ds: Dataset) -> pl.DataFrame:
    """Applied GC runs of `ds`, newest first."""
    rows = _records.read(ds.root.child("gc_runs"), RUN_SCHEMA)
    return rows.sort("seq", descending=True)


def _reason_counts(roots: pl.DataFrame) -> list[tuple[str, int]]:
    counts = roots.group_by("reason").len().sort("reason")
    return [(str(r), int(n)) for r, n in counts.iter_rows()]


def _seq_ranges(seqs: list[int]) -> str:
    parts = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges(seqs)]
    return ", ".join(parts[:10]) + (", ..." if len(parts) > 10 else "")


def human_size(n: int) -> str:
    """Bytes as B, KiB, MiB or GiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0 and seconds:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0 and seconds:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds:
        return f"{seconds // 60}m"
    return f"{seconds}s"
