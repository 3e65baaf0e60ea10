"""Validation of incoming rows: every bad row reported at once, with rule, key and value."""

from __future__ import annotations

import math

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lakever as lv
from lakever.schema import prepare_rows
from tests.helpers import core_schema

CLASSES = ("car", "person")


def label_row(i: int, **kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "label_id": f"l{i}",
        "frame_id": "f1",
        "cls": "car",
        "x": 1.0,
        "y": 2.0,
        "w": 3.0,
        "h": 4.0,
    }
    row.update(kw)
    return row


def test_missing_required_column_names_it() -> None:
    with pytest.raises(lv.ValidationError) as info:
        prepare_rows("labels", [{"label_id": "a", "frame_id": "f"}], classes=CLASSES)
    missing = {e.column for e in info.value.errors if e.rule == "missing_column"}
    assert missing == {"cls", "x", "y", "w", "h"}


def test_every_bad_row_is_reported_at_once() -> None:
    rows = [
        label_row(0),
        label_row(1, cls="dog"),
        label_row(2, w=-1.0),
        label_row(3, h=math.inf),
        label_row(4, x=math.nan),
        label_row(0, y=9.0),
    ]
    with pytest.raises(lv.ValidationError) as info:
        prepare_rows("labels", rows, classes=CLASSES)
    got = sorted((e.rule, e.key, e.column) for e in info.value.errors)
    assert got == [
        ("box", "l2", "w"),
        ("box", "l3", "h"),
        ("box", "l4", "x"),
        ("duplicate_key", "l0", "label_id"),
        ("duplicate_key", "l0", "label_id"),
        ("unknown_class", "l1", "cls"),
    ]
    assert "'dog'" in str(info.value)


def test_confidence_range_and_null_required() -> None:
    rows = [
        label_row(0, confidence=0.5),
        label_row(1, confidence=1.01),
        label_row(2, confidence=None),
    ]
    with pytest.raises(lv.ValidationError) as info:
        prepare_rows("inferences/m", rows, classes=CLASSES)
    assert sorted((e.rule, e.key) for e in info.value.errors) == [
        ("confidence", "l1"),
        ("null", "l2"),
    ]


def test_frames_rules() -> None:
    rows = [
        {"frame_id": "a", "uri": "u", "media_type": "image", "width": 10, "height": 10},
        {"frame_id": "b", "uri": "u", "media_type": "gif", "width": 10, "height": 10},
        {"frame_id": "c", "uri": "u", "media_type": "image", "width": 0, "height": 10},
        {"frame_id": "", "uri": "u", "media_type": "image", "width": 1, "height": 1},
    ]
    with pytest.raises(lv.ValidationError) as info:
        prepare_rows("frames", rows, classes=CLASSES)
    assert sorted((e.rule, e.key) for e in info.value.errors) == [
        ("key", ""),
        ("media_type", "b"),
        ("size", "c"),
    ]


def test_safe_casts_are_applied_and_lossy_ones_refused() -> None:
    df = pl.DataFrame(
        {
            "frame_id": ["a", "b"],
            "uri": ["u", "v"],
            "media_type": ["image"] * 2,
            "width": ["640", "1280"],
            "height": [480.0, 720.0],
            "captured_at": ["2026-01-01T00:00:00Z", None],
        }
    )
    out = prepare_rows("frames", df, classes=CLASSES)
    assert out.schema["width"] == pl.Int32
    assert out["width"].to_list() == [640, 1280]
    assert out.schema["captured_at"] == pl.Datetime("us", "UTC")
    bad = df.with_columns(pl.Series("height", [480.5, 720.0]))
    with pytest.raises(lv.ValidationError) as info:
        prepare_rows("frames", bad, classes=CLASSES)
    assert [(e.rule, e.key, e.value) for e in info.value.errors] == [("type", "a", 480.5)]


def test_reserved_and_untyped_columns_refused() -> None:
    with pytest.raises(lv.ValidationError) as info:
        prepare_rows("labels", [label_row(0, _secret=1)], classes=CLASSES)
    assert info.value.rules == {"reserved_column"}
    with pytest.raises(lv.ValidationError) as info:
        prepare_rows(
            "labels", pl.DataFrame([label_row(0)]).with_columns(extra=pl.lit(None)), classes=CLASSES
        )
    assert info.value.rules == {"type"}


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
anyfloat = st.one_of(finite, st.just(math.nan), st.just(math.inf), st.just(-math.inf))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["car", "person", "dog"]),
            anyfloat,
            anyfloat,
            anyfloat,
            anyfloat,
            st.integers(0, 30),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_validation_accepts_exactly_the_good_batches(rows: list[tuple]) -> None:
    batch = [label_row(0, label_id=f"l{k}", cls=c, x=x, y=y, w=w, h=h) for c, x, y, w, h, k in rows]
    keys = [r["label_id"] for r in batch]

    def bad(r: dict) -> bool:
        vals = [r["x"], r["y"], r["w"], r["h"]]
        return (
            r["cls"] not in CLASSES
            or not all(math.isfinite(v) for v in vals)
            or r["w"] < 0
            or r["h"] < 0
            or keys.count(r["label_id"]) > 1
        )

    expected_bad = {r["label_id"] for r in batch if bad(r)}
    if expected_bad:
        with pytest.raises(lv.ValidationError) as info:
            prepare_rows("labels", batch, classes=CLASSES)
        assert {e.key for e in info.value.errors} == expected_bad
    else:
        out = prepare_rows("labels", batch, classes=CLASSES)
        assert out.height == len(batch)
        assert out["label_id"].to_list() == keys


def test_empty_batch_is_valid() -> None:
    out = prepare_rows("labels", pl.DataFrame(schema=core_schema("labels")), classes=CLASSES)
    assert out.height == 0
    assert out.columns == ["label_id", "frame_id", "cls", "x", "y", "w", "h"]
