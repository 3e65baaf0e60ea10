"""Clones: a new, self-contained dataset from another's version, without copying rows.

`clone_dataset` makes a dataset whose tables hold the source's rows at one
ref, optionally filtered by Polars expressions on frames and labels. Each
table of the clone is a Delta table of its own, under the clone's prefix:

- the source's data and deletion-vector files are **hard links** on local
  disk (copies where the filesystem refuses) and server-side ``CopyObject``
  on S3: no row passes through this process, and the clone keeps working
  after the source is deleted or garbage-collected;
- a file the filters leave whole is linked as it is; one they empty is left
  out; one they thin is, in a merge-on-read dataset, linked with a deletion
  vector masking the dropped rows while fewer than `_mor.REWRITE_FRACTION`
  of its rows are masked, and otherwise (and in a copy-on-write dataset)
  rewritten with the rows kept, since a mostly masked file reads slower
  than the kept rows written anew;
- its log starts at an empty version 0 (as every lakever table) and version
  1 adds the files. With ``snapshots=True`` every snapshot of the source at
  or before the ref (an ancestor of it) comes along: one more version and
  one more ``clone`` commit per snapshot, oldest first, each holding exactly
  what the source's snapshot holds (filtered alike), and the ref's state last.

Labels and inference rows whose frame the frames filter drops are dropped.
Inference sets are pinned to the clone commit that holds them, so an
evaluation of a cloned set against its pin equals the source's evaluation
of the set against the cloned ref (on the same rows).

The build is hidden until complete (`lakever._building`): killed at any
point, it leaves either no dataset (the name free again) or the whole clone.
"""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import polars as pl
from pyroaring import BitMap64

from lakever import _building, _claims, _datafiles, _delta, _deltalog, _mor
from lakever._feed import POS_COLUMN, file_uri
from lakever._protocol import MERGE_ON_READ
from lakever.archive import ARCHIVED
from lakever.branches import is_ancestor
from lakever.commits import MAIN, OPEN, ChangeCounts, Commit, now_utc
from lakever.errors import InvalidInputError, LakeverError, SnapshotArchivedError
from lakever.info import DatasetInfo, default_author
from lakever.names import check_dataset_name
from lakever.schema import FRAMES, INFERENCES_PREFIX, LABELS, key_column, table_kind
from lakever.storage import Location

if TYPE_CHECKING:
    from lakever.catalog import Lake
    from lakever.dataset import Dataset
    from lakever.refs import Ref
    from lakever.tags import Snapshot

CLONE = "clone"
_COCO = ("_lakever", "coco.json")


class ClonedFrom(NamedTuple):
    """Where a clone came from: the source's name, id and the commit it was cloned at."""

    dataset: str
    dataset_id: str | None
    commit: Commit


def cloned_from(info: DatasetInfo) -> ClonedFrom | None:
    """The origin `clone_dataset` recorded in a dataset's info, or None."""
    origin = (info.origin or {}).get(CLONE)
    if not origin:
        return None
    return ClonedFrom(origin["dataset"], origin.get("id"), Commit.from_dict(origin["commit"]))


@dataclass
class _State:
    """One commit of the clone: the source commit it copies, and its snapshots."""

    commit: Commit
    snapshots: list[Snapshot] = field(default_factory=list)


@dataclass
class _Table:
    """One table of the clone as it is built, version after version."""

    src: Location
    dst: Location
    key: str
    version: int = -1
    adds: dict[tuple[str, str | None], dict[str, Any]] = field(default_factory=dict)
    linked: set[str] = field(default_factory=set)
    protocol: dict[str, Any] = field(default_factory=dict)


def clone_dataset(
    lake: Lake,
    source: str,
    new: str,
    *,
    at: Ref | None = None,
    frames: pl.Expr | None = None,
    labels: pl.Expr | None = None,
    inferences: bool | Sequence[str] = True,
    snapshots: bool = False,
    project: str | None = None,
    tags: Sequence[str] = (),
    description: str = "",
    creator: str | None = None,
) -> Dataset:
    """See `Lake.clone_dataset`."""
    check_dataset_name(new)
    src = lake.dataset(source)
    target = src.at(at).commit if at is not None else src.head
    sets = _inference_sets(target, inferences)
    states = _states(src, target, snapshots)
    tables = [FRAMES, LABELS, *(f"{INFERENCES_PREFIX}{s}" for s in sets)]
    author = creator or default_author(lake.root)
    origin = {"dataset": src.name, "id": src.info.id, "commit": target.to_dict()}
    info = DatasetInfo.new(
        new,
        project=project,
        description=description,
        tags=tuple(tags),
        creator=author,
        classes=target.classes,
        edits=src.info.edits,
    )
    info = dataclasses.replace(info, origin={CLONE: origin})
    mor = src.info.edits == MERGE_ON_READ
    build = _building.Build(lake, info)
    with build as ds, _claims.Attempt(0) as attempt:
        built = {
            t: _Table(src.table_location(t), ds.table_location(t), key_column(table_kind(t)))
            for t in tables
        }
        _empty_tag_table(src, ds)
        parent: Commit | None = None
        for seq, state in enumerate(states):
            keep = _Filters(src, state.commit, frames, labels)
            versions = {}
            for name, table in built.items():
                version = state.commit.table_versions.get(name)
                if version is None:
                    continue
                claim = {**attempt.claim, _claims.META_SEQ: str(seq)}
                versions[name] = _write_state(table, version, keep.drop(name), mor, claim)
            parent = _publish(ds, seq, parent, state, versions, sets, author, origin)
            for snap in state.snapshots:
                ds._tags.create(
                    snap.name,
                    parent,
                    description=snap.description,
                    creator=snap.creator,
                    created_at=snap.created_at,
                    metadata=snap.metadata,
                )
        coco = src.root.child(*_COCO)
        if coco.exists():
            ds.root.copy_many([(coco, ds.root.child(*_COCO))])
        build.finish()
    return lake.dataset(new)


def _empty_tag_table(src: Dataset, ds: Dataset) -> None:
    """Create the clone's tag table: the source's creation entry with a new table id.

    One small write instead of a `DeltaTable.create`; any doubt (no such
    entry, rows in it) falls back to creating it.
    """
    first = src._tags.location.child("_delta_log", _deltalog.version_file(0)).read_or_none()
    actions = [json.loads(line) for line in (first or b"").splitlines() if line.strip()]
    if not actions or any(set(a) - {"protocol", "metaData", "commitInfo"} for a in actions):
        ds._tags.ensure()
        return
    now = int(time.time() * 1000)
    for a in actions:
        if "metaData" in a:
            a["metaData"] = {**a["metaData"], "id": str(uuid.uuid4()), "createdTime": now}
        if "commitInfo" in a:
            a["commitInfo"] = {"timestamp": now, "operation": "CREATE TABLE"}
    _mor.publish(ds._tags.location, -1, actions)


def _inference_sets(commit: Commit, wanted: bool | Sequence[str]) -> list[str]:
    have = sorted(t[len(INFERENCES_PREFIX) :] for t in commit.tables if t != FRAMES and
                  t.startswith(INFERENCES_PREFIX))  # fmt: skip
    if wanted is True:
        return have
    if wanted is False:
        return []
    if isinstance(wanted, str):
        wanted = [wanted]
    unknown = [w for w in wanted if w not in have]
    if unknown:
        raise InvalidInputError(
            f"no inference set named {', '.join(map(repr, unknown))} at commit {commit.seq}; "
            f"there are: {', '.join(have) or 'none'}"
        )
    return sorted(set(wanted))


def _states(src: Dataset, target: Commit, snapshots: bool) -> list[_State]:
    """The source commits the clone copies, oldest first, the target last."""
    states: dict[int, _State] = {}
    if snapshots:
        for snap in src.list_snapshots(changes=False):
            commit = src._snapshot_commit(snap)
            if commit.seq > target.seq or not is_ancestor(src._log, commit, target):
                continue
            if snap.state == ARCHIVED:
                raise SnapshotArchivedError(
                    f"snapshot {snap.name!r} of {src.name!r} is archived; unarchive it to clone "
                    "it, or clone without snapshots"
                )
            states.setdefault(commit.seq, _State(commit)).snapshots.append(snap)
    states.setdefault(target.seq, _State(target))
    return [states[s] for s in sorted(states)]


class _Filters:
    """Which rows of each table a clone state drops (None: keep every row)."""

    def __init__(
        self, src: Dataset, commit: Commit, frames: pl.Expr | None, labels: pl.Expr | None
    ) -> None:
        self._labels = labels
        self._frames = frames
        self._kept: pl.Series | None = None
        if frames is not None:
            rows = src.at(commit).scan(FRAMES)
            self._kept = _evaluate(rows.filter(frames.fill_null(False)), "frames", frames)[
                "frame_id"
            ]

    def drop(self, table: str) -> pl.Expr | None:
        keep: list[pl.Expr] = []
        if table == FRAMES and self._frames is not None:
            keep.append(self._frames.fill_null(False))
        if table != FRAMES and self._kept is not None:
            keep.append(pl.col("frame_id").is_in(self._kept.implode()))
        if table == LABELS and self._labels is not None:
            keep.append(self._labels.fill_null(False))
        if not keep:
            return None
        return ~pl.all_horizontal(keep)


def _evaluate(lf: pl.LazyFrame, table: str, expr: pl.Expr) -> pl.DataFrame:
    try:
        return lf.select("frame_id").collect()
    except (pl.exceptions.PolarsError, TypeError) as exc:
        raise InvalidInputError(f"the {table} filter {expr} cannot be applied: {exc}") from exc


def _write_state(
    table: _Table, version: int, drop: pl.Expr | None, mor: bool, claim: Mapping[str, str]
) -> int:
    """Write the next version of the clone's `table`: the source's `version`, filtered."""
    files = _deltalog.files_at(table.src, version)
    now = int(time.time() * 1000)
    actions: list[dict[str, Any]] = []
    if table.version < 0:
        metadata = {**files.metadata, "id": str(uuid.uuid4()), "createdTime": now}
        header = _delta.header_actions(table.src, files, metadata)
        # vectors only if a version of the clone carries some (see below): readers
        # of tables with the feature take a slower path (measured: 1.5x)
        table.protocol = header[0]["protocol"] = _without_vectors(header[0]["protocol"])
        _mor.publish(table.dst, -1, [*header, _info(claim, now, "CREATE TABLE")])
        table.version = 0
    with _mor.writing(table.dst, "clone into") as written:
        adds, shared = _filtered_adds(table, files, drop, mor, now, written)
        links = []
        for rel in shared:
            if rel not in table.linked:
                links.append((table.src.child(rel), table.dst.child(rel)))
                table.linked.add(rel)
        try:
            table.dst.copy_many(links)
        except FileNotFoundError:
            _delta.require_available(table.src, version, table=table.dst.name)
            raise
        old, new = table.adds, {_deltalog.identity(a): a for a in adds.values()}
        readers = table.protocol.get("readerFeatures") or ()
        if _mor.DV_FEATURE not in readers and any(a.get("deletionVector") for a in new.values()):
            # only a table that carries vectors asks its readers to apply them
            table.protocol = _with_vectors(table.protocol)
            actions.append({"protocol": table.protocol})
        actions += [_mor.remove_action(a, now) for i, a in old.items() if i not in new]
        actions += [{"add": {**a, "dataChange": True}} for i, a in new.items() if i not in old]
        actions.append(_info(claim, now, "WRITE"))
        _mor.publish(table.dst, table.version, actions)
    table.version += 1
    table.adds = new
    return table.version


def _without_vectors(protocol: Mapping[str, Any]) -> dict[str, Any]:
    """`protocol` without the deletion-vector feature (a fresh table's if nothing is left)."""
    readers = [f for f in protocol.get("readerFeatures") or () if f != _mor.DV_FEATURE]
    writers = [f for f in protocol.get("writerFeatures") or () if f != _mor.DV_FEATURE]
    if _mor.DV_FEATURE not in (protocol.get("readerFeatures") or ()):
        return dict(protocol)
    if not readers and not writers:
        return {"minReaderVersion": 1, "minWriterVersion": 4}
    return {**protocol, "readerFeatures": readers, "writerFeatures": writers}


def _with_vectors(protocol: Mapping[str, Any]) -> dict[str, Any]:
    """`protocol` with the deletion-vector feature (as delta-rs adds it to a lakever table)."""
    readers = list(protocol.get("readerFeatures") or [])
    writers = list(protocol.get("writerFeatures") or [])
    return {
        "minReaderVersion": 3,
        "minWriterVersion": 7,
        "readerFeatures": sorted({*readers, _mor.DV_FEATURE}),
        "writerFeatures": sorted({*writers, _mor.DV_FEATURE}),
    }


def _info(claim: Mapping[str, str], now: int, operation: str) -> dict[str, Any]:
    return {"commitInfo": {"timestamp": now, "operation": operation, **claim}}


def _files_of(add: Mapping[str, Any], *, vector: bool) -> list[str]:
    """The data file and (with `vector`) the deletion-vector file beside it of an add."""
    out = [urllib.parse.unquote(add["path"])]
    dv = add.get("deletionVector") if vector else None
    rel = _deltalog.vector_path(dv) if dv else None
    if rel and "://" not in rel:
        out.append(urllib.parse.unquote(rel))
    return out


def _filtered_adds(
    table: _Table,
    files: _deltalog.TableFiles,
    drop: pl.Expr | None,
    mor: bool,
    now: int,
    written: list[Location],
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The clone's `add` actions for `files`, and the source files they share.

    New vectors and rewritten files are written on the way.
    """
    if drop is None:
        shared = [f for a in files.adds.values() for f in _files_of(a, vector=True)]
        return {p: dict(a) for p, a in files.adds.items()}, shared
    whole: dict[str, dict[str, Any]] = {}
    masked: list[tuple[Mapping[str, Any], BitMap64]] = []
    rewrite: list[pl.LazyFrame] = []
    for path, add in sorted(files.adds.items()):
        dv = add.get("deletionVector")
        dead = _deltalog.read_vector(table.src, dv) if dv else BitMap64()
        lf = pl.scan_parquet(
            file_uri(table.src, path),
            storage_options=table.src.delta_options(),
            row_index_name=POS_COLUMN,
        )
        hit = _positions(lf, drop, path)
        dropped = BitMap64(hit) - dead
        if not dropped:
            whole[path] = dict(add)
            continue
        total = _deltalog.num_records(add) or lf.select(pl.len()).collect().item()
        gone = dead | dropped
        if len(gone) >= total:
            continue  # nothing left of it
        if mor and len(gone) < _mor.REWRITE_FRACTION * total:
            masked.append((add, gone))
            continue
        dead_rows = pl.Series(list(gone), dtype=pl.Int64).implode()
        rewrite.append(
            lf.filter(~pl.col(POS_COLUMN).cast(pl.Int64).is_in(dead_rows)).drop(POS_COLUMN)
        )
    out = dict(whole)
    shared = [f for a in whole.values() for f in _files_of(a, vector=True)]
    shared += [f for a, _ in masked for f in _files_of(a, vector=False)]
    for add in _mor.vector_adds(table.dst, masked, written):
        out[add["path"]] = add
    if rewrite:
        dt = _delta.open_at(table.src, files.version)
        arrow_schema, schema = _mor.schemas(dt)
        rows = pl.concat(pl.collect_all(rewrite), how="diagonal_relaxed").select(list(schema))
        by = [c for c in ("frame_id", "label_id") if c in schema]
        for add in _datafiles.write(table.dst, rows.sort(by), arrow_schema, files, now, written):
            out[add["path"]] = add
    return out, shared


def _positions(lf: pl.LazyFrame, drop: pl.Expr, path: str) -> list[int]:
    try:
        hit = lf.filter(drop).select(POS_COLUMN).collect()
    except pl.exceptions.ColumnNotFoundError as exc:
        raise InvalidInputError(f"a clone filter names a column the table lacks: {exc}") from exc
    except pl.exceptions.PolarsError as exc:
        raise LakeverError(f"cannot apply the clone filters to {path}: {exc}") from exc
    return hit[POS_COLUMN].cast(pl.Int64).to_list()


def _publish(
    ds: Dataset,
    seq: int,
    parent: Commit | None,
    state: _State,
    versions: Mapping[str, int],
    sets: list[str],
    author: str,
    origin: Mapping[str, Any],
) -> Commit:
    counts = {}
    if parent is None:
        for table, version in versions.items():
            files = _deltalog.files_at(ds.table_location(table), version)
            rows = sum(_deltalog.num_records(a) or 0 for a in files.adds.values())
            masked = sum(
                int((a.get("deletionVector") or {}).get("cardinality") or 0)
                for a in files.adds.values()
            )
            counts[table] = ChangeCounts(added=rows - masked)
    names = ", ".join(s.name for s in state.snapshots)
    source = origin["dataset"]
    message = f"clone {source} at commit {state.commit.seq}" + (f" ({names})" if names else "")
    commit = Commit(
        id=uuid.uuid4().hex,
        seq=seq,
        parent=None if parent is None else parent.id,
        created_at=now_utc() if parent is None else max(now_utc(), parent.created_at),
        author=author,
        message=message,
        operation=CLONE,
        table_versions=dict(versions),
        counts=counts,
        classes=state.commit.classes,
        pins={s: seq for s in sets if f"{INFERENCES_PREFIX}{s}" in versions},
        dataset_id=ds.info.id,
        meta={CLONE: {**origin, "commit": state.commit.id, "seq": state.commit.seq}},
        branch=MAIN,
        parents=() if parent is None else (parent.id,),
        parent_seqs=() if parent is None else (parent.seq,),
        heads={MAIN: {"head": seq, "base": 0, "created": 0, "state": OPEN}},
    )
    if not ds._log.publish(commit):
        raise LakeverError(f"commit {seq} of the clone {ds.name!r} was taken by another writer")
    return commit
