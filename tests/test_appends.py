"""Appends written by lakever's own writer: layout, statistics, schema widening, fallbacks."""

from __future__ import annotations

import errno
import itertools
import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from hypothesis import given, settings
from hypothesis import strategies as st

import lakever as lv
from lakever import _datafiles, _delta, _deltalog, _order
from lakever.errors import LakeverError, StorageError
from lakever.storage import Location
from tests.helpers import CLASSES, frames, labels


def _writers(ds: lv.Dataset, table: str) -> list[tuple[str, str]]:
    """(operation, engine) of each version of `table` at HEAD, newest first."""
    dt = _delta.table_at(ds.root.child(table), ds.head.table_versions[table])
    return [(h["operation"], h.get("engineInfo", "")) for h in dt.history()]


def _many_frames(lake: lv.Lake, monkeypatch: pytest.MonkeyPatch) -> tuple[lv.Dataset, list[str]]:
    """A dataset of 3,000 frames, with data files of 4 KiB (an import makes several)."""
    monkeypatch.setattr(_delta, "TARGET_FILE_SIZE", 4096)
    ds = lake.create_dataset("d", classes=CLASSES)
    fids = [f"f{i:04d}" for i in range(3000)]
    ds.add_frames(frames(fids))
    return ds, fids


def test_bulk_import_writes_sorted_even_files_readable_by_delta(
    lake: lv.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds, fids = _many_frames(lake, monkeypatch)
    rows = labels(fids, per_frame=3).sample(fraction=1.0, shuffle=True, seed=1)
    commit = ds.upsert_labels(rows)
    loc = ds.root.child("labels")
    files = _deltalog.files_at(loc, commit.table_versions["labels"])
    assert len(files.adds) > 2  # several files, written in parallel
    assert all(int(a["size"]) < 2 * 4096 for a in files.adds.values())  # near the target
    sizes = [_deltalog.num_records(a) or 0 for a in files.adds.values()]
    assert max(sizes) - min(sizes) <= 1  # even files
    ranges = sorted(_deltalog.bounds(a, "frame_id") for a in files.adds.values())
    for (_, hi), (lo, _) in itertools.pairwise(ranges):
        assert hi <= lo  # each file a contiguous frame range
    dt = _delta.table_at(loc, commit.table_versions["labels"])
    got = pl.DataFrame(dt.to_pyarrow_table()).sort("label_id")  # a plain Delta reader
    assert got.select(rows.columns).equals(rows.sort("label_id"))
    assert _writers(ds, "labels")[0] == ("WRITE", "lakever")  # lakever's writer, not delta-rs
    assert ("WRITE", "lakever") in _writers(ds, "frames")


def test_new_columns_widen_the_schema_and_old_rows_read_null(lake: lv.Lake) -> None:
    ds = lake.create_dataset("d", classes=CLASSES)
    ds.add_frames(frames(["a", "b"]))
    ds.upsert_labels(labels(["a"], annotator="vendor-a", occluded=True, score=3))
    ds.upsert_labels(labels(["b"]))  # without them
    got = ds.read("labels").sort("label_id")
    assert got["annotator"].to_list() == ["vendor-a", "vendor-a", None, None]
    assert got["occluded"].to_list() == [True, True, None, None]
    assert got.schema["score"] == pl.Int32  # as given
    dt = _delta.table_at(ds.root.child("labels"), ds.head.table_versions["labels"])
    assert {"annotator", "occluded", "score"} <= set(dt.schema().to_arrow().names)
    # the change feed sees both appends as inserts
    cdf = pl.DataFrame(pa.table(dt.load_cdf(starting_version=1)))
    assert cdf.filter(pl.col("_change_type") == "insert").height == 4


def test_naive_timestamp_column_goes_through_delta_rs(local_lake: lv.Lake) -> None:
    ds = local_lake.create_dataset("d", classes=CLASSES)
    ds.add_frames(frames(["a"]))
    seen = datetime(2026, 3, 1, 12, 0, 0)
    ds.upsert_labels(labels(["a"], seen=seen))
    assert ds.read("labels")["seen"].to_list() == [seen, seen]
    assert "timestampNtz" in (
        DeltaTable(ds.root.child("labels").uri).protocol().writer_features or []
    )
    assert _writers(ds, "labels")[0][1].startswith("delta-rs")


def test_a_table_with_an_outside_constraint_is_written_by_delta_rs(local_lake: lv.Lake) -> None:
    ds = local_lake.create_dataset("d", classes=CLASSES)
    ds.add_frames(frames(["a", "b"]))
    ds.upsert_labels(labels(["a"]))
    loc = ds.root.child("labels")
    DeltaTable(loc.uri).alter.add_constraint({"x_right": "x >= 0"})
    head = ds.head
    with pytest.raises(LakeverError):
        ds.upsert_labels(labels(["b"]).with_columns(x=pl.lit(-5.0)))  # breaks it
    assert ds.head == head
    assert ds.read("labels").height == 2
    ds.upsert_labels(labels(["b"]))  # keeps it: committed
    assert ds.read("labels").height == 4
    assert _writers(ds, "labels")[0][1].startswith("delta-rs")  # which enforced it
    # edits (merge-on-read would write them by hand) go through delta-rs too
    first = ds.read("labels").sort("label_id").head(1)
    head = ds.head
    with pytest.raises(LakeverError):
        ds.upsert_labels(first.with_columns(x=pl.lit(-1.0)))
    assert ds.head == head
    ds.upsert_labels(first.with_columns(x=pl.lit(99.0)))
    assert _writers(ds, "labels")[0][0] == "MERGE"
    assert _writers(ds, "labels")[0][1].startswith("delta-rs")  # not lakever's own commit
    got = ds.read("labels").filter(pl.col("label_id") == first["label_id"][0])
    assert got["x"].to_list() == [99.0]
    ds.delete_labels([first["label_id"][0]])
    assert ds.read("labels").height == 3
    # staged files cannot be checked against the constraint: refused, nothing visible
    head = ds.head
    w = ds.writer("labels", job_id="vendor-1")
    Path(w.staging_uri).mkdir(parents=True)
    # a class outside the map too: refused for the table before any staged row is read
    staged = labels(["a"], start=5).with_columns(x=pl.lit(-3.0), cls=pl.lit("zebra"))
    pl.from_arrow(staged.to_arrow().cast(w.schema)).write_parquet(f"{w.staging_uri}/p.parquet")  # type: ignore[union-attr]
    with pytest.raises(lv.InvalidInputError, match="constraints"):
        w.commit()
    assert ds.head == head
    assert ds.read("labels").height == 3


def test_statistics_bound_every_value_and_prune_exactly(tmp_path: Path) -> None:
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    df = pl.DataFrame(
        {
            "t": [base + timedelta(microseconds=1500), base + timedelta(seconds=1, microseconds=7)],
            "d": [date(2026, 1, 2), date(2025, 12, 31)],
            "f": [0.5, -2.25],
            "nan": [1.0, float("nan")],
            "s": ["b", "a"],
        }
    )
    got = json.loads(_datafiles.stats(df))
    assert got["minValues"]["t"] == "2026-01-01T00:00:00.001Z"  # rounded down
    assert got["maxValues"]["t"] == "2026-01-01T00:00:01.001Z"  # rounded up
    assert (got["minValues"]["d"], got["maxValues"]["d"]) == ("2025-12-31", "2026-01-02")
    assert (got["minValues"]["f"], got["maxValues"]["f"]) == (-2.25, 0.5)
    assert "nan" not in got["minValues"]  # no JSON number for NaN: no bound
    assert got["numRecords"] == 2

    # readers pruning on those bounds return every row they ask for
    lake = lv.connect(tmp_path / "lake")
    ds = lake.create_dataset("d", classes=CLASSES)
    times = [base + timedelta(milliseconds=i, microseconds=999) for i in range(50)]
    ds.add_frames(frames([f"f{i:03d}" for i in range(50)], captured_at=times))
    last = times[-1]
    scan = lv.scan(str(tmp_path / "lake"), "d", "frames")
    assert scan.filter(pl.col("captured_at") == last).collect().height == 1
    assert scan.filter(pl.col("captured_at") >= last).collect().height == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("xyz")), max_size=12),
)
def test_sortedness_check_agrees_with_sorting(pairs: list[tuple[str, str]]) -> None:
    df = pl.DataFrame({"a": [p[0] for p in pairs], "b": [p[1] for p in pairs]}, orient="row")
    df = df.cast(pl.String)
    assert _order.is_sorted_by(df, ["a", "b"]) == df.equals(df.sort("a", "b"))
    distinct = _order.distinct(df.sort("a")["a"])
    assert sorted(distinct.to_list()) == sorted(set(df["a"].to_list()))
    repeated = _order.repeated_values(df["b"])
    assert sorted(repeated.to_list()) == sorted(
        {v for v in df["b"] if df["b"].to_list().count(v) > 1}
    )


def test_repeated_values_stay_exact_when_every_hash_collides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = pl.Series("k", ["b", "a", "c", "a", None, "d", "b", None])
    assert sorted(_order.repeated_values(keys).to_list()) == ["a", "b"]
    monkeypatch.setattr(
        pl.Series, "hash", lambda self, *a, **kw: pl.Series([0] * self.len(), dtype=pl.UInt64)
    )
    assert sorted(_order.repeated_values(keys).to_list()) == ["a", "b"]
    assert _order.repeated_values(pl.Series("k", ["x", "z", "y"])).to_list() == []


def test_a_full_disk_midway_through_an_import_leaves_nothing_behind(
    local_lake: lv.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds, fids = _many_frames(local_lake, monkeypatch)
    head = ds.head
    folder = Path(ds.root.child("labels").uri)
    before = {p.name for p in folder.glob("*.parquet")}
    real_put = Location.put
    stored: list[str] = []

    def put(self: Location, data: bytes) -> None:
        if self.name.startswith("part-") and "/labels/" in self.uri:
            stored.append(self.name)
            if len(stored) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_put(self, data)

    monkeypatch.setattr(Location, "put", put)
    with pytest.raises(StorageError, match="No space left"):
        ds.upsert_labels(labels(fids, per_frame=3))
    monkeypatch.setattr(Location, "put", real_put)
    assert len(stored) >= 3
    assert ds.head == head
    assert {p.name for p in folder.glob("*.parquet")} == before  # the files it wrote are gone
    assert ds.upsert_labels(labels(fids, per_frame=3)).counts["labels"].added == 9000
