"""Three-way merge of two lines of history, by row and by cell.

`merge(ds, source)` merges `source` (theirs) into the handle's branch (ours)
against their merge base. Per table and key, the net change base -> ours and
base -> theirs is read as diffs are (`_changes.table_change`, from the change
feed: the cost follows the change), and then:

- a key changed on one side only takes that side;
- a key changed on both sides to the same row needs nothing;
- otherwise, in ``granularity="cell"``, a row modified on both sides merges
  column by column, and one column set to different values on both sides is a
  ``cell`` conflict; in ``"row"`` any such key is a ``row`` conflict. Added on
  both sides with different content (``add_add``) and deleted on one side while
  modified on the other (``delete_modify``) are conflicts in both modes.

``on_conflict="ours"`` or ``"theirs"`` resolves every such conflict to one
side and records which. The merged result must keep every invariant a commit
keeps: it is replayed on a staging of ours, and a rule it breaks (a label
added on one side to a frame deleted on the other: ``missing_frame``) is a
conflict no side can resolve, reported and never committed. Class maps merge
as a union; inference sets merge as tables, and a set whose pin changed
differently on both sides is a ``pin`` conflict.

When ours has not moved since the merge base the merge is a fast-forward: a
merge commit that records theirs' table versions and writes no data.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from lakever import _changes
from lakever.branches import is_ancestor, merge_base
from lakever.commits import ChangeCounts, Commit
from lakever.errors import InvalidInputError, MergeConflictError, RowError, ValidationError
from lakever.history import row_json
from lakever.schema import FRAMES, INFERENCES_PREFIX, LABELS, key_column, table_kind

if TYPE_CHECKING:
    from lakever._staging import Stage
    from lakever.dataset import Dataset
    from lakever.refs import Ref

OnConflict = Literal["fail", "ours", "theirs"]
Granularity = Literal["cell", "row"]
ON_CONFLICT = ("fail", "ours", "theirs")
GRANULARITY = ("cell", "row")

CONFLICT_SCHEMA: dict[str, pl.DataType] = {
    "table": pl.String(),
    "key": pl.String(),
    "column": pl.String(),
    "kind": pl.String(),
    "base": pl.String(),
    "ours": pl.String(),
    "theirs": pl.String(),
}
#: Conflicts no side can resolve: the merged result would break a rule.
INTEGRITY = "integrity"
_MAX_REPLANS = 20


@dataclass(frozen=True)
class MergeResult:
    """What a merge did (or would do, on a dry run).

    Attributes:
        commit: the merge commit (two parents); None on a dry run, when there
            was nothing to merge, or when it failed on conflicts.
        fast_forward: ours had not moved since the merge base.
        counts: per table, rows added, modified and deleted on ours.
        conflicts: one row per conflict found (``table``, ``key``, ``column``
            (null for a whole row), ``kind``, and the ``base``, ``ours`` and
            ``theirs`` values as text), resolved or not.
    """

    commit: Commit | None
    fast_forward: bool
    counts: Mapping[str, ChangeCounts] = field(default_factory=dict)
    conflicts: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=CONFLICT_SCHEMA))


@dataclass
class _TablePlan:
    """What the merge does to one table."""

    table: str
    upserts: list[dict[str, Any]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    schema: dict[str, pl.DataType] = field(default_factory=dict)
    drop: bool = False


class _Replan(Exception):
    """Ours moved between planning and committing: plan again on its new head."""


def merge(
    ds: Dataset,
    source: Ref,
    *,
    on_conflict: str = "fail",
    granularity: str = "cell",
    dry_run: bool = False,
    message: str | None = None,
    author: str | None = None,
) -> MergeResult:
    """Merge `source` into `ds`'s branch; see the module doc."""
    _check(on_conflict, granularity)
    if isinstance(source, str) and source.strip() in (ds.branch_name, "HEAD", "head"):
        raise InvalidInputError(
            f"cannot merge branch {ds.branch_name!r} into itself; name another branch or ref"
        )
    theirs = ds.resolve(source)
    for _ in range(_MAX_REPLANS):
        ours = ds.head
        if theirs.id == ours.id or is_ancestor(ds._log, theirs, ours):
            return MergeResult(None, False)  # already merged
        base = merge_base(ds._log, ours, theirs)
        if base.id == ours.id:
            counts = {
                t: _changes.table_counts(
                    ds.table_location(t), _key(t), ours.table_versions.get(t), v
                )
                for t, v in theirs.table_versions.items()
                if ours.table_versions.get(t) != v
            }
            if dry_run:
                return MergeResult(None, True, counts)
            from lakever.info import default_author

            text = message or f"merge {_name(source, theirs)} into {ds.branch_name} (fast-forward)"
            commit = ds._runner.fast_forward(
                theirs, author=author or default_author(ds.root), message=text
            )
            if commit is None:
                continue  # ours moved meanwhile: plan again
            return MergeResult(commit, True, counts)
        with contextlib.suppress(_Replan):
            return _three_way(
                ds,
                base,
                ours,
                theirs,
                on_conflict=on_conflict,
                granularity=granularity,
                dry_run=dry_run,
                message=message or f"merge {_name(source, theirs)} into {ds.branch_name}",
                author=author,
                merged=theirs,
                operation="merge",
            )
    raise _moving(ds)


def cherry_pick(
    ds: Dataset,
    ref: Ref,
    *,
    on_conflict: str = "fail",
    granularity: str = "cell",
    message: str | None = None,
    author: str | None = None,
) -> MergeResult:
    """Apply one commit's change (three-way against its first parent) to `ds`'s branch."""
    _check(on_conflict, granularity)
    commit = ds.resolve(ref)
    parents = commit.parent_list()
    if not parents:
        raise InvalidInputError(f"commit {commit.seq} has no parent: nothing to pick")
    parent = ds._log.get(parents[0])
    for _ in range(_MAX_REPLANS):
        with contextlib.suppress(_Replan):
            return _three_way(
                ds,
                parent,
                ds.head,
                commit,
                on_conflict=on_conflict,
                granularity=granularity,
                dry_run=False,
                message=message or f"cherry-pick commit {commit.seq}: {commit.message}",
                author=author,
                merged=None,
                operation="cherry-pick",
            )
    raise _moving(ds)


def _moving(ds: Dataset) -> MergeConflictError:
    return MergeConflictError(
        f"branch {ds.branch_name!r} kept moving while merging into it; retry",
        pl.DataFrame(schema=CONFLICT_SCHEMA),
    )


def _check(on_conflict: str, granularity: str) -> None:
    if on_conflict not in ON_CONFLICT:
        raise InvalidInputError(
            f"on_conflict must be one of {', '.join(ON_CONFLICT)}, got {on_conflict!r}"
        )
    if granularity not in GRANULARITY:
        raise InvalidInputError(
            f"granularity must be one of {', '.join(GRANULARITY)}, got {granularity!r}"
        )


def _name(source: Any, commit: Commit) -> str:
    return source if isinstance(source, str) else f"commit {commit.seq}"


def _key(table: str) -> str:
    return key_column(table_kind(table))


def _three_way(
    ds: Dataset,
    base: Commit,
    ours: Commit,
    theirs: Commit,
    *,
    on_conflict: str,
    granularity: str,
    dry_run: bool,
    message: str,
    author: str | None,
    merged: Commit | None,
    operation: str,
) -> MergeResult:
    plans: list[_TablePlan] = []
    conflicts: list[dict[str, Any]] = []
    tables = sorted(
        set(base.table_versions) | set(ours.table_versions) | set(theirs.table_versions),
        key=lambda t: (t != FRAMES, t != LABELS, t),
    )
    for table in tables:
        plan = _plan_table(ds, table, base, ours, theirs, granularity, on_conflict, conflicts)
        if plan is not None:
            plans.append(plan)
    classes = ours.classes + tuple(c for c in theirs.classes if c not in ours.classes)
    pins = _merge_pins(base, ours, theirs, on_conflict, conflicts)

    def op(st: Stage) -> None:
        if st.head.id != ours.id:
            raise _Replan
        st.classes = classes
        st.pins.update(pins)
        for plan in plans:
            if plan.drop:
                st.restore_table(plan.table, None)
                continue
            key = _key(plan.table)
            # one read of every touched key's base row (and where it lives),
            # which the delete, the put and the write then share
            touched = plan.deletes + [row[key] for row in plan.upserts]
            st.base_rows(plan.table, pl.Series(key, touched, dtype=pl.String))
            if plan.deletes:
                st.delete(plan.table, plan.deletes, missing_ok=True)
            if plan.upserts:
                rows = pl.DataFrame(plan.upserts, schema=plan.schema, strict=False)
                if plan.table != FRAMES:
                    pinned = st.pins.get(plan.table[len(INFERENCES_PREFIX) :])
                    st.require_frames(plan.table, rows, pinned=pinned)
                st.put(plan.table, rows)
        _labels_keep_their_frames(st, plans)

    counts: dict[str, ChangeCounts] = {}
    commit: Commit | None = None
    if dry_run or any(c["resolved"] == "fail" for c in conflicts):
        from lakever._staging import Stage

        stage = Stage(ours, ds.table_location, ds._log.get)
        try:
            op(stage)
            counts = {c.table: c.counts for c in stage.changes(lambda *_: ChangeCounts())}
        except ValidationError as exc:
            conflicts += _broken_rules(exc)
    else:
        from lakever.info import default_author

        resolved = sorted({c["resolved"] for c in conflicts})
        meta = {"merge": {"source": theirs.id, "base": base.id, "conflicts": len(conflicts)}}
        if resolved:
            meta["merge"]["resolved"] = resolved
        try:
            commit = ds._runner.run(
                [op, _record(meta)],
                message=message,
                author=author or default_author(ds.root),
                operation=operation,
                merged=merged,
            )
        except ValidationError as exc:
            conflicts += _broken_rules(exc)
    frame = _conflict_frame(conflicts)
    blocking = [c for c in conflicts if c["resolved"] in ("fail", INTEGRITY)]
    if blocking:
        detail = "; ".join(
            f"{c['table']} {c['key']!r}"
            + (f" column {c['column']!r}" if c["column"] else "")
            + f" ({c['kind']})"
            for c in blocking[:5]
        )
        more = f" and {len(blocking) - 5} more" if len(blocking) > 5 else ""
        if dry_run:
            return MergeResult(None, False, counts, frame)
        raise MergeConflictError(
            f"merging into branch {ds.branch_name!r} found {len(blocking)} conflict(s): "
            f"{detail}{more}; nothing was committed. Resolve them on a branch, or pass "
            "on_conflict='ours' or 'theirs' (rules the result would break are never "
            "resolved for you)",
            frame,
        )
    if dry_run:
        return MergeResult(None, False, counts, frame)
    assert commit is not None
    return MergeResult(commit, False, dict(commit.counts), frame)


def _broken_rules(exc: ValidationError) -> list[dict[str, Any]]:
    """Rules the merged result would break, as conflicts no side resolves."""
    return [
        {
            "table": exc.table,
            "key": e.key,
            "column": e.column,
            "kind": e.rule,
            "base": None,
            "ours": None,
            "theirs": None if e.value is None else str(e.value),
            "resolved": INTEGRITY,
        }
        for e in exc.errors
    ]


def _record(meta: dict[str, Any]) -> Any:
    def op(st: Stage) -> None:
        st.meta.update(meta)

    return op


def _plan_table(
    ds: Dataset,
    table: str,
    base: Commit,
    ours: Commit,
    theirs: Commit,
    granularity: str,
    on_conflict: str,
    conflicts: list[dict[str, Any]],
) -> _TablePlan | None:
    """The upserts and deletes that bring theirs' changes of one table onto ours."""
    b, o, t = (c.table_versions.get(table) for c in (base, ours, theirs))
    if t in (b, o):
        return None  # theirs did not change it, or ours holds exactly theirs
    loc = ds.table_location(table)
    key = _key(table)
    if t is None:  # theirs dropped it
        if o == b:
            return _TablePlan(table, drop=True)
        conflicts.append(_conflict(table, None, None, "drop_modify", "exists", "changed", None))
        if on_conflict == "theirs":
            return _TablePlan(table, drop=True)
        conflicts[-1]["resolved"] = on_conflict
        return None
    other = _changes.table_change(loc, key, b, t)
    if other.is_empty():
        return None
    # ours matters only where theirs changed: read its feed for those keys alone
    mine = _changes.table_change(loc, key, b, o, keys=other[key])
    plan = _TablePlan(table)
    plan.schema = _struct_schema(other)
    joined = other.join(mine, on=key, how="left", suffix="_ours")
    for row in joined.iter_rows(named=True):
        k = row[key]
        t_change, t_after, before = row["change"], row["after"], row["before"]
        o_change = row["change_ours"]
        if o_change is None:
            _take(plan, k, t_change, t_after)
            continue
        o_after = row["after_ours"]
        if _same(o_after, t_after):
            continue
        if t_change == "deleted" or o_change == "deleted":
            kind = "delete_modify"
        elif t_change == "added" and o_change == "added":
            kind = "add_add"
        elif granularity == "row":
            kind = "row"
        else:
            _merge_cells(plan, table, k, before, o_after, t_after, row, on_conflict, conflicts)
            continue
        c = _conflict(table, k, None, kind, _row(before), _row(o_after), _row(t_after))
        c["resolved"] = on_conflict
        conflicts.append(c)
        if on_conflict == "theirs":
            _take(plan, k, t_change, t_after)
    return plan


def _merge_cells(
    plan: _TablePlan,
    table: str,
    key: str,
    before: Mapping[str, Any],
    ours: Mapping[str, Any],
    theirs: Mapping[str, Any],
    row: Mapping[str, Any],
    on_conflict: str,
    conflicts: list[dict[str, Any]],
) -> None:
    """A row modified on both sides: theirs' changed columns onto ours, cell by cell."""
    merged = dict(ours)
    for column in row["changed"]:
        value = theirs.get(column)
        if column in (row["changed_ours"] or []) and not _same(ours.get(column), value):
            c = _conflict(
                table,
                key,
                column,
                "cell",
                _cell(before.get(column)),
                _cell(ours.get(column)),
                _cell(value),
            )
            c["resolved"] = on_conflict
            conflicts.append(c)
            if on_conflict != "theirs":
                continue
        merged[column] = value
    if not _same(merged, ours):
        plan.upserts.append(merged)


def _take(plan: _TablePlan, key: str, change: str, after: Mapping[str, Any] | None) -> None:
    if change == "deleted":
        plan.deletes.append(key)
    else:
        assert after is not None
        plan.upserts.append(dict(after))


def _labels_keep_their_frames(st: Stage, plans: list[_TablePlan]) -> None:
    """Refuse frames the merge deletes that labels or predictions it keeps still use."""
    gone = [k for p in plans if p.table == FRAMES for k in p.deletes]
    if not gone:
        return
    frames = pl.Series("frame_id", gone, dtype=pl.String)
    left = st.current_by(LABELS, "frame_id", frames)
    if left.is_empty():
        return
    detail = "the other side deleted this label's frame"
    raise ValidationError(
        LABELS,
        [
            RowError("missing_frame", label_id, "frame_id", frame_id, detail)
            for label_id, frame_id in left.select("label_id", "frame_id").iter_rows()
        ],
    )


def _merge_pins(
    base: Commit, ours: Commit, theirs: Commit, on_conflict: str, conflicts: list[dict[str, Any]]
) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, pin in theirs.pins.items():
        was, mine = base.pins.get(name), ours.pins.get(name)
        if pin in (was, mine):
            continue
        if mine is None or mine == was:
            out[name] = pin
            continue
        c = _conflict(f"{INFERENCES_PREFIX}{name}", None, None, "pin", _cell(was), _cell(mine),
                      _cell(pin))  # fmt: skip
        c["resolved"] = on_conflict
        conflicts.append(c)
        if on_conflict == "theirs":
            out[name] = pin
    return out


def _conflict(
    table: str,
    key: str | None,
    column: str | None,
    kind: str,
    base: str | None,
    ours: str | None,
    theirs: str | None,
) -> dict[str, Any]:
    return {
        "table": table,
        "key": key,
        "column": column,
        "kind": kind,
        "base": base,
        "ours": ours,
        "theirs": theirs,
        "resolved": "fail",
    }


def _conflict_frame(conflicts: list[dict[str, Any]]) -> pl.DataFrame:
    rows = [{k: c.get(k) for k in CONFLICT_SCHEMA} for c in conflicts]
    return pl.DataFrame(rows, schema=CONFLICT_SCHEMA)


def _struct_schema(change: pl.DataFrame) -> dict[str, pl.DataType]:
    dtype = change.schema["after"]
    assert isinstance(dtype, pl.Struct)
    return {f.name: f.dtype() if isinstance(f.dtype, type) else f.dtype for f in dtype.fields}


def _same(a: Any, b: Any) -> bool:
    return _cell(a) == _cell(b)


def _row(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else row_json(dict(value))


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return row_json(dict(value))
    return json.dumps(value, sort_keys=True, default=str)
