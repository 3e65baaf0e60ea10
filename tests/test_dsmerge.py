"""Merging datasets: class maps checked and remapped, equal frames kept once, collisions."""

from __future__ import annotations

import json
import random
import signal
import time

import polars as pl
import pytest

import lakever as lv
from tests.helpers import CLASSES, frames, labels, table_hash
from tests.test_cli import run
from tests.test_crash_and_concurrency import spawn, wait_ready

SHARED = [f"f{i:05d}" for i in range(10)]
ONLY_A = [f"f{i:05d}" for i in range(10, 20)]
ONLY_B = [f"f{i:05d}" for i in range(20, 30)]


def _vendor(lake: lv.Lake, name: str, fids: list[str], *, classes: list[str] = CLASSES,
            cls: str = "car", prefix: str = "l") -> lv.Dataset:  # fmt: skip
    ds = lake.create_dataset(name, classes=classes)
    ds.add_frames(frames(fids))
    rows = labels(fids, per_frame=1, cls=cls)
    ds.upsert_labels(rows.with_columns(pl.col("label_id").str.replace("-l", f"-{prefix}")))
    return ds


def test_shared_frames_are_kept_once_and_labels_are_unioned(local_lake: lv.Lake) -> None:
    a = _vendor(local_lake, "vendor-a", SHARED + ONLY_A, prefix="a")
    b = _vendor(local_lake, "vendor-b", SHARED + ONLY_B, prefix="b", cls="person")
    report = local_lake.merge_datasets(["vendor-a", b], "all", project="p")
    ds = local_lake.dataset("all")
    want_frames = pl.concat([a.read("frames"), b.read("frames")]).unique()
    assert table_hash(ds.read("frames")) == table_hash(want_frames)
    want_labels = pl.concat([a.read("labels"), b.read("labels")])
    assert table_hash(ds.read("labels")) == table_hash(want_labels)
    assert report.deduplicated["frames"] == len(SHARED)
    assert report.deduplicated["labels"] == 0
    assert report.counts["frames"].added == 30 and report.counts["labels"].added == 40
    assert report.collisions.height == 0 and report.remapped.height == 0
    assert report.dataset.name == "all" and ds.project == "p"
    head = ds.head
    assert head.operation == "merge-datasets" and head.id == report.commit.id
    sources = head.meta["merge-datasets"]["sources"]
    assert [(s["dataset"], s["seq"]) for s in sources] == [
        ("vendor-a", a.head.seq),
        ("vendor-b", b.head.seq),
    ]
    assert sources[0]["id"] == a.info.id


def test_different_class_maps_are_refused_unless_mapped(local_lake: lv.Lake) -> None:
    _vendor(local_lake, "vendor-a", SHARED, classes=["car", "person"], prefix="a")
    _vendor(local_lake, "vendor-b", ONLY_B, classes=["car", "pedestrian", "van"],
            cls="pedestrian", prefix="b")  # fmt: skip
    with pytest.raises(lv.ClassMapMismatchError) as err:
        local_lake.merge_datasets(["vendor-a", "vendor-b"], "all")
    got = {d["class"]: (d["in"], d["missing_from"]) for d in err.value.differences}
    assert got == {
        "person": (["vendor-a"], ["vendor-b"]),
        "pedestrian": (["vendor-b"], ["vendor-a"]),
        "van": (["vendor-b"], ["vendor-a"]),
    }
    assert "pedestrian" in str(err.value)
    with pytest.raises(lv.ClassMapMismatchError, match="van"):
        local_lake.merge_datasets(
            ["vendor-a", "vendor-b"], "all", class_map={"vendor-b": {"pedestrian": "person"}}
        )
    assert "all" not in set(local_lake.list_datasets()["name"])
    report = local_lake.merge_datasets(
        ["vendor-a", "vendor-b"],
        "all",
        class_map={"vendor-b": {"pedestrian": "person", "van": "car"}},
    )
    ds = local_lake.dataset("all")
    assert ds.classes == ("car", "person")
    assert ds.read("labels").filter(pl.col("frame_id").is_in(ONLY_B))["cls"].unique().to_list() == [
        "person"
    ]
    assert report.remapped.rows() == [("vendor-b", "labels", "pedestrian", "person", 10)]
    with pytest.raises(lv.InvalidInputError, match="vendor-z"):
        local_lake.merge_datasets(["vendor-a"], "x", class_map={"vendor-z": {"a": "b"}})


def _colliding(lake: lv.Lake) -> tuple[lv.Dataset, lv.Dataset]:
    a = _vendor(lake, "vendor-a", SHARED + ONLY_A, prefix="a")
    b = lake.create_dataset("vendor-b", classes=CLASSES)
    moved = frames(SHARED[:2]).with_columns(pl.col("width") * 2)  # same ids, new content
    b.add_frames(pl.concat([moved, frames(SHARED[2:] + ONLY_B)]))
    rows = labels(SHARED[:2] + ONLY_B, per_frame=1, cls="person")
    b.upsert_labels(rows.with_columns(pl.col("label_id").str.replace("-l", "-b")))
    clash = labels([ONLY_A[0]], per_frame=1, cls="truck").with_columns(
        pl.col("label_id").str.replace("-l", "-a")
    )
    b.add_frames(frames([ONLY_A[0]]))
    b.upsert_labels(clash)  # label f00010-a0: truck here, car in vendor-a
    return a, b


def test_collisions_fail_skip_or_get_a_suffix(local_lake: lv.Lake) -> None:
    a, _ = _colliding(local_lake)
    with pytest.raises(lv.MergeConflictError) as err:
        local_lake.merge_datasets(["vendor-a", "vendor-b"], "all")
    got = {(r["table"], r["key"]) for r in err.value.conflicts.to_dicts()}
    assert got == {("frames", SHARED[0]), ("frames", SHARED[1]), ("labels", f"{ONLY_A[0]}-a0")}
    assert "all" not in set(local_lake.list_datasets()["name"])
    assert local_lake.invalid_entries().height == 0
    skip = local_lake.merge_datasets(["vendor-a", "vendor-b"], "skip", on_collision="skip")
    ds = local_lake.dataset("skip")
    assert set(ds.read("frames").filter(pl.col("frame_id").is_in(SHARED[:2]))["width"]) == {640}
    assert ds.read("labels").filter(pl.col("label_id") == f"{ONLY_A[0]}-a0")["cls"][0] == "car"
    assert set(skip.collisions["resolution"]) == {"skipped"}
    suffix = local_lake.merge_datasets(["vendor-a", "vendor-b"], "sfx", on_collision="suffix")
    ds = local_lake.dataset("sfx")
    renamed = {r["key"]: r["renamed_to"] for r in suffix.collisions.to_dicts()}
    assert renamed[SHARED[0]] == f"{SHARED[0]}-vendor-b"
    moved = ds.read("frames").filter(pl.col("frame_id") == f"{SHARED[0]}-vendor-b")
    assert moved["width"].to_list() == [1280]
    # vendor-b's label on that frame follows the renamed frame
    follow = ds.read("labels").filter(pl.col("label_id") == f"{SHARED[0]}-b0")
    assert follow["frame_id"].to_list() == [f"{SHARED[0]}-vendor-b"]
    relabel = ds.read("labels").filter(pl.col("label_id") == f"{ONLY_A[0]}-a0-vendor-b")
    assert relabel["cls"].to_list() == ["truck"]
    assert ds.read("frames").height == a.read("frames").height + len(ONLY_B) + 2


def test_inference_sets_merge_like_labels_and_are_pinned_to_the_merge(
    local_lake: lv.Lake,
) -> None:
    a = _vendor(local_lake, "vendor-a", SHARED, prefix="a")
    b = _vendor(local_lake, "vendor-b", SHARED, prefix="b")
    preds = labels(SHARED, per_frame=1).with_columns(confidence=pl.lit(0.5))
    a.upsert_inferences("yolo", preds)
    b.upsert_inferences("yolo", preds.with_columns(pl.col("label_id") + "x"))
    b.upsert_inferences("ssd", preds)
    report = local_lake.merge_datasets([a, b.at("HEAD")], "all")
    ds = local_lake.dataset("all")
    assert ds.read("inferences/yolo").height == 2 * len(SHARED)
    assert ds.read("inferences/ssd").height == len(SHARED)
    assert ds.head.pins == {"yolo": report.commit.seq, "ssd": report.commit.seq}


def test_sources_can_be_snapshots(local_lake: lv.Lake) -> None:
    a = _vendor(local_lake, "vendor-a", SHARED, prefix="a")
    a.create_snapshot("done")
    a.delete_labels([f"{SHARED[0]}-a0"])
    _vendor(local_lake, "vendor-b", ONLY_B, prefix="b")
    local_lake.merge_datasets([a.at("done"), "vendor-b"], "all")
    got = local_lake.dataset("all").read("labels")
    assert f"{SHARED[0]}-a0" in set(got["label_id"]) and got.height == 20


def test_merge_from_adds_sources_to_an_existing_dataset(local_lake: lv.Lake) -> None:
    a, _ = _colliding(local_lake)
    before = a.head
    with pytest.raises(lv.MergeConflictError):
        a.merge_from(["vendor-b"])
    assert a.head.id == before.id
    report = a.merge_from(["vendor-b"], on_collision="skip", message="vendor b in")
    assert a.head.id == report.commit.id and a.head.parent == before.id
    assert a.head.message == "vendor b in"
    assert report.counts["frames"].added == len(ONLY_B)
    assert set(a.read("frames").filter(pl.col("frame_id").is_in(SHARED[:2]))["width"]) == {640}
    assert a.read("labels").height == len(SHARED + ONLY_A) + len(ONLY_B) + 2  # b0 of SHARED[:2]
    assert [s["dataset"] for s in a.head.meta["merge-datasets"]["sources"]] == [
        "vendor-a",
        "vendor-b",
    ]


def test_merge_datasets_command(local_lake: lv.Lake) -> None:
    _vendor(local_lake, "vendor-a", SHARED, classes=["car", "person"], prefix="a")
    _vendor(local_lake, "vendor-b", ONLY_B, classes=["car", "pedestrian"], cls="pedestrian",
            prefix="b")  # fmt: skip
    uri = local_lake.uri
    code, out, err = run("merge-datasets", "vendor-a", "vendor-b", "--into", "all", "--uri", uri)
    assert code != 0 and "pedestrian" in err
    code, out, err = run("merge-datasets", "vendor-a", "vendor-b", "--into", "all", "--uri", uri,
                         "--map", "vendor-b:pedestrian=person", "--json")  # fmt: skip
    assert code == 0, err
    body = json.loads(out)
    assert body["rows"] == {"frames": 20, "labels": 20} and body["remapped"][0]["rows"] == 10
    code, out, err = run("merge-datasets", "vendor-a", "--into", "x", "--uri", uri,
                         "--map", "vendor-a:car")  # fmt: skip
    assert code != 0 and "SOURCE:FROM=TO" in err


@pytest.mark.slow
def test_a_merge_killed_at_random_points_leaves_nothing_or_everything(
    lake: lv.Lake, lake_uri: tuple[str, dict[str, str]]
) -> None:
    a = _vendor(lake, "vendor-a", SHARED + ONLY_A, prefix="a")
    b = _vendor(lake, "vendor-b", SHARED + ONLY_B, prefix="b")
    want = table_hash(pl.concat([a.read("labels"), b.read("labels")]))
    rng = random.Random(3)
    outcomes = set()
    for round_ in range(4):
        name = f"m{round_}"
        proc = spawn("merge-datasets", lake.uri, "vendor-a", name, 0, lake_uri[1],
                     LAKEVER_TEST_PAUSE_BEFORE_PUBLISH="0.5")  # fmt: skip
        wait_ready(proc)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if name not in set(lake.list_datasets()["name"]):
            outcomes.add("nothing")
            with pytest.raises(lv.DatasetNotFoundError):
                lake.dataset(name)
            lake.merge_datasets(["vendor-a", "vendor-b"], name)  # the name is free again
        else:
            outcomes.add("complete")
        assert table_hash(lake.dataset(name).read("labels")) == want
    assert "nothing" in outcomes


def test_merge_from_plans_again_when_its_target_moves(
    local_lake: lv.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lakever import dsmerge

    a = _vendor(local_lake, "vendor-a", SHARED, prefix="a")
    _vendor(local_lake, "vendor-b", ONLY_B, prefix="b")
    real = dsmerge.plan
    calls = []

    def racing(*args: object, **kw: object) -> object:
        calls.append(1)
        if len(calls) == 1:  # another writer commits to the target right after the first plan
            local_lake.dataset("vendor-a").upsert_labels(labels(SHARED[:1], per_frame=1, start=7))
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(dsmerge, "plan", racing)
    report = a.merge_from(["vendor-b"])
    assert len(calls) == 2  # planned again on the moved head
    got = set(a.read("labels")["label_id"])
    assert f"{SHARED[0]}-l7" in got  # the racing commit is kept
    assert {f"{f}-b0" for f in ONLY_B} <= got and report.commit.parent == a.log()[1].id
