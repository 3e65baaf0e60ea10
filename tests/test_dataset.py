"""Writes through the Dataset API, each one atomic commit, on local disk and S3."""

from __future__ import annotations

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import lakever as lv
from tests.helpers import CLASSES, frames, labels


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    """Both backends in the default run: the core write API is checked on S3 every time.

    Tests marked `s3_slow` check what does not depend on the store (input
    types, column handling); their S3 runs go with the slow tests.
    """
    return str(request.param)


#: Run on S3 only with the slow tests (see `backend`).
s3_slow = pytest.mark.parametrize(
    "backend", ["local", pytest.param("s3", marks=pytest.mark.slow)], indirect=True
)


@pytest.fixture
def ds(lake: lv.Lake) -> lv.Dataset:
    return lake.create_dataset("cams", classes=CLASSES, description="d", tags=("a",))


def ids(n: int, prefix: str = "f") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def test_new_dataset_has_empty_tables_and_commit_zero(ds: lv.Dataset) -> None:
    assert ds.head.seq == 0
    assert ds.head.operation == "create"
    assert ds.head.classes == tuple(CLASSES)
    assert ds.read("frames").height == 0
    assert ds.read("labels").height == 0
    assert ds.tables == ["frames", "labels"]


def test_each_write_is_one_commit_with_counts(ds: lv.Dataset) -> None:
    c1 = ds.add_frames(frames(range(10)), message="import", author="etl")
    assert (c1.seq, c1.parent, c1.author, c1.message) == (1, ds.log()[1].id, "etl", "import")
    assert c1.counts["frames"] == lv.ChangeCounts(added=10)
    c2 = ds.upsert_labels(labels(ids(10)))
    assert c2.counts["labels"] == lv.ChangeCounts(added=20)
    assert c2.table_versions["frames"] == c1.table_versions["frames"]
    changed = labels(ids(3)).with_columns(pl.lit("person").alias("cls"))
    c3 = ds.upsert_labels(changed)
    assert c3.counts["labels"] == lv.ChangeCounts(modified=6)
    assert ds.read("labels").filter(pl.col("cls") == "person").height == 6
    assert [c.seq for c in ds.log()] == [3, 2, 1, 0]
    assert [c.seq for c in ds.log(limit=2)] == [3, 2]


@s3_slow
def test_add_frames_refuses_existing_ids_and_writes_nothing(ds: lv.Dataset) -> None:
    ds.add_frames(frames(range(3)))
    with pytest.raises(lv.ValidationError) as info:
        ds.add_frames(frames(range(2, 5)))
    assert info.value.rules == {"exists"}
    assert [e.key for e in info.value.errors] == ["f00002"]
    assert ds.head.seq == 1
    assert sorted(ds.read("frames")["frame_id"]) == ids(3)


@s3_slow
def test_upsert_identical_rows_makes_no_commit(ds: lv.Dataset) -> None:
    ds.add_frames(frames(range(4)))
    ds.upsert_labels(labels(ids(4)))
    before = ds.head
    again = ds.upsert_labels(labels(ids(4)))
    assert again == before
    assert ds.read("labels").height == 8


@s3_slow
def test_update_frames_changes_only_given_columns(ds: lv.Dataset) -> None:
    ds.add_frames(frames(range(3), weather=["sun", "rain", "fog"]))
    c = ds.update_frames([{"frame_id": "f00001", "width": 1024}])
    assert c.counts["frames"] == lv.ChangeCounts(modified=1)
    row = ds.read("frames").filter(pl.col("frame_id") == "f00001").row(0, named=True)
    assert (row["width"], row["height"], row["weather"]) == (1024, 480, "rain")
    with pytest.raises(lv.RowNotFoundError, match="f00009"):
        ds.update_frames([{"frame_id": "f00009", "width": 1}])


@s3_slow
def test_upsert_without_user_column_keeps_its_value(ds: lv.Dataset) -> None:
    ds.add_frames(frames(range(2), weather=["sun", "rain"]))
    ds.upsert_frames(frames(range(2)).with_columns(pl.lit(800).cast(pl.Int32).alias("width")))
    got = ds.read("frames").sort("frame_id")
    assert got["weather"].to_list() == ["sun", "rain"]
    assert got["width"].to_list() == [800, 800]


def test_delete_frames_deletes_their_labels_in_same_commit(ds: lv.Dataset) -> None:
    ds.add_frames(frames(range(4)))
    ds.upsert_labels(labels(ids(4), per_frame=3))
    c = ds.delete_frames(["f00001", "f00002"])
    assert c.counts == {
        "frames": lv.ChangeCounts(deleted=2),
        "labels": lv.ChangeCounts(deleted=6),
    }
    assert sorted(ds.read("frames")["frame_id"]) == ["f00000", "f00003"]
    assert set(ds.read("labels")["frame_id"]) == {"f00000", "f00003"}
    with pytest.raises(lv.RowNotFoundError, match="f00001"):
        ds.delete_frames(["f00001"])
    assert ds.delete_frames(["f00001"], missing_ok=True).seq == c.seq


def test_delete_labels(ds: lv.Dataset) -> None:
    ds.add_frames(frames(range(2)))
    ds.upsert_labels(labels(ids(2)))
    c = ds.delete_labels(["f00000-l0"])
    assert c.counts["labels"] == lv.ChangeCounts(deleted=1)
    assert "f00000-l0" not in ds.read("labels")["label_id"].to_list()
    assert ds.read("labels").height == 3


@s3_slow
def test_replace_labels_makes_each_frames_labels_exact(ds: lv.Dataset) -> None:
    ds.add_frames(frames(range(3)))
    ds.upsert_labels(labels(ids(3), per_frame=3))
    new = labels(["f00000"], per_frame=1, start=5, cls="bike")
    c = ds.replace_labels(new, frame_ids=["f00000", "f00001"])
    got = ds.read("labels")
    assert sorted(got.filter(pl.col("frame_id") == "f00000")["label_id"]) == ["f00000-l5"]
    assert got.filter(pl.col("frame_id") == "f00001").height == 0
    assert got.filter(pl.col("frame_id") == "f00002").height == 3
    assert c.counts["labels"] == lv.ChangeCounts(added=1, deleted=6)


@s3_slow
def test_labels_need_existing_frames_at_commit_time(ds: lv.Dataset) -> None:
    ds.add_frames(frames(range(1)))
    bad = labels(["f00000", "f00007"])
    with pytest.raises(lv.ValidationError) as info:
        ds.upsert_labels(bad)
    assert info.value.rules == {"missing_frame"}
    assert sorted(e.key for e in info.value.errors) == ["f00007-l0", "f00007-l1"]
    assert ds.read("labels").height == 0


def test_transaction_spans_tables_and_frames_added_in_same_tx_count(ds: lv.Dataset) -> None:
    with ds.transaction(message="batch 1", author="etl") as tx:
        tx.add_frames(frames(range(2)))
        tx.upsert_labels(labels(ids(2)))
        tx.upsert_inferences("yolo", labels(ids(2)).with_columns(confidence=pl.lit(0.9)))
    c = tx.result
    assert c is not None
    assert c.seq == 1
    assert set(c.counts) == {"frames", "labels", "inferences/yolo"}
    assert c.pins == {"yolo": 1}  # a new set is pinned to the commit that creates it
    assert ds.read("inferences/yolo").height == 4
    assert ds.inference_sets == ["yolo"]


def test_transaction_with_error_writes_nothing(ds: lv.Dataset) -> None:
    with pytest.raises(RuntimeError, match="boom"), ds.transaction() as tx:
        tx.add_frames(frames(range(2)))
        raise RuntimeError("boom")
    assert ds.head.seq == 0
    with pytest.raises(lv.ValidationError), ds.transaction() as tx:
        tx.add_frames(frames(range(2)))
        tx.upsert_labels(labels(["f00000"], cls="unicorn"))
    assert ds.head.seq == 0
    assert ds.read("frames").height == 0


def test_inference_sets_pin_and_delete(ds: lv.Dataset) -> None:
    ds.add_frames(frames(range(2)))
    ds.create_snapshot("eval-base")
    inf = labels(ids(2)).with_columns(confidence=pl.Series([0.1, 0.5, 0.7, 1.0]))
    c = ds.upsert_inferences("m1", inf, pinned_to="eval-base")
    assert c.pins == {"m1": 1}
    c2 = ds.delete_inferences("m1", ["f00000-l0"])
    assert c2.pins == {"m1": 1}
    assert ds.read("inferences/m1").height == 3
    with pytest.raises(lv.ValidationError) as info:
        ds.upsert_inferences("m1", inf.with_columns(confidence=pl.lit(1.5)))
    assert info.value.rules == {"confidence"}
    dropped = ds.drop_inferences("m1")
    assert "inferences/m1" not in dropped.table_versions
    with pytest.raises(lv.TableNotFoundError, match="m1"):
        ds.read("inferences/m1")
    assert ds.at(c2.seq).read("inferences/m1").height == 3


@s3_slow
def test_accepts_arrow_pandas_and_dicts(ds: lv.Dataset) -> None:
    ds.add_frames(frames(range(1)).to_arrow())
    ds.add_frames(pd.DataFrame(frames(range(1, 2)).to_dict(as_series=False)))
    ds.add_frames(frames(range(2, 3)).to_dicts())
    ds.add_frames(pa.RecordBatch.from_pylist(frames(range(3, 4)).to_dicts()))
    assert sorted(ds.read("frames")["frame_id"]) == ids(4)


@s3_slow
def test_user_columns_keep_their_type(ds: lv.Dataset) -> None:
    ds.add_frames(frames(range(1), score=[1]))
    assert ds.read("frames").schema["score"] == pl.Int64
    ds.add_frames(frames(range(1, 2), score=[2.0]))  # lossless: 2.0 -> 2
    with pytest.raises(lv.ValidationError) as info:
        ds.add_frames(frames(range(2, 4), score=[3.5, 4.0]))
    assert [(e.rule, e.key, e.value) for e in info.value.errors] == [("type", "f00002", 3.5)]
    ds.add_frames(frames(range(4, 5), note=["new column"]))
    assert ds.read("frames").schema["note"] == pl.String
    assert ds.read("frames").height == 3


@s3_slow
def test_extend_classes_is_recorded(ds: lv.Dataset) -> None:
    ds.add_frames(frames(range(1)))
    with pytest.raises(lv.ValidationError):
        ds.upsert_labels(labels(["f00000"], cls="tram"))
    c = ds.extend_classes(["tram"])
    assert c.operation == "extend_classes"
    assert ds.classes == (*CLASSES, "tram")
    ds.upsert_labels(labels(["f00000"], cls="tram"))
    assert ds.at(1).classes == tuple(CLASSES)
