"""Uploads under real process deaths and real concurrency (slow)."""

from __future__ import annotations

import random
import signal
import time

import polars as pl
import pytest

import lakever as lv
from tests.helpers import CLASSES, table_hash, vendor_batch
from tests.test_crash_and_concurrency import spawn, wait_ready


def _upload_commits(ds: lv.Dataset, upload_id: str) -> list[int]:
    """Chunk numbers of every commit the upload made, in log order."""
    return [
        c.meta["upload"]["chunk"]
        for c in reversed(ds.log())
        if c.meta.get("upload", {}).get("id") == upload_id
    ]


@pytest.mark.slow
def test_killed_upload_resumes_exactly_once(local_lake: lv.Lake) -> None:
    """SIGKILL an upload at random points, rerun it with the same id until it finishes."""
    ds = local_lake.create_dataset("shared", classes=CLASSES)
    reference = local_lake.create_dataset("reference", classes=CLASSES)
    f, lab, _ = vendor_batch(150, prefix="u")
    want = reference.ingest(frames=f, labels=lab, chunk_rows=20)
    rng = random.Random(3)
    kills = 0
    for _ in range(40):
        proc = spawn("ingest", local_lake.uri, "shared", "u", 150, {})
        wait_ready(proc)
        time.sleep(rng.uniform(0.05, 0.8))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        if "DONE" in out:
            break
        kills += 1
        # whatever was committed so far is whole: every label's frame is there
        assert set(ds.read("labels")["frame_id"]) <= set(ds.read("frames")["frame_id"])
    else:
        proc = spawn("ingest", local_lake.uri, "shared", "u", 150, {})
        wait_ready(proc)
        out, err = proc.communicate(timeout=600)
        assert "DONE" in out, err[-2000:]
    assert kills >= 3  # the kills really interrupted it
    up = ds.upload("u")
    assert up.rows_committed == want.rows_committed
    assert up.rows_rejected == want.rows_rejected
    assert up.rows_received == want.rows_received
    for t in ("frames", "labels"):
        assert table_hash(ds.read(t)) == table_hash(reference.read(t))
    assert up.errors.equals(want.errors)
    chunks = _upload_commits(ds, "u")
    assert chunks == sorted(set(chunks))  # no chunk committed twice
    assert sorted(up.commits) == [
        c.seq for c in reversed(ds.log()) if c.meta.get("upload", {}).get("id") == "u"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "s3"], indirect=True)
def test_two_uploads_at_once_both_complete(lake: lv.Lake, lake_uri: tuple) -> None:
    uri, options = lake_uri
    ds = lake.create_dataset("shared", classes=CLASSES)
    procs = {w: spawn("ingest", uri, "shared", w, 60, options) for w in ("a", "b")}
    for proc in procs.values():
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0 and "DONE partial" in out, err[-3000:]
    frames_now = set(ds.read("frames")["frame_id"])
    labels_now = set(ds.read("labels")["label_id"])
    for w in procs:
        f, lab, truth = vendor_batch(60, prefix=w)
        up = ds.upload(w)
        assert up.status == "partial"
        good_frames = set(f["frame_id"]) - truth["bad_frames"]
        good_labels = set(lab["label_id"]) - set(truth["labels"])
        assert good_frames <= frames_now and good_labels <= labels_now
        assert up.rows_committed == {"frames": len(good_frames), "labels": len(good_labels)}
        assert sorted(_upload_commits(ds, w)) == list(range(len(up.commits)))
    assert len(frames_now) == sum(
        len(
            set(vendor_batch(60, prefix=w)[0]["frame_id"])
            - vendor_batch(60, prefix=w)[2]["bad_frames"]
        )
        for w in procs
    )
    assert ds.uploads()["status"].to_list() == ["partial", "partial"]
    assert pl.read_delta(f"{ds.root.uri}/uploads", storage_options=options or None).height > 0


@pytest.mark.slow
def test_two_runs_of_one_upload_id_never_commit_a_chunk_twice(local_lake: lv.Lake) -> None:
    ds = local_lake.create_dataset("shared", classes=CLASSES)
    reference = local_lake.create_dataset("reference", classes=CLASSES)
    f, lab, _ = vendor_batch(120, prefix="u")
    want = reference.ingest(frames=f, labels=lab, chunk_rows=20)
    procs = [spawn("ingest", local_lake.uri, "shared", "u", 120, {}) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    finished = ["DONE" in out for out, _ in outs]
    for (_, err), done in zip(outs, finished, strict=True):
        assert done or "being run by another process" in err, err[-2000:]
    if not all(finished):  # the one that stopped: run it again, it completes
        again = spawn("ingest", local_lake.uri, "shared", "u", 120, {})
        out, err = again.communicate(timeout=600)
        assert "DONE" in out, err[-2000:]
    chunks = _upload_commits(ds, "u")
    assert chunks == sorted(set(chunks))  # no chunk committed twice
    up = ds.upload("u")
    assert up.rows_committed == want.rows_committed
    for t in ("frames", "labels"):
        assert table_hash(ds.read(t)) == table_hash(reference.read(t))
    assert up.errors.equals(want.errors)
