"""Every engine reads every kind of version exactly, in one call, or refuses loudly.

Engines: Polars (`lv.scan`), pandas, DuckDB, Dask, Daft, Spark through Sail
(`lakever.spark.read`). Versions: HEAD, a snapshot after scattered
merge-on-read edits, the first snapshot of tables past three checkpoints, a
branch head, an archived-then-unarchived snapshot. Tables: frames, labels,
an inference set. Each read is compared with `ds.at(ref).read(table)`: row
count, key set, per-class counts and every value. A wrong answer fails;
the only other outcome allowed is `UnsupportedEngineError`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import polars as pl
import pytest

import lakever as lv
from tests.helpers import CLASSES, frames, labels

REFS = ["HEAD", "edited", "first", "middle", "qa", "restored"]
TABLES = ["frames", "labels", "inferences/yolo"]
ENGINES = ["polars", "pandas", "duckdb", "dask", "daft", "spark"]


def _build(lake: lv.Lake) -> lv.Dataset:
    rng = random.Random(7)
    ds = lake.create_dataset("conf", classes=CLASSES)
    fids = [f"f{i:05d}" for i in range(240)]
    ds.add_frames(frames(fids))
    ds.upsert_labels(labels(fids, per_frame=3))
    ds.upsert_inferences(
        "yolo", labels(fids, per_frame=1).with_columns(confidence=pl.lit(0.6)), pinned_to="HEAD"
    )
    ds.create_snapshot("first")
    for i in range(32):  # past three checkpoints (every 10 versions) of labels
        picked = rng.sample(fids, 4)
        with ds.transaction(message=f"edit {i}") as tx:
            tx.upsert_labels(labels(picked[:2], per_frame=1, cls=rng.choice(CLASSES)))
            tx.delete_labels([f"{picked[2]}-l{rng.randrange(3)}"], missing_ok=True)
            if i % 8 == 0:
                tx.upsert_inferences(
                    "yolo", labels(picked[:1], per_frame=1).with_columns(confidence=pl.lit(0.9))
                )
                tx.update_frames([{"frame_id": picked[3], "width": 100 + i}])
        if i == 4:
            ds.create_snapshot("middle")  # between two checkpoints, older than the newest
    ds.create_snapshot("edited")
    ds.delete_labels([f"{f}-l2" for f in fids[::9]], missing_ok=True)
    ds.create_snapshot("restored")
    ds.archive_snapshot("restored")
    ds.unarchive_snapshot("restored")
    qa = ds.create_branch("qa", at="edited")
    qa.delete_labels([f"{fids[1]}-l0"])
    qa.upsert_labels(labels(fids[5:8], per_frame=1, cls="truck"))
    ds.upsert_labels(labels(fids[9:11], per_frame=1, cls="bike"))  # HEAD moves on after qa
    return ds


@pytest.fixture(scope="module", params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[lv.Lake, lv.Dataset]]:
    cold = tmp_path_factory.mktemp("cold")
    if request.param == "local":
        lake = lv.connect(tmp_path_factory.mktemp("lake"), archive_uri=str(cold))
        yield lake, _build(lake)
        return
    import boto3

    from tests.helpers import S3Server

    server = S3Server.start()
    try:
        boto3.client(
            "s3", endpoint_url=server.endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        ).create_bucket(Bucket="lakever-conformance")  # fmt: skip
        lake = lv.connect(
            "s3://lakever-conformance/lake",
            storage_options=server.storage_options(),
            archive_uri=str(cold),
        )
        yield lake, _build(lake)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def spark_session() -> Iterator[Any]:
    from tests.test_engines import spark

    yield from spark.__wrapped__()  # type: ignore[attr-defined]


def _read(engine: str, lake: lv.Lake, ds: lv.Dataset, ref: str, table: str, spark: Any) -> Any:
    view = ds.at(ref)
    opts = dict(lake.root.options) or None
    readers: dict[str, Callable[[], Any]] = {
        "polars": lambda: lv.scan(lake.uri, ds.name, table, at=ref, storage_options=opts).collect(),
        "pandas": lambda: view.to_pandas(table),
        "duckdb": lambda: view.to_duckdb(table).arrow(),
        "dask": lambda: view.to_dask(table).compute(),
        "daft": lambda: view.to_daft(table).to_arrow(),
        "spark": lambda: lv.spark.read(spark, lake.uri, ds.name, table, at=ref).toPandas(),
    }
    return readers[engine]()


def _frame(got: Any, like: pl.DataFrame) -> pl.DataFrame:
    import warnings

    import pyarrow as pa

    if type(got).__module__.startswith("pandas"):  # from pandas, Dask and Spark
        with warnings.catch_warnings():  # pyarrow's own use of a pandas 3.1 deprecation
            warnings.simplefilter("ignore")
            got = pa.Table.from_pandas(got, preserve_index=False)
    df = got if isinstance(got, pl.DataFrame) else pl.from_arrow(got)
    assert isinstance(df, pl.DataFrame)
    return df.select([pl.col(c).cast(t, strict=False) for c, t in like.schema.items()])


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_reads_every_version_exactly(
    engine: str, built: tuple[lv.Lake, lv.Dataset], request: pytest.FixtureRequest
) -> None:
    lake, ds = built
    if engine == "spark" and not lake.root.is_local:
        pytest.skip("Sail reads S3 through its own settings; covered by the README's S3 run")
    spark = request.getfixturevalue("spark_session") if engine == "spark" else None
    refused = []
    for ref in REFS:
        for table in TABLES:
            want = ds.at(ref).read(table)
            key = "frame_id" if table == "frames" else "label_id"
            try:
                got = _frame(_read(engine, lake, ds, ref, table, spark), want)
            except lv.UnsupportedEngineError as exc:
                refused.append((engine, ref, table, str(exc)))  # only Sail may refuse
                continue
            where = (engine, ref, table)
            assert got.height == want.height, where
            assert set(got[key]) == set(want[key]), where
            if "cls" in want.columns:
                counts = got["cls"].value_counts().sort("cls")
                assert counts.equals(want["cls"].value_counts().sort("cls")), where
            assert got.sort(key).equals(want.sort(key)), where
    for who, ref, _table, text in refused:
        assert who == "spark" and ref in ("first", "middle"), refused
        assert "version" in text and "lakever" in text


def test_the_sql_command_reads_any_version(
    built: tuple[lv.Lake, lv.Dataset],
) -> None:
    import json

    from tests.test_cli import run

    lake, ds = built
    if not lake.root.is_local:
        pytest.skip("local")
    query = "SELECT cls, count(*) AS n FROM conf@edited.labels GROUP BY cls ORDER BY cls"
    code, out, err = run("sql", query, "--uri", lake.uri, "--json")
    assert code == 0, err
    want = ds.at("edited").read("labels")["cls"].value_counts().sort("cls")
    assert [(r["cls"], r["n"]) for r in json.loads(out)] == list(want.iter_rows())
    join = ("SELECT count(*) AS n FROM conf@qa.labels q JOIN conf@first.labels f "
            "USING (label_id) WHERE q.cls <> f.cls")  # fmt: skip
    code, out, err = run("sql", join, "--uri", lake.uri, "--csv")
    changed = ds.at("qa").read("labels").join(ds.at("first").read("labels"), on="label_id")
    assert code == 0 and out.splitlines()[1] == str(
        changed.filter(pl.col("cls") != pl.col("cls_right")).height
    )
    code, _, err = run("sql", "SELECT 1", "--uri", lake.uri)
    assert code == 2 and "DATASET@REF.TABLE" in err


def test_a_snapshot_resolves_in_two_small_reads(
    local_lake: lv.Lake, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from lakever import storage

    lake = lv.connect(local_lake.uri, archive_uri=str(tmp_path_factory.mktemp("cold")))
    ds = lake.create_dataset("refs", classes=CLASSES)
    ds.add_frames(frames(range(6)))
    ds.upsert_labels(labels([f"f{i:05d}" for i in range(6)], per_frame=2))
    ds.create_snapshot("s1")
    ds.upsert_labels(labels(["f00000"], per_frame=1, cls="truck"))
    want = ds.at("s1").read("labels")
    reads: list[str] = []
    real = storage.Location.read_bytes

    def counted(self: storage.Location) -> bytes:
        reads.append(self.uri)
        return real(self)

    monkeypatch.setattr(storage.Location, "read_bytes", counted)
    lf = lv.scan(lake.uri, "refs", "labels", at="s1")
    assert len(reads) == 2, reads  # dataset.json and the snapshot's ref file
    assert lf.collect().sort("label_id").equals(want.sort("label_id"))
    monkeypatch.setattr(storage.Location, "read_bytes", real)
    # archived: the ref says so, and the usual path refuses loudly
    ds.archive_snapshot("s1")
    with pytest.raises(lv.SnapshotArchivedError):
        lv.scan(lake.uri, "refs", "labels", at="s1")
    ds.unarchive_snapshot("s1")
    assert lv.scan(lake.uri, "refs", "labels", at="s1").collect().height == want.height
    # a snapshot without a ref file (made before them) resolves the usual way
    ref = ds._tags.ref("s1")
    assert ref is not None and ref.exists()
    ref.remove()
    assert lv.scan(lake.uri, "refs", "labels", at="s1").collect().height == want.height
    ds.delete_snapshot("s1")
    with pytest.raises(lv.InvalidRefError):
        lv.scan(lake.uri, "refs", "labels", at="s1")
