"""The data commands: import, export, show, uploads; global options; values in diffs."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from pycocotools.coco import COCO

import lakever as lv
from tests.helpers import CLASSES, frames, labels, vendor_batch
from tests.test_cli import run
from tests.test_formats import SAMPLE, _yolo_folder, assert_same_coco, coco_document


def test_import_coco_creates_then_exports(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    code, out, err = run(
        "import", "coco", str(SAMPLE), "terrain", "--uri", uri, "--upload-id", "first"
    )
    assert code == 0, err
    assert "upload first: done" in out
    code, out, err = run(
        "export", "terrain", str(tmp_path / "back.json"), "--format", "coco", "--uri", uri
    )
    assert code == 0, err
    assert_same_coco(json.loads(SAMPLE.read_text()), COCO(str(tmp_path / "back.json")).dataset)
    # the same upload id again commits nothing
    code, out, _ = run(
        "--json", "--uri", uri, "import", "coco", str(SAMPLE), "terrain", "--upload-id", "first"
    )
    assert code == 0 and json.loads(out)["commits"] == [1]
    assert lv.connect(uri).dataset("terrain").head.seq == 1


def test_import_files_reports_errors_and_where_to_see_them(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    ds = lv.connect(uri).create_dataset("v", classes=CLASSES)
    f, lab, truth = vendor_batch(12)
    f.write_parquet(tmp_path / "frames.parquet")
    lab.write_csv(tmp_path / "labels.csv")
    code, out, err = run(
        "import",
        "parquet",
        str(tmp_path / "frames.parquet"),
        "v",
        "--table",
        "frames",
        "--uri",
        uri,
    )
    assert code == 0, err
    code, out, err = run(
        "import",
        "csv",
        str(tmp_path / "labels.csv"),
        "v",
        "--uri",
        uri,
        "--upload-id",
        "vendor-1",
        "--chunk-rows",
        "10",
    )
    assert code == 0, err
    assert "partial" in out and "lakever upload show v vendor-1 --errors" in out
    # the frames came in another upload: their labels' frames are missing, not rejected here
    assert "missing_frame" in out and "unknown_class" in out and "frame_rejected" not in out
    code, out, _ = run("uploads", "v", "--uri", uri, "--json")
    listing = json.loads(out)
    assert listing[0]["upload_id"] == "vendor-1"
    assert listing[0]["rows_rejected"] == len(truth["labels"])
    csv_path = tmp_path / "errors.csv"
    code, out, err = run(
        "upload", "show", "v", "vendor-1", "--errors", "--out", str(csv_path), "--uri", uri
    )
    assert code == 0, err
    errors = pl.read_csv(csv_path)
    assert set(errors["key"]) == set(truth["labels"])
    assert errors.height == ds.upload("vendor-1").errors.height
    code, _, err = run("upload", "show", "v", "nope", "--uri", uri)
    assert code == 3 and "no upload 'nope'" in err


def test_import_yolo_creates_from_data_yaml(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    _yolo_folder(tmp_path / "y")
    code, _, err = run("import", "yolo", str(tmp_path / "y"), "yolo-set", "--uri", uri)
    assert code == 0, err
    ds = lv.connect(uri).dataset("yolo-set")
    assert ds.classes == ("car", "person", "bike") and ds.read("labels").height == 3
    code, _, err = run(
        "export", "yolo-set", "HEAD", str(tmp_path / "out"), "--format", "yolo", "--uri", uri
    )
    assert code == 0, err
    assert (tmp_path / "out" / "labels" / "train" / "a.txt").read_text().count("\n") == 2


def test_show_where_limit_and_ref(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    ds = lv.connect(uri).create_dataset("s", classes=CLASSES)
    ds.add_frames(frames(range(5)))
    ds.upsert_labels(labels(["f00000", "f00001"], per_frame=3))
    ds.create_snapshot("v1")
    ds.delete_frames(["f00000"])
    code, out, err = run(
        "show", "s", "v1", "--where", "frame_id = 'f00000' AND x > 10", "--uri", uri, "--json"
    )
    assert code == 0, err
    rows = json.loads(out)
    assert sorted(r["label_id"] for r in rows) == ["f00000-l1", "f00000-l2"]
    code, out, _ = run("show", "s", "--table", "frames", "--limit", "2", "--uri", uri, "--json")
    assert len(json.loads(out)) == 2
    code, _, err = run("show", "s", "--where", "no_such_col > 1", "--uri", uri)
    assert code == 2 and "--where" in err


def test_global_options_before_the_command_and_version(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    code, out, _ = run("--version")
    assert code == 0 and out.strip() == f"lakever {lv.__version__}"
    code, out, err = run(
        "--uri",
        uri,
        "--json",
        "create",
        "c",
        "--classes",
        "a,b",
        "--tags",
        "x, y",
        "--project",
        "p",
    )
    assert code == 0, err
    assert json.loads(out)["seq"] == 0
    assert lv.connect(uri).dataset("c").tags == ("x", "y")
    code, _, err = run("--uri", uri, "create", "c", "--classes", "a,b")
    assert code == 4
    code, out, err = run("--uri", uri, "create", "c", "--classes", "a,b", "--exist-ok")
    assert code == 0 and "exists" in out
    code, out, _ = run("--uri", uri, "delete", "c")
    assert code == 2
    code, out, err = run("--uri", uri, "delete", "c", "--yes")
    assert code == 0, err
    assert lv.connect(uri).list_datasets().is_empty()


def test_diff_rows_show_values_and_history_json_has_objects(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    ds = lv.connect(uri).create_dataset("h", classes=CLASSES)
    ds.add_frames(frames(range(1)))
    ds.upsert_labels(labels(["f00000"], per_frame=1))
    ds.create_snapshot("a")
    ds.upsert_labels(labels(["f00000"], per_frame=1, cls="bike"))
    code, out, err = run("diff", "h", "a", "--rows", "--uri", uri)
    assert code == 0, err
    assert "cls: car → bike" in out
    code, out, _ = run("history", "h", "--label-id", "f00000-l0", "--uri", uri, "--json")
    entries = json.loads(out)
    assert entries[-1]["before"]["cls"] == "car" and entries[-1]["after"]["cls"] == "bike"
    assert entries[0]["before"] is None
    code, out, _ = run("history", "h", "--label-id", "f00000-l0", "--uri", uri)
    assert "→ bike" in out and "cls: car" in out


def test_export_tables_of_a_snapshot(tmp_path: Path) -> None:
    uri = str(tmp_path / "lake")
    ds, _ = lv.connect(uri).import_coco("c", coco_document())
    ds.create_snapshot("v1")
    code, out, err = run(
        "export", "c", "v1", str(tmp_path / "t"), "--format", "csv", "--uri", uri, "--json"
    )
    assert code == 0, err
    assert sorted(Path(p).name for p in json.loads(out)["written"]) == ["frames.csv", "labels.csv"]
    assert pl.read_csv(tmp_path / "t" / "labels.csv").height == 4
