"""Snapshots archived to cold storage, and the limits that archive them automatically.

Archiving copies what a snapshot needs (the live data and deletion-vector
files of each table at the snapshot's versions) to ``archive_uri`` as
self-contained Delta tables: each gets a one-commit log whose `add` actions
are the snapshot version's, so Spark or Polars read it without lakever. On S3
the copies are server-side (`CopyObject`). Then the snapshot is marked
archived: reads raise `SnapshotArchivedError`, and GC stops keeping the hot
files only it needed (it keeps their log entries, which are small, so the
version can come back). Unarchiving marks the snapshot *restoring* (a GC root
again), waits for GC runs that started before to finish, copies back the
files that are gone, and marks it materialized.

State lives in ``_lakever/snapshot_state/<key>.json`` and the time of the
last read in ``_lakever/snapshot_loads/<key>.json`` (one small PUT, at most
once a minute per snapshot and process), where `key` names one snapshot
incarnation (its name and creation time).

Limits (only with an archive): at most `max_snapshots_per_dataset`
materialized snapshots per dataset and `max_snapshots` per lake. A new
snapshot or an unarchive that would pass one archives the least recently
loaded snapshot; never the most recent snapshot of a dataset, nor one loaded
within `min_loaded_age`. If none qualifies the call fails with `LimitError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

from lakever import _delta, _deltalog
from lakever.commits import now_utc
from lakever.errors import InvalidInputError, LakeverError, LimitError, SnapshotArchivedError
from lakever.storage import Location, resolve_uri
from lakever.tags import Snapshot

if TYPE_CHECKING:
    from lakever.dataset import Dataset

log = logging.getLogger("lakever")

MATERIALIZED = "materialized"
ARCHIVED = "archived"
RESTORING = "restoring"

ENV_URI = "LAKEVER_ARCHIVE_URI"
ENV_PER_DATASET = "LAKEVER_MAX_SNAPSHOTS_PER_DATASET"
ENV_TOTAL = "LAKEVER_MAX_SNAPSHOTS"
ENV_MIN_AGE = "LAKEVER_SNAPSHOT_MIN_LOADED_AGE"

#: A GC run that has not finished after this long is taken for crashed.
GC_STALE = timedelta(minutes=15)
_TOUCH_EVERY = 60.0
_touched: dict[str, float] = {}
_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "": 1}


#: The longest span a setting takes: a century (longer ones overflow date arithmetic).
MAX_SPAN = timedelta(days=36500)


def parse_span(text: str, *, what: str) -> timedelta:
    """'7d', '12h', '30m', '45s', '2w' (a bare number is seconds) as a timedelta.

    Raises:
        InvalidInputError: not a span, or longer than `MAX_SPAN`.
    """
    m = _SPAN.match(str(text))
    if not m:
        raise InvalidInputError(
            f"{what} must be a number with a unit s, m, h, d or w (like 7d or 12h), got {text!r}"
        )
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    return check_span(seconds, what=what, shown=text)


def check_span(value: timedelta | float, *, what: str, shown: Any = None) -> timedelta:
    """A span of zero up to `MAX_SPAN` (a timedelta, or seconds) as a timedelta.

    Raises:
        InvalidInputError: negative, not a span, or longer than `MAX_SPAN`.
    """
    shown = value if shown is None else shown
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise InvalidInputError(f"{what} must be a timedelta of zero or more, got {shown!r}")
    if seconds > MAX_SPAN.total_seconds():
        raise InvalidInputError(f"{what} must be at most {MAX_SPAN.days} days, got {shown!r}")
    return value if isinstance(value, timedelta) else timedelta(seconds=seconds)


@dataclass(frozen=True)
class ArchiveSettings:
    """Where archived snapshots go, and the limits on materialized ones."""

    location: Location | None = None
    max_snapshots_per_dataset: int = 20
    max_snapshots: int = 100
    min_loaded_age: timedelta = timedelta(days=1)


def settings(
    options: Mapping[str, str],
    *,
    archive_uri: str | os.PathLike[str] | None,
    max_snapshots_per_dataset: int | None,
    max_snapshots: int | None,
    min_loaded_age: timedelta | None,
) -> ArchiveSettings:
    """The connection's archive settings: arguments first, then the environment, then defaults."""
    uri = archive_uri if archive_uri is not None else os.environ.get(ENV_URI) or None
    per = _count(max_snapshots_per_dataset, ENV_PER_DATASET, 20, "max_snapshots_per_dataset")
    total = _count(max_snapshots, ENV_TOTAL, 100, "max_snapshots")
    if min_loaded_age is None:
        env = os.environ.get(ENV_MIN_AGE)
        age = timedelta(days=1) if not env else parse_span(env, what=f"${ENV_MIN_AGE}")
    elif isinstance(min_loaded_age, timedelta):
        age = check_span(min_loaded_age, what="min_loaded_age")
    else:
        raise InvalidInputError(
            f"min_loaded_age must be a timedelta of zero or more, got {min_loaded_age!r}"
        )
    location = None if uri is None else Location(resolve_uri(uri), dict(options))
    return ArchiveSettings(location, per, total, age)


def _count(value: int | None, env: str, default: int, what: str) -> int:
    if value is None:
        raw = os.environ.get(env)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise InvalidInputError(f"${env} must be a whole number >= 1, got {raw!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{what} must be a whole number >= 1, got {value!r}")
    return value


# -- state ------------------------------------------------------------------------------


def snapshot_key(snap: Snapshot) -> str:
    """The id of one snapshot incarnation (a deleted name may be used again)."""
    raw = f"{snap.name}\0{snap.created_at.isoformat()}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


class SnapshotStates:
    """Archive state and last-load time of a dataset's snapshots."""

    def __init__(self, root: Location) -> None:
        self._states = root.child("_lakever", "snapshot_state")
        self._loads = root.child("_lakever", "snapshot_loads")

    def _all(self, folder: Location) -> dict[str, dict[str, Any]]:
        names = [n for n in folder.list_names() if n.endswith(".json")]
        blobs = folder.cat_many([folder.child(n) for n in names])
        out = {}
        for n in names:
            data = blobs.get(folder.child(n).uri)
            if data is not None:
                try:
                    out[n.removesuffix(".json")] = json.loads(data)
                except ValueError:
                    continue
        return out

    def states(self) -> dict[str, dict[str, Any]]:
        """Every recorded state, by snapshot key."""
        return self._all(self._states)

    def state(self, snap: Snapshot) -> dict[str, Any]:
        """The recorded state of one snapshot ({'state': 'materialized'} if none)."""
        data = self._states.child(f"{snapshot_key(snap)}.json").read_or_none()
        return json.loads(data) if data else {"state": MATERIALIZED}

    def put(self, snap: Snapshot, state: str, **extra: Any) -> None:
        """Record a snapshot's state."""
        body = {"name": snap.name, "commit_id": snap.commit_id, "state": state,
                "at": now_utc().isoformat(), **extra}  # fmt: skip
        self._states.child(f"{snapshot_key(snap)}.json").put(json.dumps(body).encode())

    def drop(self, snap: Snapshot) -> None:
        """Forget a deleted snapshot's state and loads."""
        key = snapshot_key(snap)
        self._states.child(f"{key}.json").remove()
        self._loads.child(f"{key}.json").remove()

    def loads(self) -> dict[str, datetime]:
        """Last load time of every snapshot read at least once, by key."""
        return {k: datetime.fromisoformat(v["at"]) for k, v in self._all(self._loads).items()}

    def touch(self, snap: Snapshot) -> None:
        """Record that the snapshot was read now (at most once a minute per process)."""
        key = snapshot_key(snap)
        now = time.monotonic()
        if now - _touched.get(key, -_TOUCH_EVERY) < _TOUCH_EVERY:
            return
        _touched[key] = now
        try:
            body = json.dumps({"name": snap.name, "at": now_utc().isoformat()}).encode()
            self._loads.child(f"{key}.json").put(body)
        except LakeverError as exc:  # read-only credentials: the read goes on without it
            log.debug("the last load of snapshot %r was not recorded: %s", snap.name, exc)


def decorate(ds: Dataset, snaps: list[Snapshot]) -> list[Snapshot]:
    """The snapshots with their state and last load time filled in."""
    if not snaps:
        return snaps
    states, loads = ds._states.states(), ds._states.loads()
    out = []
    for s in snaps:
        key = snapshot_key(s)
        state = states.get(key, {}).get("state", MATERIALIZED)
        out.append(replace(s, state=state, last_loaded_at=loads.get(key)))
    return out


def check_readable(ds: Dataset, snap: Snapshot) -> None:
    """Raise `SnapshotArchivedError` for an archived snapshot; else record the load."""
    state = ds._states.state(snap)
    if state["state"] == ARCHIVED:
        raise SnapshotArchivedError(
            f"snapshot {snap.name!r} of dataset {ds.name!r} was archived to "
            f"{state.get('archive_uri')} at {state.get('at')}; bring it back with "
            f"ds.unarchive_snapshot({snap.name!r}) or `lakever snapshot unarchive {ds.name} "
            f"{snap.name!r}`"
        )
    ds._states.touch(snap)


# -- copies -----------------------------------------------------------------------------


def _copy(src: Location, dst: Location) -> None:
    if src.is_local == dst.is_local and src.options == dst.options:
        try:
            if dst.is_local:
                os.makedirs(os.path.dirname(dst.path), exist_ok=True)
            src.fs.copy(src.path, dst.path)  # CopyObject on S3: the bytes stay server-side
            return
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise LakeverError(f"cannot copy {src.uri} to {dst.uri}: {exc}") from exc
    dst.put(src.read_bytes())


def _live_paths(files: _deltalog.TableFiles) -> list[str]:
    import urllib.parse

    out = []
    for path, add in files.adds.items():
        out.append(urllib.parse.unquote(path))
        dv = add.get("deletionVector")
        rel = _deltalog.vector_path(dv) if dv else None
        if rel and "://" not in rel:
            out.append(urllib.parse.unquote(rel))
    return sorted(set(out))


def copy_table_version(src: Location, version: int, dst: Location) -> int:
    """Copy one table version to `dst` as a self-contained one-commit Delta table.

    Returns the data bytes copied, from the log's file sizes (no request per file).
    """
    files = _deltalog.files_at(src, version)
    for rel in _live_paths(files):
        _copy(src.child(rel), dst.child(rel))
    copied = sum(int(add.get("size") or 0) for add in files.adds.values())
    actions = _delta.header_actions(src, files, files.metadata)
    actions += [{"add": {**add, "dataChange": True}} for add in files.adds.values()]
    actions.append(
        {
            "commitInfo": {
                "timestamp": int(time.time() * 1000),
                "operation": "WRITE",
                "lakever.archived_from": f"{src.uri}@{version}",
            }
        }
    )
    log = "\n".join(json.dumps(a) for a in actions) + "\n"
    dst.child("_delta_log", _deltalog.version_file(0)).put(log.encode())
    return copied


def _folder_name(snap: Snapshot) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", snap.name)[:60]
    return f"{safe}-{snapshot_key(snap)[:12]}"


def archive_snapshot(ds: Dataset, name: str) -> Snapshot:
    """Copy a snapshot to the archive and mark it archived (idempotent)."""
    where = _require_archive(ds)
    snap = ds._tags.get(name)
    if ds._states.state(snap)["state"] == ARCHIVED:
        return decorate(ds, [snap])[0]
    commit = ds._snapshot_commit(snap)
    dest = where.child(ds.name, ds.info.identity, _folder_name(snap))
    copied = 0
    for table, version in sorted(commit.table_versions.items()):
        copied += copy_table_version(
            ds.table_location(table), version, dest.child(*table.split("/"))
        )
    manifest = {
        "dataset": ds.name, "dataset_id": ds.info.id, "snapshot": snap.name,
        "commit_id": commit.id, "commit_seq": commit.seq,
        "tables": {t: "/".join(t.split("/")) for t in commit.table_versions},
        "source_versions": dict(commit.table_versions), "archived_at": now_utc().isoformat(),
    }  # fmt: skip
    dest.child("_lakever_snapshot.json").put(json.dumps(manifest, indent=1).encode())
    # The tag row points outside readers at the copy before GC may take the
    # hot files (it does so only once the state record says archived).
    ds._tags.set_archive(snap.name, state=ARCHIVED, archive_uri=dest.uri)
    ds._states.put(snap, ARCHIVED, archive_uri=dest.uri, bytes=copied,
                   tables=dict(commit.table_versions))  # fmt: skip
    return decorate(ds, [snap])[0]


def unarchive_snapshot(ds: Dataset, name: str) -> Snapshot:
    """Bring an archived snapshot back into the hot tables (idempotent)."""
    snap = ds._tags.get(name)
    state = ds._states.state(snap)
    if state["state"] == MATERIALIZED:
        if ds._tags.frame().filter(pl.col("name") == name).row(0, named=True).get("state"):
            ds._tags.set_archive(name, state=MATERIALIZED, archive_uri=None)  # a crash's rest
        return decorate(ds, [snap])[0]
    make_room(ds, keep={snap.name})
    src = Location(state["archive_uri"], ds.root.options)
    ds._states.put(snap, RESTORING, archive_uri=src.uri, tables=state.get("tables", {}))
    _wait_for_gc(ds, since=now_utc())
    commit = ds._snapshot_commit(snap)
    for table, version in sorted(commit.table_versions.items()):
        hot = ds.table_location(table)
        cold = src.child(*table.split("/"))
        for rel in _live_paths(_deltalog.files_at(hot, version)):
            if not hot.child(rel).exists():
                _copy(cold.child(rel), hot.child(rel))
        _delta.require_available(hot, version, table=table)
    ds._states.put(snap, MATERIALIZED)
    ds._tags.set_archive(snap.name, state=MATERIALIZED, archive_uri=None)
    src.remove_tree()
    return decorate(ds, [snap])[0]


def _wait_for_gc(ds: Dataset, *, since: datetime) -> None:
    """Wait until every GC run that began before `since` has finished (or is stale)."""
    deadline = time.monotonic() + GC_STALE.total_seconds()
    while time.monotonic() < deadline:
        running = [
            r for r in ds._pruned.records(unfinished=True)
            if r.created_at <= since and since - r.created_at < GC_STALE
        ]  # fmt: skip
        if not running:
            return
        time.sleep(0.2)


def _require_archive(ds: Dataset) -> Location:
    where = ds._archive.location
    if where is None:
        raise LakeverError(
            "no archive is configured: connect with lv.connect(uri, archive_uri=...) or set "
            f"${ENV_URI}"
        )
    return where


def archived_sources(ds: Dataset, snap: Snapshot) -> dict[str, tuple[Location, int]] | None:
    """Where an archived snapshot's tables are read from (None if it is not archived)."""
    state = ds._states.state(snap)
    if state["state"] != ARCHIVED:
        return None
    base = Location(state["archive_uri"], ds.root.options)
    return {t: (base.child(*t.split("/")), 0) for t in state.get("tables", {})}


def forget_archive(ds: Dataset, snap: Snapshot) -> None:
    """Remove a deleted snapshot's archive copy and state."""
    state = ds._states.state(snap)
    if state.get("archive_uri"):
        Location(state["archive_uri"], ds.root.options).remove_tree()
    ds._states.drop(snap)


# -- limits ------------------------------------------------------------------------------


def make_room(ds: Dataset, *, keep: Iterable[str] = ()) -> None:
    """Archive snapshots until one more materialized snapshot fits under both limits."""
    cfg = ds._archive
    if cfg.location is None:
        return
    keep = set(keep)
    scopes: list[tuple[str, list[Dataset], int]] = [
        ("max_snapshots_per_dataset", [ds], cfg.max_snapshots_per_dataset)
    ]
    if ds._lake is not None:
        others = [d for d in ds._lake._datasets() if not d.same_dataset(ds)]
        scopes.append(("max_snapshots", [ds, *others], cfg.max_snapshots))
    for limit_name, members, limit in scopes:
        while True:
            live = [(d, s) for d in members for s in _materialized(d)]
            if len(live) + 1 <= limit:
                break
            victim = _victim(live, keep, cfg.min_loaded_age, ds)
            if victim is None:
                raise _limit_error(ds, limit_name, limit, len(live), cfg.min_loaded_age)
            d, s = victim
            archive_snapshot(d, s.name)


def _materialized(ds: Dataset) -> list[Snapshot]:
    return [s for s in decorate(ds, ds._tags.snapshots()) if s.state != ARCHIVED]


def _victim(
    live: list[tuple[Dataset, Snapshot]], keep: set[str], min_age: timedelta, ds: Dataset
) -> tuple[Dataset, Snapshot] | None:
    newest: dict[str, datetime] = {}
    for d, s in live:
        newest[d.root.uri] = max(newest.get(d.root.uri, s.created_at), s.created_at)
    now = now_utc()
    candidates = [
        (d, s)
        for d, s in live
        if s.created_at != newest[d.root.uri]
        and not (d.same_dataset(ds) and s.name in keep)
        and now - (s.last_loaded_at or s.created_at) >= min_age
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda ds_s: ds_s[1].last_loaded_at or ds_s[1].created_at)


def _limit_error(ds: Dataset, name: str, limit: int, live: int, age: timedelta) -> LimitError:
    scope = f"dataset {ds.name!r}" if name == "max_snapshots_per_dataset" else "the lake"
    return LimitError(
        f"{scope} has {live} materialized snapshots and {name} is {limit}; none can be "
        f"archived to make room (the most recent snapshot of each dataset, and those loaded "
        f"within {age}, are kept). Archive or delete a snapshot, or connect with a higher "
        f"{name} (or a shorter min_loaded_age)"
    )
