from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

import lakever as lv
from lakever.info import DatasetInfo
from tests.helpers import CLASSES, frames


def test_create_open_and_exist_ok(lake: lv.Lake) -> None:
    ds = lake.create_dataset("a", classes=CLASSES, project="p1", tags=("x", "y"), description="dd")
    assert lake.dataset("a").info == ds.info
    with pytest.raises(lv.DatasetExistsError, match="'a'"):
        lake.create_dataset("a", classes=CLASSES)
    assert lake.create_dataset("a", classes=["other"], exist_ok=True).classes == tuple(CLASSES)
    with pytest.raises(lv.DatasetNotFoundError, match="'zzz'"):
        lake.dataset("zzz")


def test_list_datasets_filters(lake: lv.Lake) -> None:
    t0 = datetime.now(timezone.utc)
    lake.create_dataset("traffic-day", classes=CLASSES, project="road", tags=("day",))
    lake.create_dataset("traffic-night", classes=CLASSES, project="road", tags=("night",))
    other = lake.create_dataset("indoor", classes=CLASSES, project="retail")
    mid = datetime.now(timezone.utc)
    other.add_frames(frames(range(2)))
    assert lake.list_datasets()["name"].to_list() == ["indoor", "traffic-day", "traffic-night"]
    assert lake.list_datasets(name_like="traffic")["name"].to_list() == [
        "traffic-day",
        "traffic-night",
    ]
    assert lake.list_datasets(name_like="*-day")["name"].to_list() == ["traffic-day"]
    assert lake.list_datasets(project="retail")["name"].to_list() == ["indoor"]
    assert lake.list_datasets(tag="night")["name"].to_list() == ["traffic-night"]
    assert lake.list_datasets(edited_after=mid)["name"].to_list() == ["indoor"]
    assert lake.list_datasets(created_after=t0).height == 3
    assert lake.list_datasets(created_before=t0 - timedelta(seconds=1)).height == 0
    row = lake.list_datasets(name_like="indoor").row(0, named=True)
    assert row["head_seq"] == 1


def test_delete_dataset_refuses_with_snapshots(lake: lv.Lake) -> None:
    ds = lake.create_dataset("gone", classes=CLASSES)
    ds.create_snapshot("s")
    with pytest.raises(lv.SnapshotsExistError, match="force=True"):
        lake.delete_dataset("gone")
    assert lake.dataset("gone").head.seq == 0
    ds.add_frames(frames(range(3)))
    lake.delete_dataset("gone", force=True)
    with pytest.raises(lv.DatasetNotFoundError):
        lake.dataset("gone")
    again = lake.create_dataset("gone", classes=["a"])
    assert again.classes == ("a",)
    again.add_frames(frames(range(5, 6)))  # same name, same table versions as before
    assert again.read("frames")["frame_id"].to_list() == ["f00005"]


def test_connect_defaults(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert lv.connect().uri == str(tmp_path / "lakever-data")
    monkeypatch.setenv("LAKEVER_URI", str(tmp_path / "elsewhere"))
    assert lv.connect().uri == str(tmp_path / "elsewhere")
    assert lv.connect(f"file://{tmp_path}/x").uri == str(tmp_path / "x")
    assert lv.connect("s3://bucket/pre/").uri == "s3://bucket/pre"
    with pytest.raises(lv.StorageError, match="gs"):
        lv.connect("gs://bucket/x")


def test_secrets_are_not_shown(tmp_path) -> None:
    lake = lv.connect(
        "s3://b/p", storage_options={"AWS_SECRET_ACCESS_KEY": "hunter2", "AWS_REGION": "x"}
    )
    assert "hunter2" not in repr(lake.root)
    assert "***" in repr(lake.root)


def test_interrupted_creation_is_finished_only_by_creation(local_lake: lv.Lake) -> None:
    """A crash after dataset.json but before commit 0: reads and writes refuse, never create."""
    info = DatasetInfo.new(
        "half", project=None, description="", tags=(), creator="t", classes=tuple(CLASSES)
    )
    root = local_lake.root.child("datasets", "half")
    assert root.child("_lakever", "dataset.json").put_if_absent(info.to_json())
    ds = local_lake.dataset("half")
    for call in (lambda: ds.add_frames(frames(range(2))), ds.log, lambda: ds.read("frames")):
        with pytest.raises(lv.DatasetNotFoundError, match="exist_ok=True"):
            call()
    assert root.list_names() == ["_lakever"]  # nothing was written
    assert local_lake.list_datasets().height == 0
    assert local_lake.invalid_entries()["name"].to_list() == ["half"]
    again = local_lake.create_dataset("half", classes=["other"], exist_ok=True)
    assert [(c.seq, c.operation) for c in again.log()] == [(0, "create")]
    assert again.classes == tuple(CLASSES)
    assert again.add_frames(frames(range(2))).seq == 1
    assert again.list_snapshots() == []
