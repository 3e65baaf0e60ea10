"""Data in: streaming uploads, COCO import, and reads after many streaming commits.

1. Streaming: N frames and 5N labels (sample data) as Parquet files, 1% of
   the rows bad (a negative width, an unknown class, a frame that does not
   exist), ingested in chunks of 1,000 rows with `ds.ingest`, against the
   good rows alone in one all-or-nothing transaction. Each runs in its own
   process, so peak memory (max RSS) is its own.
2. COCO: a file of M images and 10M annotations (polygons, areas, crowds)
   imported with `lake.import_coco`, against `json.load` plus building the
   same two Polars frames by hand (what a user writes without lakever).
3. Reading HEAD's labels after the streaming upload's commits, against the
   same rows written in one commit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import polars as pl

import lakever as lv
from benchmarks._common import fmt_b, fmt_s, fresh_dir, in_child, markdown, median_time
from lakever import sample


def _bad_rows(frames: pl.DataFrame, labels: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Spoil 1% of the rows, three ways."""
    rng = np.random.default_rng(5)
    f_bad = rng.random(frames.height) < 0.01
    frames = frames.with_columns(
        width=pl.when(pl.Series(f_bad)).then(-1).otherwise(pl.col("width"))
    )
    kind = rng.integers(0, 3, labels.height)
    l_bad = rng.random(labels.height) < 0.01
    labels = labels.with_columns(
        w=pl.when(pl.Series(l_bad & (kind == 0))).then(-1.0).otherwise(pl.col("w")),
        cls=pl.when(pl.Series(l_bad & (kind == 1))).then(pl.lit("unicorn")).otherwise("cls"),
        frame_id=pl.when(pl.Series(l_bad & (kind == 2)))
        .then(pl.lit("no-such-frame"))
        .otherwise("frame_id"),
    )
    return frames, labels


_STREAM = """
import lakever as lv
ds = lv.connect(args['lake']).create_dataset('s', classes=args['classes'])
up = ds.ingest(frames=args['frames'], labels=args['labels'], chunk_rows=args['chunk'],
               upload_id='bench')
result = {'commits': len(up.commits), 'committed': sum(up.rows_committed.values()),
          'rejected': sum(up.rows_rejected.values()), 'status': up.status}
"""

_ONE_CALL = """
import lakever as lv, polars as pl
frames = pl.read_parquet(args['frames'])
labels = pl.read_parquet(args['labels'])
ds = lv.connect(args['lake']).create_dataset('s', classes=args['classes'])
with ds.transaction(message='all or nothing') as tx:
    tx.upsert_frames(frames)
    tx.upsert_labels(labels)
result = {'commits': 1, 'committed': frames.height + labels.height, 'rejected': 0}
"""

_COCO_LAKEVER = """
import lakever as lv
ds, up = lv.connect(args['lake']).import_coco('coco', args['path'])
result = {'status': up.status, 'rows': sum(up.rows_committed.values())}
"""

_COCO_BY_HAND = """
import json, polars as pl
with open(args['path']) as fh:
    doc = json.load(fh)
names = {c['id']: c['name'] for c in doc['categories']}
images = pl.DataFrame({
    'frame_id': [str(i['id']) for i in doc['images']],
    'uri': [i['file_name'] for i in doc['images']],
    'width': [i['width'] for i in doc['images']],
    'height': [i['height'] for i in doc['images']],
})
anns = doc['annotations']
labels = pl.DataFrame({
    'label_id': [str(a['id']) for a in anns],
    'frame_id': [str(a['image_id']) for a in anns],
    'cls': [names[a['category_id']] for a in anns],
    'x': [a['bbox'][0] for a in anns], 'y': [a['bbox'][1] for a in anns],
    'w': [a['bbox'][2] for a in anns], 'h': [a['bbox'][3] for a in anns],
    'area': [a['area'] for a in anns], 'iscrowd': [a['iscrowd'] for a in anns],
    'segmentation': [json.dumps(a['segmentation']) for a in anns],
})
result = {'rows': images.height + labels.height}
"""


def _coco_file(path: Path, n_images: int) -> int:
    rng = np.random.default_rng(9)
    n = n_images * 10
    image_ids = rng.integers(0, n_images, n) + 1
    xy = rng.random((n, 4)) * 400
    images = [
        {"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": 640, "height": 480}
        for i in range(n_images)
    ]
    cats = [{"id": k + 1, "name": c, "supercategory": "x"} for k, c in enumerate(sample.CLASSES)]
    cat_ids = rng.integers(1, len(cats) + 1, n)
    with path.open("w") as fh:
        fh.write('{"images": ' + json.dumps(images) + ', "categories": ' + json.dumps(cats))
        fh.write(', "annotations": [')
        for k in range(n):
            x, y, w, h = (round(float(v), 2) for v in xy[k])
            poly = [x, y, x + w, y, x + w, y + h, x, y + h]
            ann = {"id": k + 1, "image_id": int(image_ids[k]), "category_id": int(cat_ids[k]),
                   "bbox": [x, y, w, h], "area": round(w * h, 2), "iscrowd": 0,
                   "segmentation": [poly]}  # fmt: skip
            fh.write(("," if k else "") + json.dumps(ann))
        fh.write("]}")
    return n


def run(work: Path, *, n_frames: int, n_images: int, chunk: int = 1000) -> list[str]:
    sections = []
    base = fresh_dir(work / "ingest")
    frames = sample.sample_frames(n_frames)
    labels = sample.sample_labels(frames, per_frame=5)
    frames, labels = _bad_rows(frames, labels)
    (base / "src").mkdir()
    frames.write_parquet(base / "src" / "frames.parquet")
    for i, part in enumerate(labels.iter_slices(200_000)):
        part.write_parquet(base / "src" / f"labels-{i:03d}.parquet")
    rows = frames.height + labels.height
    args = {"classes": list(sample.CLASSES), "chunk": chunk}
    stream = in_child(
        _STREAM, lake=str(base / "stream"), frames=str(base / "src" / "frames.parquet"),
        labels=str(base / "src" / "labels-*.parquet"), **args,
    )  # fmt: skip
    # the same good rows, all or nothing: what the stream committed
    ds = lv.connect(base / "stream").dataset("s")
    ds.read("frames").write_parquet(base / "good-frames.parquet")
    ds.read("labels").write_parquet(base / "good-labels.parquet")
    one = in_child(
        _ONE_CALL, lake=str(base / "one"), frames=str(base / "good-frames.parquet"),
        labels=str(base / "good-labels.parquet"), **args,
    )  # fmt: skip
    sections.append(
        markdown(
            f"Streaming {labels.height:,} labels over {frames.height:,} frames, "
            f"chunks of {chunk:,} rows, 1% bad",
            [
                "",
                "time",
                "rows/s",
                "commits/s",
                "commits",
                "rows committed",
                "rejected",
                "peak memory",
            ],
            [
                [
                    "`ds.ingest` (Parquet glob)",
                    fmt_s(stream["seconds"]),
                    f"{rows / stream['seconds']:,.0f}",
                    f"{stream['commits'] / stream['seconds']:.1f}",
                    stream["commits"],
                    f"{stream['committed']:,}",
                    f"{stream['rejected']:,}",
                    fmt_b(stream["peak_rss"]),
                ],
                [
                    "good rows, one all-or-nothing transaction",
                    fmt_s(one["seconds"]),
                    f"{one['committed'] / one['seconds']:,.0f}",
                    "-",
                    1,
                    f"{one['committed']:,}",
                    "-",
                    fmt_b(one["peak_rss"]),
                ],
            ],
            [
                f"Each row runs in its own process; time includes starting the import. "
                f"Ratio of times: {stream['seconds'] / one['seconds']:.1f}x."
            ],
        )
    )

    # reading HEAD after the streaming commits against after one commit
    streamed = lv.connect(base / "stream").dataset("s")
    single = lv.connect(base / "one").dataset("s")
    t_stream = median_time(lambda: streamed.read("labels"), repeat=7)
    t_single = median_time(lambda: single.read("labels"), repeat=7)
    sections.append(
        markdown(
            "Reading HEAD's labels",
            ["", "commits", "read (median of 7)"],
            [
                ["after the streaming upload", streamed.head.seq, fmt_s(t_stream)],
                ["after one commit", single.head.seq, fmt_s(t_single)],
            ],
            [f"Ratio: {t_stream / t_single:.2f}x."],
        )
    )

    path = base / "coco.json"
    t = time.perf_counter()
    n_anns = _coco_file(path, n_images)
    made = time.perf_counter() - t
    lake_run = in_child(_COCO_LAKEVER, lake=str(base / "coco-lake"), path=str(path))
    hand = in_child(_COCO_BY_HAND, path=str(path))
    sections.append(
        markdown(
            f"COCO import: {n_images:,} images, {n_anns:,} annotations "
            f"({fmt_b(path.stat().st_size)} of JSON)",
            ["", "time", "peak memory", "rows"],
            [
                [
                    "`lake.import_coco` (validated, committed)",
                    fmt_s(lake_run["seconds"]),
                    fmt_b(lake_run["peak_rss"]),
                    f"{lake_run['rows']:,}",
                ],
                [
                    "`json.load` + two Polars frames by hand (nothing written)",
                    fmt_s(hand["seconds"]),
                    fmt_b(hand["peak_rss"]),
                    f"{hand['rows']:,}",
                ],
            ],
            [
                f"Ratio of times: {lake_run['seconds'] / hand['seconds']:.2f}x; of peak memory: "
                f"{lake_run['peak_rss'] / hand['peak_rss']:.2f}x. Writing the file took "
                f"{made:.0f} s."
            ],
        )
    )
    return sections
