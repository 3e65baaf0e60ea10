"""Maintenance run from outside (VACUUM, OPTIMIZE) cannot break a snapshot or brick HEAD."""

from __future__ import annotations

import pytest
from deltalake import DeltaTable, write_deltalake

import lakever as lv
from lakever import _delta
from tests.helpers import CLASSES, content_hash, frames, labels


@pytest.fixture
def ds(lake: lv.Lake) -> lv.Dataset:
    d = lake.create_dataset("kept", classes=CLASSES)
    for i in range(3):
        d.add_frames(frames(range(i * 4, i * 4 + 4)))
    d.upsert_labels(labels([f"f{i:05d}" for i in range(12)]))
    return d


def _table(ds: lv.Dataset, table: str) -> DeltaTable:
    return DeltaTable(ds.root.child(table).uri, storage_options=ds.root.delta_options())


def test_default_vacuum_deletes_nothing_a_snapshot_needs(ds: lv.Dataset) -> None:
    ds.create_snapshot("old")
    before = content_hash(ds.at("old"))
    ds.delete_frames(["f00000", "f00001"])
    for table in ("frames", "labels", "snapshots"):
        dt = _table(ds, table)
        assert dt.metadata().configuration["delta.deletedFileRetentionDuration"] == _delta.RETENTION
        assert dt.vacuum(dry_run=False) == []  # a scheduled default VACUUM
        with pytest.raises(Exception, match="retention"):
            dt.vacuum(retention_hours=0, dry_run=False)  # refused unless forced
    assert content_hash(ds.at("old")) == before


def test_tables_of_older_lakes_get_the_guard_on_their_next_write(ds: lv.Dataset) -> None:
    dt = _table(ds, "frames")
    dt.alter.set_table_properties({"delta.deletedFileRetentionDuration": "interval 7 days"})
    ds.add_frames(frames(["late"]))  # the outside SET TBLPROPERTIES is built upon
    config = _table(ds, "frames").metadata().configuration
    assert config["delta.deletedFileRetentionDuration"] == _delta.RETENTION
    assert "late" in ds.read("frames")["frame_id"].to_list()


def test_outside_optimize_then_forced_vacuum_leaves_the_lake_writable(ds: lv.Dataset) -> None:
    ds.create_snapshot("before")
    expected = sorted(ds.read("frames")["frame_id"])
    dt = _table(ds, "frames")
    dt.optimize.compact()
    dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    # HEAD's recorded frames version lost its files; it says so, with the version
    with pytest.raises(lv.VersionUnavailableError, match="repair") as info:
        ds.read("frames")
    assert info.value.table == "frames" and info.value.missing
    report = ds.repair()
    assert set(report.unreadable["ref"]) == {"HEAD", "before"}
    assert report.unreadable["rows_lost"].to_list() == [12, 12]
    # a write builds on the compacted version (same rows) instead of restoring
    c = ds.add_frames(frames(["new"]))
    assert sorted(ds.read("frames")["frame_id"]) == sorted([*expected, "new"])
    assert c.counts["frames"] == lv.ChangeCounts(added=1)
    assert ds.read("labels").height == 24
    with pytest.raises(lv.VersionUnavailableError):
        ds.at("before").read("frames")  # reported, never silently empty


def test_forced_vacuum_after_an_outside_write_is_repaired_not_restored(ds: lv.Dataset) -> None:
    uri = ds.root.child("labels").uri
    opts = ds.root.delta_options()
    write_deltalake(uri, labels(["f00000"], start=50).to_arrow(), mode="overwrite",
                    storage_options=opts)  # fmt: skip
    dt = _table(ds, "labels")
    dt.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    head = ds.head
    with pytest.raises(lv.VersionUnavailableError):
        ds.upsert_labels(labels(["f00001"], start=9))  # never restores onto missing files
    assert ds.head == head
    plan = ds.repair()
    assert plan.head_broken and plan.commit is None and not plan.applied
    assert ds.head == head  # a plan writes nothing
    done = ds.repair(apply=True)
    assert done.commit is not None and done.commit.operation == "repair"
    assert done.commit.counts["labels"] == lv.ChangeCounts(deleted=24)
    assert ds.read("labels").height == 0  # what was lost is gone, and said so
    ds.upsert_labels(labels(["f00001"], start=9))  # writable again
    assert sorted(ds.read("labels")["label_id"]) == ["f00001-l10", "f00001-l9"]
    assert not ds.repair().head_broken


def test_merges_keep_files_near_the_target_size(
    local_lake: lv.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """delta-rs sizes MERGE output from the table property, which every table carries."""
    import numpy as np
    import polars as pl

    target = 256 * 1024
    monkeypatch.setattr(_delta, "TARGET_FILE_SIZE", target)
    monkeypatch.setitem(_delta.REQUIRED_PROPERTIES, "delta.targetFileSize", str(target))
    monkeypatch.setitem(_delta.TABLE_CONFIGURATION, "delta.targetFileSize", str(target))
    ds = local_lake.create_dataset("sized", classes=CLASSES)
    n = 40_000
    rng = np.random.default_rng(1)
    fids = [f"f{i:05d}" for i in range(n // 10)]
    ds.add_frames(frames(fids))
    rows = labels(fids, per_frame=10).with_columns(
        pl.Series("x", rng.random(n) * 1000), pl.Series("noise", rng.random(n))
    )
    ds.upsert_labels(rows)
    edited = rows.gather(list(range(0, n, 397))).with_columns(pl.lit("bike").alias("cls"))
    c = ds.upsert_labels(edited)  # scattered: one MERGE across the whole table
    assert c.counts["labels"] == lv.ChangeCounts(modified=edited.height)
    sizes = _delta.data_files(ds.table_location("labels"), c.table_versions["labels"])
    assert sizes.height >= 3  # split, not one big file
    assert sizes["size_bytes"].max() < 3 * target  # type: ignore[operator]
    config = _table(ds, "labels").metadata().configuration
    assert config["delta.targetFileSize"] == str(target)
