"""Staging: the net effect of a commit's operations on each table.

A commit replays its operations (upsert, delete, replace, ...) against the
HEAD it is based on. `Stage` keeps, per table, the rows put and the keys
deleted so far, answers "what are the current rows" by overlaying them on the
base version, and finally reduces everything to a `TableChange`: the rows to
insert, the rows that really changed, and the keys to delete. Rows re-sent
with identical values drop out here, so they cost nothing downstream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from lakever import _delta, _deltalog, _feed
from lakever._order import distinct
from lakever.commits import ChangeCounts, Commit
from lakever.errors import (
    InvalidInputError,
    RowError,
    RowNotFoundError,
    ValidationError,
    VersionUnavailableError,
)
from lakever.schema import key_column, prepare_rows, table_kind
from lakever.storage import Location

OP_COLUMN = "_lakever_op"


@dataclass
class TableChange:
    """What one commit does to one table."""

    table: str
    key: str
    inserts: pl.DataFrame
    updates: pl.DataFrame
    deletes: pl.DataFrame  # base rows of deleted keys
    touched_base: pl.DataFrame  # base rows of every touched key
    restore_to: int | None = None  # revert: make the table equal this version
    drop: bool = False  # revert: the table does not exist at the target
    replace: pl.DataFrame | None = None  # repair: the table's whole new content
    counts: ChangeCounts = field(default_factory=ChangeCounts)
    # key, file and position of every base row updated or deleted (merge-on-read)
    positions: pl.DataFrame = field(default_factory=pl.DataFrame)
    positions_version: int = -1  # the table version the positions hold for
    purge: bool = False  # optimize: rewrite the files carrying deletion vectors, same rows
    adopt: Any = None  # a distributed write: staged files added as they are (writer.Adoption)

    @property
    def is_empty(self) -> bool:
        """Whether the change leaves the table as it was."""
        if self.drop or self.restore_to is not None or self.replace is not None or self.purge:
            return False
        if self.adopt is not None:
            return False
        return self.inserts.is_empty() and self.updates.is_empty() and self.deletes.is_empty()


class Stage:
    """Rows put and deleted per table on top of one base commit."""

    def __init__(
        self,
        head: Commit,
        table_location: Callable[[str], Location],
        commit_at: Callable[[int], Commit] | None = None,
        *,
        next_seq: int | None = None,
    ) -> None:
        self.head = head
        #: the seq the commit will take (past the newest of any branch)
        self.next_seq = head.seq + 1 if next_seq is None else next_seq
        self._commit_at = commit_at
        self.classes: tuple[str, ...] = head.classes
        self.pins: dict[str, int] = dict(head.pins)
        self.meta: dict[str, Any] = {}  # recorded in the commit (an upload's progress)
        self._loc = table_location
        self._puts: dict[str, pl.DataFrame] = {}
        self._deletes: dict[str, set[str]] = {}
        self._base: dict[str, pl.DataFrame] = {}
        self._looked_up: dict[str, pl.Series] = {}  # keys whose base rows are in _base
        self._restores: dict[str, int | None] = {}
        self._purges: set[str] = set()
        self._adopts: dict[str, tuple[Any, ChangeCounts]] = {}
        self._replaces: dict[str, tuple[pl.DataFrame, ChangeCounts]] = {}
        self._schemas: dict[str, dict[str, pl.DataType]] = {}
        self._positions: dict[str, list[pl.DataFrame]] = {}
        self._checked: dict[str, pl.Series] = {}  # keys whose base existence is known...
        self._exists: dict[str, pl.Series] = {}  # ...and those of them that exist
        self._positions_version: dict[str, int] = {}

    # -- the base version ------------------------------------------------------

    def base_version(self, table: str) -> int | None:
        """The Delta version of `table` at the base commit (None if absent)."""
        return self.head.table_versions.get(table)

    def schema(self, table: str) -> dict[str, pl.DataType]:
        """Column types of the table: base version plus columns staged since."""
        if table not in self._schemas:
            v = self.base_version(table)
            self._schemas[table] = {} if v is None else _delta.schema_at(self._loc(table), v)
        out = dict(self._schemas[table])
        staged = self._puts.get(table)
        if staged is not None:
            for name, dtype in staged.schema.items():
                out.setdefault(name, dtype)
        return out

    def _at_base(self, table: str, read: Callable[[int], pl.DataFrame]) -> tuple[pl.DataFrame, int]:
        """`read(version)` at the base version of `table`; the version it was read at.

        If an outside OPTIMIZE + forced VACUUM took the base version's files
        (not its rows), the same rows are read from the version that holds them.
        """
        v = self.base_version(table)
        assert v is not None
        try:
            return read(v), v
        except VersionUnavailableError:
            later = _delta.same_rows_later(self._loc(table), v)
            if later is None:
                raise
            return read(later), later

    def _lookup(
        self, table: str, column: str, values: pl.Series, *, key_only: bool = False
    ) -> tuple[pl.DataFrame, int]:
        """Base rows whose `column` is one of `values`, and the version they were read at."""
        loc, schema = self._loc(table), self.schema(table)
        return self._at_base(
            table,
            lambda v: _feed.lookup(
                loc, v, column, values, table=table, schema=schema, key_only=key_only
            ),
        )

    def _scan_base(self, table: str, column: str, values: pl.Series) -> pl.DataFrame:
        """Base rows whose `column` is one of `values`, read from the files stats allow."""
        if self.base_version(table) is None or values.is_empty():
            return pl.DataFrame(schema=self.schema(table))
        found, v = self._lookup(table, column, values)
        key = key_column(table_kind(table))
        if self._positions_version.setdefault(table, v) != v:
            self._positions_version[table] = -1  # mixed versions: the writer looks again
        self._positions.setdefault(table, []).append(
            found.select(key, _feed.FILE_COLUMN, _feed.POS_COLUMN)
        )
        return found.drop(_feed.FILE_COLUMN, _feed.POS_COLUMN)

    def base_is_empty(self, table: str) -> bool:
        """Whether the table has no rows at the base (absent, or no live files)."""
        v = self.base_version(table)
        return v is None or not _deltalog.files_at(self._loc(table), v).adds

    def base_rows(self, table: str, keys: pl.Series) -> pl.DataFrame:
        """Base rows of the given keys (fetched once, then cached)."""
        if self.base_is_empty(table):
            return pl.DataFrame(schema=self.schema(table))  # a bulk import checks only its batch
        key = key_column(table_kind(table))
        seen = self._looked_up.get(table)
        needed = keys if seen is None else keys.filter(~keys.is_in(seen.implode()))
        if not needed.is_empty():
            self._remember(table, self._scan_base(table, key, needed), looked_up=needed)
        cached = self._base.get(table)
        if cached is None:
            return pl.DataFrame(schema=self.schema(table))
        return cached.filter(pl.col(key).is_in(keys.implode()))

    def _remember(
        self, table: str, rows: pl.DataFrame, *, looked_up: pl.Series | None = None
    ) -> None:
        """Cache base rows; `looked_up` keys are known to be absent if not among them."""
        key = key_column(table_kind(table))
        found = rows.get_column(key, default=None)
        parts = [s for s in (self._looked_up.get(table), found, looked_up) if s is not None]
        self._looked_up[table] = pl.concat([p.rename(key) for p in parts]).unique()
        if rows.is_empty():
            return
        prev = self._base.get(table)
        if prev is None:
            self._base[table] = rows
        else:
            new = rows.filter(~pl.col(key).is_in(prev[key].implode()))
            self._base[table] = pl.concat([prev, new], how="diagonal_relaxed")

    # -- current rows (base overlaid with staged changes) ----------------------

    def _staged_keys(self, table: str) -> pl.Series:
        key = key_column(table_kind(table))
        parts = [pl.Series(key, sorted(self._deletes.get(table, ())), dtype=pl.String)]
        puts = self._puts.get(table)
        if puts is not None:
            parts.append(puts[key])
        return pl.concat(parts)

    def current_by(self, table: str, column: str, values: pl.Series) -> pl.DataFrame:
        """Current rows of `table` whose `column` is one of `values`."""
        key = key_column(table_kind(table))
        if column == key or self.base_is_empty(table):
            base = self.base_rows(table, values)
        else:
            base = self._scan_base(table, column, values)
            self._remember(table, base)
        staged = self._staged_keys(table)
        if not staged.is_empty():
            base = base.filter(~pl.col(key).is_in(staged.implode()))
        parts = [base]
        puts = self._puts.get(table)
        if puts is not None:
            parts.append(puts.filter(pl.col(column).is_in(values.implode())))
        return pl.concat(parts, how="diagonal_relaxed")

    def _base_has(self, table: str, keys: pl.Series) -> pl.Series:
        """Which of `keys` exist at the base (reading only the key column of what is unknown)."""
        key = key_column(table_kind(table))
        if self.base_is_empty(table) or keys.is_empty():
            return pl.Series(key, [], dtype=pl.String)
        known = [s for s in (self._looked_up.get(table), self._checked.get(table)) if s is not None]
        unknown = keys.unique()
        if known:
            unknown = unknown.filter(~unknown.is_in(pl.concat(known).implode()))
        if not unknown.is_empty():
            found = self._lookup(table, key, unknown, key_only=True)[0][key]
            self._exists[table] = pl.concat([self._exists.get(table, found.clear()), found])
            self._checked[table] = pl.concat([self._checked.get(table, unknown.clear()), unknown])
        present = [s for s in (self._exists.get(table),) if s is not None]
        base = self._base.get(table)
        if base is not None:
            present.append(base[key])
        if not present:
            return pl.Series(key, [], dtype=pl.String)
        hits = pl.concat(present).rename(key).to_frame()
        return keys.rename(key).to_frame().join(hits, on=key, how="semi").get_column(key)

    def base_keys_among(self, table: str, keys: pl.Series) -> pl.Series:
        """Which of `keys` (millions, say) exist at the base, ignoring staged changes.

        One read of the key column of the files whose statistics overlap the
        keys' range, and one join: for a table nothing else in this commit
        touches (a distributed write).
        """
        key = key_column(table_kind(table))
        if self.base_is_empty(table) or keys.is_empty():
            return pl.Series(key, [], dtype=pl.String)
        lo, hi = str(keys.min()), str(keys.max())
        loc = self._loc(table)
        have = self._at_base(table, lambda v: _feed.keys_between(loc, v, key, lo, hi, table=table))[
            0
        ]
        probe = keys.rename(key).to_frame().cast({key: have.schema[key]})
        return probe.join(have, on=key, how="semi").get_column(key)

    def existing_keys(self, table: str, keys: pl.Series) -> pl.Series:
        """Which of `keys` exist in the current state of `table` (base, then staged changes)."""
        key = key_column(table_kind(table))
        deleted = self._deletes.get(table, set())
        base = self._base_has(table, keys)
        if deleted:
            base = base.filter(~base.is_in(list(deleted)))
        parts = [base.rename(key)]
        puts = self._puts.get(table)
        if puts is not None:
            parts.append(puts[key].filter(puts[key].is_in(keys.implode())))
        return pl.concat(parts).unique()

    # -- operations -------------------------------------------------------------

    def validate(self, table: str, rows: pl.DataFrame, *, partial: bool = False) -> pl.DataFrame:
        """Validate a batch against the class map and the table's current column types."""
        return prepare_rows(
            table, rows, classes=self.classes, existing=self.schema(table), partial=partial
        )

    def put(
        self,
        table: str,
        rows: pl.DataFrame,
        *,
        require: bool | None = None,
    ) -> None:
        """Stage rows; columns a row lacks keep their current values.

        Args:
            table: target table.
            rows: validated rows, with the key column.
            require: True -> every key must exist; False -> none may; None -> either.
        """
        key = key_column(table_kind(table))
        if rows.is_empty():
            return
        current = self.current_by(table, key, rows[key])
        if require is False and not current.is_empty():
            dup = rows.filter(pl.col(key).is_in(current[key].implode()))
            raise ValidationError(
                table,
                [
                    RowError("exists", k, key, k, "already exists; use upsert to change it")
                    for k in dup[key].to_list()
                ],
            )
        if require is True:
            missing = rows.filter(~pl.col(key).is_in(current[key].implode()))[key].to_list()
            if missing:
                raise RowNotFoundError(
                    f"{len(missing)} key(s) not found in {table!r}: "
                    f"{', '.join(map(repr, missing[:20]))}; nothing was written"
                )
        absent = [c for c in current.columns if c not in rows.columns]
        if absent and not current.is_empty():
            fill = current.select([key, *absent])
            rows = rows.join(fill, on=key, how="left")
        prev = self._puts.get(table)
        if prev is not None:
            prev = prev.filter(~pl.col(key).is_in(rows[key].implode()))
            rows = pl.concat([prev, rows], how="diagonal_relaxed")
        self._puts[table] = rows
        deleted = self._deletes.get(table)
        if deleted:  # a put revives keys deleted earlier in the same commit
            revived = rows.filter(pl.col(key).is_in(list(deleted)))[key].to_list()
            deleted.difference_update(revived)

    def delete(self, table: str, keys: Iterable[str], *, missing_ok: bool = False) -> set[str]:
        """Stage deletion of keys; return those that existed."""
        key = key_column(table_kind(table))
        wanted = pl.Series(key, list(dict.fromkeys(keys)), dtype=pl.String)
        existing = set(self.existing_keys(table, wanted).to_list())
        missing = [k for k in wanted.to_list() if k not in existing]
        if missing and not missing_ok:
            raise RowNotFoundError(
                f"cannot delete {len(missing)} key(s) not found in {table!r}: "
                f"{', '.join(map(repr, missing[:20]))}; nothing was written "
                "(pass missing_ok=True to ignore them)"
            )
        puts = self._puts.get(table)
        if puts is not None:
            self._puts[table] = puts.filter(~pl.col(key).is_in(list(existing)))
        self._deletes.setdefault(table, set()).update(existing)
        return existing

    def require_frames(self, table: str, rows: pl.DataFrame, *, pinned: int | None = None) -> None:
        """Refuse rows whose frame does not exist.

        Args:
            table: the table the rows are for (for messages).
            rows: rows with a frame_id column.
            pinned: for inference sets, the seq they are pinned to: a frame that
                existed there counts too, even if deleted since.
        """
        absent = self._absent_frames(rows["frame_id"])
        if absent.is_empty():
            return
        where = "in the frames table"
        if pinned is not None:
            where = f"now or at commit {pinned}, the version this inference set is pinned to"
            if pinned < self.next_seq and self._commit_at is not None:
                commit = self._commit_at(pinned)
                loc = self._loc("frames")
                version = commit.table_versions["frames"]
                schema = _delta.schema_at(loc, version)
                found = _feed.lookup(
                    loc, version, "frame_id", absent, table="frames", schema=schema
                )["frame_id"]
                absent = absent.filter(~absent.is_in(found.implode()))
        bad = rows.filter(pl.col("frame_id").is_in(absent.implode()))
        if not bad.is_empty():
            key = key_column(table_kind(table))
            raise ValidationError(
                table,
                [
                    RowError(
                        "missing_frame", k, "frame_id", f, f"no frame with this frame_id {where}"
                    )
                    for k, f in zip(bad[key].to_list(), bad["frame_id"].to_list(), strict=True)
                ],
            )

    def _absent_frames(self, frame_ids: pl.Series) -> pl.Series:
        """The distinct values of `frame_ids` that name no frame in the current state."""
        if frame_ids.len() <= _feed.PUSHDOWN_KEYS:
            wanted = frame_ids.unique()
            present = self.existing_keys("frames", wanted)
            return wanted.filter(~wanted.is_in(present.implode()))
        # A large batch (a bulk import): read the frame ids in its range once and
        # anti-join, instead of hashing millions of values into sets twice.
        parts = [pl.Series("frame_id", [], dtype=pl.String)]
        if not self.base_is_empty("frames"):
            lo, hi = str(frame_ids.min()), str(frame_ids.max())
            loc = self._loc("frames")
            base = self._at_base(
                "frames", lambda v: _feed.keys_between(loc, v, "frame_id", lo, hi, table="frames")
            )[0]["frame_id"]
            deleted = self._deletes.get("frames")
            parts.append(base.filter(~base.is_in(list(deleted))) if deleted else base)
        puts = self._puts.get("frames")
        if puts is not None:
            parts.append(puts["frame_id"])
        existing = pl.DataFrame({"frame_id": pl.concat(parts)})
        asked = pl.DataFrame({"frame_id": distinct(frame_ids)})
        return asked.join(existing, on="frame_id", how="anti")["frame_id"]

    def restore_table(self, table: str, version: int | None) -> None:
        """Make `table` equal its content at `version` (None: the table is dropped)."""
        self._restores[table] = version

    def replace_table(self, table: str, rows: pl.DataFrame, counts: ChangeCounts) -> None:
        """Make `rows` the whole content of `table` (repair), with the given counts."""
        self._replaces[table] = (rows, counts)

    def purge_table(self, table: str) -> None:
        """Rewrite the files of `table` that carry deletion vectors; the rows stay the same."""
        self._purges.add(table)

    # -- the result -------------------------------------------------------------

    def touched_tables(self) -> list[str]:
        """Tables this stage changes, sorted (the order claims are taken in)."""
        touched = set(self._puts) | set(self._deletes) | set(self._restores) | set(self._replaces)
        return sorted(touched | self._purges | set(self._adopts))

    def adopt(self, table: str, adoption: Any, counts: ChangeCounts) -> None:
        """Stage staged files to be added as they are (`lakever.writer`); alone in its table."""
        if table in self._puts or table in self._deletes:
            raise InvalidInputError(f"a distributed write to {table!r} takes a commit of its own")
        self._adopts[table] = (adoption, counts)

    def changes(
        self, count_restore: Callable[[str, int | None], ChangeCounts]
    ) -> list[TableChange]:
        """Reduce the staged operations to one net change per table."""
        out = []
        for table in self.touched_tables():
            key = key_column(table_kind(table))
            if table in self._adopts:
                adoption, counts = self._adopts[table]
                empty = pl.DataFrame()
                out.append(
                    TableChange(
                        table, key, empty, empty, empty, empty, adopt=adoption, counts=counts
                    )
                )
                continue
            if table in self._replaces:
                rows, counts = self._replaces[table]
                empty = pl.DataFrame()
                out.append(
                    TableChange(table, key, empty, empty, empty, empty, replace=rows, counts=counts)
                )
                continue
            if table in self._restores:
                target = self._restores[table]
                empty = pl.DataFrame()
                change = TableChange(
                    table,
                    key,
                    empty,
                    empty,
                    empty,
                    empty,
                    restore_to=target,
                    drop=target is None,
                    counts=count_restore(table, target),
                )
                if self._restore_changes_something(table, target, change.counts):
                    out.append(change)
                continue
            if table in self._purges and table not in self._puts and table not in self._deletes:
                if self._has_vectors(table):
                    empty = pl.DataFrame()
                    out.append(TableChange(table, key, empty, empty, empty, empty, purge=True))
                continue
            out.append(self._net_change(table, key))
        return [c for c in out if not c.is_empty]

    def _has_vectors(self, table: str) -> bool:
        base = self.base_version(table)
        if base is None:
            return False
        return bool(_deltalog.files_at(self._loc(table), base).masked())

    def _restore_changes_something(
        self, table: str, target: int | None, counts: ChangeCounts
    ) -> bool:
        """Whether restoring `table` to `target` differs from the base at all."""
        base = self.base_version(table)
        if target == base:
            return False
        if counts.total or target is None or base is None:
            return True  # rows differ, or the table appears or disappears
        loc = self._loc(table)
        return _delta.schema_at(loc, target) != _delta.schema_at(loc, base)

    def _net_change(self, table: str, key: str) -> TableChange:
        schema = self.schema(table)
        puts = self._puts.get(table, pl.DataFrame(schema={key: pl.String}))
        puts = _align(puts, schema)
        if self.base_is_empty(table):  # a bulk import: every put is an insert
            empty = puts.clear()
            counts = ChangeCounts(added=puts.height)
            return TableChange(table, key, puts, empty, empty, empty, counts=counts)
        deleted = self._deletes.get(table, set())
        touched = pl.concat([puts[key], pl.Series(key, sorted(deleted), dtype=pl.String)]).unique()
        base = _align(self.base_rows(table, touched), schema)
        in_base = base[key].implode()
        inserts = puts.filter(~pl.col(key).is_in(in_base))
        matched = puts.filter(pl.col(key).is_in(in_base))
        updates = _changed_rows(matched, base, key)
        deletes = base.filter(pl.col(key).is_in(list(deleted)))
        counts = ChangeCounts(added=inserts.height, modified=updates.height, deleted=deletes.height)
        marked = pl.concat([updates[key], deletes[key]]).implode()
        found = self._positions.get(table)
        positions = (
            pl.concat(found).unique(subset=[key]).filter(pl.col(key).is_in(marked))
            if found
            else pl.DataFrame(schema={key: pl.String, _feed.FILE_COLUMN: pl.String})
        )
        return TableChange(
            table,
            key,
            inserts,
            updates,
            deletes,
            base,
            counts=counts,
            positions=positions,
            positions_version=self._positions_version.get(table, -1),
        )


def _align(df: pl.DataFrame, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """Give `df` every column of `schema` (nulls where missing), schema order first."""
    cols = [
        pl.col(n) if n in df.columns else pl.lit(None, dtype=t).alias(n) for n, t in schema.items()
    ]
    cols += [pl.col(n) for n in df.columns if n not in schema]
    return df.select(cols)


def _changed_rows(new: pl.DataFrame, base: pl.DataFrame, key: str) -> pl.DataFrame:
    """Rows of `new` whose values differ from the base row of the same key."""
    if new.is_empty():
        return new
    others = [c for c in new.columns if c != key]
    joined = new.join(base, on=key, how="left", suffix="__base")
    same = pl.lit(True)
    for c in others:
        b = f"{c}__base"
        if b in joined.columns:
            same = same & pl.col(c).eq_missing(pl.col(b))
        else:
            same = same & pl.col(c).is_null()
    return joined.filter(~same).select(new.columns)
