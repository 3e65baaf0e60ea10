"""Other engines read a snapshot by table version, resolved through the tag table alone."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl
import pytest

import lakever as lv
from tests.helpers import CLASSES, frames, labels

pytest.importorskip("pysail")


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    from pysail.spark import SparkConnectServer
    from pyspark.sql import SparkSession

    server = SparkConnectServer(ip="127.0.0.1", port=0)
    server.start(background=True)
    _, port = server.listening_address
    session = SparkSession.builder.remote(f"sc://127.0.0.1:{port}").getOrCreate()
    yield session
    session.stop()
    server.stop()


def test_spark_reads_snapshot_versions_from_tag_table(local_lake: lv.Lake, spark: object) -> None:
    ds = local_lake.create_dataset("spark", classes=CLASSES)
    ds.add_frames(frames(range(4)))
    ds.upsert_labels(labels([f"f{i:05d}" for i in range(4)], cls="car"))
    ds.create_snapshot("train-v1")
    ds.upsert_labels(labels(["f00000"], cls="person"))  # relabel after the snapshot
    ds.delete_frames(["f00003"])
    ds.create_snapshot("train-v2")
    ds.upsert_labels(labels(["f00001"], cls="bike"))  # HEAD moves on

    # What a Spark job does with no lakever installed: read the tag table, then
    # each table at its recorded version.
    root = ds.root.uri
    tags = spark.read.format("delta").load(f"{root}/snapshots")  # type: ignore[attr-defined]
    rows = (
        tags.filter("name = 'train-v1'")
        .selectExpr("explode(tables) AS t")
        .selectExpr("t.table AS table", "t.uri AS uri", "t.version AS version")
        .collect()
    )
    where = {r["table"]: (r["uri"], r["version"]) for r in rows}
    assert set(where) == {"frames", "labels"}
    path, version = where["labels"]
    spark_labels = spark.read.format("delta").option("versionAsOf", version).load(f"{root}/{path}")  # type: ignore[attr-defined]
    got = sorted(
        (r["label_id"], r["cls"]) for r in spark_labels.select("label_id", "cls").collect()
    )
    expected = ds.at("train-v1").read("labels").select("label_id", "cls").sort("label_id")
    assert got == list(expected.iter_rows())
    assert {c for _, c in got} == {"car"}
    # and the second snapshot, frames included
    v2 = ds.snapshot("train-v2")
    f_uri, f_version = ds.at("train-v2").delta_table("frames")
    assert f_version == v2.table_versions["frames"]
    spark_frames = spark.read.format("delta").option("versionAsOf", f_version).load(f_uri)  # type: ignore[attr-defined]
    assert spark_frames.count() == 3


def test_polars_alone_reads_a_snapshot(local_lake: lv.Lake) -> None:
    ds = local_lake.create_dataset("pl", classes=CLASSES)
    ds.add_frames(frames(range(3)))
    ds.create_snapshot("s")
    ds.add_frames(frames(range(3, 5)))
    root = ds.root.uri
    tags = pl.read_delta(f"{root}/snapshots")
    t = tags.filter(pl.col("name") == "s").explode("tables").unnest("tables")
    row = t.filter(pl.col("table") == "frames").row(0, named=True)
    assert pl.read_delta(f"{root}/{row['uri']}", version=row["version"]).height == 3
    assert ds.read("frames").height == 5
