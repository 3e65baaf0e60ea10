"""Distributed writes: adopting staged files, and Spark (Sail) writing through lakever.

- the commit latency of adopting 1,000 staged Parquet files of new labels
  (validation reads each file once), against an ordinary ``upsert_labels`` of
  the same rows through the driver;
- ``lakever.spark.write`` of N labels from Sail (executors write the staged
  files, the driver adopts them) against Sail writing the same rows as a
  plain Delta table (``df.write.format("delta")``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl

from benchmarks._common import build_dataset, fmt_s, fresh_dir, markdown
from lakever import sample


def _new_labels(frames: pl.DataFrame, tag: str) -> pl.DataFrame:
    return sample.sample_labels(frames, seed=5).with_columns(pl.col("label_id") + tag)


def adopt_files(work: Path, n_labels: int, n_files: int) -> dict[str, Any]:
    root = fresh_dir(work / "adopt")
    ds, frames, _ = build_dataset(root, "bench", n_labels)
    rows = _new_labels(frames, "-adopt")
    w = ds.writer("labels", mode="add", job_id="bench-adopt")
    Path(w.staging_uri).mkdir(parents=True)
    step = -(-rows.height // n_files)
    schema = w.schema
    for i in range(n_files):
        part = rows.slice(i * step, step)
        pl.from_arrow(part.to_arrow().cast(schema)).write_parquet(  # type: ignore[union-attr]
            f"{w.staging_uri}/part-{i:05d}.parquet"
        )
    t = time.perf_counter()
    w.commit()
    adopt = time.perf_counter() - t
    plain_rows = _new_labels(frames, "-plain")
    t = time.perf_counter()
    ds.upsert_labels(plain_rows)
    plain = time.perf_counter() - t
    return {"rows": rows.height, "files": n_files, "adopt": adopt, "plain": plain}


def spark_write(work: Path, n_labels: int) -> dict[str, Any]:
    from pysail.spark import SparkConnectServer
    from pyspark.sql import SparkSession

    root = fresh_dir(work / "spark-write")
    ds, frames, _ = build_dataset(root, "bench", n_labels // 10)
    rows = _new_labels(sample.sample_frames(n_labels // 10), "-spark")
    ds.add_frames(sample.sample_frames(n_labels // 10).join(frames, on="frame_id", how="anti"))
    source = root / "source.parquet"
    rows.write_parquet(source)
    server = SparkConnectServer(ip="127.0.0.1", port=0)
    server.start(background=True)
    _, port = server.listening_address
    spark = SparkSession.builder.remote(f"sc://127.0.0.1:{port}").getOrCreate()
    try:
        sdf = spark.read.parquet(str(source))
        t = time.perf_counter()
        sdf.write.format("delta").save(str(root / "plain-delta"))
        plain = time.perf_counter() - t
        sdf = spark.read.parquet(str(source))
        t = time.perf_counter()
        w = ds.writer("labels", mode="add", job_id="bench-spark")
        sdf.select(*[f.name for f in w.schema]).write.mode("overwrite").parquet(w.staging_uri)
        stage = time.perf_counter() - t
        w.commit()  # as lv.spark.write does, timed in two parts
        through = time.perf_counter() - t
    finally:
        spark.stop()
        server.stop()
    n_rows = rows.height
    del rows
    assert ds.read("labels").height >= n_rows
    files = len(list(Path(w.staging_uri).glob("*.parquet")))
    return {
        "rows": n_rows,
        "plain": plain,
        "lakever": through,
        "stage": stage,
        "commit": through - stage,
        "partitions": files,
    }


def run(work: Path, *, n_labels: int, n_files: int, spark_labels: int) -> list[str]:
    a = adopt_files(work, n_labels, n_files)
    s = spark_write(work, spark_labels)
    rows = [
        [f"adopt {a['files']:,} staged files ({a['rows']:,} labels) into {n_labels:,}",
         fmt_s(a["adopt"]), f"upsert_labels of the same number of rows {fmt_s(a['plain'])}",
         f"{a['adopt'] / a['plain']:.2f}x"],
        [f"lakever.spark.write of {s['rows']:,} labels (Sail)", fmt_s(s["lakever"]),
         f"Sail writing them as a plain Delta table {fmt_s(s['plain'])}",
         f"{s['lakever'] / s['plain']:.2f}x"],
    ]  # fmt: skip
    return [
        markdown(
            "Distributed writes",
            ["operation", "lakever", "against", "ratio"],
            rows,
            [
                "Adoption validates each staged file once (rules, types, keys across files, "
                "frames) and adds the files where they are: no row is rewritten."
            ],
        )
    ]
