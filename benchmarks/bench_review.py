"""Evaluations against pycocotools, and segments on a large dataset.

1. `ds.evaluate` against pycocotools' `COCOeval` (evaluate + accumulate +
   summarize) on the same boxes: N images with 10 labels each and about as
   many predictions (jittered copies, misses and strays), at two sizes. Each
   runs in its own process, so peak memory (max RSS) is its own; pycocotools'
   time is given with and without loading its JSON.
2. A segment of 10k labels on a dataset of 5M labels: `read` and `outdated`
   after 100 further commits that edit labels (some of the segment's).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import polars as pl

import lakever as lv
from benchmarks._common import (
    build_dataset,
    fmt_b,
    fmt_s,
    fresh_dir,
    in_child,
    markdown,
    median_time,
)

_LAKEVER = """
import lakever as lv
ds = lv.connect(args['lake']).dataset('e')
ev = ds.evaluate('det')
result = {'AP': ev.summary['AP'], 'AP50': ev.summary['AP50']}
"""

_PYCOCOTOOLS = """
import contextlib, io, time
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(args['gt'])
    dt = gt.loadRes(args['dt'])
    t = time.perf_counter()
    e = COCOeval(gt, dt, 'bbox'); e.evaluate(); e.accumulate(); e.summarize()
result = {'AP': float(e.stats[0]), 'AP50': float(e.stats[1]),
          'eval_only': time.perf_counter() - t}
"""


def _scene(n_images: int, seed: int = 3) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    n = n_images * 10
    img = np.repeat(np.arange(1, n_images + 1), 10)
    xy = rng.random((n, 2)) * 500
    wh = rng.random((n, 2)) * 120 + 4
    cat = rng.integers(1, 11, n)
    crowd = rng.random(n) < 0.01
    images = [{"id": int(i), "width": 640, "height": 640, "file_name": f"{i}.jpg"}
              for i in range(1, n_images + 1)]  # fmt: skip
    anns = [
        {"id": k + 1, "image_id": int(img[k]), "category_id": int(cat[k]),
         "bbox": [round(float(xy[k, 0]), 2), round(float(xy[k, 1]), 2),
                  round(float(wh[k, 0]), 2), round(float(wh[k, 1]), 2)],
         "area": round(float(wh[k, 0] * wh[k, 1]), 2), "iscrowd": int(crowd[k])}
        for k in range(n)
    ]  # fmt: skip
    keep = rng.random(n) < 0.85
    jit = rng.normal(0, 4, (n, 2))
    dets = [
        {"image_id": int(img[k]), "category_id": int(cat[k]) if rng.random() < 0.9 else 1,
         "bbox": [round(float(xy[k, 0] + jit[k, 0]), 2), round(float(xy[k, 1] + jit[k, 1]), 2),
                  round(float(wh[k, 0]), 2), round(float(wh[k, 1]), 2)],
         "score": round(float(rng.random()), 3)}
        for k in np.flatnonzero(keep)
    ]  # fmt: skip
    strays = rng.random((n // 5, 4)) * 400
    dets += [
        {"image_id": int(rng.integers(1, n_images + 1)), "category_id": int(rng.integers(1, 11)),
         "bbox": [round(float(s[0]), 2), round(float(s[1]), 2), round(float(s[2] / 4 + 2), 2),
                  round(float(s[3] / 4 + 2), 2)], "score": round(float(rng.random()), 3)}
        for s in strays
    ]  # fmt: skip
    cats = [{"id": c, "name": f"class{c}"} for c in range(1, 11)]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def _evaluations(base: Path, sizes: list[int]) -> str:
    rows = []
    for n_images in sizes:
        work = fresh_dir(base / f"eval-{n_images}")
        gt, dets = _scene(n_images)
        (work / "gt.json").write_text(json.dumps(gt))
        (work / "dt.json").write_text(json.dumps(dets))
        lake = lv.connect(work / "lake")
        ds, _ = lake.import_coco("e", gt)
        ds.import_coco_results("det", dets)
        ours = in_child(_LAKEVER, lake=str(work / "lake"))
        theirs = in_child(_PYCOCOTOOLS, gt=str(work / "gt.json"), dt=str(work / "dt.json"))
        assert abs(ours["AP"] - theirs["AP"]) < 1e-9, (ours, theirs)
        what = f"{n_images:,} images, {len(gt['annotations']):,} labels, {len(dets):,} predictions"
        rows.append(
            [
                what,
                fmt_s(ours["seconds"]), fmt_b(ours["peak_rss"]),
                fmt_s(theirs["seconds"]), fmt_s(theirs["eval_only"]), fmt_b(theirs["peak_rss"]),
                f"{theirs['seconds'] / ours['seconds']:.1f}x",
                f"{theirs['eval_only'] / ours['seconds']:.1f}x",
                f"{ours['AP']:.4f} / {theirs['AP']:.4f}",
            ]
        )  # fmt: skip
    return markdown(
        "`ds.evaluate` against pycocotools `COCOeval`",
        ["", "lakever (from the lake)", "peak", "pycocotools (JSON load + eval)",
         "pycocotools eval only", "peak", "speed-up", "speed-up vs eval only", "AP (equal)"],
        rows,
        ["lakever's time includes reading labels and predictions from the Delta tables, "
         "COCO matching for `matches` and `confusion`, and recording the result."],
    )  # fmt: skip


def _segment(base: Path, n_labels: int, elements: int, commits: int) -> str:
    work = fresh_dir(base / "segment")
    ds, _frames, labels = build_dataset(work, "seg", n_labels)
    rng = np.random.default_rng(1)
    ids = labels["label_id"]
    picked = ids.gather(rng.choice(ids.len(), elements, replace=False)).to_list()
    seg = ds.create_segment("review", label_ids=picked)
    for i in range(commits):
        # each commit edits 200 labels, a tenth of them in the segment
        some = picked[i * 20 : i * 20 + 20] + ids.gather(rng.integers(0, ids.len(), 180)).to_list()
        rows = ds.read("labels").filter(pl.col("label_id").is_in(some))
        ds.upsert_labels(rows.with_columns(w=pl.col("w") + 1.0), message=f"edit {i}")
    t_read = median_time(lambda: seg.read("labels"), repeat=3)
    t_out = median_time(lambda: seg.outdated(), repeat=3)
    changed = seg.outdated().height
    return markdown(
        f"A segment of {elements:,} labels on a dataset of {labels.height:,} labels, "
        f"after {commits} commits",
        ["", "time (median of 3)"],
        [["`seg.read('labels')`", fmt_s(t_read)],
         [f"`seg.outdated()` ({changed:,} changed)", fmt_s(t_out)]],
    )  # fmt: skip


def run(work: Path, *, sizes: list[int], n_labels: int, elements: int, commits: int) -> list[str]:
    base = fresh_dir(work / "review")
    started = time.perf_counter()
    sections = [_evaluations(base, sizes), _segment(base, n_labels, elements, commits)]
    print(f"review suite: {time.perf_counter() - started:.0f} s")
    return sections
