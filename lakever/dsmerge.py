"""Merging datasets: several sources into one, class maps checked, frames deduplicated.

`merge_datasets` makes a new dataset from the union of several sources (names,
`Dataset` handles at their head, or `View`s at a ref); `Dataset.merge_from`
adds sources to an existing dataset, which counts as the first source. Both
make one commit that records every source, its id and its commit.

- **Class maps.** After the optional per-source remapping (`class_map`),
  every source must have the same classes; otherwise `ClassMapMismatchError`
  lists, per class, which sources have it. The result's class map is the
  union in source order. Labels and predictions carry the remapped classes.
- **Rows.** Per table and key, rows equal in every column in several sources
  are one row (counted in `deduplicated`). The same key with different
  content is a *collision*: ``"error"`` raises `MergeConflictError` listing
  them all (nothing is written), ``"skip"`` keeps the first source's row,
  ``"suffix"`` renames the later rows' keys to ``<key>-<source>`` (and a
  renamed frame's labels and predictions from that source follow it).
- Inference sets of the same name merge like labels; a merged set is pinned
  to the merge commit.

A new dataset is hidden until its commit is published (`lakever._building`):
a killed merge leaves no dataset, or the whole one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from lakever import _building
from lakever._order import repeated_values
from lakever.commits import ChangeCounts, Commit
from lakever.errors import ClassMapMismatchError, InvalidInputError, MergeConflictError
from lakever.info import DatasetInfo, default_author
from lakever.names import check_dataset_name
from lakever.schema import (
    FRAMES,
    INFERENCES_PREFIX,
    LABELS,
    key_column,
    table_kind,
)

if TYPE_CHECKING:
    from lakever._staging import Stage
    from lakever.catalog import Lake
    from lakever.dataset import Dataset
    from lakever.view import View

ON_COLLISION = ("error", "skip", "suffix")
_MAX_TRIES = 20
OPERATION = "merge-datasets"
_SRC = "__source"

COLLISION_SCHEMA: dict[str, pl.DataType] = {
    "table": pl.String(),
    "key": pl.String(),
    "first": pl.String(),
    "other": pl.String(),
    "resolution": pl.String(),
    "renamed_to": pl.String(),
}
REMAP_SCHEMA: dict[str, pl.DataType] = {
    "source": pl.String(),
    "table": pl.String(),
    "from": pl.String(),
    "to": pl.String(),
    "rows": pl.Int64(),
}


@dataclass(frozen=True)
class DatasetMergeReport:
    """What a merge of datasets did.

    Attributes:
        dataset: the dataset merged into.
        commit: the commit that holds the merge.
        counts: per table, the rows the merge added.
        deduplicated: per table, rows equal in several sources kept once.
        remapped: one row per source, table and class remapped: source,
            table, from, to, rows.
        collisions: one row per key two sources hold with different content:
            table, key, first (the source kept), other, resolution
            ('skipped' or 'renamed'), renamed_to.
    """

    dataset: Dataset
    commit: Commit
    counts: Mapping[str, ChangeCounts]
    deduplicated: Mapping[str, int]
    remapped: pl.DataFrame
    collisions: pl.DataFrame


class _Moved(Exception):
    """The target moved between planning and committing."""


@dataclass(frozen=True)
class _Source:
    name: str
    dataset_id: str | None
    view: View

    @property
    def commit(self) -> Commit:
        return self.view.commit


def _sources(lake: Lake, items: Sequence[str | Dataset | View]) -> list[_Source]:
    from lakever.dataset import Dataset
    from lakever.view import View

    out = []
    for item in items:
        if isinstance(item, str):
            item = lake.dataset(item)
        if isinstance(item, Dataset):
            item = item.at(item.head)
        if not isinstance(item, View):
            raise InvalidInputError(
                f"a source is a dataset name, a Dataset or a View, not {type(item).__name__}"
            )
        ds = item._dataset
        out.append(_Source(ds.name, ds.info.id, item))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"each source dataset may appear once, got {names}")
    return out


def _class_maps(
    sources: list[_Source], class_map: Mapping[str, Mapping[str, str]]
) -> tuple[tuple[str, ...], dict[str, dict[str, str]]]:
    """The merged class map, and the remapping per source (checked)."""
    names = {s.name for s in sources}
    unknown = sorted(set(class_map) - names)
    if unknown:
        raise InvalidInputError(
            f"class_map names {', '.join(map(repr, unknown))}, which are not among the "
            f"sources ({', '.join(sorted(names))})"
        )
    maps = {s.name: dict(class_map.get(s.name, {})) for s in sources}
    for s in sources:
        stray = sorted(set(maps[s.name]) - set(s.commit.classes))
        if stray:
            raise InvalidInputError(
                f"class_map of {s.name!r} remaps {', '.join(map(repr, stray))}, which its class "
                f"map ({', '.join(s.commit.classes)}) does not have"
            )
    after = {s.name: [maps[s.name].get(c, c) for c in s.commit.classes] for s in sources}
    union = tuple(dict.fromkeys(c for s in sources for c in after[s.name]))
    differences = [
        {
            "class": c,
            "in": [s.name for s in sources if c in after[s.name]],
            "missing_from": [s.name for s in sources if c not in after[s.name]],
        }
        for c in union
        if any(c not in after[s.name] for s in sources)
    ]
    if differences:
        detail = "; ".join(
            f"{d['class']!r} in {', '.join(d['in'])}, not in {', '.join(d['missing_from'])}"
            for d in differences[:10]
        )
        raise ClassMapMismatchError(
            f"the sources' class maps differ: {detail}. Map the differences away with "
            "class_map={source: {from: to}} (CLI: --map SOURCE:FROM=TO)",
            differences,
        )
    return union, maps


@dataclass
class _Plan:
    rows: dict[str, pl.DataFrame] = dataclasses.field(default_factory=dict)  # with _SRC
    deduplicated: dict[str, int] = dataclasses.field(default_factory=dict)
    remapped: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    collisions: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def plan(sources: list[_Source], maps: Mapping[str, Mapping[str, str]], on_collision: str) -> _Plan:
    """The merged rows of every table (each tagged with its source's index)."""
    out = _Plan()
    renamed_frames: dict[int, dict[str, str]] = {}
    tables = [FRAMES, LABELS]
    sets = sorted({t for s in sources for t in s.commit.tables if t.startswith(INFERENCES_PREFIX)})
    for table in [*tables, *sets]:
        parts = []
        for i, s in enumerate(sources):
            if table not in s.commit.table_versions:
                continue
            df = s.view.read(table)
            if table != FRAMES:
                df = _remap(df, s.name, table, maps[s.name], out.remapped)
                moved = renamed_frames.get(i)
                if moved:
                    df = df.with_columns(pl.col("frame_id").replace(moved))
            parts.append(df.with_columns(pl.lit(i, dtype=pl.Int32).alias(_SRC)))
        if not parts:
            continue
        rows, renames = _union(table, parts, [s.name for s in sources], on_collision, out)
        if table == FRAMES:
            renamed_frames = renames
        out.rows[table] = rows
    return out


def _remap(
    df: pl.DataFrame, source: str, table: str, mapping: Mapping[str, str], log: list[dict[str, Any]]
) -> pl.DataFrame:
    if not mapping or "cls" not in df.columns:
        return df
    counts = df.filter(pl.col("cls").is_in(list(mapping)))["cls"].value_counts()
    for cls, n in counts.iter_rows():
        log.append({"source": source, "table": table, "from": cls, "to": mapping[cls], "rows": n})
    return df.with_columns(pl.col("cls").replace(dict(mapping)))


def _union(
    table: str, parts: list[pl.DataFrame], names: list[str], on_collision: str, out: _Plan
) -> tuple[pl.DataFrame, dict[int, dict[str, str]]]:
    """Rows of `parts` deduplicated, collisions resolved; renames per source index."""
    key = key_column(table_kind(table))
    every = pl.concat(parts, how="diagonal_relaxed")
    out.deduplicated[table] = 0
    # Only keys held by several rows can be duplicates or collisions: find
    # them from the key column, and compare whole rows among those alone.
    twice = repeated_values(every.get_column(key))
    if twice.is_empty():
        return every, {}
    repeated = every.get_column(key).is_in(twice.implode())
    every = every.with_row_index("__row")
    content = [c for c in every.columns if c not in (_SRC, "__row")]
    multi = every.filter(repeated)
    unique = multi.unique(subset=content, keep="first", maintain_order=True)
    drop = multi.join(unique.select("__row"), on="__row", how="anti")["__row"]
    out.deduplicated[table] = drop.len()
    clash = unique.filter(pl.col(key).is_duplicated())
    renames: dict[int, dict[str, str]] = {}
    moved: dict[int, str] = {}
    if not clash.is_empty():
        first = clash.group_by(key, maintain_order=True).agg(pl.col(_SRC).min().alias("__first"))
        later = clash.join(first, on=key).filter(pl.col(_SRC) != pl.col("__first"))
        taken = set(every[key].to_list()) if on_collision == "suffix" else set()
        resolution = {"error": "error", "skip": "skipped", "suffix": "renamed"}[on_collision]
        for row, k, src, head in later.select("__row", key, _SRC, "__first").iter_rows():
            renamed = None
            if on_collision == "suffix":
                renamed, n = f"{k}-{names[src]}", 2
                while renamed in taken:
                    renamed, n = f"{k}-{names[src]}-{n}", n + 1
                taken.add(renamed)
                renames.setdefault(src, {})[k] = renamed
                moved[row] = renamed
            out.collisions.append(
                {"table": table, "key": k, "first": names[head], "other": names[src],
                 "resolution": resolution, "renamed_to": renamed}
            )  # fmt: skip
        if on_collision == "skip":
            drop = pl.concat([drop, later["__row"]])
    kept = every.filter(~pl.col("__row").is_in(drop.implode()))
    if moved:
        rows = pl.Series(list(moved), dtype=kept.schema["__row"])
        kept = kept.with_columns(
            pl.when(pl.col("__row").is_in(rows.implode()))
            .then(pl.col("__row").replace_strict(moved, default=None, return_dtype=pl.String))
            .otherwise(pl.col(key))
            .alias(key)
        )
    return kept.drop("__row"), renames


def _check_collisions(p: _Plan, on_collision: str) -> None:
    if on_collision != "error" or not p.collisions:
        return
    frame = pl.DataFrame(p.collisions, schema=COLLISION_SCHEMA)
    detail = "; ".join(
        f"{c['table']} {c['key']!r} ({c['first']} vs {c['other']})" for c in p.collisions[:5]
    )
    more = f" and {len(p.collisions) - 5} more" if len(p.collisions) > 5 else ""
    raise MergeConflictError(
        f"{len(p.collisions)} key(s) hold different rows in different sources: {detail}{more}; "
        "nothing was written. Pass on_collision='skip' (keep the first source's row) or "
        "'suffix' (rename the later rows)",
        frame,
    )


def _check_on_collision(on_collision: str) -> None:
    if on_collision not in ON_COLLISION:
        raise InvalidInputError(
            f"on_collision must be one of {', '.join(ON_COLLISION)}, got {on_collision!r}"
        )


def _operation(
    p: _Plan, classes: tuple[str, ...], sources: list[_Source], *, skip_first: bool
) -> Any:
    """The staging step that puts the merged rows (those of the first source too unless skipped)."""

    def op(st: Stage) -> None:
        st.classes = classes
        st.meta[OPERATION] = {
            "sources": [
                {"dataset": s.name, "id": s.dataset_id, "seq": s.commit.seq, "commit": s.commit.id}
                for s in sources
            ]
        }
        for table, rows in p.rows.items():
            if skip_first:
                rows = rows.filter(pl.col(_SRC) != 0)
            rows = st.validate(table, rows.drop(_SRC))
            if rows.is_empty():
                continue
            if table.startswith(INFERENCES_PREFIX):
                name = table[len(INFERENCES_PREFIX) :]
                st.pins[name] = st.next_seq
                st.require_frames(table, rows, pinned=st.pins[name])
            elif table != FRAMES:
                st.require_frames(table, rows)
            st.put(table, rows)

    return op


def _report(ds: Dataset, commit: Commit, p: _Plan) -> DatasetMergeReport:
    return DatasetMergeReport(
        dataset=ds,
        commit=commit,
        counts=dict(commit.counts),
        deduplicated=dict(p.deduplicated),
        remapped=pl.DataFrame(p.remapped, schema=REMAP_SCHEMA),
        collisions=pl.DataFrame(p.collisions, schema=COLLISION_SCHEMA),
    )


def merge_datasets(
    lake: Lake,
    sources: Sequence[str | Dataset | View],
    into: str,
    *,
    class_map: Mapping[str, Mapping[str, str]] | None = None,
    on_collision: str = "error",
    project: str | None = None,
    tags: Sequence[str] = (),
    description: str = "",
    creator: str | None = None,
) -> DatasetMergeReport:
    """See `Lake.merge_datasets`."""
    _check_on_collision(on_collision)
    check_dataset_name(into)
    if not sources:
        raise InvalidInputError("merge_datasets needs at least one source")
    found = _sources(lake, sources)
    classes, maps = _class_maps(found, class_map or {})
    p = plan(found, maps, on_collision)
    _check_collisions(p, on_collision)
    author = creator or default_author(lake.root)
    info = DatasetInfo.new(
        into,
        project=project,
        description=description,
        tags=tuple(tags),
        creator=author,
        classes=classes,
    )
    origin = [{"dataset": s.name, "id": s.dataset_id, "seq": s.commit.seq} for s in found]
    info = dataclasses.replace(info, origin={OPERATION: origin})
    build = _building.Build(lake, info)
    with build as ds:
        ds._initialize()
        commit = ds._runner.run(
            [_operation(p, classes, found, skip_first=False)],
            message=f"merge datasets {', '.join(s.name for s in found)}",
            author=author,
            operation=OPERATION,
        )
        build.finish()
    return _report(lake.dataset(into), commit, p)


def merge_from(
    ds: Dataset,
    sources: Sequence[str | Dataset | View],
    *,
    class_map: Mapping[str, Mapping[str, str]] | None = None,
    on_collision: str = "error",
    message: str | None = None,
    author: str | None = None,
) -> DatasetMergeReport:
    """See `Dataset.merge_from`."""
    _check_on_collision(on_collision)
    if not sources:
        raise InvalidInputError("merge_from needs at least one source")
    lake = ds._lake
    if lake is None:
        raise InvalidInputError(f"open {ds.name!r} with lake.dataset() to merge into it")
    for _ in range(_MAX_TRIES):
        found = _sources(lake, [ds.at(ds.head), *sources])
        classes, maps = _class_maps(found, class_map or {})
        p = plan(found, maps, on_collision)
        _check_collisions(p, on_collision)
        head = found[0].commit

        def unchanged(st: Stage, head: Commit = head) -> None:
            if st.head.id != head.id:
                raise _Moved  # rows written meanwhile may collide: plan again

        try:
            commit = ds._runner.run(
                [unchanged, _operation(p, classes, found, skip_first=True)],
                message=message or f"merge datasets {', '.join(s.name for s in found[1:])}",
                author=author or default_author(ds.root),
                operation=OPERATION,
            )
        except _Moved:
            continue
        return _report(ds, commit, p)
    raise MergeConflictError(
        f"branch {ds.branch_name!r} of {ds.name!r} kept moving while merging into it; retry",
        pl.DataFrame(schema=COLLISION_SCHEMA),
    )
