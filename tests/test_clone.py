"""Clones: a new dataset from another's version, filtered or not, sharing files instead of rows."""

from __future__ import annotations

import random
import signal
import time
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

import lakever as lv
from tests.helpers import CLASSES, frames, labels, table_hash
from tests.test_cli import run
from tests.test_crash_and_concurrency import spawn, wait_ready

FIDS = [f"f{i:05d}" for i in range(40)]


def _preds(fids: list[str]) -> pl.DataFrame:
    rows = labels(fids, per_frame=1)
    return rows.with_columns(
        pl.col("x") + 1.0, confidence=pl.Series([0.1 + 0.02 * i for i in range(rows.height)])
    )


def _street(lake: lv.Lake, name: str = "street", **kw: str) -> lv.Dataset:
    ds = lake.create_dataset(name, classes=CLASSES, **kw)  # type: ignore[arg-type]
    ds.add_frames(frames(FIDS, group_id=[f"cam{i % 2}" for i in range(len(FIDS))]))
    ds.upsert_labels(labels(FIDS, per_frame=3))
    ds.create_snapshot("v1")
    ds.upsert_inferences("yolo", _preds(FIDS), pinned_to="v1")
    ds.delete_labels([f"{FIDS[0]}-l0", f"{FIDS[7]}-l2"])
    ds.upsert_labels(labels(FIDS[:10], per_frame=1, cls="person"))
    ds.create_snapshot("v2")
    ds.upsert_labels(labels(FIDS[20:25], per_frame=1, cls="truck"))
    return ds


def _data_files(root: Path) -> dict[str, int]:
    """Parquet files under `root` -> inode."""
    return {p.name: p.stat().st_ino for p in root.rglob("*.parquet") if "_delta_log" not in p.parts}


def test_an_unfiltered_clone_links_every_file_and_reads_as_the_source(
    local_lake: lv.Lake,
) -> None:
    src = _street(local_lake)
    at = src.resolve("v2")
    dogs = local_lake.clone_dataset("street", "copy", at="v2", project="p", tags=["clone"])
    for table in ("frames", "labels", "inferences/yolo"):
        assert table_hash(dogs.read(table)) == table_hash(src.at("v2").read(table)), table
    log = dogs.log()
    assert [c.operation for c in log] == ["clone"] and log[0].seq == 0
    assert dogs.cloned_from is not None
    name, source_id, commit = dogs.cloned_from
    assert (name, source_id, commit.id, commit.seq) == ("street", src.info.id, at.id, at.seq)
    assert dogs.classes == at.classes and dogs.project == "p" and dogs.tags == ("clone",)
    assert dogs.head.pins == {"yolo": 0}
    assert dogs.list_snapshots() == []
    # no row was written: every data file of the clone is a link to one of the source's
    root = Path(local_lake.uri) / "datasets"
    mine, theirs = _data_files(root / "copy"), _data_files(root / "street")
    assert mine and all(theirs.get(n) == ino for n, ino in mine.items())
    dogs.create_snapshot("mine")
    assert [s.name for s in dogs.list_snapshots()] == ["mine"]
    # the clone is a dataset of its own: it writes, and the source does not see it
    before = table_hash(src.read("labels"))
    dogs.delete_labels([f"{FIDS[3]}-l1"])
    assert table_hash(src.read("labels")) == before
    assert dogs.read("labels").height == src.at("v2").read("labels").height - 1


def test_a_clone_outlives_its_source_and_its_collection(local_lake: lv.Lake) -> None:
    src = _street(local_lake)
    clone = local_lake.clone_dataset("street", "kept")
    want = {t: table_hash(clone.read(t)) for t in ("frames", "labels", "inferences/yolo")}
    src.upsert_labels(labels(FIDS[30:], per_frame=1, cls="bike"))
    src.gc(keep_within=timedelta(0), apply=True)
    local_lake.delete_dataset("street", force=True)
    again = local_lake.dataset("kept")
    assert {t: table_hash(again.read(t)) for t in want} == want
    again.gc(keep_within=timedelta(0), apply=True)
    assert {t: table_hash(again.read(t)) for t in want} == want


def _model(src: lv.Dataset, ref: str, keep_frames: pl.Expr, keep_labels: pl.Expr) -> dict:
    view = src.at(ref)
    fr = view.read("frames").filter(keep_frames)
    kept = fr["frame_id"].implode()
    lab = view.read("labels").filter(pl.col("frame_id").is_in(kept) & keep_labels)
    inf = view.read("inferences/yolo").filter(pl.col("frame_id").is_in(kept))
    return {"frames": table_hash(fr), "labels": table_hash(lab), "inferences/yolo": table_hash(inf)}


@pytest.mark.parametrize("edits", ["merge-on-read", "copy-on-write"])
def test_filters_keep_the_rows_they_name_and_the_labels_of_kept_frames(
    local_lake: lv.Lake, edits: str
) -> None:
    src = _street(local_lake, edits=edits)
    keep_frames = pl.col("group_id") == "cam1"
    keep_labels = pl.col("cls").is_in(["person", "truck"])
    clone = local_lake.clone_dataset("street", "cam1", frames=keep_frames, labels=keep_labels)
    got = {t: table_hash(clone.read(t)) for t in ("frames", "labels", "inferences/yolo")}
    assert got == _model(src, "HEAD", keep_frames, keep_labels)
    assert clone.read("labels")["cls"].unique().sort().to_list() == ["person", "truck"]
    # only labels: every frame stays
    only = local_lake.clone_dataset("street", "trucks", labels=pl.col("cls") == "truck")
    assert only.read("frames").height == len(FIDS)
    assert set(only.read("labels")["label_id"]) == {f"{f}-l0" for f in FIDS[20:25]}


def test_a_light_filter_masks_rows_and_a_heavy_one_rewrites_them(local_lake: lv.Lake) -> None:
    src = local_lake.create_dataset("big", classes=CLASSES)
    fids = [f"f{i:05d}" for i in range(400)]
    src.add_frames(frames(fids))
    src.upsert_labels(labels(fids, per_frame=2))
    root = Path(local_lake.uri) / "datasets"
    light = local_lake.clone_dataset("big", "light", frames=pl.col("frame_id") != fids[5])
    assert light.read("labels").height == 2 * 399 and light.read("frames").height == 399
    vectors = list((root / "light" / "labels").glob("deletion_vector_*.bin"))
    assert vectors and set(_data_files(root / "light")) <= set(_data_files(root / "big"))
    heavy = local_lake.clone_dataset("big", "heavy", frames=pl.col("frame_id") < fids[10])
    assert sorted(heavy.read("frames")["frame_id"]) == fids[:10]
    assert heavy.read("labels").height == 20
    assert not set(_data_files(root / "heavy")) & set(_data_files(root / "big"))
    assert not list((root / "heavy").rglob("deletion_vector_*.bin"))


def test_snapshots_come_along_reading_as_in_the_source(local_lake: lv.Lake) -> None:
    src = _street(local_lake)
    src.create_snapshot("v3")
    qa = src.create_branch("qa", at="v1")
    qa.delete_labels([f"{FIDS[1]}-l1"])
    qa.create_snapshot("qa-1")
    clone = local_lake.clone_dataset("street", "hist", at="v2", snapshots=True)
    assert [s.name for s in clone.list_snapshots()] == ["v1", "v2"]  # not v3, not qa-1
    for name in ("v1", "v2"):
        for table in ("frames", "labels"):
            assert table_hash(clone.at(name).read(table)) == table_hash(src.at(name).read(table))
    assert table_hash(clone.read("labels")) == table_hash(src.at("v2").read("labels"))
    assert [c.operation for c in clone.log()] == ["clone", "clone"]
    assert clone.diff("v1", "v2").summary().equals(src.diff("v1", "v2").summary())
    # filtered alike
    persons = local_lake.clone_dataset(
        "street", "p", snapshots=True, labels=pl.col("cls") == "person"
    )
    assert persons.at("v1").read("labels").height == 0
    assert persons.at("v2").read("labels").height == 10


def test_refusals_create_nothing(local_lake: lv.Lake) -> None:
    _street(local_lake)
    local_lake.create_dataset("taken", classes=["x"])
    before = sorted(local_lake.list_datasets()["name"])
    with pytest.raises(lv.DatasetExistsError, match="taken"):
        local_lake.clone_dataset("street", "taken")
    with pytest.raises(lv.DatasetNotFoundError, match="nowhere"):
        local_lake.clone_dataset("nowhere", "fresh")
    with pytest.raises(lv.InvalidInputError, match="no_such_column"):
        local_lake.clone_dataset("street", "fresh", labels=pl.col("no_such_column") > 1)
    with pytest.raises(lv.InvalidInputError, match="'ssd'"):
        local_lake.clone_dataset("street", "fresh", inferences=["ssd"])
    with pytest.raises(lv.InvalidNameError):
        local_lake.clone_dataset("street", "../up")
    assert sorted(local_lake.list_datasets()["name"]) == before
    assert local_lake.invalid_entries().height == 0
    assert local_lake.dataset("taken").classes == ("x",)
    fresh = local_lake.clone_dataset("street", "fresh", inferences=False)  # the name is free
    assert fresh.read("frames").height == len(FIDS) and fresh.head.pins == {}
    assert "inferences/yolo" not in fresh.head.table_versions


def test_the_clone_reads_its_ref_while_the_source_moves(local_lake: lv.Lake) -> None:
    src = _street(local_lake)
    want = table_hash(src.at("v1").read("labels"))
    src.upsert_labels(labels(FIDS, per_frame=1, cls="bike"))
    clone = local_lake.clone_dataset("street", "old", at="v1")
    assert table_hash(clone.read("labels")) == want


def test_clone_command(local_lake: lv.Lake) -> None:
    _street(local_lake)
    uri = local_lake.uri
    code, out, err = run("clone", "street", "cli-copy", "--uri", uri, "--at", "v2", "--frames",
                 "group_id = 'cam0'", "--labels", "cls <> 'car'", "--no-inferences",
                 "--snapshots")  # fmt: skip
    assert code == 0 and "cli-copy" in out, err
    clone = local_lake.dataset("cli-copy")
    assert set(clone.read("frames")["group_id"]) == {"cam0"}
    assert set(clone.read("labels")["cls"]) == {"person"}
    assert [s.name for s in clone.list_snapshots()] == ["v1", "v2"]
    assert "inferences/yolo" not in clone.head.table_versions
    code, out, err = run("clone", "street", "bad", "--uri", uri, "--labels", "cls = = 1")
    assert code != 0 and "--labels" in err
    assert "bad" not in set(local_lake.list_datasets()["name"])


@pytest.mark.slow
def test_a_clone_on_s3_copies_server_side(lake: lv.Lake, backend: str) -> None:
    src = _street(lake)
    clone = lake.clone_dataset("street", "copy", at="v2", frames=pl.col("frame_id") != FIDS[3])
    for table in ("labels", "inferences/yolo"):
        want = src.at("v2").read(table).filter(pl.col("frame_id") != FIDS[3])
        assert table_hash(clone.read(table)) == table_hash(want)
    lake.delete_dataset("street", force=True)
    assert clone.read("frames").height == len(FIDS) - 1


@pytest.mark.slow
def test_a_clone_killed_at_random_points_leaves_nothing_or_everything(
    lake: lv.Lake, lake_uri: tuple[str, dict[str, str]]
) -> None:
    src = _street(lake)
    for i in range(3):
        src.upsert_labels(labels(FIDS[i::3], per_frame=1, cls="bike"))
        src.create_snapshot(f"h{i}")
    want = {s: table_hash(src.at(s).read("labels")) for s in ("v1", "v2", "h0", "h1", "h2")}
    rng = random.Random(5)
    outcomes = set()
    for round_ in range(5):
        name = f"c{round_}"
        # each of its six commits waits 0.2 s, so kills land inside the build too
        proc = spawn("clone", lake.uri, "street", name, 0, lake_uri[1],
                     LAKEVER_TEST_PAUSE_BEFORE_PUBLISH="0.2")  # fmt: skip
        wait_ready(proc)
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if name in set(lake.list_datasets()["name"]):
            clone = lake.dataset(name)  # complete: every snapshot reads as in the source
            assert {s: table_hash(clone.at(s).read("labels")) for s in want} == want
            outcomes.add("complete")
            continue
        outcomes.add("nothing")
        with pytest.raises(lv.DatasetNotFoundError):
            lake.dataset(name)
        clone = lake.clone_dataset("street", name, snapshots=True)  # the name is free again
        assert {s: table_hash(clone.at(s).read("labels")) for s in want} == want
    assert "nothing" in outcomes  # the kills landed mid-build at least once


def test_a_cloned_inference_set_evaluates_as_the_source_at_the_ref(local_lake: lv.Lake) -> None:
    src = _street(local_lake)
    clone = local_lake.clone_dataset("street", "ev", at="v2")
    theirs = src.evaluate("yolo", against="v2")
    mine = clone.evaluate("yolo")
    assert mine.against.seq == clone.head.seq == 0
    assert mine.summary == theirs.summary and mine.per_class.equals(theirs.per_class)


def test_coco_metadata_comes_along(local_lake: lv.Lake) -> None:
    examples = Path(__file__).resolve().parent.parent / "examples" / "instances.json"
    src, _ = local_lake.import_coco("coco", str(examples))
    clone = local_lake.clone_dataset("coco", "coco-copy")
    want, got = src.at("HEAD").export_coco(), clone.at("HEAD").export_coco()
    assert got["categories"] == want["categories"] and got.get("info") == want.get("info")
    assert len(got["annotations"]) == len(want["annotations"])


def test_a_failed_copy_midway_leaves_nothing(
    local_lake: lv.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lakever import storage

    _street(local_lake)
    real = storage.Location.copy_many

    def fail_after_one(self: storage.Location, pairs: list) -> None:  # type: ignore[type-arg]
        real(self, pairs[:1])
        raise lv.StorageError("S3 said: 503 Slow Down")

    monkeypatch.setattr(storage.Location, "copy_many", fail_after_one)
    with pytest.raises(lv.StorageError, match="Slow Down"):
        local_lake.clone_dataset("street", "half")
    assert not (Path(local_lake.uri) / "datasets" / "half").exists()
    monkeypatch.setattr(storage.Location, "copy_many", real)
    assert local_lake.clone_dataset("street", "half").read("frames").height == len(FIDS)


@pytest.mark.slow
def test_writes_to_the_source_during_a_clone_do_not_reach_it(
    lake: lv.Lake, lake_uri: tuple[str, dict[str, str]]
) -> None:
    src = _street(lake)
    want = {t: table_hash(src.at("v2").read(t)) for t in ("frames", "labels")}
    proc = spawn("until-gone", lake.uri, "street", "w", 40, lake_uri[1])
    wait_ready(proc)
    clones = [lake.clone_dataset("street", f"during-{i}", at="v2") for i in range(3)]
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert src.head.seq > src.resolve("v2").seq  # the writer did commit meanwhile
    for clone in clones:
        assert {t: table_hash(clone.read(t)) for t in want} == want
