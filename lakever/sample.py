"""A realistic synthetic dataset: frames in image groups and videos, boxes over 20 classes.

Used by `lakever quickstart`, the benchmarks and the tests. Deterministic for a
given seed. Media URIs point nowhere: lakever never reads media bytes.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import polars as pl

CLASSES: tuple[str, ...] = (
    "car", "person", "bicycle", "motorcycle", "bus", "truck", "traffic_light",
    "stop_sign", "dog", "cat", "bench", "backpack", "umbrella", "handbag",
    "suitcase", "skateboard", "stroller", "scooter", "cone", "sign",
)  # fmt: skip

_WEATHER = ("sunny", "cloudy", "rain", "fog", "night")


def frame_id(i: int) -> str:
    """The frame id of the i-th sample frame (sortable, so ranges cluster)."""
    return f"fr{i:09d}"


def sample_frames(n_frames: int, *, seed: int = 0, start: int = 0) -> pl.DataFrame:
    """Frames split over image groups (1/3) and videos (2/3) with user metadata."""
    rng = np.random.default_rng(seed)
    idx = np.arange(start, start + n_frames)
    is_video = (idx // 500) % 3 != 0  # blocks of 500 frames: one group each
    width = np.where(is_video, 1920, rng.choice([640, 1280, 1600], size=n_frames))
    height = np.where(is_video, 1080, rng.choice([480, 720, 1200], size=n_frames))
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    df = pl.DataFrame({"i": idx, "video": is_video})
    group = pl.format(
        "{}-{}",
        pl.when(pl.col("video")).then(pl.lit("video")).otherwise(pl.lit("batch")),
        (pl.col("i") // 500).cast(pl.String).str.zfill(5),
    )
    return df.select(
        pl.format("fr{}", pl.col("i").cast(pl.String).str.zfill(9)).alias("frame_id"),
        pl.format(
            "s3://media-bucket/{}/{}.{}",
            group,
            (pl.col("i") % 500).cast(pl.String).str.zfill(6),
            pl.when(pl.col("video")).then(pl.lit("png")).otherwise(pl.lit("jpg")),
        ).alias("uri"),
        pl.when(pl.col("video"))
        .then(pl.lit("video_frame"))
        .otherwise(pl.lit("image"))
        .alias("media_type"),
        pl.Series("width", width.astype(np.int32)),
        pl.Series("height", height.astype(np.int32)),
        group.alias("group_id"),
        (pl.col("i") % 500).cast(pl.Int64).alias("sequence"),
        (pl.lit(base) + pl.duration(milliseconds=pl.col("i") * 100))
        .dt.cast_time_unit("us")
        .alias("captured_at"),
        pl.Series("weather", rng.choice(_WEATHER, size=n_frames)),
        pl.Series("camera", rng.choice(["front", "left", "right", "rear"], size=n_frames)),
    )


def sample_labels(
    frames: pl.DataFrame, *, per_frame: int = 10, seed: int = 0, classes: tuple[str, ...] = CLASSES
) -> pl.DataFrame:
    """About `per_frame` boxes per frame, classes skewed like street scenes."""
    rng = np.random.default_rng(seed + 1)
    counts = rng.poisson(per_frame, size=frames.height)
    fids = np.repeat(frames["frame_id"].to_numpy(), counts)
    widths = np.repeat(frames["width"].to_numpy(), counts).astype(float)
    heights = np.repeat(frames["height"].to_numpy(), counts).astype(float)
    n = len(fids)
    weights = 1.0 / np.arange(1, len(classes) + 1)
    cls = rng.choice(classes, size=n, p=weights / weights.sum())
    w = np.maximum(4.0, rng.gamma(2.0, 0.05, size=n) * widths).round(1)
    h = np.maximum(4.0, rng.gamma(2.0, 0.06, size=n) * heights).round(1)
    x = (rng.random(n) * np.maximum(widths - w, 1.0)).round(1)
    y = (rng.random(n) * np.maximum(heights - h, 1.0)).round(1)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    within = np.arange(n) - starts
    return pl.DataFrame(
        {
            "frame_id": fids,
            "within": within,
            "cls": cls,
            "x": x,
            "y": y,
            "w": w,
            "h": h,
            "occluded": rng.random(n) < 0.15,
            "annotator": rng.choice(["vendor-a", "vendor-b", "inhouse"], size=n),
        }
    ).select(
        pl.format("{}-{}", pl.col("frame_id"), pl.col("within").cast(pl.String).str.zfill(3)).alias(
            "label_id"
        ),
        pl.exclude("within"),
    )


def relabel(labels: pl.DataFrame, *, fraction: float = 0.05, seed: int = 1) -> pl.DataFrame:
    """A relabeling pass: a fraction of labels get a new class or a tightened box."""
    rng = np.random.default_rng(seed)
    n = max(1, int(labels.height * fraction))
    picked = labels.sample(n=n, seed=seed)
    new_cls = np.where(rng.random(n) < 0.4, rng.choice(CLASSES, size=n), picked["cls"].to_numpy())
    return picked.with_columns(
        pl.Series("cls", new_cls),
        (pl.col("w") * 0.95).round(1).alias("w"),
        (pl.col("h") * 0.95).round(1).alias("h"),
        pl.lit("relabel-vendor").alias("annotator"),
    )
