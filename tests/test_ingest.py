"""Streaming uploads: partial success, sources, modes, records, resume after failures."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import lakever as lv
from lakever import ingest as ingest_module
from lakever import uploads as uploads_module
from lakever.errors import LakeverError
from tests.helpers import CLASSES, frames, labels, table_hash, vendor_batch


def _dataset(lake: lv.Lake, name: str = "d") -> lv.Dataset:
    return lake.create_dataset(name, classes=CLASSES)


def test_partial_upload_commits_good_rows_and_records_each_bad_one(lake: lv.Lake) -> None:
    ds = _dataset(lake)
    f, lab, truth = vendor_batch(40)
    stray = pl.DataFrame(
        [
            {
                "label_id": "stray",
                "frame_id": "nowhere",
                "cls": "car",
                "x": 1.0,
                "y": 1.0,
                "w": 1.0,
                "h": 1.0,
            }
        ]
    )
    lab = pl.concat([lab, stray])
    up = ds.ingest(frames=f, labels=lab, chunk_rows=25, author="vendor-etl")

    assert up.status == "partial"
    assert up.rows_received == {"frames": 40, "labels": 121}
    assert up.rows_rejected == {
        "frames": len(truth["bad_frames"]),
        "labels": len(truth["labels"]) + 1,
    }
    assert up.rows_committed["labels"] == 121 - up.rows_rejected["labels"]
    assert up.author == "vendor-etl"
    # every commit of the upload is one chunk, in order
    assert up.commits == sorted(up.commits) and len(up.commits) == -(-161 // 25)
    assert all(ds._log.get(s).meta["upload"]["id"] == up.id for s in up.commits)

    errors = up.errors
    frame_errors = errors.filter(pl.col("table") == "frames")
    assert set(frame_errors["key"]) == truth["bad_frames"]
    assert set(frame_errors["rule"]) == {"size"}
    assert set(frame_errors["value"]) == {"-5"}
    # the row index is the row's position in its own source
    for key, row in zip(frame_errors["key"], frame_errors["row"], strict=True):
        assert f["frame_id"][row] == key
    label_errors = errors.filter(pl.col("table") == "labels")
    got = dict(zip(label_errors["key"], label_errors["rule"], strict=True))
    assert got == {**truth["labels"], "stray": "missing_frame"}
    for key, row in zip(label_errors["key"], label_errors["row"], strict=True):
        assert lab["label_id"][row] == key

    good_frames = f.filter(~pl.col("frame_id").is_in(list(truth["bad_frames"])))
    good_labels = lab.filter(~pl.col("label_id").is_in([*truth["labels"], "stray"]))
    assert table_hash(ds.read("frames").select(good_frames.columns)) == table_hash(good_frames)
    assert table_hash(ds.read("labels").select(good_labels.columns)) == table_hash(good_labels)


def test_status_done_and_failed(local_lake: lv.Lake) -> None:
    ds = _dataset(local_lake)
    done = ds.ingest(frames=frames(range(5)))
    assert done.status == "done" and done.errors.is_empty() and len(done.commits) == 1
    failed = ds.ingest(labels=labels(["nope"], per_frame=2))
    assert failed.status == "failed"
    assert failed.commits == [] and failed.rows_committed == {"labels": 0}
    assert set(failed.errors["rule"]) == {"missing_frame"}
    listing = ds.uploads()
    assert listing["upload_id"].to_list() == [failed.id, done.id]  # newest first
    assert ds.uploads(status="failed")["upload_id"].to_list() == [failed.id]
    assert ds.uploads(limit=1).height == 1


def test_a_whole_batch_problem_rejects_each_row_of_the_chunk(local_lake: lv.Lake) -> None:
    ds = _dataset(local_lake)
    ds.add_frames(frames(range(3)))
    no_cls = labels(["f00000", "f00001", "f00002"], per_frame=1).drop("cls")
    up = ds.ingest(labels=no_cls)
    assert up.status == "failed"
    assert up.errors["rule"].to_list() == ["missing_column"] * 3
    assert up.errors["row"].to_list() == [0, 1, 2]
    assert up.errors["key"].to_list() == no_cls["label_id"].to_list()


def test_all_null_new_column_is_dropped_not_refused(local_lake: lv.Lake) -> None:
    ds = _dataset(local_lake)
    rows = [{**r, "note": None} for r in frames(range(2)).to_dicts()]
    up = ds.ingest(frames=rows)
    assert up.status == "done"
    assert "note" not in ds.read("frames").columns


def _write_sources(tmp: Path, f: pl.DataFrame, lab: pl.DataFrame) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    f.slice(0, 10).write_parquet(tmp / "frames-a.parquet")
    f.slice(10).write_parquet(tmp / "frames-b.parquet")
    lab.write_csv(tmp / "labels.csv")
    (tmp / "labels.jsonl").write_text("\n".join(json.dumps(r) for r in lab.to_dicts()) + "\n")
    return {
        "frames": str(tmp / "frames-*.parquet"),
        "csv": str(tmp / "labels.csv"),
        "jsonl": str(tmp / "labels.jsonl"),
    }


@pytest.mark.parametrize("label_source", ["csv", "jsonl"])
def test_files_and_globs(local_lake: lv.Lake, tmp_path: Path, label_source: str) -> None:
    ds = _dataset(local_lake)
    f = frames([f"{i:03d}" for i in range(20)])  # ids that look like numbers stay text
    lab = labels(f["frame_id"].to_list(), per_frame=2)
    paths = _write_sources(tmp_path / "src", f, lab)
    up = ds.ingest(frames=paths["frames"], labels=paths[label_source], chunk_rows=15)
    assert up.status == "done", up.errors
    assert sorted(ds.read("frames")["frame_id"]) == sorted(f["frame_id"])
    assert table_hash(ds.read("labels").select(lab.columns)) == table_hash(lab)


@pytest.mark.slow
def test_s3_sources(s3_server: Any, s3_bucket: str, tmp_path: Path) -> None:
    import s3fs

    options = s3_server.storage_options()
    lake = lv.connect(f"s3://{s3_bucket}/lake", storage_options=options)
    ds = _dataset(lake)
    f = frames(range(12))
    lab = labels(f["frame_id"].to_list(), per_frame=2)
    _write_sources(tmp_path / "src", f, lab)
    fs = s3fs.S3FileSystem(
        key="testing", secret="testing", client_kwargs={"endpoint_url": s3_server.endpoint}
    )
    for local in (tmp_path / "src").iterdir():
        fs.put(str(local), f"{s3_bucket}/in/{local.name}")
    up = ds.ingest(
        frames=f"s3://{s3_bucket}/in/frames-*.parquet", labels=f"s3://{s3_bucket}/in/labels.jsonl"
    )
    assert up.status == "done", up.errors
    assert ds.read("labels").height == lab.height
    # a COCO file on S3 in, and back out to S3
    from tests.test_formats import assert_same_coco, coco_document

    doc = coco_document()
    fs.pipe_file(f"{s3_bucket}/in/coco.json", json.dumps(doc).encode())
    coco_ds, coco_up = lake.import_coco("coco", f"s3://{s3_bucket}/in/coco.json")
    assert coco_up.status == "done"
    coco_ds.export_coco(f"s3://{s3_bucket}/out/coco.json")
    assert_same_coco(doc, json.loads(fs.cat_file(f"{s3_bucket}/out/coco.json")))


def test_in_memory_kinds_and_streams(local_lake: lv.Lake) -> None:
    ds = _dataset(local_lake)
    f = frames(range(30))
    up = ds.ingest(frames=f.to_arrow(), chunk_rows=7)
    assert up.rows_committed == {"frames": 30} and len(up.commits) == 5
    lab = labels(f["frame_id"].to_list(), per_frame=2)

    def rows() -> Iterator[dict[str, Any]]:
        yield from lab.slice(0, 20).to_dicts()

    def batches() -> Iterator[Any]:
        yield lab.slice(20, 20)
        yield lab.slice(40, 20).to_pandas()

    assert ds.ingest(labels=rows(), chunk_rows=8).rows_committed == {"labels": 20}
    assert ds.ingest(labels=batches(), chunk_rows=8).rows_committed == {"labels": 40}
    assert table_hash(ds.read("labels").select(lab.columns)) == table_hash(lab)


def test_a_stream_is_read_chunk_by_chunk(local_lake: lv.Lake) -> None:
    """The first chunks are committed before the stream has produced the rest."""
    ds = _dataset(local_lake)
    heads_seen: list[int] = []

    def stream() -> Iterator[pl.DataFrame]:
        for i in range(4):
            heads_seen.append(ds.head.seq)
            yield frames(range(i * 10, i * 10 + 10))

    up = ds.ingest(frames=stream(), chunk_rows=10)
    assert len(up.commits) == 4
    assert heads_seen == [0, 1, 2, 3]


def test_mode_add_rejects_existing_keys(local_lake: lv.Lake) -> None:
    ds = _dataset(local_lake)
    ds.add_frames(frames(range(5)))
    before = ds.read("frames")
    changed = frames(range(3, 8), width=[999] * 5)
    up = ds.ingest(frames=changed, mode="add")
    assert up.status == "partial"
    assert sorted(up.errors["key"]) == ["f00003", "f00004"]
    assert set(up.errors["rule"]) == {"exists"}
    after = ds.read("frames").sort("frame_id")
    # existing frames were left alone; the new ones were added
    assert (
        after.filter(pl.col("frame_id") <= "f00004")["width"].to_list()
        == before.sort("frame_id")["width"].to_list()
    )
    assert after.height == 8


def test_replace_labels_across_chunks(local_lake: lv.Lake) -> None:
    ds = _dataset(local_lake)
    ds.add_frames(frames(range(4)))
    ds.upsert_labels(labels(["f00000", "f00001", "f00002"], per_frame=3))
    new = labels(["f00000", "f00001"], per_frame=4, start=10, cls="bike")
    up = ds.ingest(labels=new, mode="replace_labels", chunk_rows=3)  # a frame spans chunks
    assert up.status == "done"
    got = ds.read("labels")
    for fid in ("f00000", "f00001"):
        assert sorted(got.filter(pl.col("frame_id") == fid)["label_id"]) == sorted(
            new.filter(pl.col("frame_id") == fid)["label_id"]
        )
    assert got.filter(pl.col("frame_id") == "f00002").height == 3  # not sent: kept


def test_inference_sets_are_pinned(local_lake: lv.Lake) -> None:
    ds = _dataset(local_lake)
    ds.add_frames(frames(range(3)))
    preds = labels(["f00000", "f00001", "ghost"], per_frame=1).with_columns(
        pl.lit(0.5).alias("confidence")
    )
    up = ds.ingest(inferences={"yolo": preds})
    assert up.rows_committed == {"inferences/yolo": 2}
    assert up.errors["rule"].to_list() == ["missing_frame"]
    assert ds.head.pins["yolo"] == up.commits[0]
    assert ds.read("inferences/yolo").height == 2


def test_same_upload_id_again_makes_no_commit(local_lake: lv.Lake) -> None:
    ds = _dataset(local_lake)
    f, lab, _ = vendor_batch(20)
    first = ds.ingest(frames=f, labels=lab, upload_id="vendor-7", chunk_rows=30)
    head = ds.head.seq
    again = ds.ingest(frames=f, labels=lab, upload_id="vendor-7", chunk_rows=30)
    assert ds.head.seq == head
    assert again.commits == first.commits and again.rows_committed == first.rows_committed
    assert again.errors.equals(first.errors)
    assert ds.upload("vendor-7").status == first.status
    with pytest.raises(lv.UploadNotFoundError, match="no-such"):
        ds.upload("no-such")


def _one_shot(lake: lv.Lake, f: pl.DataFrame, lab: pl.DataFrame) -> tuple[lv.Upload, dict]:
    ref = lake.create_dataset("reference", classes=CLASSES)
    up = ref.ingest(frames=f, labels=lab, chunk_rows=10_000)
    return up, {t: table_hash(ref.read(t)) for t in ("frames", "labels")}


@pytest.mark.parametrize("flush", [0.0, ingest_module.FLUSH_SECONDS])
@pytest.mark.parametrize("fail_at", ["errors", "chunk row", "data commit"])
def test_resume_after_a_failure_half_way(
    local_lake: lv.Lake, monkeypatch: pytest.MonkeyPatch, fail_at: str, flush: float
) -> None:
    """A store error while recording (every chunk, or all at the end) or committing.

    The retry with the same upload id ends exactly as one clean run would.
    """
    ds = _dataset(local_lake)
    f, lab, _ = vendor_batch(30, bad_every=5)
    reference, expected = _one_shot(local_lake, f, lab)
    monkeypatch.setattr(ingest_module, "FLUSH_SECONDS", flush)
    calls = {"n": 0}
    fail_on = 4 if fail_at == "data commit" else (3 if flush == 0 else 1)

    def failing(real: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == fail_on:
                raise lv.StorageError(f"injected failure at {fail_at}")
            return real(*args, **kwargs)

        return wrapper

    target = uploads_module.UploadRecords
    if fail_at == "errors":
        monkeypatch.setattr(target, "append_errors", failing(target.append_errors))
    elif fail_at == "chunk row":
        real_events = target.append_events

        def only_chunks(self: Any, rows: Any) -> None:
            if any(r["event"] == "chunk" for r in rows):
                return failing(real_events)(self, rows)
            return real_events(self, rows)

        monkeypatch.setattr(target, "append_events", only_chunks)
    else:
        from lakever.commits import CommitLog

        monkeypatch.setattr(CommitLog, "publish", failing(CommitLog.publish))

    with pytest.raises(lv.StorageError, match="injected"):
        ds.ingest(frames=f, labels=lab, upload_id="u", chunk_rows=10)
    monkeypatch.undo()
    assert ds.upload("u").status == "running"
    up = ds.ingest(frames=f, labels=lab, upload_id="u", chunk_rows=10)

    assert up.status == reference.status
    assert up.rows_received == reference.rows_received
    assert up.rows_committed == reference.rows_committed
    assert up.rows_rejected == reference.rows_rejected
    assert {t: table_hash(ds.read(t)) for t in ("frames", "labels")} == expected
    assert up.errors.sort("table", "row").equals(reference.errors.sort("table", "row"))
    chunks = [ds._log.get(s).meta["upload"]["chunk"] for s in up.commits]
    assert chunks == sorted(set(chunks))  # each chunk committed once
    ingest_commits = [c for c in ds.log() if c.meta.get("upload", {}).get("id") == "u"]
    assert sorted(c.seq for c in ingest_commits) == up.commits


def test_upload_tables_are_plain_delta(local_lake: lv.Lake) -> None:
    ds = _dataset(local_lake)
    f, lab, _ = vendor_batch(10)
    up = ds.ingest(frames=f, labels=lab, upload_id="x")
    events = pl.read_delta(f"{ds.root.uri}/uploads")
    assert set(events["upload_id"]) == {"x"}
    assert events.filter(pl.col("event") == "finish")["status"].to_list() == [up.status]
    errors = pl.read_delta(f"{ds.root.uri}/upload_errors")
    assert errors.height == up.errors.height


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "merge"}, "mode must be one of"),
        ({"chunk_rows": 0}, "chunk_rows"),
        ({"upload_id": "a/b"}, "upload_id"),
        ({"upload_id": " "}, "upload_id"),
        ({"frames": 42}, "cannot read rows from a int"),
        ({"frames": "/no/such/*.parquet"}, "no file matches"),
        ({"frames": "/etc/hostname"}, "cannot tell the format"),
        ({"inferences": ["x"]}, "inferences must map"),
    ],
)
def test_bad_arguments(local_lake: lv.Lake, kwargs: dict, match: str) -> None:
    ds = _dataset(local_lake)
    with pytest.raises(LakeverError, match=match):
        ds.ingest(**kwargs)
    assert ds.head.seq == 0


def test_unreadable_file_names_the_file(local_lake: lv.Lake, tmp_path: Path) -> None:
    ds = _dataset(local_lake)
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(LakeverError, match=r"broken\.parquet"):
        ds.ingest(frames=str(bad))


def test_disk_full_during_errors_save_leaves_nothing_acknowledged(
    local_lake: lv.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pending-errors save runs before publish: a failure there publishes nothing."""
    from lakever import storage

    ds = _dataset(local_lake)
    f, lab, _ = vendor_batch(10)
    real = storage.Location.put

    def full(self: storage.Location, data: bytes) -> None:
        if "pending_errors" in self.uri:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, data)

    monkeypatch.setattr(storage.Location, "put", full)
    with pytest.raises(OSError, match="No space"):
        ds.ingest(frames=f, labels=lab, upload_id="full")
    assert ds.head.seq == 0
    monkeypatch.undo()
    up = ds.ingest(frames=f, labels=lab, upload_id="full")
    assert up.status == "partial" and ds.read("frames").height == up.rows_committed["frames"]


def test_progress_bar_on_request_and_quiet_by_default(
    local_lake: lv.Lake, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = _dataset(local_lake)
    f, lab, _ = vendor_batch(10)
    ds.ingest(frames=f, labels=lab, chunk_rows=10)
    quiet = capsys.readouterr()
    assert quiet.out == "" and quiet.err == ""  # not a terminal: nothing printed
    up = ds.ingest(frames=f, labels=lab, chunk_rows=10, progress=True, upload_id="p")
    shown = capsys.readouterr()
    assert shown.out == ""
    assert f"{up.rows_received['frames'] + up.rows_received['labels']:,} rows" in shown.err
    assert f"{up.rows_rejected['frames'] + up.rows_rejected['labels']:,} rejected" in shown.err


def test_a_view_refuses_uploads(local_lake: lv.Lake) -> None:
    ds = _dataset(local_lake)
    with pytest.raises(lv.ReadOnlyError, match="ingest"):
        ds.at(0).ingest(frames=frames(range(1)))
    assert ds.head.seq == 0


# -- an upload id is a promise about its rows -------------------------------------------


def test_a_finished_upload_id_refuses_other_rows(local_lake: lv.Lake) -> None:
    ds = _dataset(local_lake)
    f, lab, _ = vendor_batch(20)
    first = ds.ingest(frames=f, labels=lab, upload_id="batch-0001", chunk_rows=30)
    head = ds.head.seq
    changed = lab.with_columns(
        pl.when(pl.col("label_id") == lab["label_id"][3])
        .then(pl.lit(99.0))
        .otherwise(pl.col("x"))
        .alias("x")
    )
    with pytest.raises(lv.ConflictError, match=r"'batch-0001'.*new upload_id"):
        ds.ingest(frames=f, labels=changed, upload_id="batch-0001", chunk_rows=30)
    with pytest.raises(lv.ConflictError, match=r"'batch-0001'.*more"):
        ds.ingest(
            frames=f, labels=pl.concat([lab, labels(["f00001"], start=50)]), upload_id="batch-0001"
        )
    with pytest.raises(lv.ConflictError, match="'batch-0001'"):
        ds.ingest(frames=f, labels=lab.head(10), upload_id="batch-0001")
    assert ds.head.seq == head  # nothing written by any of them
    # the same rows again, cut differently, in another form: the record, no commit
    again = ds.ingest(
        frames=f.to_dicts(), labels=lab.to_arrow(), upload_id="batch-0001", chunk_rows=7
    )
    assert ds.head.seq == head and again.commits == first.commits


def test_an_interrupted_upload_id_refuses_other_rows(
    local_lake: lv.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lakever.commits import CommitLog

    ds = _dataset(local_lake)
    f, lab, _ = vendor_batch(30, bad_every=5)
    reference, expected = _one_shot(local_lake, f, lab)
    real = CommitLog.publish
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise lv.StorageError("injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(CommitLog, "publish", failing)
    with pytest.raises(lv.StorageError):
        ds.ingest(frames=f, labels=lab, upload_id="u", chunk_rows=10)
    monkeypatch.undo()
    head = ds.head.seq
    other = f.with_columns(pl.col("uri") + "?v2")
    with pytest.raises(lv.ConflictError, match="'u' received other rows"):
        ds.ingest(frames=other, labels=lab, upload_id="u", chunk_rows=10)
    assert ds.head.seq == head and ds.upload("u").status == "running"
    up = ds.ingest(frames=f, labels=lab, upload_id="u", chunk_rows=25)  # same rows resume
    assert up.rows_committed == reference.rows_committed
    assert {t: table_hash(ds.read(t)) for t in ("frames", "labels")} == expected


def _with_repeats(keys: list[int]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Frames f0..f4, and one label per entry of `keys` (label id k, x telling copies apart)."""
    f = frames(range(5))
    lab = pl.DataFrame(
        {
            "label_id": [f"l{k}" for k in keys],
            "frame_id": [f"f{k % 5:05d}" for k in keys],
            "cls": ["car"] * len(keys),
            "x": [float(i) for i in range(len(keys))],
            "y": [0.0] * len(keys),
            "w": [1.0] * len(keys),
            "h": [1.0] * len(keys),
        }
    )
    return f, lab


@pytest.mark.parametrize("mode", ["upsert", "add", "replace_labels"])
def test_a_repeated_key_keeps_its_first_copy_whatever_the_chunking(
    tmp_path: Path, mode: str
) -> None:
    keys = [1, 2, 1, 3, 2, 2, 4, 1, 5]
    f, lab = _with_repeats(keys)
    first = {}
    for i, k in enumerate(keys):
        first.setdefault(f"l{k}", float(i))
    later = sorted(i for i, k in enumerate(keys) if float(i) != first[f"l{k}"])
    results = []
    for chunk_rows in (1, 2, 4, 100):
        lake = lv.connect(tmp_path / f"lake-{chunk_rows}")
        ds = _dataset(lake)
        up = ds.ingest(frames=f, labels=lab, mode=mode, chunk_rows=chunk_rows)
        got = dict(ds.read("labels").select("label_id", "x").iter_rows())
        assert got == first, chunk_rows
        dupes = up.errors.filter(pl.col("rule") == "duplicate_key")
        assert sorted(dupes["row"].to_list()) == later
        assert up.errors.height == len(later)
        results.append((got, dupes.sort("row").select("row", "key").rows()))
    assert all(r == results[0] for r in results)


def test_truncated_gzip_names_the_file(local_lake: lv.Lake, tmp_path: Path) -> None:
    import gzip

    ds = _dataset(local_lake)
    path = tmp_path / "frames.jsonl.gz"
    data = gzip.compress(frames(range(200)).write_ndjson().encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(lv.InvalidInputError, match=r"frames\.jsonl\.gz"):
        ds.ingest(frames=str(path))


def test_a_broken_json_line_is_named_by_its_line_number(
    local_lake: lv.Lake, tmp_path: Path
) -> None:
    ds = _dataset(local_lake)
    lines = frames(range(5)).write_ndjson().splitlines()
    lines.insert(3, "")  # blank lines count as lines of the file
    lines.insert(5, '{"frame_id": "f9", "uri": ')
    path = tmp_path / "frames.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(lv.InvalidInputError, match=r"frames\.jsonl.*line 6 is not valid JSON"):
        ds.ingest(frames=str(path))
