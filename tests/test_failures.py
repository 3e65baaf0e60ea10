"""A commit that fails for any reason never blocks other writers (real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

import lakever as lv
from lakever import _claims, _delta, _mor
from lakever.storage import Location
from tests.helpers import CLASSES, frames, labels, read_only
from tests.test_crash_and_concurrency import spawn, wait_ready


def _failing_writer(
    lake: lv.Lake, options: dict[str, str], fault: str
) -> Iterator[subprocess.Popen[str]]:
    proc = spawn("fail", lake.uri, "shared", "w", 1, options, LAKEVER_TEST_FAULT=fault)
    try:
        wait_ready(proc)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _doomed_versions(ds: lv.Dataset, table: str) -> list[dict[str, object]]:
    uri = ds.root.child(table).uri
    history = DeltaTable(uri, storage_options=ds.root.delta_options()).history()
    return [h for h in history if h.get(_claims.META_SEQ) == str(ds.head.seq + 1)]


def _commit_quickly(ds: lv.Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer commits; with a short timeout it would raise ConflictError if blocked."""
    monkeypatch.setenv("LAKEVER_COMMIT_TIMEOUT", "5")
    monkeypatch.setenv("LAKEVER_CLAIM_TIMEOUT", "300")  # age must not be what unblocks it
    c = ds.add_frames(frames(["after"]))
    assert c.seq == ds.log()[1].seq + 1
    got = sorted(ds.read("frames")["frame_id"])
    assert got == ["after", "base"]  # nothing of the failed commit is visible
    assert ds.read("labels").height == 0


@pytest.fixture
def shared(lake: lv.Lake) -> lv.Dataset:
    ds = lake.create_dataset("shared", classes=CLASSES)
    ds.add_frames(frames(["base"]))
    return ds


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault",
    ["publish:interrupt", "publish:store-error", "second-table:interrupt"],
)
def test_failed_commit_in_a_live_process_does_not_block(
    shared: lv.Dataset,
    lake: lv.Lake,
    lake_uri: tuple[str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    for proc in _failing_writer(lake, lake_uri[1], fault):
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        expected = "KeyboardInterrupt" if fault.endswith("interrupt") else "StorageError"
        assert line == f"FAILED {expected}"
        assert proc.poll() is None  # the failing writer is alive
        assert _doomed_versions(shared, "frames")  # it really wrote a table version
        _commit_quickly(shared, monkeypatch)


@pytest.mark.slow
def test_permission_denied_on_the_commit_log_does_not_block(
    local_lake: lv.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = local_lake.create_dataset("shared", classes=CLASSES)
    ds.add_frames(frames(["base"]))
    commits = Path(ds.root.uri, "_lakever", "commits")
    with read_only(commits):
        for proc in _failing_writer(local_lake, {}, ""):
            assert proc.stdout is not None
            # a refusal of the store (here the file system's) is an AccessDeniedError,
            # a StorageError
            assert proc.stdout.readline().strip() == "FAILED AccessDeniedError"
            assert _doomed_versions(ds, "frames")
    _commit_quickly(ds, monkeypatch)


@pytest.mark.slow
def test_full_disk_does_not_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        lake = lv.connect(mount / "lake")
        ds = lake.create_dataset("shared", classes=CLASSES)
        ds.add_frames(frames(["base"]))
        filler = mount / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # fill the disk, then leave a few KB: one table write fits, little else
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        os.truncate(filler, max(0, filler.stat().st_size - 8 * 1024))
        for proc in _failing_writer(lake, {}, ""):
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "FAILED StorageError"
            filler.unlink()  # the operator frees space; the failed writer is still alive
            _commit_quickly(ds, monkeypatch)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_in_process_failure_leaves_no_live_claim(
    local_lake: lv.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = local_lake.create_dataset("shared", classes=CLASSES)
    ds.add_frames(frames(["base"]))
    real = _mor.append

    def fail_on_labels(
        dt: DeltaTable, loc: Location, rows: pl.DataFrame, claim: dict[str, str]
    ) -> int:
        if "label_id" in rows.columns:
            raise KeyboardInterrupt
        return real(dt, loc, rows, claim)

    monkeypatch.setattr(_mor, "append", fail_on_labels)
    with pytest.raises(KeyboardInterrupt), ds.transaction() as tx:
        tx.add_frames(frames(["doomed"]))
        tx.upsert_labels(labels(["doomed"]))
    monkeypatch.setattr(_mor, "append", real)
    latest = DeltaTable(ds.root.child("frames").uri)
    info = latest.history(1)[0]
    assert info[_delta.META_RESTORED_TO] == str(ds.head.table_versions["frames"])  # undone
    assert not _claims.is_live(info, ds.head.seq)
    assert not list(Path(_claims._LOCK_DIR).glob(f"{info[_claims.META_ATTEMPT]}*"))
    _commit_quickly(ds, monkeypatch)


def test_lock_makes_a_dead_attempt_of_a_live_process_visible(tmp_path: Path) -> None:
    """A claim whose process lives but whose attempt ended is not live."""
    code = (
        "import sys, time, json; from lakever import _claims\n"
        "a = _claims.Attempt(5); a.__enter__(); print(json.dumps(a.claim), flush=True)\n"
        "sys.stdin.readline(); a.__exit__(None, None, None); print('released', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        claim = json.loads(proc.stdout.readline())
        info = {**claim, "timestamp": 0}
        assert claim[_claims.META_LOCK] == "1"
        assert _claims.is_live(info, 4)  # in flight: wait for it
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "released"
        assert proc.poll() is None
        assert not _claims.is_live(info, 4)  # alive, but its attempt is over
    finally:
        proc.kill()
        proc.wait()
