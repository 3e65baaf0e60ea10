"""Diffs, change summaries, class changes and per-row history, on local disk and S3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

import lakever as lv
from lakever import _changes, _delta
from tests.helpers import CLASSES, frames, labels


@pytest.fixture
def ds(lake: lv.Lake) -> lv.Dataset:
    d = lake.create_dataset("diffs", classes=CLASSES)
    d.add_frames(frames(range(4)))
    d.upsert_labels(labels([f"f{i:05d}" for i in range(4)]))
    d.create_snapshot("v1")
    return d


def by_key(df: pl.DataFrame) -> dict[str, tuple[str, list[str]]]:
    key = df.columns[0]
    return {r[key]: (r["change"], r["changed"]) for r in df.iter_rows(named=True)}


def test_summary_counts_equal_the_rows_for_values_that_compare_equal(ds: lv.Dataset) -> None:
    """-0.0 = 0.0 and NaN = NaN, as in rows(); a value set and set back is no change."""
    nan = float("nan")
    ds.upsert_labels(labels(["f00000"], x=0.0, conf=nan))
    ds.create_snapshot("zeros")
    ds.upsert_labels(labels(["f00000"], x=5.0, conf=1.0))
    ds.upsert_labels(labels(["f00000"], x=-0.0, conf=-nan))  # back: equal values, other bits
    ds.upsert_labels(labels(["f00001"], cls="person"))  # changed ...
    ds.upsert_labels(labels(["f00001"], cls="car"))  # ... and set back
    ds.upsert_labels(labels(["f00002"], per_frame=1, w=31.0))  # one real change
    d = ds.diff("zeros")
    rows = d.rows("labels")
    assert rows["label_id"].to_list() == ["f00002-l0"]
    assert d.summary().filter(pl.col("table") == "labels").row(0) == ("labels", 0, 0, 1)


def test_summary_rows_and_direction(ds: lv.Dataset) -> None:
    with ds.transaction() as tx:
        tx.upsert_labels(labels(["f00000"], cls="person"))  # 2 modified (cls)
        tx.delete_labels(["f00001-l0"])
        tx.add_frames(frames(["f00009"]))
        tx.upsert_labels(labels(["f00009"], per_frame=1))
    d = ds.diff("v1")
    assert d.summary().rows() == [("frames", 1, 0, 0), ("labels", 1, 1, 2)]
    rows = d.rows("labels")
    assert by_key(rows) == {
        "f00000-l0": ("modified", ["cls"]),
        "f00000-l1": ("modified", ["cls"]),
        "f00001-l0": ("deleted", ["frame_id", "cls", "x", "y", "w", "h"]),
        "f00009-l0": ("added", ["frame_id", "cls", "x", "y", "w", "h"]),
    }
    mod = rows.filter(pl.col("label_id") == "f00000-l0").row(0, named=True)
    assert (mod["before"]["cls"], mod["after"]["cls"]) == ("car", "person")
    assert mod["before"]["x"] == mod["after"]["x"] == 10.0
    back = ds.diff("HEAD", "v1")
    assert back.summary().rows() == [("frames", 0, 1, 0), ("labels", 1, 1, 2)]
    rb = back.rows("labels").filter(pl.col("label_id") == "f00000-l0").row(0, named=True)
    assert (rb["before"]["cls"], rb["after"]["cls"]) == ("person", "car")


def test_rewrites_with_identical_values_are_not_changes(ds: lv.Dataset) -> None:
    v1 = ds.read("labels")
    ds.delete_labels(["f00002-l0"])
    ds.upsert_labels(v1.filter(pl.col("label_id") == "f00002-l0"))  # deleted and re-added, same
    ds.upsert_labels(labels(["f00003"], cls="bike"))
    ds.revert("v1")  # restore rewrites whole files
    assert ds.diff("v1").summary()["added", "deleted", "modified"].sum().row(0) == (0, 0, 0)
    ds.delete_labels(["f00002-l1"])
    ds.upsert_labels(labels(["f00002"], per_frame=2).with_columns(w=pl.lit(99.0)))
    assert by_key(ds.diff("v1").rows("labels")) == {
        "f00002-l0": ("modified", ["w"]),
        "f00002-l1": ("modified", ["w"]),
    }


def test_inference_sets_created_and_dropped_between_versions(ds: lv.Dataset) -> None:
    inf = labels(["f00000", "f00001"]).with_columns(confidence=pl.lit(0.5))
    ds.upsert_inferences("m1", inf)
    ds.create_snapshot("v2")
    ds.drop_inferences("m1")
    ds.upsert_inferences("m2", inf.head(1))
    assert ds.diff("v1", "v2").summary().rows() == [
        ("frames", 0, 0, 0),
        ("inferences/m1", 4, 0, 0),
        ("labels", 0, 0, 0),
    ]
    assert ds.diff("v2").summary().rows() == [
        ("frames", 0, 0, 0),
        ("inferences/m1", 0, 4, 0),
        ("inferences/m2", 1, 0, 0),
        ("labels", 0, 0, 0),
    ]
    ds.upsert_inferences("m1", inf.head(3))  # re-created with 3 of its old rows
    assert by_key(ds.diff("v2").rows("inferences/m1")) == {
        "f00001-l1": ("deleted", ["frame_id", "cls", "x", "y", "w", "h", "confidence"]),
    }


def test_class_changes(ds: lv.Dataset) -> None:
    ds.upsert_labels(
        pl.concat(
            [
                labels(["f00000"], cls="person"),  # 2 car -> person
                labels(["f00001"], per_frame=1).with_columns(w=pl.lit(5.0)),  # geometry only
                labels(["f00002"], per_frame=1, start=7, cls="truck"),  # added truck
            ]
        )
    )
    ds.delete_labels(["f00003-l0"])
    cc = ds.diff("v1").class_changes()
    got = {r["cls"]: r for r in cc.by_class.iter_rows(named=True)}
    assert got["car"] == {
        "cls": "car",
        "added": 0,
        "deleted": 1,
        "geometry_modified": 1,
        "attributes_modified": 0,
        "reclassified_from": 2,
        "reclassified_to": 0,
    }
    assert got["person"]["reclassified_to"] == 2
    assert got["truck"]["added"] == 1
    assert cc.transitions.rows() == [("car", "person", 2)]


def test_changes_since_snapshot_is_fresh(ds: lv.Dataset) -> None:
    assert ds.changes_since_snapshot().counts()["labels"] == lv.ChangeCounts()
    ds.delete_labels(["f00000-l0"])
    assert ds.changes_since_snapshot().counts()["labels"] == lv.ChangeCounts(deleted=1)
    ds.delete_labels(["f00000-l1"])
    assert ds.changes_since_snapshot().counts()["labels"] == lv.ChangeCounts(deleted=2)
    ds.create_snapshot("v2")
    assert ds.changes_since_snapshot().counts()["labels"] == lv.ChangeCounts()
    assert ds.changes_since_snapshot("v1").counts()["labels"] == lv.ChangeCounts(deleted=2)


def test_snapshot_counts_stay_right_after_deleting_one_between(ds: lv.Dataset) -> None:
    ds.delete_labels(["f00000-l0"])
    ds.create_snapshot("v2")
    ds.delete_labels(["f00000-l1"])
    ds.upsert_labels(labels(["f00001"], cls="bike"))
    ds.create_snapshot("v3")
    snaps = {s.name: s for s in ds.list_snapshots()}
    assert snaps["v2"].changes["labels"] == lv.ChangeCounts(deleted=1)
    assert snaps["v3"].changes["labels"] == lv.ChangeCounts(deleted=1, modified=2)
    assert snaps["v3"].previous == "v2"
    ds.delete_snapshot("v2")
    v3 = ds.snapshot("v3")
    assert v3.previous == "v1"
    assert v3.changes["labels"] == lv.ChangeCounts(deleted=2, modified=2)


def test_diff_between_two_datasets_matches(lake: lv.Lake, ds: lv.Dataset) -> None:
    other = lake.create_dataset("other", classes=CLASSES)
    other.add_frames(frames(range(1, 5)))
    other.upsert_labels(labels([f"f{i:05d}" for i in range(1, 5)], cls="bike"))
    d = lv.diff(ds, other)
    assert d.summary().rows() == [("frames", 1, 1, 0), ("labels", 2, 2, 6)]
    assert by_key(d.rows("frames")) == {
        "f00000": ("deleted", ["uri", "media_type", "width", "height"]),
        "f00004": ("added", ["uri", "media_type", "width", "height"]),
    }


def test_cdf_and_full_comparison_agree_and_fallback_when_files_are_gone(
    local_lake: lv.Lake,
) -> None:
    ds = local_lake.create_dataset("cdf", classes=CLASSES)
    ds.add_frames(frames(range(3)))
    ds.upsert_labels(labels([f"f{i:05d}" for i in range(3)]))
    v1 = ds.head
    ds.upsert_labels(labels(["f00001"], cls="truck"))
    ds.delete_frames(["f00002"])
    v2 = ds.head
    loc = ds.table_location("labels")
    a, b = v1.table_versions["labels"], v2.table_versions["labels"]
    via_cdf = _changes.cdf_change(loc, "label_id", a, b)
    full = _changes.full_change(loc, a, loc, b, "label_id")
    assert via_cdf.equals(full)
    assert via_cdf.height == 4
    # cleanup removed the change files: the diff falls back and still agrees
    shutil.rmtree(Path(loc.uri) / "_change_data")
    _delta._cache.clear()
    with pytest.raises(lv.StorageError):
        _changes.cdf_change(loc, "label_id", a, b)
    assert ds.diff(v1.seq, v2.seq).rows("labels").equals(full)


def test_history_of_a_label_and_of_a_frame(ds: lv.Dataset) -> None:
    ds.upsert_labels(labels(["f00000"], per_frame=1, cls="person"), message="fix", author="qa")
    ds.upsert_labels(labels(["f00000"], per_frame=1, cls="person"))  # no-op
    ds.delete_labels(["f00000-l0"], message="drop")
    ds.update_frames([{"frame_id": "f00000", "width": 800}])
    h = ds.history(label_id="f00000-l0")
    assert h.select("seq", "change", "changed", "author", "message").rows() == [
        (2, "added", ["cls", "frame_id", "h", "w", "x", "y"], "tester", "upsert 8 labels"),
        (3, "modified", ["cls"], "qa", "fix"),
        (4, "deleted", ["cls", "frame_id", "h", "w", "x", "y"], "tester", "drop"),
    ]
    assert json.loads(h["after"][1])["cls"] == "person"
    assert h["after"][2] is None
    fh = ds.history(frame_id="f00000")
    assert fh.select("seq", "table", "key", "change").rows() == [
        (1, "frames", "f00000", "added"),
        (2, "labels", "f00000-l0", "added"),
        (2, "labels", "f00000-l1", "added"),
        (3, "labels", "f00000-l0", "modified"),
        (4, "labels", "f00000-l0", "deleted"),
        (5, "frames", "f00000", "modified"),
    ]
    with pytest.raises(lv.RowNotFoundError, match="'nope' has never existed"):
        ds.history(label_id="nope")
    with pytest.raises(ValueError, match="exactly one"):
        ds.history()
