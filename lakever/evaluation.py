"""Evaluating an inference set against the labels of the version it is pinned to.

The numbers are COCO's (bbox): `faster-coco-eval` computes them. It is a
maintained reimplementation of pycocotools' `COCOeval` whose `evaluate` and
`accumulate` run in C++. Its `stats` and precision arrays equal pycocotools'
(checked by our tests to 1e-9 on random boxes with crowds and on a real file),
and it is 10x faster. lakever only turns tables into its inputs, reads the
twelve summary numbers and per-class averages out of its arrays as
pycocotools' `summarize` does, and matches boxes at IoU 0.5 itself
(`_matching`, also checked against pycocotools) for `matches` and `confusion`.

Ids: frame, label and class ids become COCO ids the way a COCO file had them
(digit-only ids are read as numbers, category ids are those kept from an
imported file), so evaluating an imported COCO file gives exactly what
pycocotools gives on the file itself, ties in scores included.

Every evaluation is recorded in the ``evaluations`` Delta table of the
dataset: set, commits, parameters, the summary and per-class metrics.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from lakever import _matching, _records, coco
from lakever.commits import Commit, now_utc
from lakever.errors import InvalidInputError
from lakever.schema import FRAMES, LABELS

if TYPE_CHECKING:
    from lakever.dataset import Dataset

SUMMARY_KEYS = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip
DEFAULT_IOUS = tuple(float(x) for x in np.linspace(0.5, 0.95, 10))
DEFAULT_AREAS: dict[str, tuple[float, float]] = {
    "all": (0.0, 1e10),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e10),
}
BACKGROUND = "background"

_PER_CLASS = {
    "cls": pl.String(), "AP": pl.Float64(), "AP50": pl.Float64(), "AP75": pl.Float64(),
    "AR100": pl.Float64(), "n_labels": pl.Int64(), "n_predictions": pl.Int64(),
}  # fmt: skip
EVALUATION_SCHEMA: dict[str, pl.DataType] = {
    "evaluation_id": pl.String(),
    "set_name": pl.String(),
    "against_seq": pl.Int64(),
    "against_commit": pl.String(),
    "predictions_seq": pl.Int64(),
    "params": pl.String(),
    **{k: pl.Float64() for k in SUMMARY_KEYS},
    "per_class": pl.List(pl.Struct(_PER_CLASS)),
    "created_at": pl.Datetime("us", "UTC"),
    "author": pl.String(),
}


@dataclass
class Evaluation:
    """COCO metrics of an inference set against the labels of one commit.

    Attributes:
        id: the stored evaluation's id.
        set_name: the inference set.
        against: the commit whose labels were the ground truth.
        predictions_seq: the commit whose predictions were evaluated.
        params: iou_thresholds, max_dets, area_ranges, classes.
        summary: the 12 COCO numbers (AP, AP50, ..., ARl); -1 where COCO has no
            value. They equal pycocotools' `stats`, but for one of its quirks:
            with custom `max_dets` that lack 100 it reports AP as -1 (it looks
            for 100 literally); lakever reads AP at the third `max_dets`, as
            pycocotools reads every other number.
        per_class: cls, AP, AP50, AP75, AR100, n_labels, n_predictions.
        matches: one row per prediction and per unmatched label at IoU 0.5:
            frame_id, label_id, prediction_id, cls, iou, outcome ('tp', 'fp',
            'fn', or 'ignored' for a prediction COCO counts neither way: one
            matched to a crowd region, or beyond the most detections kept).
        confusion: label cls x predicted cls counts at IoU 0.5, boxes matched
            whatever their class; 'background' stands for no box.
    """

    id: str
    set_name: str
    against: Commit
    predictions_seq: int
    params: dict[str, Any]
    summary: dict[str, float]
    per_class: pl.DataFrame
    matches: pl.DataFrame = field(repr=False)
    confusion: pl.DataFrame = field(repr=False)
    created_at: datetime | None = None


def _ids(values: pl.Series) -> pl.Series:
    """COCO ids for text ids: the numbers themselves when all are digits, else ranks."""
    text = values.cast(pl.String)
    if text.len() and bool(text.str.contains(r"^(0|[1-9][0-9]{0,17})$").all()):
        return text.cast(pl.Int64)
    return text.rank("dense").cast(pl.Int64)


def _numbers(values: Any, what: str, kind: type) -> list[Any]:
    """`values` as a list of numbers of `kind` (InvalidInputError naming `what` otherwise)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InvalidInputError(f"{what} must be a list of numbers, got {values!r}")
    out = []
    for v in values:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or (kind is int and v != int(v)):
            name = "whole numbers" if kind is int else "numbers"
            raise InvalidInputError(f"{what} must hold {name}; {v!r} is not one (in {values!r})")
        out.append(kind(v))
    return out


def _params(
    classes: Sequence[str],
    iou_thresholds: Sequence[float] | None,
    max_dets: Sequence[int],
    area_ranges: Mapping[str, tuple[float, float]] | None,
    only: Sequence[str] | None,
) -> dict[str, Any]:
    ious = _numbers(iou_thresholds or DEFAULT_IOUS, "iou_thresholds", float)
    if not ious or any(not 0 < x <= 1 for x in ious):
        raise InvalidInputError(f"iou_thresholds must lie in (0, 1], got {ious!r}")
    dets = sorted(_numbers(max_dets, "max_dets", int))
    if not dets or dets[0] < 1:
        raise InvalidInputError(f"max_dets must be positive whole numbers, got {max_dets!r}")
    if not isinstance(area_ranges, (Mapping, type(None))):
        raise InvalidInputError(
            f"area_ranges must map names to (low, high) areas, got {area_ranges!r}"
        )
    areas: dict[str, list[float]] = {}
    for name, bounds in dict(area_ranges or DEFAULT_AREAS).items():
        pair = _numbers(bounds, f"area_ranges[{name!r}]", float)
        if len(pair) != 2 or not 0 <= pair[0] <= pair[1]:
            raise InvalidInputError(
                f"area_ranges[{name!r}] must be two areas (low, high) with 0 <= low <= high, "
                f"got {bounds!r}"
            )
        areas[str(name)] = pair
    if "all" not in areas:
        areas = {"all": list(DEFAULT_AREAS["all"]), **areas}
    picked = list(only) if only is not None else list(classes)
    unknown = [c for c in picked if c not in classes]
    if unknown or not picked:
        raise InvalidInputError(f"classes must be classes of the dataset; unknown: {unknown!r}")
    return {
        "iou_thresholds": ious,
        "max_dets": dets,
        "area_ranges": areas,
        "classes": picked,
    }


def evaluate(
    ds: Dataset,
    set_name: str,
    *,
    against: Any,
    iou_thresholds: Sequence[float] | None,
    max_dets: Sequence[int],
    area_ranges: Mapping[str, tuple[float, float]] | None,
    classes: Sequence[str] | None,
    author: str,
    store: bool = True,
) -> Evaluation:
    """Evaluate and (with `store`) record; see `Dataset.evaluate`."""
    head = ds.head
    table = ds.at(head)._inference_set(set_name)
    if against is None:
        if set_name not in head.pins:
            raise InvalidInputError(
                f"inference set {set_name!r} has no pin; pass against=<ref> "
                f"or pin it with ds.pin_inferences({set_name!r}, ref)"
            )
        target = ds.resolve(head.pins[set_name])
    else:
        target = ds.resolve(against)
    view = ds.at(target)
    params = _params(view.classes, iou_thresholds, max_dets, area_ranges, classes)
    frames = view.read(FRAMES).select("frame_id")
    labels = view.read(LABELS)
    preds = ds.read(table)
    result = _run(ds, frames, labels, preds, params)
    ev = Evaluation(
        id=uuid.uuid4().hex[:16],
        set_name=set_name,
        against=target,
        predictions_seq=head.seq,
        params=params,
        created_at=now_utc(),
        **result,
    )
    if store:
        _store(ds, ev, author)
    return ev


def _run(
    ds: Dataset,
    frames: pl.DataFrame,
    labels: pl.DataFrame,
    preds: pl.DataFrame,
    params: dict[str, Any],
) -> dict[str, Any]:
    classes = params["classes"]
    names = list(dict.fromkeys([*ds.classes, *classes]))
    cat_of = coco.category_ids(names, coco.load_meta(ds))
    image_ids = frames.with_columns(image_id=_ids(frames["frame_id"]))
    gt = _boxes(labels, image_ids, cat_of, classes, "label_id")
    gt = gt.with_columns(
        area=pl.col("area") if "area" in gt.columns else pl.col("w") * pl.col("h"),
        iscrowd=pl.col("iscrowd").fill_null(0) if "iscrowd" in gt.columns else pl.lit(0),
    )
    dt = _boxes(preds, image_ids, cat_of, classes, "label_id").filter(
        pl.col("image_id").is_not_null()
    )
    g, d = _grouped(gt, dt)
    images = [{"id": int(i)} for i in image_ids["image_id"].to_list()]
    # COCO scores each category on its own, so categories are evaluated a batch
    # at a time (at most BATCH_BOXES boxes each): memory follows the batch.
    cats = sorted(cat_of[c] for c in classes)
    arrays: list[dict[str, np.ndarray]] = []
    parts: list[pl.DataFrame] = []
    for batch in _batches(cats, g, d):
        gb = g.filter(pl.col("category_id").is_in(batch))
        db = d.filter(pl.col("category_id").is_in(batch))
        paired = _matching.pairs(gb, db, max_det=int(params["max_dets"][-1]))
        arrays.append(_coco_eval(images, batch, gb, db, paired, params))
        parts.append(_per_class_matches(gb, db, params, paired))
    ev = {k: np.concatenate([a[k] for a in arrays], axis=2 if k != "recall" else 1)
          for k in ("precision", "recall")}  # fmt: skip
    order = {cat: k for k, cat in enumerate(cats)}
    summary = _summary(ev, params)
    per_class = _per_class(ev, params, gt, dt, [order[cat_of[c]] for c in classes])
    matches = pl.concat(parts).sort(
        "frame_id", "outcome", "prediction_id", "label_id", nulls_last=True
    )
    confusion = _confusion(g, d, int(params["max_dets"][-1]))
    return {"summary": summary, "per_class": per_class, "matches": matches, "confusion": confusion}


#: A batch of categories holds at most this many labels and predictions (unless one
#: category alone holds more).
BATCH_BOXES = 400_000


def _batches(cats: list[int], g: pl.DataFrame, d: pl.DataFrame) -> list[list[int]]:
    sizes = dict(
        pl.concat([g.select("category_id"), d.select("category_id")])
        .group_by("category_id")
        .len()
        .iter_rows()
    )
    out: list[list[int]] = [[]]
    total = 0
    for cat in cats:
        n = int(sizes.get(cat, 0))
        if out[-1] and total + n > BATCH_BOXES:
            out.append([])
            total = 0
        out[-1].append(cat)
        total += n
    return out


def _coco_eval(
    images: list[dict[str, int]],
    cats: list[int],
    g: pl.DataFrame,
    d: pl.DataFrame,
    paired: _matching.Pairs,
    params: Mapping[str, Any],
) -> dict[str, np.ndarray]:
    """faster-coco-eval's precision and recall arrays for some categories."""
    from faster_coco_eval import COCO

    dataset = {
        "images": images,
        "categories": [{"id": c} for c in cats],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": [x, y, w, h], "area": a,
             "iscrowd": int(z)}
            for k, (i, c, x, y, w, h, a, z) in enumerate(
                g.select("image_id", "category_id", "x", "y", "w", "h", "area", "ignore")
                .iter_rows()
            )
        ],
    }  # fmt: skip
    # what `loadRes` makes of bbox results: ids in order, area w*h, no crowds
    results = [
        {"id": k + 1, "image_id": i, "category_id": c, "bbox": [x, y, w, h], "score": s,
         "area": w * h, "iscrowd": 0}
        for k, (i, c, x, y, w, h, s) in enumerate(
            d.select("image_id", "category_id", "x", "y", "w", "h", "score").iter_rows()
        )
    ]  # fmt: skip
    keys = pl.concat(
        [g.select("group", "image_id", "category_id"), d.select("group", "image_id", "category_id")]
    ).unique("group")
    with contextlib.redirect_stdout(io.StringIO()):
        cgt = COCO(dataset)
        cdt = COCO({**dataset, "annotations": results})
        e = _evaluator()(cgt, cdt, "bbox", print_function=lambda *_: None)
        e.blocks = _matching.iou_blocks(paired, keys)
        e.params.iouThrs = np.array(params["iou_thresholds"])
        e.params.maxDets = list(params["max_dets"])
        e.params.areaRng = [list(v) for v in params["area_ranges"].values()]
        e.params.areaRngLbl = list(params["area_ranges"])
        e.params.catIds = list(cats)
        e.evaluate()
        e.accumulate()
    return {"precision": np.asarray(e.eval["precision"]), "recall": np.asarray(e.eval["recall"])}


def _boxes(
    rows: pl.DataFrame,
    image_ids: pl.DataFrame,
    cat_of: Mapping[str, int],
    classes: Sequence[str],
    key: str,
) -> pl.DataFrame:
    """Rows of the evaluated classes, with COCO image and category ids, in COCO's order."""
    rows = rows.filter(pl.col("cls").is_in(list(classes)))
    rows = rows.join(image_ids, on="frame_id", how="left")
    rows = rows.with_columns(
        category_id=pl.col("cls").replace_strict(dict(cat_of), return_dtype=pl.Int64),
        _order=_ids(rows[key]),
    )
    return rows.sort("_order")


def _summary(ev: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, float]:
    """The 12 numbers, read from the arrays as pycocotools' `summarize` reads them."""
    ious = np.array(params["iou_thresholds"])
    dets = list(params["max_dets"])
    areas = list(params["area_ranges"])

    def mean(
        ap: bool, iou: float | None = None, area: str = "all", det: int | None = None
    ) -> float:
        if area not in areas or det is None:
            return -1.0
        a, m = areas.index(area), dets.index(det)
        s = ev["precision"] if ap else ev["recall"]
        if iou is not None:
            t = np.where(np.isclose(ious, iou, rtol=0, atol=1e-12))[0]
            if not len(t):
                return -1.0
            s = s[t]
        s = s[..., a, m]
        s = s[s > -1]
        return float(np.mean(s)) if s.size else -1.0

    last = dets[-1] if len(dets) < 3 else dets[2]

    def det_at(i: int) -> int | None:
        return dets[i] if i < len(dets) else None

    return {
        "AP": mean(True, det=last),
        "AP50": mean(True, 0.5, det=last),
        "AP75": mean(True, 0.75, det=last),
        "APs": mean(True, area="small", det=last),
        "APm": mean(True, area="medium", det=last),
        "APl": mean(True, area="large", det=last),
        "AR1": mean(False, det=det_at(0)),
        "AR10": mean(False, det=det_at(1)),
        "AR100": mean(False, det=det_at(2)),
        "ARs": mean(False, area="small", det=last),
        "ARm": mean(False, area="medium", det=last),
        "ARl": mean(False, area="large", det=last),
    }


def _per_class(
    ev: Mapping[str, Any],
    params: Mapping[str, Any],
    gt: pl.DataFrame,
    dt: pl.DataFrame,
    index: Sequence[int],
) -> pl.DataFrame:
    """Per-class precision and recall, averaged as pycocotools averages them (area all).

    `index` gives each class's position in the arrays (COCO orders them by category id).
    """
    ious = np.array(params["iou_thresholds"])
    m = len(params["max_dets"]) - 1 if len(params["max_dets"]) < 3 else 2
    precision, recall = ev["precision"], ev["recall"]

    def avg(s: np.ndarray) -> float:
        s = s[s > -1]
        return float(np.mean(s)) if s.size else -1.0

    def at(iou: float) -> list[int]:
        return list(np.where(np.isclose(ious, iou, rtol=0, atol=1e-12))[0])

    n_labels = dict(gt.filter(pl.col("iscrowd") == 0).group_by("cls").len().iter_rows())
    n_preds = dict(dt.group_by("cls").len().iter_rows())
    rows = []
    for k, cls in zip(index, params["classes"], strict=True):
        t50, t75 = at(0.5), at(0.75)
        rows.append(
            {
                "cls": cls,
                "AP": avg(precision[:, :, k, 0, m]),
                "AP50": avg(precision[t50, :, k, 0, m]) if t50 else -1.0,
                "AP75": avg(precision[t75, :, k, 0, m]) if t75 else -1.0,
                "AR100": avg(recall[:, k, 0, m]),
                "n_labels": int(n_labels.get(cls, 0)),
                "n_predictions": int(n_preds.get(cls, 0)),
            }
        )
    return pl.DataFrame(rows, schema=_PER_CLASS)


def _evaluator() -> Any:
    """faster-coco-eval's COCOeval, fed the IoUs we computed for all frames at once.

    Its own `computeIoU` runs once per frame and class in Python (15 s of 87
    at 100k frames); ours are the same numbers (pycocotools' formula, same
    detection order and cut), made in one vectorised pass.
    """
    from faster_coco_eval import COCOeval_faster

    class Precomputed(COCOeval_faster):  # type: ignore[misc]
        blocks: dict[tuple[int, int], np.ndarray] = {}  # noqa: RUF012 - set per instance

        def computeIoU(self, imgId: int, catId: int) -> Any:
            return self.blocks.get((imgId, catId), [])

    return Precomputed


def _grouped(gt: pl.DataFrame, dt: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Labels and predictions as the matcher takes them, grouped by frame and class."""
    group = pl.concat_str(pl.col("image_id"), pl.col("category_id"), separator="/")
    g = gt.select(
        "label_id", "frame_id", "cls", "x", "y", "w", "h", "image_id", "category_id", "area",
        ignore=pl.col("iscrowd") != 0, group=group,
    )  # fmt: skip
    d = dt.select(
        "label_id", "frame_id", "cls", "x", "y", "w", "h", "image_id", "category_id",
        score=pl.col("confidence"), group=group,
    )  # fmt: skip
    return g, d


def _indexed(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    return frame.with_row_index(name).with_columns(pl.col(name).cast(pl.Int64))


def _per_class_matches(
    g: pl.DataFrame, d: pl.DataFrame, params: Mapping[str, Any], paired: _matching.Pairs
) -> pl.DataFrame:
    """One row per prediction and per missed label, matched as COCO does at IoU 0.5."""
    m = _matching.match(g, d, max_det=int(params["max_dets"][-1]), paired=paired)
    pred_rows = m.dt.join(_indexed(d, "dt"), on="dt").join(
        _indexed(g, "gt").select("gt", gt_label="label_id"), on="gt", how="left"
    )
    matches = pl.concat(
        [
            pred_rows.select(
                "frame_id", label_id="gt_label", prediction_id="label_id", cls="cls",
                iou="iou", outcome="outcome",
            ),
            m.gt.filter(pl.col("outcome") == "fn")
            .join(_indexed(g, "gt"), on="gt")
            .select(
                "frame_id", "label_id", prediction_id=pl.lit(None, pl.String), cls="cls",
                iou=pl.lit(None, pl.Float64), outcome="outcome",
            ),
        ]
    )  # fmt: skip
    return matches


def _confusion(g: pl.DataFrame, d: pl.DataFrame, max_det: int) -> pl.DataFrame:
    """Label class x predicted class at IoU 0.5, boxes matched whatever their class.

    Frames are matched a batch at a time, so memory follows the batch.
    """
    n = max(1, -(-(g.height + d.height) // BATCH_BOXES))
    part = pl.col("frame_id").hash(seed=0) % n
    counts = [_confusion_of(g.filter(part == i), d.filter(part == i), max_det) for i in range(n)]
    return (
        pl.concat(counts)
        .group_by("label_cls", "predicted_cls")
        .agg(pl.col("count").sum())
        .sort("label_cls", "predicted_cls")
    )


def _confusion_of(g: pl.DataFrame, d: pl.DataFrame, max_det: int) -> pl.DataFrame:
    ga = g.with_columns(group=pl.col("frame_id"))
    da = d.with_columns(group=pl.col("frame_id"))
    agn = _matching.match(ga, da, max_det=max_det)
    pairs = (
        agn.dt.filter(pl.col("outcome") == "tp")
        .join(_indexed(da, "dt"), on="dt")
        .join(_indexed(ga, "gt").select("gt", label_cls="cls"), on="gt")
        .select("label_cls", predicted_cls="cls")
    )
    lonely_preds = (
        agn.dt.filter(pl.col("outcome") == "fp")
        .join(_indexed(da, "dt"), on="dt")
        .select(label_cls=pl.lit(BACKGROUND), predicted_cls="cls")
    )
    lonely_labels = (
        agn.gt.filter(pl.col("outcome") == "fn")
        .join(_indexed(ga, "gt"), on="gt")
        .select(label_cls="cls", predicted_cls=pl.lit(BACKGROUND))
    )
    return (
        pl.concat([pairs, lonely_preds, lonely_labels])
        .group_by("label_cls", "predicted_cls")
        .len("count")
    )


# -- the record ----------------------------------------------------------------------


def _location(ds: Dataset) -> Any:
    return ds.root.child("evaluations")


def _store(ds: Dataset, ev: Evaluation, author: str) -> None:
    row = {
        "evaluation_id": ev.id,
        "set_name": ev.set_name,
        "against_seq": ev.against.seq,
        "against_commit": ev.against.id,
        "predictions_seq": ev.predictions_seq,
        "params": json.dumps(ev.params, sort_keys=True),
        **ev.summary,
        "per_class": ev.per_class.to_dicts(),
        "created_at": ev.created_at,
        "author": author,
    }
    _records.append(_location(ds), pl.DataFrame([row], schema=EVALUATION_SCHEMA))


def stored(ds: Dataset, set_name: str | None = None) -> pl.DataFrame:
    """Every recorded evaluation (of one set), newest first."""
    rows = _records.read(_location(ds), EVALUATION_SCHEMA)
    if set_name is not None:
        rows = rows.filter(pl.col("set_name") == set_name)
    return rows.sort("created_at", descending=True)


def _stored_one(ds: Dataset, ref: Evaluation | str) -> tuple[str, dict[str, float], pl.DataFrame]:
    if isinstance(ref, Evaluation):
        return ref.id, ref.summary, ref.per_class
    rows = stored(ds).filter(pl.col("evaluation_id") == ref)
    if rows.is_empty():
        raise InvalidInputError(
            f"no evaluation {ref!r} in dataset {ds.name!r}; ds.evaluations() lists them"
        )
    r = rows.row(0, named=True)
    per_class = pl.DataFrame(r["per_class"], schema=_PER_CLASS)
    return r["evaluation_id"], {k: r[k] for k in SUMMARY_KEYS}, per_class


def compare(ds: Dataset, a: Evaluation | str, b: Evaluation | str) -> pl.DataFrame:
    """Per class and overall ('all'): each metric for a and b, and b - a."""
    _, sa, pa = _stored_one(ds, a)
    _, sb, pb = _stored_one(ds, b)
    metrics = ("AP", "AP50", "AP75", "AR100")
    overall = [pl.DataFrame([{"cls": "all", **{m: s[m] for m in metrics}}]) for s in (sa, sb)]
    left = pl.concat([overall[0], pa.select("cls", *metrics)], how="vertical_relaxed")
    right = pl.concat([overall[1], pb.select("cls", *metrics)], how="vertical_relaxed")
    out = left.join(right, on="cls", how="full", suffix="_b", coalesce=True)
    out = out.rename({m: f"{m}_a" for m in metrics})
    return out.with_columns(
        [
            pl.when((pl.col(f"{m}_a") >= 0) & (pl.col(f"{m}_b") >= 0))
            .then(pl.col(f"{m}_b") - pl.col(f"{m}_a"))
            .alias(f"{m}_delta")
            for m in metrics
        ]
    ).select("cls", *[f"{m}_{s}" for m in metrics for s in ("a", "b", "delta")])
