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


# -- tables with deletion vectors (merge-on-read datasets) ---------------------------------


def edited(
    lake: lv.Lake, *, edits: str = "merge-on-read", name: str | None = None
) -> tuple[lv.Dataset, pl.DataFrame]:
    """A dataset whose labels table carries deletion vectors, and its expected HEAD labels."""
    ds = lake.create_dataset(name or f"dv-{edits}", classes=CLASSES, edits=edits)
    fids = [f"f{i:05d}" for i in range(200)]
    ds.add_frames(frames(fids))
    ds.upsert_labels(labels(fids, per_frame=5))
    ds.upsert_labels(labels(fids[::17], per_frame=2, cls="person"))  # updates
    ds.delete_labels([f"{f}-l4" for f in fids[::13]])  # deletes
    expected = ds.read("labels").sort("label_id")
    assert expected.height == 1000 - len(fids[::13])
    assert set(expected.filter(pl.col("frame_id") == "f00017")["cls"]) == {"person", "car"}
    return ds, expected


def test_polars_and_delta_scan_read_vectors_exactly(local_lake: lv.Lake) -> None:
    from deltalake import DeltaTable, QueryBuilder

    ds, expected = edited(local_lake)
    uri, version = ds.at(ds.head.seq).delta_table("labels")
    dt = DeltaTable(uri, version=version)
    assert "deletionVectors" in (dt.protocol().reader_features or [])
    got = pl.read_delta(uri, version=version).sort("label_id")
    assert got.equals(expected)
    scanned = pl.DataFrame(QueryBuilder().register("t", dt).execute("SELECT * FROM t").read_all())
    assert scanned.sort("label_id").select(expected.columns).equals(expected)
    # what refuses, loudly: pyarrow and pandas conversions of deltalake
    with pytest.raises(Exception, match="deletionVectors"):
        dt.to_pandas()
    # the documented way to pandas and to Arrow
    assert ds.read("labels").to_pandas().shape == (expected.height, expected.width)
    assert ds.at(ds.head.seq).to_arrow("labels").num_rows == expected.height


def test_duckdb_reads_vectors_exactly(local_lake: lv.Lake) -> None:
    duckdb = pytest.importorskip("duckdb")
    ext_pkg = pytest.importorskip("duckdb_extension_delta")
    import glob
    import os

    ds, expected = edited(local_lake)
    uri, version = ds.at(ds.head.seq).delta_table("labels")
    (ext,) = glob.glob(
        os.path.join(os.path.dirname(ext_pkg.__file__), "extensions", "*", "delta.duckdb_extension")
    )
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    con.execute(f"LOAD '{ext}'")
    got = con.execute(
        f"SELECT label_id, cls FROM delta_scan('{uri}', version => {version}) ORDER BY label_id"
    ).fetchall()
    assert got == list(expected.select("label_id", "cls").iter_rows())


def test_spark_reads_vectors_exactly(local_lake: lv.Lake, spark: object) -> None:
    ds, expected = edited(local_lake)
    uri, version = ds.at(ds.head.seq).delta_table("labels")
    df = spark.read.format("delta").option("versionAsOf", version).load(uri)  # type: ignore[attr-defined]
    got = sorted((r["label_id"], r["cls"]) for r in df.select("label_id", "cls").collect())
    assert got == list(expected.select("label_id", "cls").iter_rows())


@pytest.mark.slow
def test_dask_ignores_vectors_so_dask_needs_copy_on_write(local_lake: lv.Lake) -> None:
    """dask-deltatable reads the files whole: right on copy-on-write, wrong with vectors.

    The README sends Dask users to copy-on-write datasets (or through Polars);
    this test notices the day dask-deltatable learns deletion vectors.
    """
    ddt = pytest.importorskip("dask_deltatable")
    from distributed import Client, LocalCluster

    results = {}
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster,
        Client(cluster),
    ):
        for edits in ("merge-on-read", "copy-on-write"):
            ds, expected = edited(local_lake, edits=edits)
            uri, version = ds.at(ds.head.seq).delta_table("labels")
            got = ddt.read_deltalake(uri, version=version).compute()
            results[edits] = (len(got), expected.height)
        # after optimize no file of HEAD carries a vector: Dask reads HEAD right
        ds, expected = edited(local_lake, edits="merge-on-read", name="optimized")
        ds.optimize()
        uri, version = ds.at(ds.head.seq).delta_table("labels")
        got = ddt.read_deltalake(uri, version=version).compute()
        results["optimized"] = (len(got), expected.height)
        assert sorted(got["label_id"]) == sorted(expected["label_id"])
    rows, want = results["copy-on-write"]
    assert rows == want
    rows, want = results["merge-on-read"]
    assert rows > want  # deleted and superseded rows come back
    assert results["optimized"][0] == results["optimized"][1]


def test_archived_snapshot_reads_in_spark_duckdb_and_polars_without_lakever(
    local_lake: lv.Lake, spark: object, tmp_path: object
) -> None:
    """The archive copy of a snapshot with deletion vectors is a plain Delta table."""
    duckdb = pytest.importorskip("duckdb")
    ext_pkg = pytest.importorskip("duckdb_extension_delta")
    import glob
    import os

    lake = lv.connect(local_lake.uri, archive_uri=f"{tmp_path}/cold")
    ds, expected = edited(lake)
    ds.create_snapshot("edited")
    snap = ds.archive_snapshot("edited")
    sources = lv.archive.archived_sources(ds, snap)
    assert sources is not None
    uri = sources["labels"][0].uri
    want = list(expected.select("label_id", "cls").iter_rows())
    assert pl.read_delta(uri).sort("label_id").equals(expected)
    df = spark.read.format("delta").load(uri)  # type: ignore[attr-defined]
    assert sorted((r["label_id"], r["cls"]) for r in df.select("label_id", "cls").collect()) == want
    (ext,) = glob.glob(
        os.path.join(os.path.dirname(ext_pkg.__file__), "extensions", "*", "delta.duckdb_extension")
    )
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    con.execute(f"LOAD '{ext}'")
    got = con.execute(f"SELECT label_id, cls FROM delta_scan('{uri}') ORDER BY label_id").fetchall()
    assert got == want


def test_spark_reads_a_branch_head_by_name(local_lake: lv.Lake, spark: object) -> None:
    """The README's Spark recipe for a branch: its ref file, then versionAsOf."""
    ds, _ = edited(local_lake)
    qa = ds.create_branch("qa")
    qa.upsert_labels(labels([f"f{i:05d}" for i in range(3)], per_frame=1, cls="bike"))
    ds.upsert_labels(labels([f"f{i:05d}" for i in range(5, 7)], per_frame=1, cls="truck"))
    root = ds.root.uri
    ref = spark.read.json(f"{root}/_lakever/branches/qa.json", multiLine=True)  # type: ignore[attr-defined]
    row = (
        ref.selectExpr("explode(tables) AS t")
        .filter("t.table = 'labels'")
        .select("t.uri", "t.version")
        .first()
    )
    df = spark.read.format("delta").option("versionAsOf", row.version).load(f"{root}/{row.uri}")  # type: ignore[attr-defined]
    got = sorted((r["label_id"], r["cls"]) for r in df.select("label_id", "cls").collect())
    assert got == sorted(qa.read("labels").select("label_id", "cls").iter_rows())


def test_a_vector_past_its_file_is_reported_not_read_around(
    local_lake: lv.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-file reader (Dask, Daft) refuses a damaged vector instead of guessing."""
    from pyroaring import BitMap64

    from lakever import _deltalog

    ds = local_lake.create_dataset("d", classes=CLASSES)
    fids = [f"f{i:02d}" for i in range(20)]
    ds.add_frames(frames(fids))
    ds.upsert_labels(labels(fids))  # one file of 40 rows
    ds.delete_labels(["f00-l0"])  # masked in a vector (too few to rewrite the file)
    got = ds.at("HEAD").to_dask("labels").compute()["label_id"]
    assert len(got) == 39 and "f00-l0" not in set(got)
    monkeypatch.setattr(_deltalog, "read_vector", lambda loc, dv: BitMap64([0, 40]))
    with pytest.raises(lv.StorageError, match="marks row 40 of a file of 40 rows"):
        ds.at("HEAD").to_dask("labels").compute(scheduler="synchronous")
