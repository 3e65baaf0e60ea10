"""A writer process for crash and concurrency tests (run as a script, not collected).

Usage: python tests/_worker.py MODE URI DATASET WRITER COUNT
Storage options come as JSON in $LAKEVER_TEST_OPTIONS. Prints READY once
imported and `ACK <seq> <commit id>` after each acknowledged commit.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl

import lakever as lv
from tests.helpers import content_hash, frames, labels, vendor_batch


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def inject_fault(where: str, kind: str) -> None:
    """Make one step of a commit fail the way a user saw it fail (fault tests only)."""
    import errno

    from lakever import _mor
    from lakever.commits import CommitLog

    def boom() -> None:
        if kind == "interrupt":
            raise KeyboardInterrupt
        if kind == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise lv.StorageError("S3 said: 503 Slow Down")

    if where == "publish" and kind == "interrupt":

        def publish(self: CommitLog, commit: object) -> bool:
            boom()
            return False

        CommitLog.publish = publish  # type: ignore[method-assign]
    elif where == "publish":  # the store fails under the real put-if-absent
        from lakever import storage

        real_local = storage._local_put_if_absent

        def local(path: str, data: bytes) -> bool:
            if "/commits/" in path:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_local(path, data)

        storage._local_put_if_absent = local
        import s3fs

        real_pipe = s3fs.S3FileSystem._pipe_file

        async def pipe(self, path, data, **kw):  # type: ignore[no-untyped-def]
            if "/commits/" in str(path):
                raise OSError(errno.EIO, "503 Slow Down: please reduce your request rate")
            return await real_pipe(self, path, data, **kw)

        s3fs.S3FileSystem._pipe_file = pipe
    elif where == "second-table":
        real_append = _mor.append

        def append(dt, loc, rows, claim):  # type: ignore[no-untyped-def]
            if "label_id" in rows.columns:
                boom()
            return real_append(dt, loc, rows, claim)

        _mor.append = append


def fail_once(ds: lv.Dataset) -> int:
    """Try one transaction that fails, report how, and stay alive (a notebook, a service)."""
    try:
        with ds.transaction(message="doomed") as tx:
            tx.add_frames(frames(["doomed-1"]))
            tx.upsert_labels(labels(["doomed-1"]))
    except BaseException as exc:
        say(f"FAILED {type(exc).__name__}")
    else:
        say("COMMITTED")
    time.sleep(600)
    return 0


def snap_writer(ds: lv.Dataset, writer: str, count: int) -> int:
    """Edits, snapshots of HEAD and of older commits, reverts: racing a GC."""
    for i in range(count):
        fids = [f"{writer}-{i % 5:02d}-{k}" for k in range(2)]
        with ds.transaction(message=f"{writer} {i}") as tx:
            tx.upsert_frames(frames(fids))
            tx.upsert_labels(labels(fids, per_frame=2, x=float(i)))
        # a second edit no snapshot keeps: garbage for the racing GC
        fixed = ds.upsert_labels(labels(fids, per_frame=2, x=float(i) + 0.5))
        say(f"ACK {fixed.seq} {fixed.id}")
        assert tx.result is not None
        say(f"ACK {tx.result.seq} {tx.result.id}")
        name = f"{writer}-s{i}"
        ref = fixed.seq if i % 3 else max(0, fixed.seq - 3)
        try:
            snap = ds.create_snapshot(name, ref=ref)
        except lv.VersionPrunedError:
            say(f"PRUNED {name}")
        else:
            say(f"SNAP {name} {json.dumps(content_hash(ds.at(snap.name)), sort_keys=True)}")
        if i % 5 == 4:
            try:
                ds.revert(f"{writer}-s{i - 2}")
                say(f"REVERT {i - 2}")
            except (lv.SnapshotNotFoundError, lv.VersionPrunedError) as exc:
                say(f"NOREVERT {type(exc).__name__}")
    return 0


def main() -> int:
    mode, uri, name, writer, count = sys.argv[1:6]
    options = json.loads(os.environ.get("LAKEVER_TEST_OPTIONS", "{}"))
    fault = os.environ.get("LAKEVER_TEST_FAULT", "")
    if ":" in fault:
        inject_fault(*fault.split(":", 1))  # before any storage object is made
    if os.environ.get("LAKEVER_TEST_TARGET_FILE_SIZE"):  # small files count as large
        from lakever import _delta

        _delta.TARGET_FILE_SIZE = int(os.environ["LAKEVER_TEST_TARGET_FILE_SIZE"])
    pause = float(os.environ.get("LAKEVER_TEST_PAUSE_BEFORE_PUBLISH", "0"))
    if pause:
        # Widen the window between the table writes and the publish, so that
        # kills land in it on a fast machine too (crash tests only).
        from lakever.commits import CommitLog

        real_publish = CommitLog.publish

        def slow_publish(self: CommitLog, commit: object) -> bool:
            time.sleep(pause)
            return real_publish(self, commit)  # type: ignore[arg-type]

        CommitLog.publish = slow_publish  # type: ignore[method-assign]
    lake = lv.connect(
        uri, storage_options=options, archive_uri=os.environ.get("LAKEVER_TEST_ARCHIVE")
    )
    if mode == "delete":
        say("READY")
        lake.delete_dataset(name, force=True)
        say("DELETED")
        return 0
    if mode == "merge-datasets":  # merge NAME and vendor-b into WRITER
        say("READY")
        lake.merge_datasets([name, "vendor-b"], writer)
        say("MERGED")
        return 0
    if mode == "clone":  # clone dataset NAME as WRITER, with its snapshots
        say("READY")
        lake.clone_dataset(name, writer, snapshots=True)
        say("CLONED")
        return 0
    ds = lake.dataset(name, branch=os.environ.get("LAKEVER_TEST_BRANCH") or None)
    say("READY")
    if mode == "adopt":  # commit the job WRITER staged in labels (a driver that may die)
        c = ds.writer("labels", job_id=writer).commit()
        say(f"ACK {c.seq} {c.id}")
        return 0
    if mode == "merge-loop":  # merge branch WRITER into the handle's branch, COUNT times
        for i in range(int(count)):
            result = ds.merge(writer, on_conflict="theirs")
            seq = None if result.commit is None else result.commit.seq
            say(f"MERGED {i} {seq}")
            time.sleep(0.05)
        return 0
    if mode == "ingest":  # one upload named after the writer; COUNT frames of vendor rows
        f, lab, _ = vendor_batch(int(count), prefix=writer)
        up = ds.ingest(frames=f, labels=lab, upload_id=writer, chunk_rows=20, progress=False)
        say(f"DONE {up.status} {len(up.commits)}")
        return 0
    if mode == "fail":
        return fail_once(ds)
    if mode == "gc-loop":
        from datetime import timedelta

        start_at = int(os.environ.get("LAKEVER_TEST_GC_AFTER_SEQ", "0"))
        deadline = time.monotonic() + 120
        while ds.head.seq < start_at and time.monotonic() < deadline:
            time.sleep(0.05)  # let the racing writer get going first
        stop = os.environ.get("LAKEVER_TEST_STOP_FILE")
        for i in range(int(count)):
            if stop and Path(stop).exists():
                break
            report = ds.gc(keep_within=timedelta(0), apply=True, author=writer)
            say(f"GC {i} {report.seq} {len(report.unreadable)} {report.files.height}")
            time.sleep(float(os.environ.get("LAKEVER_TEST_GC_PAUSE", "0.3")))  # spread the runs
        return 0
    if mode == "archive-loop":  # archive and unarchive snapshot WRITER, checking its content
        want = content_hash(ds.at(writer))
        for i in range(int(count)):
            ds.archive_snapshot(writer)
            archived_at = lv.commits.now_utc()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(  # a whole GC run while archived
                r.finished_at is not None and r.created_at > archived_at
                for r in ds._pruned.records(after=ds.head.seq - 50)
            ):
                time.sleep(0.05)
            snap = ds._tags.get(writer)
            labels_at = ds._snapshot_commit(snap).table_versions["labels"]
            gone = lv._delta.missing_files(ds.table_location("labels"), labels_at)
            say(f"MISSING {len(gone)}")
            ds.unarchive_snapshot(writer)
            got = content_hash(ds.at(writer))
            say(f"{'SAME' if got == want else 'DIFFERENT'} {i}")
        return 0
    if mode == "optimize-loop":  # COUNT optimize calls, racing the writers
        for i in range(int(count)):
            c = ds.optimize(author=writer)
            say(f"OPT {i} {c.seq} {c.id} {c.operation}")
            time.sleep(float(os.environ.get("LAKEVER_TEST_OPTIMIZE_PAUSE", "0.2")))
        return 0
    if mode == "snap-writer":
        return snap_writer(ds, writer, int(count))
    if mode == "snapshot-race":
        go = Path(os.environ["LAKEVER_TEST_GO"])
        while not go.exists():
            time.sleep(0.001)
        try:
            ds.create_snapshot(writer)
        except lv.SnapshotExistsError:
            say("LOST")
            return 3
        say("WON")
        return 0
    for i in range(int(count)):
        fids = [f"{writer}-{i:04d}-{k}" for k in range(3)]
        if mode == "until-gone":
            try:
                c = ds.add_frames(frames(fids), message=f"{writer} {i}")
            except lv.DatasetNotFoundError:
                say("GONE")
                return 0
            say(f"ACK {c.seq} {c.id}")
            continue
        with ds.transaction(message=f"{writer} commit {i}", author=writer) as tx:
            tx.add_frames(frames(fids))
            tx.upsert_labels(labels(fids, per_frame=2))
            if i:  # relabel the previous commit's labels: an edit of existing rows
                prev = [f"{writer}-{i - 1:04d}-{k}" for k in range(3)]
                tx.upsert_labels(labels(prev, per_frame=2, cls="person"))
            if mode == "crash":
                tx.upsert_inferences(
                    "model", labels(fids, per_frame=1).with_columns(confidence=pl.lit(0.5))
                )
            if i % 4 == 3:
                tx.update_frames([{"frame_id": "shared-00000", "width": 100 + i}])
        assert tx.result is not None
        say(f"ACK {tx.result.seq} {tx.result.id}")
        if mode == "crash" and i % 7 == 6:
            ds.create_snapshot(f"{writer}-snap-{i}")
            say(f"SNAP {writer}-snap-{i}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
