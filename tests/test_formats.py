"""COCO and YOLO: import, export, round trips checked with pycocotools; table exports."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools.coco import COCO

import lakever as lv
from tests.helpers import CLASSES, frames, labels

SAMPLE = Path(__file__).parent / "data" / "terrain2_coco.json"


#: A small COCO file with what real ones hold: id gaps, crowds, RLE, keypoints, video frames.
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "instances.json"


def coco_document() -> dict[str, Any]:
    """A fresh copy of the shipped example COCO file (examples/instances.json)."""
    return dict(json.loads(EXAMPLE.read_text()))


def _by_id(records: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {r["id"]: r for r in records}


def assert_same_coco(original: dict[str, Any], exported: dict[str, Any]) -> None:
    for key in ("images", "annotations", "categories"):
        assert _by_id(exported[key]) == _by_id(original[key]), key
    for key in ("info", "licenses"):
        assert exported.get(key) == original.get(key)


def _round_trip(lake: lv.Lake, doc: dict[str, Any], tmp_path: Path, name: str = "c") -> dict:
    src = tmp_path / f"{name}-in.json"
    src.write_text(json.dumps(doc))
    ds, up = lake.import_coco(name, str(src))
    assert up.status == "done", up.errors
    out = tmp_path / f"{name}-out.json"
    exported = ds.export_coco(str(out))
    loaded = COCO(str(out))  # pycocotools reads it
    assert loaded.dataset == exported
    return exported


def test_coco_round_trip_field_by_field(local_lake: lv.Lake, tmp_path: Path) -> None:
    doc = coco_document()
    exported = _round_trip(local_lake, doc, tmp_path)
    assert_same_coco(doc, exported)
    ds = local_lake.dataset("c")
    assert ds.classes == ("person", "car", "toothbrush")
    f = ds.read("frames").sort("frame_id")
    assert f["frame_id"].to_list() == ["1", "12", "13", "7"]
    video = f.filter(pl.col("frame_id") == "12").row(0, named=True)
    assert (video["media_type"], video["group_id"], video["sequence"]) == ("video_frame", "4", 3)
    lab = ds.read("labels").filter(pl.col("label_id") == "100").row(0, named=True)
    assert (lab["x"], lab["y"], lab["w"], lab["h"], lab["cls"]) == (
        10.5,
        20.25,
        100.0,
        200.0,
        "person",
    )
    # pycocotools decodes the crowd masks exactly as in the original
    loaded = COCO(str(tmp_path / "c-out.json"))
    original = COCO(str(tmp_path / "c-in.json"))
    for ann_id in (100, 101, 102, 103):
        want = original.annToMask(original.anns[ann_id])
        assert want.any()
        assert np.array_equal(loaded.annToMask(loaded.anns[ann_id]), want)


def test_real_sample_file_round_trips(local_lake: lv.Lake, tmp_path: Path) -> None:
    doc = json.loads(SAMPLE.read_text())
    exported = _round_trip(local_lake, doc, tmp_path, name="terrain")
    assert_same_coco(doc, exported)


def test_images_root_and_s3_paths(local_lake: lv.Lake, tmp_path: Path) -> None:
    doc = coco_document()
    ds, _ = local_lake.import_coco("r", doc, images_root="s3://media/coco/")
    uris = dict(ds.read("frames").select("frame_id", "uri").iter_rows())
    assert uris["1"] == "s3://media/coco/a/1.jpg"
    assert_same_coco(doc, ds.export_coco())  # file_name is kept as given


def test_import_into_existing_dataset(local_lake: lv.Lake) -> None:
    doc = coco_document()
    ds = local_lake.create_dataset("x", classes=["person", "car"])
    with pytest.raises(lv.InvalidInputError, match="toothbrush"):
        ds.import_coco(doc)
    with pytest.raises(lv.DatasetExistsError):
        local_lake.import_coco("x", doc)
    ds.extend_classes(["toothbrush"])
    _, up = local_lake.import_coco("x", doc, exist_ok=True)
    assert up.status == "done" and ds.read("labels").height == 4
    clash = coco_document()
    clash["categories"][1]["id"] = 4
    with pytest.raises(lv.InvalidInputError, match="renumber"):
        ds.import_coco(clash)


def test_bad_annotations_are_rejected_row_by_row(local_lake: lv.Lake) -> None:
    doc = coco_document()
    doc["annotations"].append(
        {
            "id": 104,
            "image_id": 999,
            "category_id": 3,
            "bbox": [0, 0, 1, 1],
            "area": 1,
            "iscrowd": 0,
        }
    )
    doc["annotations"].append(
        {"id": 105, "image_id": 1, "category_id": 3, "bbox": [0, 0, -1, 1], "area": 1, "iscrowd": 0}
    )
    _, up = local_lake.import_coco("bad", doc)
    assert up.status == "partial"
    assert dict(zip(up.errors["key"], up.errors["rule"], strict=True)) == {
        "104": "missing_frame",
        "105": "box",
    }


def test_coco_results_become_a_pinned_inference_set(local_lake: lv.Lake, tmp_path: Path) -> None:
    doc = coco_document()
    ds, _ = local_lake.import_coco("p", doc)
    pin = ds.head.seq
    ds.delete_frames(["7"])
    results = [
        {"image_id": 1, "category_id": 3, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.9},
        {"image_id": 7, "category_id": 90, "bbox": [5.0, 5.0, 5.0, 5.0], "score": 0.2},
        {"image_id": 1, "category_id": 77, "bbox": [1.0, 1.0, 1.0, 1.0], "score": 0.5},
    ]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(results))
    up = ds.import_coco_results("det", str(path), pinned_to=pin)
    assert up.rows_committed == {"inferences/det": 2}  # frame 7 existed at the pin
    assert up.errors["rule"].to_list() == ["unknown_class"]
    assert ds.head.pins["det"] == pin
    preds = ds.read("inferences/det").sort("label_id")
    assert preds["cls"].to_list() == ["car", "toothbrush"]
    assert preds["confidence"].to_list() == [0.9, 0.2]
    # the detections load in pycocotools against the exported ground truth
    gt_path = tmp_path / "gt.json"
    ds.at(pin).export_coco(str(gt_path))
    gt = COCO(str(gt_path))
    dt = gt.loadRes([r for r in results if r["category_id"] != 77])
    assert len(dt.anns) == 2


def _boxes(draw: Any, image_ids: list[int], cat_ids: list[int]) -> list[dict[str, Any]]:
    anns = []
    n = draw(st.integers(0, 12))
    ids = draw(st.lists(st.integers(1, 10**9), min_size=n, max_size=n, unique=True))
    coord = st.floats(0, 2000, allow_nan=False, width=64)
    for ann_id in ids:
        bbox = [draw(coord), draw(coord), draw(coord), draw(coord)]
        ann = {
            "id": ann_id,
            "image_id": draw(st.sampled_from(image_ids)),
            "category_id": draw(st.sampled_from(cat_ids)),
            "bbox": bbox,
            "area": draw(coord),
            "iscrowd": draw(st.sampled_from([0, 1])),
        }
        if draw(st.booleans()):
            ann["segmentation"] = [[draw(coord) for _ in range(6)]]
        anns.append(ann)
    return anns


@st.composite
def coco_documents(draw: Any) -> dict[str, Any]:
    image_ids = draw(st.lists(st.integers(1, 10**6), min_size=1, max_size=6, unique=True))
    images = [
        {
            "id": i,
            "file_name": f"{i}.jpg",
            "width": draw(st.integers(1, 4000)),
            "height": draw(st.integers(1, 4000)),
        }
        for i in image_ids
    ]
    cat_ids = draw(st.lists(st.integers(1, 500), min_size=1, max_size=4, unique=True))
    categories = [{"id": c, "name": f"c{c}", "supercategory": "s"} for c in cat_ids]
    return {
        "images": images,
        "categories": categories,
        "annotations": _boxes(draw, image_ids, cat_ids),
    }


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(doc=coco_documents())
def test_generated_coco_files_round_trip(tmp_path_factory: Any, doc: dict[str, Any]) -> None:
    tmp = tmp_path_factory.mktemp("coco")
    lake = lv.connect(tmp / "lake")
    exported = _round_trip(lake, doc, tmp)
    assert_same_coco(doc, exported)


# -- YOLO ---------------------------------------------------------------------------


def _yolo_folder(root: Path) -> dict[str, list[str]]:
    sizes = {"train/a": (640, 480), "train/b": (100, 50), "val/c": (33, 77)}
    lines = {
        "train/a": ["0 0.5 0.5 0.25 0.125", "2 0.1234567890123 0.9 0.05 0.1"],
        "train/b": ["1 0.3333333333333333 0.6666666666666666 0.2 0.4"],
        "val/c": [],
    }
    for stem, (w, h) in sizes.items():
        (root / "images" / stem).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h)).save(root / "images" / f"{stem}.png")
        (root / "labels" / stem).parent.mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"{stem}.txt").write_text("".join(x + "\n" for x in lines[stem]))
    (root / "data.yaml").write_text("names:\n  0: car\n  1: person\n  2: bike\n")
    return lines


def test_yolo_round_trip(local_lake: lv.Lake, tmp_path: Path) -> None:
    lines = _yolo_folder(tmp_path / "y")
    ds = local_lake.create_dataset("y", classes=["car", "person", "bike"])
    up = ds.import_yolo(str(tmp_path / "y"))
    assert up.status == "done", up.errors
    a = ds.read("labels").filter(pl.col("label_id") == "train/a:0").row(0, named=True)
    assert (a["x"], a["y"], a["w"], a["h"], a["cls"]) == (240.0, 210.0, 160.0, 60.0, "car")
    out = tmp_path / "out"
    assert ds.export_yolo(str(out)) == 3
    for stem, want in lines.items():
        got = (out / "labels" / f"{stem}.txt").read_text().splitlines()
        assert len(got) == len(want)
        for g, w in zip(sorted(got), sorted(want), strict=True):
            gv, wv = g.split(), w.split()
            assert gv[0] == wv[0]
            for x, y in zip(gv[1:], wv[1:], strict=True):
                assert math.isclose(float(x), float(y), rel_tol=1e-12, abs_tol=1e-15)
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["path"] == str(out) and data["train"] == "images"
    assert data["names"] == {0: "car", 1: "person", 2: "bike"}
    assert len((out / "images.txt").read_text().splitlines()) == 3
    # images/ links to the media, one per label file, same stem: what Ultralytics pairs
    for stem in lines:
        image = out / "images" / f"{stem}.png"
        assert image.is_symlink() and image.resolve() == (tmp_path / "y" / "images" / f"{stem}.png")

    # lakever reads its own export back: same frames, same labels
    again = local_lake.create_dataset("again", classes=["car", "person", "bike"])
    up = again.import_yolo(str(out))
    assert up.status == "done", up.errors
    cols = ["frame_id", "uri", "width", "height"]
    assert (
        again.read("frames")
        .select(cols)
        .sort("frame_id")
        .equals(ds.read("frames").select(cols).sort("frame_id"))
    )
    box = ["frame_id", "cls", "x", "y", "w", "h"]
    got = again.read("labels").select(box).sort(box).rows()
    want = ds.read("labels").select(box).sort(box).rows()
    assert len(got) == len(want) == 3
    for g, w in zip(got, want, strict=True):
        assert g[:2] == w[:2] and all(
            math.isclose(a, b, abs_tol=1e-9) for a, b in zip(g[2:], w[2:], strict=True)
        )


def test_yolo_export_of_a_coco_dataset_is_named_after_its_images(
    local_lake: lv.Lake, tmp_path: Path
) -> None:
    doc = coco_document()
    media = tmp_path / "media"
    for image in doc["images"]:
        (media / image["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (image["width"], image["height"])).save(media / image["file_name"])
    ds, _ = local_lake.import_coco("c", doc, images_root=str(media))
    out = tmp_path / "yolo"
    assert ds.export_yolo(str(out)) == 4
    stems = sorted(str(p.relative_to(out / "labels")) for p in (out / "labels").rglob("*.txt"))
    assert stems == ["a/1.txt", "a/7.txt", "clip/0003.txt", "empty.txt"]
    assert sorted(json.loads((out / "frames.json").read_text()).values()) == ["1", "12", "13", "7"]
    assert (out / "images" / "a" / "1.jpg").resolve() == media / "a" / "1.jpg"
    back = local_lake.create_dataset("back", classes=list(ds.classes))
    assert back.import_yolo(str(out)).rows_committed == {"frames": 4, "labels": 4}
    assert sorted(back.read("labels")["frame_id"]) == sorted(ds.read("labels")["frame_id"])
    # exported again without frame 13: its link and label file go, the media stays
    ds.delete_frames(["13"])
    assert ds.export_yolo(str(out)) == 3
    assert not (out / "images" / "empty.jpg").is_symlink()
    assert not (out / "labels" / "empty.txt").exists()
    assert (media / "empty.jpg").exists()


def test_yolo_bad_lines_are_rejected(local_lake: lv.Lake, tmp_path: Path) -> None:
    _yolo_folder(tmp_path / "y")
    (tmp_path / "y" / "labels" / "val" / "c.txt").write_text("7 0.5 0.5 0.1 0.1\nnot a box\n")
    ds = local_lake.create_dataset("y", classes=["car", "person", "bike"])
    up = ds.import_yolo(str(tmp_path / "y"))
    assert up.status == "partial"
    assert dict(zip(up.errors["key"], up.errors["rule"], strict=True)) == {
        "val/c:0": "unknown_class",
        "val/c:1": "box",
    }


def test_yolo_needs_its_classes(local_lake: lv.Lake, tmp_path: Path) -> None:
    _yolo_folder(tmp_path / "y")
    ds = local_lake.create_dataset("y", classes=["car"])
    with pytest.raises(lv.InvalidInputError, match="extend_classes"):
        ds.import_yolo(str(tmp_path / "y"))
    with pytest.raises(lv.InvalidInputError, match="no images/ folder"):
        ds.import_yolo(str(tmp_path))


# -- table exports ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_tables(lake: lv.Lake, tmp_path: Path, fmt: str) -> None:
    ds = lake.create_dataset("e", classes=CLASSES)
    ds.add_frames(frames(range(3), tags=[["a", "b"], [], ["c"]]))
    ds.upsert_labels(labels(["f00000", "f00001"]))
    ds.create_snapshot("v1")
    ds.delete_frames(["f00000"])
    files = ds.at("v1").export(str(tmp_path / "out"), format=fmt)
    assert sorted(Path(f).name for f in files) == [f"frames.{fmt}", f"labels.{fmt}"]
    read = {"parquet": pl.read_parquet, "csv": pl.read_csv, "jsonl": pl.read_ndjson}[fmt]
    got = read(tmp_path / "out" / f"labels.{fmt}")
    assert sorted(got["label_id"]) == sorted(ds.at("v1").read("labels")["label_id"])
    f = read(tmp_path / "out" / f"frames.{fmt}").sort("frame_id")
    tags = f["tags"].to_list()
    assert (tags[0] if fmt != "csv" else json.loads(tags[0])) == ["a", "b"]
    with pytest.raises(lv.InvalidInputError, match="format must be"):
        ds.export(str(tmp_path / "x"), format="xlsx")


# -- hostile COCO files (issue: data paths never relabel silently) ----------------------


def test_categories_sharing_an_id_refuse_the_file(local_lake: lv.Lake) -> None:
    doc = coco_document()
    doc["categories"][1]["id"] = doc["categories"][0]["id"]  # car takes person's id
    with pytest.raises(lv.ValidationError, match="duplicate_category_id") as err:
        local_lake.import_coco("dup", doc)
    assert err.value.errors[0].value == ["person", "car"]
    assert err.value.errors[0].key == "1"
    assert not Path(local_lake.uri).exists()  # nothing was created, not even the lake
    ds = local_lake.create_dataset("d", classes=["person", "car", "toothbrush"])
    with pytest.raises(lv.ValidationError, match="'person' and 'car'"):
        ds.import_coco(doc)
    assert ds.head.seq == 0


def test_file_names_leaving_images_root_are_rejected(local_lake: lv.Lake) -> None:
    doc = coco_document()
    doc["images"][0]["file_name"] = "../../etc/passwd"
    doc["images"][1]["file_name"] = "/etc/shadow"
    doc["images"][3]["file_name"] = "ok/..hidden/x..jpg"  # dots, but no '..' segment
    ds, up = local_lake.import_coco("paths", doc, images_root="s3://media/coco/")
    errors = up.errors.filter(pl.col("table") == "frames")
    assert dict(zip(errors["key"], errors["rule"], strict=True)) == {
        "1": "unsafe_path",
        "7": "unsafe_path",
    }
    assert sorted(errors["value"].to_list()) == ["../../etc/passwd", "/etc/shadow"]
    uris = ds.read("frames")["uri"].to_list()
    assert all(u.startswith("s3://media/coco/") for u in uris)
    assert "s3://media/coco/ok/..hidden/x..jpg" in uris
    # without images_root the name is the uri, as given
    plain, up2 = local_lake.import_coco("plain", doc)
    assert up2.errors.filter(pl.col("rule") == "unsafe_path").is_empty()
    assert "/etc/shadow" in plain.read("frames")["uri"].to_list()


def test_a_mixed_type_box_rejects_only_its_row(local_lake: lv.Lake) -> None:
    doc = coco_document()
    doc["annotations"][1]["bbox"] = ["a", 2, 3, 4]
    doc["images"][2]["width"] = "wide"
    ds, up = local_lake.import_coco("mixed", doc)
    bad = up.errors.select("table", "key", "rule", "column", "value").sort("table", "key").rows()
    bad_label = doc["annotations"][1]["id"]
    assert bad == [
        ("frames", "12", "type", "width", "wide"),
        ("labels", str(bad_label), "type", "x", "a"),
        ("labels", "103", "frame_rejected", "frame_id", "12"),  # frame 12's one label
    ]
    labels_in = {str(a["id"]) for a in doc["annotations"] if a["image_id"] != 12}
    assert set(ds.read("labels")["label_id"]) == labels_in - {str(bad_label)}
    frame_1 = ds.read("labels").filter(pl.col("frame_id") == "1")
    assert frame_1["x"].dtype == pl.Float64 and frame_1.height >= 1


def test_unknown_top_level_keys_come_back(local_lake: lv.Lake) -> None:
    doc = coco_document()
    doc["videos"] = [{"id": 4, "name": "clip"}]
    doc["tracks"] = [{"id": 1, "name": "t1"}]
    doc["keypoint_categories"] = [{"id": 1, "name": "nose"}]
    ds, _ = local_lake.import_coco("kw", doc)
    out = ds.export_coco()
    for key in ("videos", "tracks", "keypoint_categories", "info", "licenses"):
        assert out[key] == doc[key], key


def test_cli_import_honours_chunk_rows(local_lake: lv.Lake, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lakever.cli import app

    path = tmp_path / "c.json"
    path.write_text(json.dumps(coco_document()))
    args = ["import", "coco", str(path), "chunked", "--uri", local_lake.uri, "--chunk-rows", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    ds = local_lake.dataset("chunked")
    rows = ds.read("frames").height + ds.read("labels").height
    ingest_commits = [c for c in ds.log() if c.operation == "ingest"]
    assert len(ingest_commits) == -(-rows // 2)
