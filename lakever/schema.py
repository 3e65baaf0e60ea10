"""Table schemas, the class map, and validation of incoming rows.

Every batch a user sends passes through `prepare_rows` before anything is
written. It converts the batch to Polars, casts columns where the cast loses
nothing, and checks every rule at once, so a refused batch reports all its bad
rows together in one `ValidationError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl
import pyarrow as pa

from lakever._order import flag_sorted, repeated_values
from lakever.errors import InvalidInputError, RowError, TableNotFoundError, ValidationError

TableKind = Literal["frames", "labels", "inferences"]

FRAMES = "frames"
LABELS = "labels"
INFERENCES_PREFIX = "inferences/"

MEDIA_TYPES = ("image", "video_frame")
UTC_US = pl.Datetime("us", "UTC")


@dataclass(frozen=True)
class Column:
    """A core column: its name, type, and whether every row must have a value."""

    name: str
    dtype: pl.DataType
    required: bool = True


#: A per-row rule: its name, the column it judges, a mask of the rows that
#: break it, and what to tell the user.
Rule = tuple[str, str, pl.Expr, str]


FRAME_COLUMNS: tuple[Column, ...] = (
    Column("frame_id", pl.String()),
    Column("uri", pl.String()),
    Column("media_type", pl.String()),
    Column("width", pl.Int32()),
    Column("height", pl.Int32()),
    Column("group_id", pl.String(), required=False),
    Column("sequence", pl.Int64(), required=False),
    Column("captured_at", UTC_US, required=False),
)

LABEL_COLUMNS: tuple[Column, ...] = (
    Column("label_id", pl.String()),
    Column("frame_id", pl.String()),
    Column("cls", pl.String()),
    Column("x", pl.Float64()),
    Column("y", pl.Float64()),
    Column("w", pl.Float64()),
    Column("h", pl.Float64()),
)

INFERENCE_COLUMNS: tuple[Column, ...] = (*LABEL_COLUMNS, Column("confidence", pl.Float64()))

_CORE: dict[TableKind, tuple[Column, ...]] = {
    "frames": FRAME_COLUMNS,
    "labels": LABEL_COLUMNS,
    "inferences": INFERENCE_COLUMNS,
}


def table_kind(table: str) -> TableKind:
    """Return the kind of a table name ('frames', 'labels' or 'inferences/<set>')."""
    if table == FRAMES:
        return "frames"
    if table == LABELS:
        return "labels"
    if table.startswith(INFERENCES_PREFIX):
        return "inferences"
    raise TableNotFoundError(
        f"unknown table {table!r}: use 'frames', 'labels' or 'inferences/<set name>'"
    )


def core_columns(kind: TableKind) -> tuple[Column, ...]:
    """The core columns of a table kind, in storage order."""
    return _CORE[kind]


def key_column(kind: TableKind) -> str:
    """The primary-key column of a table kind."""
    return "frame_id" if kind == "frames" else "label_id"


def empty_schema(kind: TableKind) -> pa.Schema:
    """The Arrow schema a new table of this kind is created with."""
    df = pl.DataFrame(schema={c.name: c.dtype for c in core_columns(kind)})
    return df.to_arrow().schema


def normalize_classes(classes: Iterable[str]) -> tuple[str, ...]:
    """Validate a class map: non-empty, unique, non-blank strings, order kept."""
    if isinstance(classes, (str, bytes)):
        raise InvalidInputError(
            f"classes must be a list of class names, not the string {classes!r} "
            f"(did you mean [{classes!r}]?)"
        )
    try:
        out = tuple(classes)
    except TypeError:
        raise InvalidInputError(
            f"classes must be a list of class names, got a {type(classes).__name__}: {classes!r}"
        ) from None
    bad = [c for c in out if not isinstance(c, str) or not c.strip()]
    if bad:
        raise InvalidInputError(f"class names must be non-empty strings; got {bad!r}")
    dupes = sorted({c for c in out if out.count(c) > 1})
    if dupes:
        raise InvalidInputError(f"class map lists these classes more than once: {dupes!r}")
    if not out:
        raise InvalidInputError("the class map is empty: give at least one class name")
    return out


def to_polars(data: Any) -> pl.DataFrame:
    """Convert a batch (Polars, Arrow, pandas, list of dicts, dict of lists) to Polars.

    Raises:
        InvalidInputError: the batch is not tabular, or cannot be converted.
    """
    try:
        return _to_polars(data)
    except InvalidInputError:
        raise
    except Exception as exc:
        raise InvalidInputError(
            f"cannot read rows from the {type(data).__name__} batch: {exc}"
        ) from exc


def _to_polars(data: Any) -> pl.DataFrame:
    if isinstance(data, pl.LazyFrame):
        return data.collect()
    if isinstance(data, pl.DataFrame):
        return data
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        if "" in data.schema.names:
            raise InvalidInputError("a column of the Arrow batch has an empty name; name it")
        return pl.DataFrame(pl.from_arrow(data))
    if type(data).__module__.startswith("pandas"):
        try:
            return pl.from_pandas(data)
        except Exception as exc:
            _mixed_pandas_column(data, exc)
            raise
    if isinstance(data, Mapping):
        return pl.DataFrame(dict(data), strict=False)
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        if not data:
            return pl.DataFrame()
        bad = next((r for r in data if not isinstance(r, Mapping)), None)
        if bad is not None:
            raise InvalidInputError(
                f"a list batch must hold one dict per row; found a {type(bad).__name__}: "
                f"{bad!r:.80}"
            )
        return pl.DataFrame(list(data), infer_schema_length=None, strict=False)
    if hasattr(data, "__arrow_c_stream__"):
        return pl.DataFrame(data)
    raise InvalidInputError(
        f"cannot read rows from a {type(data).__name__} ({data!r:.80}): pass a Polars, Arrow "
        "or pandas DataFrame, or a list of dicts"
    )


def _mixed_pandas_column(data: Any, exc: Exception) -> None:
    """Name the column (and a value) of a pandas batch whose values mix Python types."""
    for name in getattr(data, "columns", []):
        column = data[name]
        if str(column.dtype) != "object":
            continue
        values = column.dropna().tolist()
        kinds: dict[type, Any] = {}
        for v in values:
            kinds.setdefault(type(v), v)
        if len(kinds) > 1:
            (first, _), (other, value) = list(kinds.items())[:2]
            raise InvalidInputError(
                f"column {name!r} of the pandas batch mixes {first.__name__} and "
                f"{other.__name__} values (such as {value!r}); give it one type "
                f"(df[{name!r}].astype(str), say): {exc}"
            ) from exc


#: How each Polars type is stored in Delta (which has no unsigned integers, no
#: time-of-day, no durations, no fixed-size lists and microsecond timestamps).
#: Every cast here is lossless: a value that would change is refused row by row.
_WIDER = {
    pl.UInt8: pl.Int16(),
    pl.UInt16: pl.Int32(),
    pl.UInt32: pl.Int64(),
    pl.UInt64: pl.Int64(),  # values above 2**63 - 1 are refused
    pl.Float16: pl.Float32(),
}
_UNSTORABLE = {
    pl.Int128: "128-bit integers have no Delta type; cast to Int64 or Decimal",
    pl.UInt128: "128-bit integers have no Delta type; cast to Int64 or Decimal",
    pl.Time: "Delta has no time-of-day type; store a String ('12:30:00') or Int64 microseconds",
    pl.Duration: "Delta has no duration type; store Int64 microseconds (or seconds)",
    pl.Null: "a new column needs a concrete type (cast it; all-null columns have none)",
    pl.Object: "Python objects cannot be stored; convert them to a concrete type",
}

#: Characters Delta (without column mapping) and Spark refuse in column names.
_BAD_NAME_CHARS = set(" ,;{}()\n\t=")


def storable_type(dtype: Any) -> tuple[pl.DataType | None, str]:
    """The type a user column of `dtype` is stored as, or None and why it cannot be.

    Unsigned integers widen to the next signed type (UInt64 to Int64), Float16
    to Float32, datetimes of any unit to microseconds (UTC if zoned),
    Categorical and Enum to String, fixed-size Arrays to Lists, recursively
    inside Lists and Structs.
    """
    if isinstance(dtype, type):
        dtype = dtype()
    base = dtype.base_type()
    if base in _UNSTORABLE:
        return None, _UNSTORABLE[base]
    if base in _WIDER:
        return _WIDER[base], ""
    if isinstance(dtype, (pl.Categorical, pl.Enum)):
        return pl.String(), ""
    if isinstance(dtype, pl.Datetime):
        return (pl.Datetime("us") if dtype.time_zone is None else UTC_US), ""
    if isinstance(dtype, (pl.List, pl.Array)):
        inner, why = storable_type(dtype.inner)
        return (None, why) if inner is None else (pl.List(inner), "")
    if isinstance(dtype, pl.Struct):
        if not dtype.fields:
            return None, "a struct needs at least one field"
        fields = {}
        for f in dtype.fields:
            inner, why = storable_type(f.dtype)
            if inner is None:
                return None, f"field {f.name!r}: {why}"
            fields[f.name] = inner
        return pl.Struct(fields), ""
    if dtype.is_numeric() or base in (pl.Boolean, pl.String, pl.Binary, pl.Date, pl.Decimal):
        return dtype, ""
    return None, f"type {dtype} has no Delta equivalent"


def _check_names(
    df: pl.DataFrame, core: Iterable[str], existing: Iterable[str], check: _Checker
) -> None:
    """Refuse column names Delta or Spark cannot hold, or that clash by case."""
    known = {n.lower(): n for n in [*core, *existing]}
    seen: dict[str, str] = {}
    for name in df.columns:
        if not name or not name.strip():
            check.batch("column_name", name, None, "column names must not be empty")
        elif _BAD_NAME_CHARS & set(name) or any(ord(ch) < 32 for ch in name):
            check.batch(
                "column_name",
                name,
                None,
                "Delta and Spark refuse spaces, control characters and any of ,;{}()= "
                "in column names; rename it",
            )
        elif name.lower() in known and known[name.lower()] != name:
            check.batch(
                "column_name",
                name,
                None,
                f"differs from column {known[name.lower()]!r} only in case, and Delta "
                "column names are case-insensitive; use the same spelling",
            )
        elif name.lower() in seen:
            check.batch(
                "column_name",
                name,
                None,
                f"clashes with {seen[name.lower()]!r}: names are case-insensitive",
            )
        seen.setdefault(name.lower(), name)


class _Checker:
    """Collects row errors for one batch (with each row's index in its source, when given)."""

    def __init__(self, table: str, df: pl.DataFrame, key: str, index: pl.Series | None) -> None:
        self.table = table
        self.key = key
        self.errors: list[RowError] = []
        self.batch_errors: list[RowError] = []
        self._keys = df[key] if key in df.columns else None
        self._index = index

    def narrow(self, df: pl.DataFrame, index: pl.Series | None) -> None:
        """Follow the batch after rows were dropped from it."""
        self._keys = df[self.key] if self.key in df.columns else None
        self._index = index

    def rows(self, mask: pl.Series, rule: str, column: str, values: pl.Series, detail: str) -> None:
        mask = mask.fill_null(False)
        if not mask.any():
            return  # the common case: no Python objects made for a clean batch
        idx = mask.arg_true()
        keys = [None] * len(idx) if self._keys is None else self._keys.gather(idx).to_list()
        rows = [None] * len(idx) if self._index is None else self._index.gather(idx).to_list()
        for k, v, r in zip(keys, values.gather(idx).to_list(), rows, strict=True):
            key = None if k is None else str(k)
            self.errors.append(RowError(rule, key, column, v, detail, row=r))

    def batch(self, rule: str, column: str | None, value: Any, detail: str) -> None:
        error = RowError(rule, None, column, value, detail)
        self.errors.append(error)
        self.batch_errors.append(error)

    def raise_if_any(self) -> None:
        if self.errors:
            raise ValidationError(self.table, self.errors)


def _lossless_cast(series: pl.Series, target: pl.DataType) -> tuple[pl.Series, pl.Series | None]:
    """Cast a column; return (cast column, mask of rows the cast would change or drop).

    The mask is None when no row can change (the common case, made for free).
    """
    src = series.dtype
    if src == target:
        return series, None
    if target == UTC_US and src == pl.String:
        out = series.str.to_datetime(time_zone="UTC", strict=False, time_unit="us")
        return out, series.is_not_null() & out.is_null()
    if isinstance(target, pl.Datetime) and isinstance(src, pl.Datetime):
        zoned = series
        if target.time_zone == "UTC":
            zoned = (
                series.dt.replace_time_zone("UTC")
                if src.time_zone is None
                else series.dt.convert_time_zone("UTC")
            )
        elif src.time_zone is not None:
            return series, series.is_not_null()  # a zoned time into a naive column
        out = zoned.cast(target)
        return out, series.is_not_null() & (out.cast(zoned.dtype) != zoned).fill_null(True)
    if isinstance(src, pl.Null):
        return series.cast(target), None
    if target.is_numeric() and src == pl.Boolean:
        return series, series.is_not_null()  # True is not 1.0
    if target.is_numeric() and src == pl.String:
        # Text holding numbers (a CSV column, or a COCO field where one value
        # was "a"): each value that parses is kept; only those that do not are
        # refused. Comparing the text back would refuse "1" (1.0 reads "1.0").
        out = series.str.strip_chars().cast(target, strict=False)
        return out, series.is_not_null() & out.is_null()
    try:
        out = series.cast(target, strict=False)
    except Exception:
        return series, series.is_not_null()
    try:
        back = out.cast(src, strict=False)
        changed = series.is_not_null() & (out.is_null() | (back != series).fill_null(True))
    except Exception:
        changed = series.is_not_null() & out.is_null()
    return out, changed


def prepare_rows(
    table: str,
    data: Any,
    *,
    classes: Sequence[str],
    existing: Mapping[str, pl.DataType] | None = None,
    partial: bool = False,
    unique_keys: bool = True,
) -> pl.DataFrame:
    """Validate and normalise one batch for a table; raise on any bad row.

    Args:
        table: 'frames', 'labels' or 'inferences/<set>'.
        data: the rows, in any accepted form.
        classes: the dataset's class map.
        existing: the current column types of the table (user columns keep theirs).
        partial: rows carry the key plus only the columns to change (update_frames).
        unique_keys: refuse keys repeated within the batch (a caller that checks
            keys across several batches at once passes False).

    Returns:
        The batch as a Polars DataFrame with canonical column types.

    Raises:
        ValidationError: naming every bad row, its rule, key and value.
    """
    df = to_polars(data)
    check = _Checker(table, df, key_column(table_kind(table)), None)
    prep = _Preparation(
        table, classes, existing, partial, check, screen=False, unique_keys=unique_keys
    )
    out = prep.run(df)
    check.raise_if_any()
    return out


@dataclass
class Screened:
    """A batch split into the rows that pass every rule and the errors of the rest.

    Attributes:
        rows: the good rows, normalised as `prepare_rows` does.
        index: each good row's index in its source.
        errors: one `RowError` per broken rule, each with its row index.
    """

    rows: pl.DataFrame
    index: pl.Series
    errors: list[RowError]


def screen_rows(
    table: str,
    df: pl.DataFrame,
    *,
    index: pl.Series,
    classes: Sequence[str],
    existing: Mapping[str, pl.DataType] | None = None,
    rules: Sequence[Rule] = (),
) -> Screened:
    """Validate a batch without raising: keep the good rows, report the bad ones.

    A problem of the whole batch (a missing core column, an unstorable column
    type) rejects every row of it, each with that rule.

    Args:
        table: 'frames', 'labels' or 'inferences/<set>'.
        df: the rows.
        index: each row's index in its source (same length as `df`).
        classes: the dataset's class map.
        existing: the current column types of the table.
        rules: further per-row rules of the source (a COCO file's paths, say),
            judged with the built-in ones on the cast rows.
    """
    check = _Checker(table, df, key_column(table_kind(table)), index)
    prep = _Preparation(table, classes, existing, False, check, screen=True, rules=rules)
    out = prep.run(df)
    if check.batch_errors:
        keys = check.key
        key_values = df[keys].cast(pl.String, strict=False) if keys in df.columns else None
        errors = list(check.errors)
        for error in check.batch_errors:
            errors.remove(error)
        for i, row in enumerate(index.to_list()):
            key = None if key_values is None else key_values[i]
            errors.extend(dataclasses.replace(e, key=key, row=row) for e in check.batch_errors)
        return Screened(out.clear(), index.clear(), errors)
    return Screened(out, prep.index if prep.index is not None else index, check.errors)


class _Preparation:
    """The validation pipeline: names, types, then per-row rules.

    Raising (`screen=False`) stops after the first stage with errors. Screening
    drops the rows a stage rejected and goes on with the rest.
    """

    def __init__(
        self,
        table: str,
        classes: Sequence[str],
        existing: Mapping[str, pl.DataType] | None,
        partial: bool,
        check: _Checker,
        *,
        screen: bool,
        rules: Sequence[Rule] = (),
        unique_keys: bool = True,
    ) -> None:
        self.table = table
        self.kind = table_kind(table)
        self.classes = classes
        self.existing = dict(existing or {})
        self.partial = partial
        self.check = check
        self.screen = screen
        self.extra_rules = list(rules)
        self.unique_keys = unique_keys
        self.index: pl.Series | None = check._index

    def _stage_done(self, df: pl.DataFrame) -> pl.DataFrame | None:
        """End a stage: None when the pipeline must stop, else the rows to go on with."""
        if not self.check.errors:
            return df
        if not self.screen or self.check.batch_errors:
            return None
        assert self.index is not None
        bad = {e.row for e in self.check.errors}
        keep = ~self.index.is_in(list(bad))
        df, self.index = df.filter(keep), self.index.filter(keep)
        self.check.narrow(df, self.index)
        return df

    def run(self, df: pl.DataFrame) -> pl.DataFrame:
        kind, check, table = self.kind, self.check, self.table
        key = key_column(kind)
        core = {c.name: c for c in core_columns(kind)}
        existing = self.existing

        for c in core.values():
            required_here = c.name == key if self.partial else c.required
            if c.name not in df.columns and required_here:
                check.batch("missing_column", c.name, None, f"every {table} row needs {c.name!r}")
        for name in df.columns:
            if name.startswith("_"):
                check.batch(
                    "reserved_column",
                    name,
                    None,
                    "column names starting with '_' are reserved for lakever",
                )
        _check_names(df, core, existing, check)
        if check.errors:
            return df

        if not self.partial:
            for c in core.values():
                if c.name not in df.columns:
                    df = df.with_columns(pl.lit(None, dtype=c.dtype).alias(c.name))

        cast_cols: list[pl.Series] = []
        for name in df.columns:
            series = df[name]
            target: pl.DataType | None
            stored, why = storable_type(series.dtype)
            if stored is None and not isinstance(series.dtype, pl.Null):
                check.batch("type", name, str(series.dtype), why)
                continue
            if name in core:
                target = core[name].dtype
            elif name in existing:
                target = existing[name]
            else:
                target = stored
                if target is None:
                    check.batch("type", name, str(series.dtype), why)
                    continue
            out, bad = _lossless_cast(series, target)
            if bad is not None and bad.any():
                check.rows(bad, "type", name, series, f"cannot be stored as {target} without loss")
            cast_cols.append(out.alias(name))
        if check.batch_errors:
            return df
        staged = self._stage_done(pl.DataFrame(cast_cols))
        if staged is None:
            return df
        df = staged

        rules: list[Rule] = [
            ("null", c.name, pl.col(c.name).is_null(), "a value is required")
            for c in core.values()
            if c.required and c.name in df.columns
        ]
        if key in df.columns:
            rules.append(("key", key, pl.col(key) == "", "keys must be non-empty"))
        rules += _frame_rules(df) if kind == "frames" else _box_rules(df, self.classes, kind)
        rules += [r for r in self.extra_rules if r[1] in df.columns]
        _apply_rules(df, check, rules)
        df = flag_sorted(df, [key, "frame_id"])  # later checks and the write then skip sorts
        if self.unique_keys and key in df.columns and _has_duplicates(df[key]):
            keys = df[key]
            dup = keys.is_duplicated() & keys.is_not_null()
            check.rows(dup, "duplicate_key", key, keys, "the batch holds this key more than once")
        staged = self._stage_done(df)
        if staged is None:
            return df
        df = staged

        order = [c.name for c in core.values() if c.name in df.columns]
        order += [n for n in existing if n not in core and n in df.columns]
        order += [n for n in df.columns if n not in order]
        return df.select(order)


def _has_duplicates(keys: pl.Series) -> bool:
    """Whether any non-null value occurs twice."""
    return not repeated_values(keys).is_empty()


def _apply_rules(df: pl.DataFrame, check: _Checker, rules: list[Rule]) -> None:
    """Evaluate every rule in one pass; build errors only for the rules some row breaks."""
    if not rules or df.is_empty():
        return
    masks = df.select(
        [expr.fill_null(False).alias(f"rule{i}") for i, (_, _, expr, _) in enumerate(rules)]
    )
    broken = masks.select(pl.all().any()).row(0)
    for i, (rule, column, _, detail) in enumerate(rules):
        if broken[i]:
            check.rows(masks[f"rule{i}"], rule, column, df[column], detail)


def _frame_rules(df: pl.DataFrame) -> list[Rule]:
    rules: list[Rule] = []
    if "media_type" in df.columns:
        mt = pl.col("media_type")
        detail = f"must be one of {', '.join(MEDIA_TYPES)}"
        rules.append(
            ("media_type", "media_type", ~mt.is_in(MEDIA_TYPES) & mt.is_not_null(), detail)
        )
    for name in ("width", "height"):
        if name in df.columns:
            rules.append(("size", name, pl.col(name) <= 0, "must be a positive number of pixels"))
    return rules


def _box_rules(df: pl.DataFrame, classes: Sequence[str], kind: str) -> list[Rule]:
    rules: list[Rule] = []
    if "cls" in df.columns:
        cls = pl.col("cls")
        detail = "not in the dataset's class map (extend the class map first)"
        rules.append(
            ("unknown_class", "cls", ~cls.is_in(list(classes)) & cls.is_not_null(), detail)
        )
    for name in ("x", "y", "w", "h"):
        if name not in df.columns:
            continue
        col = pl.col(name)
        rules.append(("box", name, ~col.is_finite(), "box coordinates must be finite"))
        if name in ("w", "h"):
            rules.append(("box", name, col < 0, "box sizes must not be negative"))
    if kind == "inferences" and "confidence" in df.columns:
        conf = pl.col("confidence")
        outside = ~conf.is_finite() | (conf < 0) | (conf > 1)
        rules.append(("confidence", "confidence", outside, "confidence must lie in [0, 1]"))
    return rules
