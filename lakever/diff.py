"""Diffs and change summaries between two versions of a dataset (or of two datasets).

A `Diff` compares every table present on either side: frames, labels and each
inference set, including sets created or dropped in between. Within one
dataset it reads the Change Data Feed between the two versions, so its cost
follows the size of the change; across datasets it compares the tables in
full. Both give identical results.

Modified means: the same key on both sides with different values. A row
rewritten with identical values (restore, re-upload, delete and re-add of the
same row) is not a change. `diff(a, b)` and `diff(b, a)` mirror each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from lakever import _changes
from lakever.commits import ChangeCounts, Commit
from lakever.errors import TableNotFoundError
from lakever.schema import key_column, table_kind

if TYPE_CHECKING:
    from lakever.dataset import Dataset
    from lakever.storage import Location
    from lakever.view import View

GEOMETRY = ("x", "y", "w", "h")


@dataclass(frozen=True)
class ClassChanges:
    """Label changes per class.

    Attributes:
        by_class: one row per class: added, deleted, geometry_modified (box
            changed, class kept), attributes_modified (other columns only),
            reclassified_from (labels that left the class), reclassified_to
            (labels that joined it).
        transitions: from_cls, to_cls, count: every class change.
    """

    by_class: pl.DataFrame
    transitions: pl.DataFrame


class Diff:
    """What changed between two versions: counts, rows and class changes per table.

    Example:
        >>> d = ds.diff("v1", "v2")  # doctest: +SKIP
        >>> d.summary()  # doctest: +SKIP
        >>> d.rows("labels").filter(pl.col("change") == "modified")  # doctest: +SKIP
    """

    def __init__(self, a: View, b: View) -> None:
        self.a = a
        self.b = b
        self._same = a.dataset.root.uri == b.dataset.root.uri
        self._rows: dict[str, pl.DataFrame] = {}

    def __repr__(self) -> str:
        return (
            f"Diff({self.a.dataset.name}@{self.a.commit.seq} -> "
            f"{self.b.dataset.name}@{self.b.commit.seq})"
        )

    @property
    def commits(self) -> tuple[Commit, Commit]:
        """The two commits compared (from, to)."""
        return self.a.commit, self.b.commit

    @property
    def tables(self) -> list[str]:
        """Every table present on either side."""
        return sorted(set(self.a.tables) | set(self.b.tables))

    def rows(self, table: str) -> pl.DataFrame:
        """Changed rows of one table.

        Returns:
            The key column, `change` ('added' | 'deleted' | 'modified'),
            `changed` (list of the columns whose values differ) and the whole
            row `before` and `after` as structs (null where the row is absent).
        """
        if table in self._rows:
            return self._rows[table]
        key = key_column(table_kind(table))
        if table not in self.tables:
            raise TableNotFoundError(
                f"table {table!r} exists on neither side of {self!r}; "
                f"tables: {', '.join(self.tables)}"
            )
        loc_a, va = _side(self.a, table)
        loc_b, vb = _side(self.b, table)
        if self._feed(table):
            change = _changes.table_change(loc_a, key, va, vb)
        else:
            change = _changes.full_change(loc_a, va, loc_b, vb, key)
        self._rows[table] = change
        return change

    def _feed(self, table: str) -> bool:
        """Whether both sides are versions of one table (so its change feed may serve)."""
        return self._same and table not in self.a.sources and table not in self.b.sources

    def counts(self) -> dict[str, ChangeCounts]:
        """Rows added, modified and deleted per table (counted from the feed, no rows built)."""
        out = {}
        for t in self.tables:
            if t in self._rows or not self._feed(t):
                out[t] = _changes.counts(self.rows(t))
                continue
            va = self.a.commit.table_versions.get(t)
            vb = self.b.commit.table_versions.get(t)
            key = key_column(table_kind(t))
            out[t] = _changes.table_counts(self.a.dataset.table_location(t), key, va, vb)
        return out

    def summary(self) -> pl.DataFrame:
        """One row per table: table, added, deleted, modified."""
        return pl.DataFrame(
            [
                {"table": t, "added": c.added, "deleted": c.deleted, "modified": c.modified}
                for t, c in self.counts().items()
            ],
            schema={
                "table": pl.String,
                "added": pl.Int64,
                "deleted": pl.Int64,
                "modified": pl.Int64,
            },
        )

    def class_changes(self, table: str = "labels") -> ClassChanges:
        """Label (or inference) changes per class, with every class transition."""
        if table_kind(table) == "frames":
            raise ValueError("class changes are about labels or inference sets, not frames")
        rows = self.rows(table) if table in self.tables else None
        if rows is None or rows.is_empty():
            return ClassChanges(_empty_by_class(), _empty_transitions())
        flat = rows.select(
            "change",
            "changed",
            pl.col("before").struct.field("cls").alias("from_cls"),
            pl.col("after").struct.field("cls").alias("to_cls"),
        )
        modified = flat.filter(pl.col("change") == "modified")
        reclass = modified.filter(pl.col("from_cls") != pl.col("to_cls"))
        kept = modified.filter(pl.col("from_cls") == pl.col("to_cls"))
        geometry = kept.filter(
            pl.col("changed").list.eval(pl.element().is_in(list(GEOMETRY))).list.any()
        )
        attributes = kept.filter(
            ~pl.col("changed").list.eval(pl.element().is_in(list(GEOMETRY))).list.any()
        )
        parts = [
            flat.filter(pl.col("change") == "added").group_by(cls="to_cls").agg(added=pl.len()),
            flat.filter(pl.col("change") == "deleted")
            .group_by(cls="from_cls")
            .agg(deleted=pl.len()),
            geometry.group_by(cls="from_cls").agg(geometry_modified=pl.len()),
            attributes.group_by(cls="from_cls").agg(attributes_modified=pl.len()),
            reclass.group_by(cls="from_cls").agg(reclassified_from=pl.len()),
            reclass.group_by(cls="to_cls").agg(reclassified_to=pl.len()),
        ]
        by_class = pl.concat([p.select("cls") for p in parts]).unique()
        for p in parts:
            by_class = by_class.join(p, on="cls", how="left")
        by_class = by_class.fill_null(0).sort("cls").select(_empty_by_class().columns)
        by_class = by_class.cast({c: pl.Int64 for c in by_class.columns if c != "cls"})
        transitions = (
            reclass.group_by("from_cls", "to_cls")
            .agg(count=pl.len().cast(pl.Int64))
            .sort("count", "from_cls", "to_cls", descending=[True, False, False])
        )
        return ClassChanges(by_class, transitions)


def _empty_by_class() -> pl.DataFrame:
    cols = ["added", "deleted", "geometry_modified", "attributes_modified",
            "reclassified_from", "reclassified_to"]  # fmt: skip
    return pl.DataFrame(schema={"cls": pl.String, **{c: pl.Int64 for c in cols}})


def _empty_transitions() -> pl.DataFrame:
    return pl.DataFrame(schema={"from_cls": pl.String, "to_cls": pl.String, "count": pl.Int64})


def diff(a: View | Dataset, b: View | Dataset) -> Diff:
    """Compare two versions, of one dataset or of two (a clone and its source, say).

    Args:
        a: the 'from' side: a view (`ds.at(ref)`) or a dataset (its HEAD).
        b: the 'to' side.
    """
    return Diff(_as_view(a), _as_view(b))


def _as_view(x: View | Dataset) -> View:
    from lakever.view import View

    if isinstance(x, View):
        return x
    return x.at("HEAD")


def _side(view: View, table: str) -> tuple[Location, int | None]:
    """Where and at which version a side of a diff reads `table`."""
    if table in view.sources:
        return view.sources[table]
    return view.dataset.table_location(table), view.commit.table_versions.get(table)
