"""COCO's greedy box matching at one IoU threshold, for all frames at once.

pycocotools matches image by image in Python. This does the same matching
for every group (a frame and class, or a frame alone) together: detections
are ranked by score inside their group, and round r matches the r-th
detection of every group at once, so the work is a hundred vectorised rounds
at most, not a loop over frames.

The rules are pycocotools' `evaluateImg` for one threshold and the area range
"all": detections sorted by descending score (stable), the first `max_det`
kept; ground truth with crowds (ignored) last; a detection takes the
unmatched, non-ignored box of highest IoU (at least the threshold, ties to
the later box), else the ignored box of highest IoU (crowds may match many
detections); a detection matched to an ignored box is itself ignored. IoU is
pycocotools' formula, operation for operation (for a crowd the union is the
detection's area).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl


@dataclass(frozen=True)
class Matched:
    """The outcome of matching.

    Attributes:
        dt: one row per detection: dt (its index), gt (matched box index or
            null), iou (with that box), outcome ('tp', 'fp' or 'ignored').
        gt: one row per ground-truth box: gt, dt (or null), outcome ('tp',
            'fn' or 'ignored').
    """

    dt: pl.DataFrame
    gt: pl.DataFrame


def iou(
    dx: np.ndarray, dy: np.ndarray, dw: np.ndarray, dh: np.ndarray,
    gx: np.ndarray, gy: np.ndarray, gw: np.ndarray, gh: np.ndarray,
    crowd: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """The bbox IoU of aligned pairs, as pycocotools' C code computes it, step for step."""
    w = np.minimum(dx + dw, gx + gw) - np.maximum(dx, gx)
    h = np.minimum(dy + dh, gy + gh) - np.maximum(dy, gy)
    inter = w * h
    union = np.where(crowd, dw * dh, dw * dh + gw * gh - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = inter / union
    return np.where((w > 0) & (h > 0), out, 0.0)


@dataclass(frozen=True)
class Pairs:
    """Every (kept detection, box) pair of each group, with its IoU.

    Attributes:
        pairs: dt, gt, group, rank (of the detection in its group), pos (of
            the box, crowds last), ignore, iou; sorted by group, rank, gt.
        kept: indices of the detections among each group's best `max_det`.
    """

    pairs: pl.DataFrame
    kept: np.ndarray


def pairs(gt: pl.DataFrame, dt: pl.DataFrame, *, max_det: int = 100) -> Pairs:
    """All detection-box pairs within groups, with pycocotools' IoU.

    Args:
        gt: columns group, x, y, w, h, ignore (bool); row order is COCO's
            annotation order.
        dt: columns group, x, y, w, h, score; row order is the results order.
        max_det: detections kept per group, best first.
    """
    # a box's place in its group once crowds go last (stable): its index, crowds shifted
    g = gt.with_row_index("gt").with_columns(
        pos=pl.col("gt").cast(pl.Int64) + pl.when(pl.col("ignore")).then(1 << 40).otherwise(0)
    )
    # a detection's rank in its group: by descending score, ties in results order
    d = dt.with_row_index("dt").sort(["group", pl.col("score").neg(), "dt"])
    d = d.with_columns(rank=pl.int_range(pl.len()).over("group"))
    kept = d.filter(pl.col("rank") < max_det)
    pairs = kept.select("dt", "group", "rank", "x", "y", "w", "h").join(
        g.select(
            "gt",
            "group",
            "pos",
            "ignore",
            gx="x",
            gy="y",
            gw="w",
            gh="h",
        ),
        on="group",
        how="inner",
    )
    dx, dy, dw, dh, gx, gy, gw, gh = (
        pairs[c].to_numpy() for c in ("x", "y", "w", "h", "gx", "gy", "gw", "gh")
    )
    values = iou(dx, dy, dw, dh, gx, gy, gw, gh, pairs["ignore"].to_numpy())
    out = pairs.select("dt", "gt", "group", "rank", "pos", "ignore").with_columns(iou=values)
    return Pairs(out.sort("group", "rank", "gt"), kept["dt"].to_numpy())


def match(
    gt: pl.DataFrame,
    dt: pl.DataFrame,
    *,
    threshold: float = 0.5,
    max_det: int = 100,
    paired: Pairs | None = None,
) -> Matched:
    """Match detections to ground truth within groups.

    Args:
        gt: as for `pairs`.
        dt: as for `pairs`.
        threshold: the IoU a match needs.
        max_det: detections kept per group, best first.
        paired: `pairs(gt, dt, max_det=max_det)`, when already computed.
    """
    paired = paired or pairs(gt, dt, max_det=max_det)
    candidates = paired.pairs.filter(pl.col("iou") >= min(threshold, 1 - 1e-10)).sort("rank")
    dt_match, dt_iou, dt_ign = _greedy(candidates, n_gt=gt.height, n_dt=dt.height)

    in_play = np.zeros(dt.height, dtype=bool)
    in_play[paired.kept] = True
    matched = dt_match >= 0
    outcome = np.where(~in_play | (matched & dt_ign), "ignored", np.where(matched, "tp", "fp"))
    dt_rows = pl.DataFrame(
        {
            "dt": np.arange(dt.height, dtype=np.int64),
            "gt": pl.Series(dt_match, dtype=pl.Int64).replace(-1, None),
            "iou": pl.Series(dt_iou, dtype=pl.Float64).set(pl.Series(~matched), None),
            "outcome": outcome,
        }
    )
    gt_dt = np.full(gt.height, -1, dtype=np.int64)
    hits = np.flatnonzero(matched & ~dt_ign)
    gt_dt[dt_match[hits]] = hits
    ignore = gt["ignore"].to_numpy()
    gt_rows = pl.DataFrame(
        {
            "gt": np.arange(gt.height, dtype=np.int64),
            "dt": pl.Series(gt_dt, dtype=pl.Int64).replace(-1, None),
            "outcome": np.where(ignore, "ignored", np.where(gt_dt >= 0, "tp", "fn")),
        }
    )
    return Matched(dt=dt_rows, gt=gt_rows)


def _greedy(pairs: pl.DataFrame, *, n_gt: int, n_dt: int) -> tuple[np.ndarray, ...]:
    """Round r matches every group's r-th detection; return per-detection match, IoU, ignore."""
    dt_match = np.full(n_dt, -1, dtype=np.int64)
    dt_iou = np.zeros(n_dt)
    dt_ign = np.zeros(n_dt, dtype=bool)
    taken = np.zeros(n_gt, dtype=bool)
    if pairs.is_empty():
        return dt_match, dt_iou, dt_ign
    rank = pairs["rank"].to_numpy()
    d_all = pairs["dt"].to_numpy()
    g_all = pairs["gt"].to_numpy()
    pos_all = pairs["pos"].to_numpy()
    ign_all = pairs["ignore"].to_numpy()
    iou_all = pairs["iou"].to_numpy()
    bounds = np.flatnonzero(np.diff(rank)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(rank)], strict=True):
        d, g, pos = d_all[lo:hi], g_all[lo:hi], pos_all[lo:hi]
        ign, val = ign_all[lo:hi], iou_all[lo:hi]
        ok = ~taken[g] | ign  # a matched box is out, unless it is a crowd
        if not ok.any():
            continue
        d, g, pos, ign, val = d[ok], g[ok], pos[ok], ign[ok], val[ok]
        # per detection: non-ignored first, then the highest IoU, ties to the later box
        order = np.lexsort((-pos, -val, ign, d))
        first = order[np.r_[True, d[order][1:] != d[order][:-1]]]
        dt_match[d[first]] = g[first]
        dt_iou[d[first]] = val[first]
        dt_ign[d[first]] = ign[first]
        taken[g[first]] = True
    return dt_match, dt_iou, dt_ign


def iou_blocks(paired: Pairs, keys: pl.DataFrame) -> dict[tuple[int, int], np.ndarray]:
    """Each group's IoU matrix (detections by rank x boxes in order), keyed as COCOeval keys.

    Args:
        paired: from `pairs`.
        keys: group -> image_id, category_id (one row per group).
    """
    p = paired.pairs
    if p.is_empty():
        return {}
    sizes = (
        p.group_by("group", maintain_order=True)
        .agg(n=pl.len(), n_dt=pl.col("rank").n_unique())
        .join(keys, on="group", how="left")
    )
    values = p["iou"].to_numpy()
    out: dict[tuple[int, int], np.ndarray] = {}
    start = 0
    for n, n_dt, img, cat in sizes.select("n", "n_dt", "image_id", "category_id").iter_rows():
        out[(img, cat)] = values[start : start + n].reshape(n_dt, n // n_dt)
        start += n
    return out
