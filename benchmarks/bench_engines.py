"""Engines: one-call reads of a snapshot after many merge-on-read edits, against a fresh table.

A dataset of N labels gets 100 scattered edit commits (the edits benchmark's
workload: every file ends up carrying a deletion vector), then a snapshot.
Each engine reads the snapshot's labels in one call, and the same engine
reads a dataset freshly imported from the same rows (no vectors):

- Polars ``lv.scan(...).collect()``; pandas ``to_pandas``; DuckDB
  ``to_duckdb(...).arrow()``; Dask ``to_dask(...).compute()`` and Daft
  ``to_daft(...).to_arrow()`` (lakever's per-file reader with vectors);
  Spark through Sail ``lakever.spark.read(...)`` counted (``count()``);
- and name resolution: ``ds.at(name)`` for a snapshot and a branch, on
  local disk and on S3 (a moto server in its own process).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import lakever as lv
from benchmarks._common import build_dataset, fmt_s, fresh_dir, markdown
from benchmarks.bench_edits import plan

EDITS = 100


def _time(fn: Any, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _spark() -> tuple[Any, Any]:
    from pysail.spark import SparkConnectServer
    from pyspark.sql import SparkSession

    server = SparkConnectServer(ip="127.0.0.1", port=0)
    server.start(background=True)
    _, port = server.listening_address
    return server, SparkSession.builder.remote(f"sc://127.0.0.1:{port}").getOrCreate()


def measure(work: Path, n_labels: int, edits: int) -> dict[str, Any]:
    root = fresh_dir(work / f"engines-{n_labels}")
    ds, frames, labels = build_dataset(root, "edited", n_labels)
    for e in plan(labels, edits):
        with ds.transaction(message="edit") as tx:
            tx.upsert_labels(e.upserts)
            tx.delete_labels(e.deleted, missing_ok=True)
    ds.create_snapshot("after-edits")
    lake = lv.connect(root)
    fresh = lake.create_dataset("fresh", classes=ds.classes)
    with fresh.transaction() as tx:
        tx.add_frames(frames)
        tx.upsert_labels(ds.at("after-edits").read("labels"))
    fresh.create_snapshot("after-edits")
    server, spark = _spark()
    out: dict[str, Any] = {"labels": n_labels, "edits": edits, "engines": {}}
    try:
        for name in ("edited", "fresh"):
            view = lake.dataset(name).at("after-edits")
            readers = {
                "Polars (lv.scan)": lambda n=name: lv.scan(
                    str(root), n, "labels", at="after-edits"
                ).collect(),
                "pandas": lambda v=view: v.to_pandas("labels"),
                "DuckDB": lambda v=view: v.to_duckdb("labels").arrow(),
                "Dask": lambda v=view: v.to_dask("labels").compute(),
                "Daft": lambda v=view: v.to_daft("labels").to_arrow(),
                "Spark via Sail (count)": lambda n=name: lv.spark.read(
                    spark, str(root), n, "labels", at="after-edits"
                ).count(),
            }
            for engine, fn in readers.items():
                out["engines"].setdefault(engine, {})[name] = _time(fn)
    finally:
        spark.stop()
        server.stop()
    out["resolve_snapshot"] = _time(lambda: lake.dataset("edited").at("after-edits"), repeat=5)
    out["files"] = len(ds.at("after-edits").commit.table_versions)
    return out


def _requests(log: Path, start: int) -> tuple[int, int]:
    """(lakever metadata requests, Delta log and data requests) logged past byte `start`."""
    lines = [ln for ln in log.read_bytes()[start:].decode().splitlines() if '"' in ln]
    calls = [ln.split('"')[1] for ln in lines if ln.split('"')[1].split(" ")[0] in S3_METHODS]
    delta = sum(1 for c in calls if "/_delta_log" in c or ".parquet" in c)
    return len(calls) - delta, delta


S3_METHODS = {"GET", "HEAD", "PUT", "POST", "DELETE"}


def resolution_on_s3(work: Path, *, commits: int = 25) -> dict[str, Any]:
    """Requests and time to resolve a snapshot and a branch by name on S3 (moto).

    The dataset has `commits` small commits (past two checkpoints); a new
    `lv.connect` each time, as a job starting cold.
    """
    import boto3

    from tests.helpers import CLASSES, S3Server, frames, labels

    log = fresh_dir(work / "resolve") / "requests.log"
    server = S3Server.start(request_log=log)
    try:
        opts = server.storage_options()
        boto3.client(
            "s3", endpoint_url=server.endpoint, aws_access_key_id="testing",
            aws_secret_access_key="testing", region_name="us-east-1",
        ).create_bucket(Bucket="lakever-bench")  # fmt: skip
        uri = "s3://lakever-bench/lake"
        ds = lv.connect(uri, storage_options=opts).create_dataset("street", classes=CLASSES)
        fids = [f"f{i:04d}" for i in range(50)]
        ds.add_frames(frames(fids))
        for i in range(commits):
            ds.upsert_labels(labels(fids[i : i + 2], x=float(i)))
            if i == 3:
                ds.create_snapshot("train-v1")
        ds.create_branch("qa")
        out: dict[str, Any] = {"commits": commits}
        cases = {
            "lv.scan(..., at=snapshot)": lambda: lv.scan(
                uri, "street", "labels", at="train-v1", storage_options=opts
            ),
            "lv.connect(...).dataset(...).at(snapshot)": lambda: (
                lv.connect(uri, storage_options=opts).dataset("street").at("train-v1")
            ),
            "lv.scan(..., at=branch)": lambda: lv.scan(
                uri, "street", "labels", at="qa", storage_options=opts
            ),
        }
        for name, fn in cases.items():
            time.sleep(0.2)  # the log is written by another process
            start = log.stat().st_size
            fn()
            time.sleep(0.5)
            meta, delta = _requests(log, start)
            out[name] = {"lakever": meta, "delta": delta, "time": _time(fn, repeat=5)}
        return out
    finally:
        server.stop()


def run(work: Path, *, n_labels: int, edits: int) -> list[str]:
    s3 = resolution_on_s3(work)
    r = measure(work, n_labels, edits)
    rows = []
    for engine, t in r["engines"].items():
        rows.append(
            [engine, fmt_s(t["edited"]), fmt_s(t["fresh"]), f"{t['edited'] / t['fresh']:.2f}x"]
        )
    rows.append(["name resolution (open + ds.at(snapshot), local)",
                 fmt_s(r["resolve_snapshot"]), "", ""])  # fmt: skip
    resolve = [
        [name, str(c["lakever"]), str(c["delta"]), fmt_s(c["time"])]
        for name, c in s3.items()
        if isinstance(c, dict)
    ]
    return [
        markdown(
            f"Engines: one-call reads of a snapshot of {r['labels']:,} labels after "
            f"{r['edits']} merge-on-read edits",
            ["engine", "after the edits", "fresh table, same rows", "ratio"],
            rows,
            [
                "Medians of 3 in one process. Polars, DuckDB and Sail apply the vectors "
                "themselves; Dask and Daft read through lakever's per-file reader (one "
                "partition per file, its vector applied inside the partition)."
            ],
        ),
        markdown(
            f"Name resolution on S3 (moto), a dataset of {s3['commits']} commits, cold",
            [
                "call",
                "lakever requests (name to table version)",
                "Delta log requests",
                "time (median of 5)",
            ],
            resolve,
            [
                "Requests counted from the moto server's request log. The Delta log "
                "requests are the engine's own (delta-rs loading the table version: "
                "checkpoint and the JSON commits after it)."
            ],
        ),
    ]
