"""Distributed writes: staged Parquet files validated and adopted in one commit, exactly once."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest

import lakever as lv
from tests.helpers import CLASSES, frames, labels, table_hash

FIDS = [f"f{i:05d}" for i in range(60)]


@pytest.fixture
def ds(local_lake: lv.Lake) -> lv.Dataset:
    ds = local_lake.create_dataset("street", classes=CLASSES)
    ds.add_frames(frames(FIDS))
    ds.upsert_labels(labels(FIDS, per_frame=2))
    return ds


def _stage(w: Any, name: str, rows: pl.DataFrame) -> None:
    Path(w.staging_uri).mkdir(parents=True, exist_ok=True)
    pq.write_table(rows.to_arrow().cast(w.schema), f"{w.staging_uri}/{name}")


def _data_files(ds: lv.Dataset) -> set[str]:
    root = Path(ds.table_location("labels").uri)
    return {
        str(p.relative_to(root)) for p in root.rglob("*.parquet") if "_delta_log" not in p.parts
    }


def test_staged_files_are_adopted_as_they_are(ds: lv.Dataset) -> None:
    before = _data_files(ds)
    w = ds.writer("labels", job_id="relabel-7")
    replaced = labels(FIDS[:20], per_frame=1, cls="person")  # l0 of 20 frames
    added = labels(FIDS, per_frame=1, start=5)  # new keys l5
    _stage(w, "part-0.parquet", replaced)
    _stage(w, "part-1.parquet", added)
    want = pl.concat([ds.read("labels").join(replaced, on="label_id", how="anti"), replaced, added])
    commit = w.commit(message="vendor batch 7")
    assert commit.message == "vendor batch 7" and commit.meta["job"] == "relabel-7"
    assert commit.counts["labels"] == lv.ChangeCounts(added=60, modified=20)
    assert table_hash(ds.read("labels")) == table_hash(want)
    written = _data_files(ds) - before
    assert written == {"_staging/relabel-7/part-0.parquet", "_staging/relabel-7/part-1.parquet"}
    d = ds.diff(commit.seq - 1, commit.seq)
    assert d.summary().filter(pl.col("table") == "labels").row(0)[1:] == (60, 0, 20)
    # every engine reads the result
    assert ds.to_dask("labels").compute().shape[0] == want.height
    assert ds.to_duckdb("labels").count("*").fetchone()[0] == want.height
    # exactly once: the same job again is the same commit, even without its marker
    assert ds.writer("labels", job_id="relabel-7").commit().id == commit.id
    ds.root.child("_lakever", "jobs", "relabel-7.json").remove()
    assert ds.writer("labels", job_id="relabel-7").commit().id == commit.id
    assert ds.head.id == commit.id


def test_bad_staged_rows_fail_the_commit_naming_file_and_row(ds: lv.Dataset) -> None:
    head = ds.head
    w = ds.writer("labels", job_id="bad")
    _stage(w, "a.parquet", labels(FIDS[:3], per_frame=1, start=7))
    bad = labels(FIDS[3:6], per_frame=1, start=7).with_columns(
        pl.when(pl.col("frame_id") == FIDS[4]).then(pl.lit("zebra")).otherwise(pl.col("cls"))
        .alias("cls")
    )  # fmt: skip
    _stage(w, "b.parquet", bad)
    with pytest.raises(lv.ValidationError) as err:
        w.commit()
    (e,) = err.value.errors
    assert e.rule == "unknown_class" and "file b.parquet, row 1" in e.detail
    dup = ds.writer("labels", job_id="dup")
    _stage(dup, "a.parquet", labels(FIDS[:2], per_frame=1, start=8))
    _stage(dup, "b.parquet", labels(FIDS[1:3], per_frame=1, start=8))
    with pytest.raises(lv.ValidationError, match="duplicate_key"):
        dup.commit()
    inner = ds.writer("labels", job_id="dup-in-one-file")  # keys are checked once, across files
    twice = labels(FIDS[4:6], per_frame=1, start=8)
    _stage(inner, "a.parquet", pl.concat([twice, twice.head(1)]))
    _stage(inner, "b.parquet", labels(FIDS[6:8], per_frame=1, start=8))
    with pytest.raises(lv.ValidationError, match="duplicate_key") as err:
        inner.commit()
    assert [e.key for e in err.value.errors] == [twice["label_id"][0]] * 2  # both rows
    ghost = ds.writer("labels", job_id="ghost")
    _stage(ghost, "a.parquet", labels(["nowhere"], per_frame=1, start=9))
    with pytest.raises(lv.ValidationError, match="missing_frame"):
        ghost.commit()
    add = ds.writer("labels", mode="add", job_id="add")
    _stage(add, "a.parquet", labels(FIDS[:1], per_frame=1))
    with pytest.raises(lv.ValidationError, match="exists"):
        add.commit()
    odd = ds.writer("labels", job_id="odd")
    Path(odd.staging_uri).mkdir(parents=True)
    labels(FIDS[:1], per_frame=1, start=9).with_columns(extra=pl.lit(1)).write_parquet(
        f"{odd.staging_uri}/x.parquet"
    )
    with pytest.raises(lv.InvalidInputError, match="extra"):
        odd.commit()
    with pytest.raises(lv.InvalidInputError, match="no Parquet file"):
        ds.writer("labels", job_id="empty").commit()
    assert ds.head.id == head.id  # nothing became visible
    assert _data_files(ds) >= {"_staging/bad/a.parquet"}  # staged, never read by anyone
    assert ds.read("labels").height == 2 * len(FIDS)


def test_gc_reclaims_the_files_of_jobs_that_never_commit(
    ds: lv.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lakever import _gcfiles

    done = ds.writer("labels", job_id="done")
    _stage(done, "a.parquet", labels(FIDS[:2], per_frame=1, start=6))
    done.commit()
    failed = ds.writer("labels", job_id="failed")
    _stage(failed, "a.parquet", labels(FIDS[:2], per_frame=1, start=7))
    ds.gc(keep_within=timedelta(0), apply=True)
    assert {"_staging/done/a.parquet", "_staging/failed/a.parquet"} <= _data_files(ds)
    monkeypatch.setattr(_gcfiles, "STAGING_GRACE", timedelta(0))
    ds.gc(keep_within=timedelta(0), apply=True)
    files = _data_files(ds)
    assert "_staging/done/a.parquet" in files and "_staging/failed/a.parquet" not in files
    assert ds.read("labels").height == 2 * len(FIDS) + 2


def test_dask_and_spark_write_through_lakever(
    ds: lv.Dataset, request: pytest.FixtureRequest
) -> None:
    import dask.dataframe as dd

    rows = labels(FIDS, per_frame=1, start=3, cls="bike")
    commit = lv.dask.write(dd.from_pandas(rows.to_pandas(), npartitions=3), ds, "labels",
                           job_id="dask-1")  # fmt: skip
    assert commit.counts["labels"].added == len(FIDS)
    spark = request.getfixturevalue("spark")
    more = labels(FIDS[:10], per_frame=1, start=4, cls="truck")
    sdf = spark.createDataFrame(more.to_pandas())
    commit = lv.spark.write(sdf, ds, "labels", job_id="spark-1")
    assert commit.counts["labels"].added == 10
    got = ds.read("labels")
    assert got.height == 2 * len(FIDS) + len(FIDS) + 10
    assert got.filter(pl.col("cls") == "truck").height == 10
    assert lv.spark.read(spark, ds._lake.uri, "street", "labels").count() == got.height
    assert lv.spark.write(sdf, ds, "labels", job_id="spark-1").id == commit.id


@pytest.fixture(scope="module")
def spark() -> Any:
    from tests.test_engines import spark as engines_spark

    yield from engines_spark.__wrapped__()  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_driver_killed_while_committing_leaves_head_as_it_was_or_committed(
    lake: lv.Lake, lake_uri: tuple[str, dict[str, str]]
) -> None:
    import random
    import signal
    import time

    from tests.test_crash_and_concurrency import spawn, wait_ready

    ds = lake.create_dataset("street", classes=CLASSES)
    ds.add_frames(frames(FIDS))
    ds.upsert_labels(labels(FIDS, per_frame=2))
    rng = random.Random(4)
    outcomes = set()
    for round_ in range(4):
        job = f"job-{round_}"
        w = ds.writer("labels", job_id=job)
        rows = labels(FIDS[:30], per_frame=1, start=10 + round_, cls="person")
        lake.root.child("datasets", "street", "labels", "_staging", job, "a.parquet").put(
            _parquet(rows, w.schema)
        )
        before = ds.head
        proc = spawn("adopt", lake.uri, "street", job, 0, lake_uri[1],
                     LAKEVER_TEST_PAUSE_BEFORE_PUBLISH="0.3")  # fmt: skip
        wait_ready(proc)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        head = ds.head
        have = set(ds.read("labels")["label_id"])
        if head.id == before.id:
            outcomes.add("before")
            assert not have & set(rows["label_id"])
        else:
            outcomes.add("committed")
            assert head.meta.get("job") == job and set(rows["label_id"]) <= have
        again = ds.writer("labels", job_id=job).commit()  # the retried driver: exactly once
        assert again.meta["job"] == job
        got = ds.read("labels")
        assert got["label_id"].n_unique() == got.height
        assert set(rows["label_id"]) <= set(got["label_id"])
        assert ds.writer("labels", job_id=job).commit().id == again.id
    assert "before" in outcomes


@pytest.mark.slow
def test_a_commit_racing_other_writers_loses_nothing(
    lake: lv.Lake, lake_uri: tuple[str, dict[str, str]]
) -> None:
    from tests.test_crash_and_concurrency import finish, spawn

    ds = lake.create_dataset("street", classes=CLASSES)
    ds.add_frames(frames([*FIDS, "shared-00000"]))
    ds.upsert_labels(labels(FIDS, per_frame=2))
    w = ds.writer("labels", job_id="race")
    rows = labels(FIDS, per_frame=1, start=9, cls="bike")
    lake.root.child("datasets", "street", "labels", "_staging", "race", "a.parquet").put(
        _parquet(rows, w.schema)
    )
    procs = [spawn("write", lake.uri, "street", f"w{i}", 4, lake_uri[1]) for i in range(2)]
    commit = w.commit()
    outs = finish(procs)
    acked = [line.split()[2] for out in outs for line in out.splitlines() if line.startswith("ACK")]
    ids = {c.id for c in ds.log()}
    assert set(acked) <= ids and commit.id in ids
    got = ds.read("labels")
    assert (
        set(rows["label_id"]) <= set(got["label_id"]) and got["label_id"].n_unique() == got.height
    )


def _parquet(rows: pl.DataFrame, schema: Any) -> bytes:
    import io

    sink = io.BytesIO()
    pq.write_table(rows.to_arrow().cast(schema), sink)
    return sink.getvalue()
