"""Every Polars dtype as a user column: round-trips, is cast losslessly, or is refused up front."""

from __future__ import annotations

import datetime as dt
import decimal

import polars as pl
import pytest

import lakever as lv
from tests.helpers import CLASSES, frames, labels

_T0 = dt.datetime(2024, 5, 1, 12, 30)

# name -> (column, what it must read back as, or None if it must be refused)
CASES: dict[str, tuple[pl.Series, pl.Series | None]] = {
    "bool": (pl.Series([True, False]),) * 2,
    "int8": (pl.Series([-3, 4], dtype=pl.Int8),) * 2,
    "int16": (pl.Series([-3, 4], dtype=pl.Int16),) * 2,
    "int32": (pl.Series([-3, 4], dtype=pl.Int32),) * 2,
    "int64": (pl.Series([-(2**62), 4], dtype=pl.Int64),) * 2,
    "uint8": (pl.Series([200, 4], dtype=pl.UInt8), pl.Series([200, 4], dtype=pl.Int16)),
    "uint16": (pl.Series([60000, 4], dtype=pl.UInt16), pl.Series([60000, 4], dtype=pl.Int32)),
    "uint32": (pl.Series([2**32 - 1, 4], dtype=pl.UInt32), pl.Series([2**32 - 1, 4])),
    "uint64": (pl.Series([2**63 - 1, 4], dtype=pl.UInt64), pl.Series([2**63 - 1, 4])),
    "float16": (
        pl.Series([1.5, -2.0], dtype=pl.Float16),
        pl.Series([1.5, -2.0], dtype=pl.Float32),
    ),
    "float32": (pl.Series([1.5, -2.25], dtype=pl.Float32),) * 2,
    "float64": (pl.Series([1.5, float("nan")]),) * 2,
    "decimal": (
        pl.Series([decimal.Decimal("1.50"), decimal.Decimal("-2.25")], dtype=pl.Decimal(10, 2)),
    )
    * 2,
    "string": (pl.Series(["a", "ü"]),) * 2,
    "binary": (pl.Series([b"\x00\x01", b""]),) * 2,
    "date": (pl.Series([dt.date(2020, 1, 1), dt.date(1969, 7, 20)]),) * 2,
    "datetime_us": (pl.Series([_T0, _T0]),) * 2,
    "datetime_ms": (pl.Series([_T0, _T0]).cast(pl.Datetime("ms")), pl.Series([_T0, _T0])),
    "datetime_ns": (pl.Series([_T0, _T0]).cast(pl.Datetime("ns")), pl.Series([_T0, _T0])),
    "datetime_utc": (pl.Series([_T0, _T0]).dt.replace_time_zone("UTC"),) * 2,
    "datetime_zoned": (
        pl.Series([_T0, _T0]).dt.replace_time_zone("Europe/Paris"),
        pl.Series([_T0, _T0]).dt.replace_time_zone("Europe/Paris").dt.convert_time_zone("UTC"),
    ),
    "categorical": (pl.Series(["a", "b"], dtype=pl.Categorical), pl.Series(["a", "b"])),
    "enum": (pl.Series(["a", "b"], dtype=pl.Enum(["a", "b"])), pl.Series(["a", "b"])),
    "list": (pl.Series([[1, 2], []]),) * 2,
    "array": (
        pl.Series([[1.0, 2.0], [3.0, 4.0]], dtype=pl.Array(pl.Float32, 2)),
        pl.Series([[1.0, 2.0], [3.0, 4.0]], dtype=pl.List(pl.Float32)),
    ),
    "struct": (pl.Series([{"a": 1, "b": "x"}, {"a": 2, "b": None}]),) * 2,
    "list_of_uint8": (
        pl.Series([[1, 250]], dtype=pl.List(pl.UInt8)).extend(
            pl.Series([[3]], dtype=pl.List(pl.UInt8))
        ),
        pl.Series([[1, 250], [3]], dtype=pl.List(pl.Int16)),
    ),
    "time": (pl.Series([dt.time(1), dt.time(2)]), None),
    "duration": (pl.Series([dt.timedelta(1), dt.timedelta(2)]), None),
    "int128": (pl.Series([1, 2], dtype=pl.Int128), None),
    "uint128": (pl.Series([1, 2], dtype=pl.UInt128), None),
    "null": (pl.Series([None, None]), None),
    "object": (pl.Series([object(), object()], dtype=pl.Object), None),
    "list_of_time": (pl.Series([[dt.time(1)], []]), None),
    "struct_of_duration": (pl.Series([{"d": dt.timedelta(1)}, {"d": dt.timedelta(2)}]), None),
}


@pytest.fixture
def ds(local_lake: lv.Lake) -> lv.Dataset:
    d = local_lake.create_dataset("types", classes=CLASSES)
    d.add_frames(frames(range(2)))
    return d


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_column_round_trips_is_cast_or_is_refused(ds: lv.Dataset, case: str) -> None:
    column, expected = CASES[case]
    batch = labels(["f00000", "f00001"], per_frame=1).with_columns(column.alias("v"))
    if expected is None:
        with pytest.raises(lv.ValidationError) as info:
            ds.upsert_labels(batch)
        err = info.value.errors[0]
        assert (err.rule, err.column) == ("type", "v")
        assert str(column.dtype).split("(")[0] in str(err.value)
        assert ds.head.seq == 1 and ds.read("labels").height == 0  # nothing written
        return
    ds.upsert_labels(batch)
    got = ds.read("labels").sort("label_id")["v"]
    assert got.dtype == expected.dtype, case
    if expected.dtype.is_float():
        assert got.fill_nan(-99.0).to_list() == expected.fill_nan(-99.0).to_list()
    else:
        assert got.to_list() == expected.to_list()
    # and the column stays editable: the same batch again changes nothing ...
    assert ds.upsert_labels(batch).seq == ds.head.seq
    # ... and an edit of another column keeps it intact
    ds.upsert_labels(batch.with_columns(pl.lit("person").alias("cls")))
    again = ds.read("labels").sort("label_id")
    assert again["cls"].to_list() == ["person", "person"]
    assert again["v"].dtype == expected.dtype


def test_values_a_cast_would_change_are_refused_row_by_row(ds: lv.Dataset) -> None:
    batch = labels(["f00000", "f00001"], per_frame=1).with_columns(
        pl.Series("big", [1, 2**63 + 5], dtype=pl.UInt64),
        pl.Series("t", [_T0, _T0 + dt.timedelta(microseconds=1)]).cast(pl.Datetime("ns"))
        + pl.Series([0, 1], dtype=pl.Duration("ns")),
    )
    with pytest.raises(lv.ValidationError) as info:
        ds.upsert_labels(batch)
    got = {(e.rule, e.key, e.column) for e in info.value.errors}
    assert got == {("type", "f00001-l0", "big"), ("type", "f00001-l0", "t")}


def test_booleans_are_not_numbers(ds: lv.Dataset) -> None:
    batch = labels(["f00000"], per_frame=1).with_columns(pl.lit(True).alias("x"))
    with pytest.raises(lv.ValidationError) as info:
        ds.upsert_labels(batch)
    assert [(e.rule, e.column, e.value) for e in info.value.errors] == [("type", "x", True)]


@pytest.mark.parametrize("name", ["CLS", "Frame_ID", "", "with space", "a=b", "a,b"])
def test_column_names_delta_or_spark_cannot_hold_are_refused(ds: lv.Dataset, name: str) -> None:
    batch = labels(["f00000"], per_frame=1).with_columns(pl.lit(1).alias(name))
    with pytest.raises(lv.ValidationError) as info:
        ds.upsert_labels(batch)
    assert info.value.rules == {"column_name"}
    assert info.value.errors[0].column == name
    assert ds.read("labels").height == 0


def test_user_column_names_clash_by_case_with_existing_ones(ds: lv.Dataset) -> None:
    ds.upsert_labels(labels(["f00000"], per_frame=1).with_columns(pl.lit(1).alias("score")))
    with pytest.raises(lv.ValidationError, match="only in case"):
        ds.upsert_labels(labels(["f00001"], per_frame=1).with_columns(pl.lit(2).alias("Score")))
    assert ds.read("labels").columns.count("score") == 1
