"""Clones and merges of datasets.

At each size, a dataset of that many labels after three scattered
merge-on-read edits (so its tables carry deletion vectors):

- an unfiltered ``clone_dataset`` (median of 3) against ``cp -r`` of the
  dataset's folder, and the bytes of row data it wrote (files of the clone
  that are not links to the source's);
- a clone keeping 10% of the frames (every file thinned: rewritten): the
  bytes it wrote against the kept rows written once as zstd Parquet by
  Polars, and a full read of its labels against a dataset freshly imported
  from the same rows;
- on S3 (a moto server in its own process, 1M labels): the unfiltered clone
  against a server-side copy of the same objects (``s3fs`` ``copy``,
  recursive: one ``CopyObject`` each);

and once, two datasets of 1M labels that share half their frames (equal
frame rows, each with its own labels) merged with ``merge_datasets`` against
a plain import of the union rows into a new dataset.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import polars as pl

import lakever as lv
from benchmarks._common import build_dataset, fmt_b, fmt_s, fresh_dir, markdown, median_time
from benchmarks.bench_edits import plan
from lakever import sample

EDITS = 3
KEEP_ONE_IN = 10


def _edited(root: Path, n_labels: int) -> lv.Dataset:
    ds, _frames, labels = build_dataset(root, "src", n_labels)
    for e in plan(labels, EDITS):
        with ds.transaction(message="edit") as tx:
            tx.upsert_labels(e.upserts)
            tx.delete_labels(e.deleted, missing_ok=True)
    return ds


def _written(clone_root: Path, source_root: Path) -> int:
    """Bytes of files under the clone that are not hard links to the source's files."""
    shared = {p.stat().st_ino for p in source_root.rglob("*") if p.is_file()}
    return sum(
        p.stat().st_size
        for p in clone_root.rglob("*")
        if p.is_file() and p.stat().st_ino not in shared and "_delta_log" not in p.parts
        and "_lakever" not in p.parts
    )  # fmt: skip


def _keep() -> pl.Expr:
    return (pl.col("frame_id").hash(seed=7) % KEEP_ONE_IN) == 0


def local(work: Path, n_labels: int) -> dict[str, Any]:
    root = fresh_dir(work / f"clone-{n_labels}")
    ds = _edited(root, n_labels)
    lake = lv.connect(root)
    src = root / "datasets" / "src"
    out: dict[str, Any] = {"labels": n_labels}
    names = iter(range(100))

    def cp() -> None:
        subprocess.run(["cp", "-r", str(src), str(work / f"cp-{next(names)}")], check=True)

    out["cp"] = median_time(cp, repeat=3)
    clones = iter(range(100))
    out["clone"] = median_time(lambda: lake.clone_dataset("src", f"c{next(clones)}"), repeat=3)
    out["clone_written"] = _written(root / "datasets" / "c0", src)
    t = time.perf_counter()
    thin = lake.clone_dataset("src", "thin", frames=_keep())
    out["thin"] = time.perf_counter() - t
    out["thin_written"] = _written(root / "datasets" / "thin", src)
    kept_frames = ds.read("frames").filter(_keep())
    kept_labels = thin.read("labels")
    out["thin_rows"] = kept_labels.height
    own = work / "own.parquet"
    own_bytes = 0
    for df in (kept_frames, kept_labels):
        df.write_parquet(own, compression="zstd")
        own_bytes += own.stat().st_size
    out["own_bytes"] = own_bytes
    fresh = lake.create_dataset("fresh", classes=sample.CLASSES)
    with fresh.transaction() as tx:
        tx.add_frames(kept_frames)
        tx.upsert_labels(kept_labels)
    reads = {"thin": [], "fresh": []}
    for _ in range(5):
        for name, handle in (("thin", thin), ("fresh", fresh)):
            t = time.perf_counter()
            handle.read("labels")
            reads[name].append(time.perf_counter() - t)
    out["read_thin"] = statistics.median(reads["thin"])
    out["read_fresh"] = statistics.median(reads["fresh"])
    return out


def on_s3(work: Path, n_labels: int) -> dict[str, Any]:
    import boto3

    from tests.helpers import S3Server

    server = S3Server.start()
    try:
        boto3.client(
            "s3", endpoint_url=server.endpoint, aws_access_key_id="testing",
            aws_secret_access_key="testing", region_name="us-east-1",
        ).create_bucket(Bucket="lakever-clone")  # fmt: skip
        opts = server.storage_options()
        local_root = fresh_dir(work / "s3-src")
        _edited(local_root, n_labels)
        lake = lv.connect("s3://lakever-clone/lake", storage_options=opts)
        fs = lake.root.fs
        fs.put(str(local_root / "datasets" / "src"), "lakever-clone/lake/datasets/", recursive=True)
        objects = len(fs.find("lakever-clone/lake/datasets/src"))
        names = iter(range(100))
        copy = median_time(
            lambda: fs.copy(
                "lakever-clone/lake/datasets/src", f"lakever-clone/copy-{next(names)}",
                recursive=True,
            ),
            repeat=3,
        )  # fmt: skip
        clones = iter(range(100))
        clone = median_time(lambda: lake.clone_dataset("src", f"c{next(clones)}"), repeat=3)
        return {"copy": copy, "clone": clone, "objects": objects}
    finally:
        server.stop()


def merge(work: Path, n_labels: int) -> dict[str, Any]:
    root = fresh_dir(work / "merge")
    lake = lv.connect(root)
    n_frames = n_labels // 10
    every = sample.sample_frames(n_frames + n_frames // 2)
    parts = {"a": every.head(n_frames), "b": every.tail(n_frames)}
    union: dict[str, list[pl.DataFrame]] = {"frames": [every], "labels": []}
    for name, fr in parts.items():
        lab = sample.sample_labels(fr).with_columns(pl.col("label_id") + f"-{name}")
        union["labels"].append(lab)
        ds = lake.create_dataset(name, classes=sample.CLASSES)
        with ds.transaction() as tx:
            tx.add_frames(fr)
            tx.upsert_labels(lab)
    t = time.perf_counter()
    report = lake.merge_datasets(["a", "b"], "merged")
    merged = time.perf_counter() - t
    labels = pl.concat(union["labels"])
    plain = lake.create_dataset("plain", classes=sample.CLASSES)
    t = time.perf_counter()
    with plain.transaction() as tx:
        tx.add_frames(every)
        tx.upsert_labels(labels)
    imported = time.perf_counter() - t
    return {
        "merge": merged,
        "import": imported,
        "frames": every.height,
        "labels": labels.height,
        "dedup": report.deduplicated.get("frames", 0),
    }


def run(work: Path, *, sizes: list[int], s3_labels: int, merge_labels: int) -> list[str]:
    results = [local(work, n) for n in sizes]
    rows = []
    for r in results:
        rows += [
            [f"{r['labels']:,}", "unfiltered clone (median of 3)", fmt_s(r["clone"]),
             f"cp -r {fmt_s(r['cp'])}", f"{r['clone'] / r['cp']:.2f}x; row data written "
             f"{fmt_b(r['clone_written'])}"],
            [f"{r['labels']:,}", f"clone keeping 1 frame in {KEEP_ONE_IN}", fmt_s(r["thin"]),
             f"kept rows as zstd Parquet {fmt_b(r['own_bytes'])}",
             f"{fmt_b(r['thin_written'])} written ({r['thin_written'] / r['own_bytes']:.2f}x); "
             f"{r['thin_rows']:,} labels"],
            [f"{r['labels']:,}", "read of that clone's labels (median of 5)",
             fmt_s(r["read_thin"]), f"a fresh import of the rows {fmt_s(r['read_fresh'])}",
             f"{r['read_thin'] / r['read_fresh']:.2f}x"],
        ]  # fmt: skip
    s3 = on_s3(work, s3_labels)
    rows.append(
        [f"{s3_labels:,}", "unfiltered clone on S3 (moto; median of 3)", fmt_s(s3["clone"]),
         f"server-side copy of its {s3['objects']:,} objects {fmt_s(s3['copy'])}",
         f"{s3['clone'] / s3['copy']:.2f}x"]
    )  # fmt: skip
    m = merge(work, merge_labels)
    rows.append(
        [f"2 x {merge_labels:,}", "merge_datasets, half the frames shared", fmt_s(m["merge"]),
         f"plain import of the union ({m['frames']:,} frames, {m['labels']:,} labels) "
         f"{fmt_s(m['import'])}",
         f"{m['merge'] / m['import']:.2f}x; {m['dedup']:,} frames kept once"]
    )  # fmt: skip
    return [
        markdown(
            "Clones and merges of datasets",
            ["labels", "operation", "lakever", "against", "ratio / detail"],
            rows,
            [
                "Each source has three scattered merge-on-read edits (vectors on its files). "
                "A clone links the source's files (hard links locally, CopyObject on S3) and "
                "writes its own Delta logs and commit; a filter that thins a file past "
                "10% masked rewrites the kept rows instead (they read as a fresh table)."
            ],
        )
    ]
