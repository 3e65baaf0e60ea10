"""Snapshots, refs, read-only views, time travel and revert, on local disk and S3."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

import lakever as lv
from tests.helpers import CLASSES, content_hash, frames, labels


@pytest.fixture
def ds(lake: lv.Lake) -> lv.Dataset:
    d = lake.create_dataset("snaps", classes=CLASSES)
    d.add_frames(frames(range(6)))
    d.upsert_labels(labels([f"f{i:05d}" for i in range(6)]))
    return d


def test_snapshot_records_every_table_version(ds: lv.Dataset) -> None:
    snap = ds.create_snapshot("v1", description="first", metadata={"split": "train", "n": 3})
    assert snap.commit_seq == ds.head.seq == 2
    assert snap.commit_id == ds.head.id
    assert dict(snap.table_versions) == dict(ds.head.table_versions)
    got = ds.snapshot("v1")
    assert dataclasses.replace(got, changes=None) == snap
    assert got.previous is None
    assert got.changes == {
        "frames": lv.ChangeCounts(added=6),
        "labels": lv.ChangeCounts(added=12),
    }
    assert got.metadata == {"split": "train", "n": 3}
    assert got.creator == "tester"
    with pytest.raises(lv.SnapshotExistsError, match="v1"):
        ds.create_snapshot("v1")
    assert [s.name for s in ds.list_snapshots()] == ["v1"]


def test_default_snapshot_name_is_timestamped(ds: lv.Dataset) -> None:
    snap = ds.create_snapshot()
    prefix = f"snap-{ds.head.seq}-"
    assert snap.name.startswith(prefix) and " " not in snap.name and ":" not in snap.name
    stamp = datetime.strptime(snap.name.removeprefix(prefix), "%Y%m%dT%H%M%S%fZ")
    assert abs(stamp.replace(tzinfo=timezone.utc) - snap.created_at) < timedelta(seconds=1)
    assert ds.at(snap.name).commit.seq == ds.head.seq  # typed back as a ref


def test_snapshot_of_past_ref_and_delete(ds: lv.Dataset) -> None:
    snap = ds.create_snapshot("frames-only", ref=1)
    assert snap.commit_seq == 1
    assert ds.at("frames-only").read("labels").height == 0
    ds.delete_snapshot("frames-only")
    with pytest.raises(lv.SnapshotNotFoundError):
        ds.snapshot("frames-only")
    with pytest.raises(lv.SnapshotNotFoundError):
        ds.delete_snapshot("frames-only")


def test_refs_resolve_every_way(ds: lv.Dataset) -> None:
    ds.create_snapshot("v1")
    ds.delete_labels(["f00000-l0"])
    c1 = ds.log()[2]
    assert ds.resolve("v1").seq == 2
    assert ds.resolve(1).id == c1.id
    assert ds.resolve("1").id == c1.id
    assert ds.resolve(c1.id).seq == 1
    assert ds.resolve(c1.id[:8]).seq == 1
    assert ds.resolve("HEAD").seq == 3
    assert ds.resolve(c1.created_at).seq == 1
    assert ds.resolve(c1.created_at.isoformat()).seq == 1
    assert ds.resolve(datetime.now(timezone.utc)).seq == 3
    with pytest.raises(lv.InvalidRefError, match="nonsense"):
        ds.resolve("nonsense")
    with pytest.raises(lv.CommitNotFoundError):
        ds.resolve(99)


def test_datetime_before_first_commit_is_an_error(ds: lv.Dataset) -> None:
    with pytest.raises(lv.CommitNotFoundError, match="first commit"):
        ds.at(ds.log()[-1].created_at - timedelta(seconds=1))


def test_view_reads_its_version_and_refuses_writes(ds: lv.Dataset) -> None:
    view = ds.at(1)
    ds.delete_frames(["f00000"])
    assert view.read("frames").height == 6
    assert view.read("labels").height == 0
    assert ds.read("frames").height == 5
    uri, version = view.delta_table("frames")
    assert version == view.commit.table_versions["frames"]
    direct = pl.read_delta(uri, version=version, storage_options=ds.root.delta_options())
    assert direct.height == 6
    for call in (
        lambda: view.add_frames(frames(range(9, 10))),
        lambda: view.upsert_labels(labels(["f00001"])),
        lambda: view.revert(0),
        lambda: view.create_snapshot("x"),
        lambda: view.transaction(),
    ):
        with pytest.raises(lv.ReadOnlyError, match="read-only view"):
            call()
    assert ds.head.seq == 3


@pytest.mark.slow
def test_snapshot_never_changes(ds: lv.Dataset) -> None:
    ds.create_snapshot("frozen")
    before = content_hash(ds.at("frozen"))
    for i in range(60):  # past six checkpoints
        if i % 3 == 0:
            ds.upsert_labels(labels([f"f{i % 6:05d}"], cls=CLASSES[i % 4], start=i + 10))
        elif i % 3 == 1:
            ds.delete_labels([f"f{(i - 1) % 6:05d}-l{i + 9}"])
        else:
            ds.update_frames([{"frame_id": f"f{i % 6:05d}", "width": 100 + i}])
    assert ds.head.seq == 62
    assert content_hash(ds.at("frozen")) == before
    assert content_hash(ds.at("frozen")) != content_hash(ds)


def test_revert_is_exact_and_keeps_history(ds: lv.Dataset) -> None:
    ds.create_snapshot("good")
    good = content_hash(ds)
    ds.upsert_labels(labels(["f00001"], cls="truck"))
    ds.upsert_inferences("m", labels(["f00002"]).with_columns(confidence=pl.lit(0.3)))
    ds.delete_frames(["f00003"])
    ds.extend_classes(["tram"])
    bad_head = ds.head
    r = ds.revert("good")
    assert r.seq == bad_head.seq + 1
    assert r.operation == "revert"
    assert content_hash(ds) == good
    assert ds.tables == ["frames", "labels"]
    assert ds.classes == tuple(CLASSES)
    assert r.counts["frames"] == lv.ChangeCounts(added=1)
    assert r.counts["labels"] == lv.ChangeCounts(added=2, modified=2)
    assert len(ds.log()) == bad_head.seq + 2
    # the revert is itself undoable
    ds.revert(bad_head.seq)
    assert content_hash(ds) == content_hash(ds.at(bad_head.seq))
    # and reverting to where you are changes nothing
    assert ds.revert("HEAD") == ds.head


def test_revert_discarding_newer_snapshots(ds: lv.Dataset) -> None:
    ds.create_snapshot("keep")
    ds.delete_labels(["f00000-l0"])
    ds.create_snapshot("newer-1")
    ds.delete_labels(["f00000-l1"])
    ds.create_snapshot("newer-2")
    ds.revert("keep")
    assert [s.name for s in ds.list_snapshots()] == ["keep", "newer-1", "newer-2"]
    ds.revert("keep", discard_newer_snapshots=True)
    assert [s.name for s in ds.list_snapshots()] == ["keep"]


def test_tag_table_is_readable_without_lakever(ds: lv.Dataset) -> None:
    ds.create_snapshot("v1")
    ds.upsert_inferences("m", labels(["f00002"]).with_columns(confidence=pl.lit(0.3)))
    ds.create_snapshot("v2")
    opts = ds.root.delta_options()
    root = ds.root.uri
    tags = pl.read_delta(f"{root}/snapshots", storage_options=opts)
    row = tags.filter(pl.col("name") == "v2").row(0, named=True)
    versions = {t["table"]: (t["uri"], t["version"]) for t in row["tables"]}
    assert row["labels_version"] == versions["labels"][1]
    path, version = versions["inferences/m"]
    assert path == "inferences/m"  # relative to the dataset root: the lake can move
    assert pl.read_delta(f"{root}/{path}", version=version, storage_options=opts).height == 2
    assert content_hash(ds.at("v2"))["labels"] == content_hash(ds)["labels"]


def test_unknown_table_names_are_lookup_errors(ds: lv.Dataset) -> None:
    with pytest.raises(lv.TableNotFoundError, match="'bogus'"):
        ds.read("bogus")
    with pytest.raises(lv.TableNotFoundError, match="inferences/none"):
        ds.scan("inferences/none")
