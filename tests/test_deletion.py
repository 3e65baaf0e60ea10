"""Deleted datasets stay deleted; deletion is crash-safe and resumable (local and S3)."""

from __future__ import annotations

import random
import signal
import time

import pytest

import lakever as lv
from lakever.info import default_author
from tests.helpers import CLASSES, frames, labels
from tests.test_crash_and_concurrency import spawn, wait_ready


def _keys(lake: lv.Lake, name: str) -> list[str]:
    root = lake.root.child("datasets", name)
    return sorted(root.fs.find(root.path))


def test_stale_handle_refuses_reads_and_writes_and_creates_nothing(lake: lv.Lake) -> None:
    ds = lake.create_dataset("gone", classes=CLASSES)
    ds.add_frames(frames(range(3)))
    ds.read("frames")  # caches commits and table objects in this handle
    lake.delete_dataset("gone")
    for call in (
        lambda: ds.read("frames"),
        lambda: ds.add_frames(frames(range(5, 6))),
        ds.log,
        lambda: ds.create_snapshot("s"),
        lambda: ds.at(1),
    ):
        with pytest.raises(lv.DatasetNotFoundError, match="deleted"):
            call()
    assert _keys(lake, "gone") == []  # no ghost tables, no commit 0
    with pytest.raises(lv.DatasetNotFoundError):
        lake.dataset("gone")


def test_recreated_name_starts_fresh_and_stale_handle_stays_refused(lake: lv.Lake) -> None:
    old = lake.create_dataset("name", classes=CLASSES)
    old.add_frames(frames(range(4)))
    old.create_snapshot("s1")
    lake.delete_dataset("name", force=True)
    new = lake.create_dataset("name", classes=["tram"])
    new.add_frames(frames(range(10, 11)))  # same table versions as the old dataset had
    assert new.classes == ("tram",)
    assert new.list_snapshots() == []
    assert new.read("frames")["frame_id"].to_list() == ["f00010"]
    with pytest.raises(lv.DatasetNotFoundError, match="created again"):
        old.read("frames")
    with pytest.raises(lv.DatasetNotFoundError):
        old.add_frames(frames(range(20, 21)))
    assert new.read("frames")["frame_id"].to_list() == ["f00010"]


@pytest.mark.parametrize("cut", [0.3, 0.9])
def test_interrupted_deletion_is_finished_by_deleting_again(lake: lv.Lake, cut: float) -> None:
    ds = lake.create_dataset("half", classes=CLASSES)
    for i in range(4):
        ds.add_frames(frames(range(i, i + 1)))
    ds.upsert_labels(labels(["f00000"]))
    ds.create_snapshot("s")
    # What a deletion killed part-way leaves: the tombstone commit, dataset.json
    # gone, a share of the commit records removed oldest first, tables untouched.
    ds._runner.publish_tombstone(author=default_author())
    ds.root.child("_lakever", "dataset.json").remove()
    records = ds.root.child("_lakever", "commits")
    names = records.list_names()
    for name in names[: int(len(names) * cut)]:
        records.child(name).remove()
    with pytest.raises(lv.DatasetNotFoundError):
        lake.dataset("half")
    with pytest.raises(lv.DatasetNotFoundError):
        ds.read("frames")
    assert lake.list_datasets().height == 0
    assert lake.invalid_entries()["name"].to_list() == ["half"]
    with pytest.raises(lv.DatasetExistsError, match="delete_dataset"):
        lake.create_dataset("half", classes=CLASSES)
    lake.delete_dataset("half")
    assert _keys(lake, "half") == []
    fresh = lake.create_dataset("half", classes=["a"])
    assert fresh.list_snapshots() == [] and fresh.head.seq == 0
    assert fresh.add_frames(frames(range(1))).seq == 1


@pytest.mark.slow
def test_writer_racing_a_delete_is_refused_never_acknowledged_into_nothing(
    lake: lv.Lake, lake_uri: tuple[str, dict[str, str]]
) -> None:
    ds = lake.create_dataset("raced", classes=CLASSES)
    proc = spawn("until-gone", lake.uri, "raced", "w", 100000, lake_uri[1])
    wait_ready(proc)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("ACK"), first
    lake.delete_dataset("raced")
    out, err = proc.communicate(timeout=300)
    lines = [first.strip(), *out.splitlines()]
    assert lines[-1] == "GONE", (lines[-3:], err[-2000:])
    assert all(line.startswith("ACK") for line in lines[:-1])
    # whatever the writer left behind is no dataset, and deleting again clears it
    with pytest.raises(lv.DatasetNotFoundError):
        ds.read("frames")
    assert lake.list_datasets().height == 0
    if _keys(lake, "raced"):
        lake.delete_dataset("raced")
    assert lake.create_dataset("raced", classes=CLASSES).read("frames").height == 0


@pytest.mark.slow
def test_delete_killed_at_random_points_can_be_finished(
    lake: lv.Lake, lake_uri: tuple[str, dict[str, str]]
) -> None:
    rng = random.Random(11)
    for round_ in range(6):
        name = f"victim-{round_}"
        ds = lake.create_dataset(name, classes=CLASSES)
        for i in range(4):
            ds.add_frames(frames(range(i * 5, i * 5 + 5)))
        ds.create_snapshot("s")
        proc = spawn("delete", lake.uri, name, "d", 0, lake_uri[1])
        wait_ready(proc)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        try:
            lake.delete_dataset(name, force=True)
        except lv.DatasetNotFoundError:
            assert _keys(lake, name) == []  # the killed deletion had finished
        assert _keys(lake, name) == []
        again = lake.create_dataset(name, classes=["x"])
        assert again.classes == ("x",) and again.read("frames").height == 0
        assert again.list_snapshots() == []
