"""Garbage collection: what it keeps, what it deletes, and what reads and writes see after."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner

import lakever as lv
from lakever import _gcfiles
from lakever.cli import app
from tests.helpers import CLASSES, content_hash, frames, labels

ZERO = timedelta(0)


def _edited(lake: lv.Lake, name: str = "d", rounds: int = 6) -> lv.Dataset:
    """A dataset with snapshots s0 (base) and s-mid, and scattered edits in between."""
    ds = lake.create_dataset(name, classes=CLASSES)
    fids = [f"f{i:03d}" for i in range(40)]
    ds.add_frames(frames(fids))
    ds.upsert_labels(labels(fids, per_frame=3))
    ds.create_snapshot("s0")
    for r in range(rounds):
        pick = fids[r::5]
        ds.upsert_labels(labels(pick, per_frame=1, cls="person", x=float(r)))
        ds.delete_labels([f"{pick[0]}-l2"], missing_ok=True)
        if r == rounds // 2:
            ds.create_snapshot("s-mid")
    return ds


def _hashes(ds: lv.Dataset, refs: list[str | int]) -> dict[str | int, dict[str, str]]:
    return {r: content_hash(ds.at(r)) for r in refs}


def test_plan_deletes_nothing_and_apply_keeps_every_root(lake: lv.Lake) -> None:
    ds = _edited(lake)
    refs: list[str | int] = ["s0", "s-mid", "HEAD"]
    want = _hashes(ds, refs)
    diff_before = ds.diff("s0", "s-mid").rows("labels").sort("label_id")
    plan = ds.gc(keep_within=ZERO)
    assert not plan.applied and plan.files.height > 0 and plan.bytes > 0
    assert set(plan.roots["reason"]) == {"head", "snapshot"}
    assert plan.unreadable and ds.head.seq not in plan.unreadable
    assert ds.at(plan.unreadable[-1]).read("labels").height > 0  # a plan deletes nothing

    done = ds.gc(keep_within=ZERO, apply=True)
    assert done.applied and done.unreadable == plan.unreadable
    assert done.bytes == plan.bytes and set(done.files["kind"]) <= {
        "data", "deletion vector", "change data", "log", "checkpoint"}  # fmt: skip
    assert _hashes(ds, refs) == want
    assert ds.diff("s0", "s-mid").rows("labels").sort("label_id").equals(diff_before)
    gone = [p for p in done.files["path"] if "_delta_log" not in p]
    assert gone and not any(
        lv.storage.user_location(p, lake.root.options).exists() for p in gone[:5]
    )
    # nothing left to do: a second plan deletes nothing and prunes nothing
    again = ds.gc(keep_within=ZERO)
    assert again.files.height == 0 and again.unreadable == []


def test_pruned_commit_reads_fail_clearly_and_log_marks_them(local_lake: lv.Lake) -> None:
    ds = _edited(local_lake)
    report = ds.gc(keep_within=ZERO, apply=True, author="janitor")
    victim = report.unreadable[-1]
    with pytest.raises(lv.VersionPrunedError) as err:
        ds.at(victim)
    assert err.value.seq == victim and err.value.gc_seq == report.seq
    assert "janitor" in str(err.value) and str(report.seq) in str(err.value)
    for bad in (lambda: ds.diff(victim), lambda: ds.revert(victim)):
        with pytest.raises(lv.VersionPrunedError):
            bad()
    with pytest.raises(lv.VersionPrunedError):
        ds.create_snapshot("late", ref=victim)
    marks = {c.seq: c.pruned_by for c in ds.log()}
    assert {s for s, by in marks.items() if by == report.seq} == set(report.unreadable)
    assert marks[report.seq] is None and ds.log()[0].operation == "gc"
    runs = ds.gc_runs()
    assert runs.height == 1
    row = runs.row(0, named=True)
    assert row["seq"] == report.seq and row["author"] == "janitor"
    assert row["files"] == report.files.height and row["bytes"] == report.bytes
    assert row["unreadable"] == report.unreadable


def test_window_pins_and_segments_are_roots(local_lake: lv.Lake) -> None:
    ds = _edited(local_lake)
    preds = labels(["f001"], per_frame=1).with_columns(confidence=pl.lit(0.9))
    ds.upsert_inferences("model", preds, pinned_to=3)
    seg = ds.create_segment("hard")
    seg.add(label_ids=["f002-l0"], at=ds.resolve(4))
    ds.upsert_labels(labels(["f002"], per_frame=1, cls="truck"))
    plan = ds.gc(keep_within=ZERO)
    reasons = {(r["seq"], r["reason"]) for r in plan.roots.iter_rows(named=True)}
    assert (3, "pin") in reasons and (4, "segment") in reasons
    frozen = seg.read("labels")
    pinned = content_hash(ds.at(3))
    ds.gc(keep_within=ZERO, apply=True)
    assert seg.read("labels").equals(frozen)
    assert content_hash(ds.at(3)) == pinned
    assert ds.evaluate("model").against.seq == 3
    # a window keeps every recent commit: nothing is pruned
    assert ds.gc(keep_within=timedelta(days=1)).unreadable == []


def _brute_history(ds: lv.Dataset, label_id: str) -> list[tuple[int, str]]:
    """(seq, change) of one label over the readable commits, read commit by commit."""
    out, prev = [], None
    for c in reversed(ds.log()):
        if c.pruned_by is not None:
            continue
        rows = ds.at(c.seq).read("labels").filter(pl.col("label_id") == label_id)
        cur = rows.row(0, named=True) if rows.height else None
        if cur != prev:
            change = "added" if prev is None else "deleted" if cur is None else "modified"
            out.append((c.seq, change))
        prev = cur
    return out


def test_writes_history_and_diffs_after_gc(lake: lv.Lake) -> None:
    ds = _edited(lake)
    ds.gc(keep_within=ZERO, apply=True)
    ds.upsert_labels(labels(["f000"], per_frame=1, cls="bike"))
    ds.delete_labels(["f005-l1", "f010-l0"])
    for label_id in ("f000-l0", "f005-l1", "f010-l2"):
        got = ds.history(label_id=label_id)
        assert list(zip(got["seq"], got["change"], strict=True)) == _brute_history(ds, label_id)
    frame_hist = ds.history(frame_id="f005")
    assert "f005-l1" in set(frame_hist["key"])
    d = ds.diff("s-mid")
    a, b = ds.at("s-mid").read("labels"), ds.read("labels")
    assert d.counts()["labels"].deleted == len(set(a["label_id"]) - set(b["label_id"]))
    assert d.counts()["labels"].added == len(set(b["label_id"]) - set(a["label_id"]))
    # delta-rs and Polars read every table at HEAD after log pruning
    for t in ("frames", "labels"):
        uri, version = ds.delta_table(t)
        opts = lake.root.delta_options()
        assert pl.read_delta(uri, version=version, storage_options=opts).height == ds.read(t).height
        assert DeltaTable(uri, storage_options=opts).version() == version


def test_dropped_inference_set_is_reclaimed_and_its_name_reusable(local_lake: lv.Lake) -> None:
    ds = _edited(local_lake, rounds=2)
    preds = labels([f"f{i:03d}" for i in range(40)], per_frame=2).with_columns(
        confidence=pl.lit(0.5)
    )
    ds.upsert_inferences("m", preds)
    ds.drop_inferences("m")
    report = ds.gc(keep_within=ZERO, apply=True)
    assert report.files.filter(pl.col("table") == "inferences/m").height > 0
    ds.upsert_inferences("m", preds.head(5))
    assert ds.read("inferences/m").height == 5


def test_untracked_files_go_only_when_old(local_lake: lv.Lake) -> None:
    ds = _edited(local_lake, rounds=1)
    table = Path(ds.table_location("labels").uri)
    young, old = table / "part-young.parquet", table / "part-old.parquet"
    for p in (young, old):
        pl.DataFrame({"a": [1]}).write_parquet(p)
    stale = time.time() - _gcfiles.UNTRACKED_GRACE.total_seconds() - 60
    os.utime(old, (stale, stale))
    paths = set(ds.gc(keep_within=ZERO, apply=True).files["path"])
    assert str(old) in paths and str(young) not in paths
    assert young.exists() and not old.exists()


def test_lake_gc_and_bad_input(local_lake: lv.Lake) -> None:
    _edited(local_lake, "a", rounds=2)
    _edited(local_lake, "b", rounds=2)
    plan = local_lake.gc(keep_within=ZERO)
    assert plan["dataset"].to_list() == ["a", "b"] and not plan["applied"].any()
    assert (plan["bytes"] > 0).all()
    done = local_lake.gc(keep_within=ZERO, apply=True)
    assert done["bytes"].to_list() == plan["bytes"].to_list() and done["applied"].all()
    for bad in (-timedelta(seconds=1), 7, "7d"):
        with pytest.raises(lv.InvalidInputError, match="keep_within"):
            local_lake.gc(keep_within=bad)  # type: ignore[arg-type]


def test_cli_gc(local_lake: lv.Lake) -> None:
    _edited(local_lake, rounds=2)
    runner = CliRunner()
    base = ["--uri", local_lake.uri]
    plan = runner.invoke(app, [*base, "gc", "d", "--keep-within", "0"])
    assert plan.exit_code == 0, plan.output
    assert "would delete" in plan.output and "--yes" in plan.output
    applied = runner.invoke(app, [*base, "--json", "gc", "d", "--keep-within", "0s", "--yes"])
    assert applied.exit_code == 0, applied.output
    assert '"applied": true' in applied.output
    hist = runner.invoke(app, [*base, "gc", "d", "--history"])
    assert hist.exit_code == 0 and "files" in hist.output
    log = runner.invoke(app, [*base, "--json", "log", "d"])
    entries = json.loads(log.output)
    gc_seq = entries[0]["seq"]
    assert entries[0]["operation"] == "gc" and entries[-1]["pruned_by"] == gc_seq
    bad = runner.invoke(app, [*base, "gc", "d", "--keep-within", "soon"])
    assert bad.exit_code == 2 and "keep-within" in bad.output


@pytest.mark.slow
def test_gc_racing_writers_snapshots_reverts_and_another_gc(lake: lv.Lake) -> None:
    """Two GC loops (keep nothing but roots) race a process that edits, snapshots HEAD
    and older commits, and reverts: every snapshot it was told exists reads back as it
    did when made, a refused one does not exist, and nothing a root needs is gone."""
    from tests.test_crash_and_concurrency import finish, spawn

    ds = lake.create_dataset("race", classes=CLASSES)
    ds.add_frames(frames(["base"]))
    opts = dict(lake.root.options)
    procs = [spawn("snap-writer", lake.uri, "race", "w", 9, opts)]
    procs += [
        spawn(
            "gc-loop",
            lake.uri,
            "race",
            f"gc{k}",
            6,
            opts,
            LAKEVER_TEST_GC_AFTER_SEQ="5",
            LAKEVER_TEST_GC_PAUSE="0.3" if lake.root.is_local else "1.5",
        )  # moto: one
        for k in range(2)  # request at a time, so the runs leave the writer room on S3
    ]
    outs = finish(procs)
    writer_out = outs[0].splitlines()
    gc_lines = [line for out in outs[1:] for line in out.splitlines() if line.startswith("GC")]
    assert len(gc_lines) == 12
    assert sum(int(line.split()[4]) for line in gc_lines) > 0  # the runs really deleted files
    made = {}
    for line in writer_out:
        if line.startswith("SNAP "):
            _, name, hashes = line.split(" ", 2)
            made[name] = json.loads(hashes)
    refused = [line.split()[1] for line in writer_out if line.startswith("PRUNED")]
    assert made
    existing = {s.name for s in ds.list_snapshots(changes=False)}
    assert set(made) <= existing and not set(refused) & existing
    for name, hashes in made.items():
        assert content_hash(ds.at(name)) == hashes, name
    acked = [int(line.split()[1]) for line in writer_out if line.startswith("ACK")]
    log = {c.seq: c for c in ds.log()}
    assert all(s in log for s in acked)
    assert ds.repair().unreadable.is_empty()


def test_snapshot_of_a_commit_pruned_meanwhile_is_withdrawn(
    local_lake: lv.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GC publishes between a snapshot's check of its ref and its write: the
    snapshot is withdrawn and the error names the run (interleaving forced)."""
    ds = _edited(local_lake, rounds=3)
    victim = ds.head.seq - 1
    real = lv.tags.TagTable.create
    ran: list[lv.GCReport] = []

    def gc_first(self: lv.tags.TagTable, *args: object, **kwargs: object) -> lv.Snapshot:
        if not ran:
            ds.upsert_labels(labels(["f001"], per_frame=1, cls="truck"))  # victim is no root
            ran.append(local_lake.dataset("d").gc(keep_within=ZERO, apply=True))
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lv.tags.TagTable, "create", gc_first)
    with pytest.raises(lv.VersionPrunedError) as err:
        ds.create_snapshot("late", ref=victim)
    assert victim in ran[0].unreadable and err.value.gc_seq == ran[0].seq
    assert "late" not in {s.name for s in ds.list_snapshots(changes=False)}


def test_segment_add_racing_gc_is_taken_back(
    local_lake: lv.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = _edited(local_lake, rounds=3)  # HEAD is no snapshot's commit
    seg = ds.create_segment("s")
    real = lv.segments._lookup
    ran: list[lv.GCReport] = []

    def gc_first(*args: object, **kwargs: object) -> pl.DataFrame:
        out = real(*args, **kwargs)  # type: ignore[arg-type]
        if not ran:  # HEAD was read: now it moves on and a GC prunes it
            ds.upsert_labels(labels(["f003"], per_frame=1, cls="truck"))
            ran.append(local_lake.dataset("d").gc(keep_within=ZERO, apply=True))
        return out

    monkeypatch.setattr(lv.segments, "_lookup", gc_first)
    with pytest.raises(lv.VersionPrunedError):
        seg.add(label_ids=["f001-l0"])
    assert seg.elements().is_empty()
    monkeypatch.setattr(lv.segments, "_lookup", real)
    assert seg.add(label_ids=["f001-l0"]) == 1  # at the new HEAD it works


def test_status_against_an_archived_snapshot(local_lake: lv.Lake, tmp_path: Path) -> None:
    lake = lv.connect(local_lake.uri, archive_uri=str(tmp_path / "cold"))
    ds = _edited(lake, rounds=2)
    want = ds.changes_since_snapshot("s0").counts()
    ds.archive_snapshot("s0")
    ds.gc(keep_within=ZERO, apply=True)
    assert lake.dataset("d").changes_since_snapshot("s0").counts() == want
    lake.delete_dataset("d", force=True)
    assert not (tmp_path / "cold" / "d").exists() or not any((tmp_path / "cold" / "d").iterdir())


def test_gc_failing_midway_leaves_roots_intact_and_a_rerun_finishes(
    local_lake: lv.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store errors on the second batch of deletions: nothing a root needs is gone,
    and running GC again finishes the job."""
    ds = _edited(local_lake)
    want = _hashes(ds, ["s0", "s-mid", "HEAD"])
    plan = ds.gc(keep_within=ZERO)
    real = lv.storage.Location.remove_many
    calls: list[int] = []

    def flaky(self: lv.storage.Location, locations: list[lv.storage.Location]) -> None:
        calls.append(len(locations))
        if len(calls) == 2:
            raise lv.StorageError(f"injected: cannot delete objects under {self.uri}")
        real(self, locations)

    monkeypatch.setattr(lv.storage.Location, "remove_many", flaky)
    with pytest.raises(lv.StorageError, match="injected"):
        ds.gc(keep_within=ZERO, apply=True)
    monkeypatch.setattr(lv.storage.Location, "remove_many", real)
    assert _hashes(ds, ["s0", "s-mid", "HEAD"]) == want
    with pytest.raises(lv.VersionPrunedError):  # the run's commit published: they are pruned
        ds.at(plan.unreadable[-1])
    again = ds.gc(keep_within=ZERO, apply=True)
    assert again.files.height > 0 and _hashes(ds, ["s0", "s-mid", "HEAD"]) == want
    assert ds.gc(keep_within=ZERO).files.height == 0
    ds.upsert_labels(labels(["f001"], per_frame=1, cls="truck"))  # still writable


@pytest.mark.slow
def test_gc_killed_at_random_points_is_finished_by_the_next_run(local_lake: lv.Lake) -> None:
    import random
    import signal

    from tests.test_crash_and_concurrency import spawn, wait_ready

    ds = _edited(local_lake, rounds=8)
    refs: list[str | int] = ["s0", "s-mid", "HEAD"]
    want = _hashes(ds, refs)
    rng = random.Random(5)
    for _ in range(6):
        ds.upsert_labels(labels([f"f{rng.randrange(40):03d}"], per_frame=1, cls="truck"))
        want["HEAD"] = content_hash(ds)
        proc = spawn("gc-loop", local_lake.uri, "d", "gc", 1, {}, LAKEVER_TEST_GC_PAUSE="0")
        wait_ready(proc)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert _hashes(ds, refs) == want
    ds.gc(keep_within=ZERO, apply=True)
    assert ds.gc(keep_within=ZERO).files.height == 0 and _hashes(ds, refs) == want
