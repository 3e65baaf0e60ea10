"""Evaluation: exactly pycocotools' numbers, against the pinned labels; stored and compared."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import lakever as lv
from lakever.evaluation import SUMMARY_KEYS

SAMPLE = Path(__file__).parent / "data" / "terrain2_coco.json"


def pycoco(gt: dict[str, Any], dets: list[dict[str, Any]], **params: Any) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        dt = coco.loadRes(copy.deepcopy(dets))
        e = COCOeval(coco, dt, "bbox")
        for name, value in params.items():
            setattr(e.params, name, value)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


def per_class_ap(e: COCOeval) -> dict[str, float]:
    """pycocotools' precision averaged per category as `summarize` averages (area all, 100)."""
    p = e.eval["precision"]
    names = {c["id"]: c["name"] for c in e.cocoGt.dataset["categories"]}
    out = {}
    for k, cat in enumerate(e.params.catIds):
        s = p[:, :, k, 0, -1]
        out[names[cat]] = float(np.mean(s[s > -1])) if (s > -1).any() else -1.0
    return out


def _evaluated(tmp: Path, gt: dict[str, Any], dets: list[dict[str, Any]]) -> lv.Evaluation:
    lake = lv.connect(tmp / "lake")
    ds, up = lake.import_coco("c", gt)
    assert up.status == "done", up.errors
    assert ds.import_coco_results("det", dets).status == "done"
    return ds.evaluate("det")


def assert_same_as_pycocotools(ev: lv.Evaluation, e: COCOeval) -> None:
    ours = np.array([ev.summary[k] for k in SUMMARY_KEYS])
    assert np.max(np.abs(ours - np.array(e.stats))) <= 1e-9, (ours, e.stats)
    ours_per_class = dict(zip(ev.per_class["cls"], ev.per_class["AP"], strict=True))
    theirs = per_class_ap(e)
    assert set(ours_per_class) == set(theirs)
    assert all(abs(ours_per_class[c] - theirs[c]) <= 1e-9 for c in theirs), (ours_per_class, theirs)


@st.composite
def scenes(draw: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    n_images = draw(st.integers(1, 6))
    cats = [{"id": c, "name": f"c{c}"} for c in draw(
        st.lists(st.integers(1, 30), min_size=1, max_size=4, unique=True))]  # fmt: skip
    coord = st.floats(0, 300, allow_nan=False).map(lambda v: round(v, 1))
    size = st.floats(1, 200, allow_nan=False).map(lambda v: round(v, 1))
    anns, dets = [], []
    for img in range(1, n_images + 1):
        for _ in range(draw(st.integers(0, 6))):  # empty frames happen
            box = [draw(coord), draw(coord), draw(size), draw(size)]
            cat = draw(st.sampled_from(cats))["id"]
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat, "bbox": box,
                         "area": round(box[2] * box[3] * draw(st.floats(0.3, 1.0)), 2),
                         "iscrowd": int(draw(st.integers(0, 9)) == 0)})  # fmt: skip
            if draw(st.booleans()):  # a prediction near the box, maybe the wrong class
                jitter = draw(st.floats(-20, 20)) if draw(st.booleans()) else 0.0
                dets.append(
                    {
                        "image_id": img,
                        "category_id": draw(st.sampled_from(cats))["id"],
                        "bbox": [box[0] + jitter, box[1], box[2], max(0.5, box[3] + jitter / 2)],
                        "score": draw(st.sampled_from([0.1, 0.5, 0.5, 0.9, 0.33])),
                    }
                )
        for _ in range(draw(st.integers(0, 3))):  # stray predictions, overlapping or not
            box = [draw(coord), draw(coord), draw(size), draw(size)]
            dets.append(
                {
                    "image_id": img,
                    "category_id": draw(st.sampled_from(cats))["id"],
                    "bbox": box,
                    "score": draw(st.floats(0, 1).map(lambda v: round(v, 2))),
                }
            )
    images = [{"id": i, "width": 500, "height": 500, "file_name": f"{i}.jpg"}
              for i in range(1, n_images + 1)]  # fmt: skip
    return {"images": images, "categories": cats, "annotations": anns}, dets


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scene=scenes())
def test_summary_and_per_class_equal_pycocotools(tmp_path_factory: Any, scene: Any) -> None:
    gt, dets = scene
    if not dets:
        dets = [{"image_id": 1, "category_id": gt["categories"][0]["id"],
                 "bbox": [1.0, 1.0, 5.0, 5.0], "score": 0.5}]  # fmt: skip
    ev = _evaluated(tmp_path_factory.mktemp("ev"), gt, dets)
    e = pycoco(gt, dets)
    assert_same_as_pycocotools(ev, e)
    # matches at IoU 0.5 are pycocotools' matches
    want = {}
    for img in e.evalImgs:
        if img is None or img["aRng"] != [0, 1e10] or img["maxDet"] != 100:
            continue
        for d, g, ign in zip(img["dtIds"], img["dtMatches"][0], img["dtIgnore"][0], strict=True):
            want[str(d - 1)] = ("ignored" if ign else "tp", str(int(g))) if g else ("fp", None)
    got = {
        r["prediction_id"]: (r["outcome"], r["label_id"])
        for r in ev.matches.filter(pl.col("prediction_id").is_not_null()).iter_rows(named=True)
    }
    assert got == want
    crowd = {str(a["id"]) for a in gt["annotations"] if a["iscrowd"]}
    matched = {lab for out, lab in want.values() if out == "tp"}
    fn = set(ev.matches.filter(pl.col("outcome") == "fn")["label_id"])
    assert fn == {str(a["id"]) for a in gt["annotations"]} - crowd - matched


def test_real_sample_file(tmp_path: Path) -> None:
    gt = json.loads(SAMPLE.read_text())
    rng = np.random.default_rng(0)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"],
             "bbox": [v + float(rng.normal(0, 4)) for v in a["bbox"]],
             "score": float(rng.random())} for a in gt["annotations"]]  # fmt: skip
    dets.append({"image_id": 1, "category_id": 1, "bbox": [0, 0, 30, 30], "score": 0.99})
    ev = _evaluated(tmp_path, gt, dets)
    assert_same_as_pycocotools(ev, pycoco(gt, dets))
    assert set(ev.matches["outcome"]) <= {"tp", "fp", "fn"}


def _relabel_fixture(tmp_path: Path) -> tuple[lv.Dataset, list[dict[str, Any]]]:
    gt = {"images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}"} for i in (1, 2)],
          "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
               "iscrowd": 0},
              {"id": 2, "image_id": 2, "category_id": 1, "bbox": [20, 20, 30, 30], "area": 900,
               "iscrowd": 0}]}  # fmt: skip
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 2, "category_id": 2, "bbox": [20, 20, 30, 30], "score": 0.8},
    ]
    ds, _ = lv.connect(tmp_path / "lake").import_coco("r", gt)
    ds.import_coco_results("det", dets)
    return ds, dets


def test_pin_not_head_and_the_relabel_question(tmp_path: Path) -> None:
    ds, _ = _relabel_fixture(tmp_path)
    before = ds.evaluate("det")
    assert before.against.seq == ds.head.pins["det"]
    # the relabel: box 2 was a person all along
    fixed = ds.read("labels").filter(pl.col("label_id") == "2").with_columns(cls=pl.lit("person"))
    ds.upsert_labels(fixed)
    again = ds.evaluate("det")  # still against the pin: the numbers do not move
    assert again.summary == before.summary and again.against.seq == before.against.seq
    after = ds.evaluate("det", against="HEAD")
    assert after.summary["AP50"] > before.summary["AP50"]
    cmp = ds.compare_evaluations(before, after.id)
    overall = cmp.filter(pl.col("cls") == "all").row(0, named=True)
    assert overall["AP50_delta"] == pytest.approx(after.summary["AP50"] - before.summary["AP50"])
    person = cmp.filter(pl.col("cls") == "person").row(0, named=True)
    # no person labels before (COCO says -1: no value), a perfect match after
    assert person["AP50_a"] == -1.0 and person["AP50_b"] == 1.0 and person["AP50_delta"] is None
    # recorded, newest first, and Polars reads the table directly
    stored = ds.evaluations("det")
    assert stored["evaluation_id"].to_list() == [after.id, again.id, before.id]
    assert pl.read_delta(f"{ds.root.uri}/evaluations").height == 3
    # re-pinning is a recorded commit, and moves the default
    c = ds.pin_inferences("det", "HEAD")
    assert c.operation == "pin_inferences" and ds.head.pins["det"] == c.seq - 1
    assert ds.evaluate("det").summary == after.summary


def test_matches_and_confusion(tmp_path: Path) -> None:
    ds, _ = _relabel_fixture(tmp_path)
    ev = ds.evaluate("det")
    m = ev.matches.sort("outcome")
    assert m.select("label_id", "prediction_id", "cls", "outcome").rows() == [
        ("2", None, "car", "fn"),
        (None, "1", "person", "fp"),
        ("1", "0", "car", "tp"),
    ]
    conf = {(r["label_cls"], r["predicted_cls"]): r["count"] for r in ev.confusion.to_dicts()}
    assert conf == {("car", "car"): 1, ("car", "person"): 1}


def test_bad_arguments(tmp_path: Path) -> None:
    ds, _ = _relabel_fixture(tmp_path)
    with pytest.raises(lv.TableNotFoundError, match="no inference set 'nope'"):
        ds.evaluate("nope")
    with pytest.raises(lv.InvalidInputError, match="unknown"):
        ds.evaluate("det", classes=["unicorn"])
    with pytest.raises(lv.InvalidInputError, match="iou_thresholds"):
        ds.evaluate("det", iou_thresholds=[1.5])
    with pytest.raises(lv.InvalidInputError, match="no evaluation"):
        ds.compare_evaluations("x", "y")


def test_custom_parameters_equal_pycocotools(tmp_path: Path) -> None:
    gt = json.loads(SAMPLE.read_text())
    dets = [{"image_id": 1, "category_id": 1, "bbox": [a["bbox"][0] + 3, *a["bbox"][1:]],
             "score": 0.1 * (k + 1)} for k, a in enumerate(gt["annotations"])]  # fmt: skip
    lake = lv.connect(tmp_path / "lake")
    ds, _ = lake.import_coco("c", gt)
    ds.import_coco_results("det", dets)
    ev = ds.evaluate("det", iou_thresholds=[0.5, 0.75, 0.9], max_dets=(1, 2, 3))
    e = pycoco(gt, dets, iouThrs=np.array([0.5, 0.75, 0.9]), maxDets=[1, 2, 3])
    ours = np.array([ev.summary[k] for k in SUMMARY_KEYS])
    # pycocotools reads AP at maxDets=100 literally, so with other max_dets its AP is -1;
    # lakever reads it at the third, as pycocotools does for every other number
    assert e.stats[0] == -1
    p = e.eval["precision"][:, :, :, 0, 2]
    assert ev.summary["AP"] == pytest.approx(float(np.mean(p[p > -1])), abs=1e-12)
    assert np.max(np.abs(ours[1:] - np.array(e.stats[1:]))) <= 1e-9
    assert ev.params["max_dets"] == [1, 2, 3]


def test_categories_in_batches_give_the_same_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluating a few categories at a time (bounded memory) changes nothing."""
    from lakever import evaluation

    rng = np.random.default_rng(2)
    cats = [{"id": c, "name": f"c{c}"} for c in (7, 3, 12, 5)]  # class order != id order
    images = [{"id": i, "width": 300, "height": 300, "file_name": f"{i}"} for i in range(1, 30)]
    anns, dets = [], []
    for k in range(300):
        box = [float(v) for v in rng.integers(0, 200, 2)] + [
            float(v) for v in rng.integers(5, 80, 2)
        ]
        cat = int(rng.choice([7, 3, 12, 5]))
        img = int(rng.integers(1, 30))
        anns.append(
            {
                "id": k + 1,
                "image_id": img,
                "category_id": cat,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": int(k % 37 == 0),
            }
        )
        if k % 3:
            dets.append(
                {
                    "image_id": img,
                    "category_id": cat if k % 5 else 3,
                    "bbox": [box[0] + 2, box[1], box[2], box[3]],
                    "score": float(rng.random()),
                }
            )
    gt = {"images": images, "categories": cats, "annotations": anns}
    whole = _evaluated(tmp_path / "whole", gt, dets)
    monkeypatch.setattr(evaluation, "BATCH_BOXES", 50)
    ev = _evaluated(tmp_path / "batched", gt, dets)
    assert_same_as_pycocotools(ev, pycoco(gt, dets))
    assert ev.matches.equals(whole.matches)
    assert ev.confusion.equals(whole.confusion)
