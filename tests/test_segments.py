"""Segments: elements frozen at the version they were added, and what changed since."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import lakever as lv
from tests.helpers import CLASSES, frames, labels


def _dataset(lake: lv.Lake) -> lv.Dataset:
    ds = lake.create_dataset("s", classes=CLASSES)
    ds.add_frames(frames(range(4)))
    ds.upsert_labels(labels(["f00000", "f00001", "f00002"], per_frame=2))
    preds = labels(["f00000"], per_frame=2).with_columns(confidence=pl.lit(0.4))
    ds.upsert_inferences("yolo", preds)
    return ds


def test_elements_read_back_as_they_were(lake: lv.Lake) -> None:
    ds = _dataset(lake)
    seg = ds.create_segment(
        "loose boxes",
        frame_ids=["f00001"],
        label_ids=["f00000-l0", "f00001-l1"],
        predictions={"yolo": ["f00000-l1"]},
        description="boxes too loose",
    )
    frozen = {t: seg.read(t) for t in ("frames", "labels", "inferences/yolo")}
    at = ds.head.seq
    # fix one label, delete another (and its frame), edit the prediction
    fixed = ds.read("labels").filter(pl.col("label_id") == "f00000-l0").with_columns(w=5.0)
    ds.upsert_labels(fixed)
    ds.delete_frames(["f00001"])
    ds.upsert_inferences("yolo", ds.read("inferences/yolo").with_columns(confidence=0.9))

    again = ds.segment("loose boxes")
    for table, rows in frozen.items():
        assert again.read(table).equals(rows), table
    assert set(again.read("labels")["added_seq"]) == {at}
    assert again.read("labels").filter(pl.col("label_id") == "f00000-l0")["w"].item() == 30.0

    out = again.outdated().sort("table", "key")
    assert out.select("table", "key", "change").rows() == [
        ("frames", "f00001", "deleted"),
        ("inferences/yolo", "f00000-l1", "modified"),
        ("labels", "f00000-l0", "modified"),
        ("labels", "f00001-l1", "deleted"),
    ]
    mod = out.filter(pl.col("key") == "f00000-l0").row(0, named=True)
    assert mod["changed"] == ["w"]
    assert json.loads(mod["then"])["w"] == 30.0 and json.loads(mod["now"])["w"] == 5.0
    assert out.filter(pl.col("change") == "deleted")["now"].to_list() == [None, None]

    # adding again refreshes to HEAD; removing takes it out
    again.add(label_ids=["f00000-l0"])
    assert again.read("labels").filter(pl.col("label_id") == "f00000-l0")["w"].item() == 5.0
    assert "f00000-l0" not in set(again.outdated()["key"])
    again.remove(label_ids=["f00001-l1"])
    assert again.read("labels")["label_id"].to_list() == ["f00000-l0"]


def test_listing_state_delete_and_names(local_lake: lv.Lake) -> None:
    ds = _dataset(local_lake)
    seg = ds.create_segment("night", label_ids=["f00002-l0"])
    ds.create_segment("empty")
    with pytest.raises(lv.SegmentExistsError):
        ds.create_segment("night")
    seg.set_state("resolved")
    listing = ds.segments()
    assert listing.select("name", "state", "elements").rows() == [
        ("night", "resolved", 1),
        ("empty", "open", 0),
    ]
    assert ds.segment("night").state == "resolved"
    with pytest.raises(lv.InvalidInputError, match="state must be"):
        seg.set_state("done")
    ds.delete_segment("night")
    with pytest.raises(lv.SegmentNotFoundError):
        ds.segment("night")
    with pytest.raises(lv.SegmentNotFoundError):
        seg.add(label_ids=["f00000-l0"])
    renewed = ds.create_segment("night", label_ids=["f00000-l1"])  # the name is free again
    assert renewed.read("labels")["label_id"].to_list() == ["f00000-l1"]
    # Polars reads the tables without lakever
    assert pl.read_delta(f"{ds.root.uri}/segments").height == 5
    assert set(pl.read_delta(f"{ds.root.uri}/segment_elements")["key"]) == {
        "f00002-l0", "f00000-l1"}  # fmt: skip


def test_bad_ids_add_nothing(local_lake: lv.Lake) -> None:
    ds = _dataset(local_lake)
    seg = ds.create_segment("x", label_ids=["f00000-l0"])
    with pytest.raises(lv.RowNotFoundError, match="nope"):
        seg.add(label_ids=["f00000-l1", "nope"])
    with pytest.raises(lv.RowNotFoundError, match="not in segment"):
        seg.remove(label_ids=["f00002-l0"])
    with pytest.raises(lv.TableNotFoundError):
        seg.add(predictions={"missing": ["a"]})
    assert seg.elements()["key"].to_list() == ["f00000-l0"]


def test_segment_from_evaluation(tmp_path: Path) -> None:
    from tests.test_evaluation import _relabel_fixture

    ds, _ = _relabel_fixture(tmp_path)
    ev = ds.evaluate("det")
    seg = ds.segment_from_evaluation("misses", ev)
    assert seg.read("labels")["label_id"].to_list() == ["2"]  # the fn
    assert seg.read("inferences/det")["label_id"].to_list() == ["1"]  # the fp
    assert set(seg.read("labels")["added_seq"]) == {ev.against.seq}
    # the fix shows up as a change of the frozen label
    fixed = ds.read("labels").filter(pl.col("label_id") == "2").with_columns(cls=pl.lit("person"))
    ds.upsert_labels(fixed)
    out = seg.outdated()
    assert out.select("key", "change", "changed").rows() == [("2", "modified", ["cls"])]


def test_racing_creators_of_one_name_have_one_winner(local_lake: lv.Lake) -> None:
    """The name check and the append are one exact-version write: two racers, one segment."""
    from concurrent.futures import ThreadPoolExecutor

    ds = _dataset(local_lake)
    handles = [local_lake.dataset("s") for _ in range(4)]

    def create(i: int) -> str:
        try:
            handles[i].create_segment("race", label_ids=[f"f0000{i % 3}-l0"])
        except lv.SegmentExistsError:
            return "lost"
        return "won"

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(create, range(4)))
    assert outcomes.count("won") == 1, outcomes
    assert ds.segments().filter(pl.col("name") == "race").height == 1
