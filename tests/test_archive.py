"""Snapshots archived to cold storage: copies readable without lakever, GC, limits."""

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
from lakever.cli import app
from tests.helpers import CLASSES, content_hash, frames, labels, table_hash

FIDS = [f"f{i:02d}" for i in range(30)]


def _lake(lake: lv.Lake, cold: str, **limits: object) -> lv.Lake:
    return lv.connect(lake.uri, storage_options=dict(lake.root.options), archive_uri=cold, **limits)  # type: ignore[arg-type]


def _cold(lake: lv.Lake, tmp_path: Path) -> str:
    return str(tmp_path / "cold") if lake.root.is_local else lake.uri + "-cold"


def _three_snapshots(lake: lv.Lake) -> lv.Dataset:
    ds = lake.create_dataset("d", classes=CLASSES)
    ds.add_frames(frames(FIDS))
    ds.upsert_labels(labels(FIDS, per_frame=3))
    ds.create_snapshot("a")
    for r in range(4):
        ds.upsert_labels(labels(FIDS[r::4], per_frame=1, cls="person", x=float(r)))
    ds.delete_labels([f"{f}-l2" for f in FIDS[:5]])
    ds.create_snapshot("b")
    ds.upsert_labels(labels(FIDS[::3], per_frame=2, cls="truck"))
    ds.create_snapshot("c")
    return ds


def test_archive_gc_unarchive_round_trip(lake: lv.Lake, tmp_path: Path) -> None:
    lake = _lake(lake, _cold(lake, tmp_path))
    ds = _three_snapshots(lake)
    want = {n: content_hash(ds.at(n)) for n in "abc"}
    counts = {s.name: s.changes for s in ds.list_snapshots()}
    plan_before = ds.gc(keep_within=timedelta(0))
    rows_b = {t: table_hash(ds.at("b").read(t)) for t in ("frames", "labels")}

    snap = ds.archive_snapshot("b")
    assert snap.state == "archived"
    with pytest.raises(lv.SnapshotArchivedError, match=r"unarchive_snapshot\('b'\)"):
        ds.at("b")
    # the archive copy is a self-contained Delta table at the snapshot's version
    cold = lv.archive.archived_sources(ds, snap)
    assert cold is not None and set(cold) == {"frames", "labels"}
    for table, (loc, version) in cold.items():
        opts = loc.delta_options()
        copy = pl.read_delta(loc.uri, version=version, storage_options=opts)
        assert table_hash(copy) == rows_b[table]
        assert DeltaTable(loc.uri, storage_options=opts).version() == 0
    # GC may now reclaim what only b needed; counts still come out (from the archive)
    plan = ds.gc(keep_within=timedelta(0))
    assert plan.bytes > plan_before.bytes
    assert "b" not in set(plan.roots["name"])
    ds.gc(keep_within=timedelta(0), apply=True)
    fresh = lake.dataset("d")
    assert {s.name: s.changes for s in fresh.list_snapshots()} == counts
    assert [s.state for s in fresh.list_snapshots(changes=False)] == [
        "materialized", "archived", "materialized"]  # fmt: skip

    back = fresh.unarchive_snapshot("b")
    assert back.state == "materialized" and not cold["labels"][0].exists()
    assert {n: content_hash(fresh.at(n)) for n in "abc"} == want
    assert {s.name: s.changes for s in lake.dataset("d").list_snapshots()} == counts
    fresh.gc(keep_within=timedelta(0), apply=True)
    assert {n: content_hash(fresh.at(n)) for n in "abc"} == want
    # archiving twice, unarchiving twice: nothing happens the second time
    fresh.archive_snapshot("a")
    assert fresh.archive_snapshot("a").state == "archived"
    fresh.unarchive_snapshot("a")
    assert fresh.unarchive_snapshot("a").state == "materialized"


def test_last_loaded_and_deleting_an_archived_snapshot(local_lake: lv.Lake, tmp_path: Path) -> None:
    lake = _lake(local_lake, str(tmp_path / "cold"))
    ds = _three_snapshots(lake)
    assert all(s.last_loaded_at is None for s in ds.list_snapshots())  # listing is no read
    lv.archive._touched.clear()
    ds.at("a").read("frames")
    first = {s.name: s.last_loaded_at for s in ds.list_snapshots(changes=False)}
    assert first["a"] is not None and first["b"] is None
    ds.at("a").read("frames")  # within a minute: no second write from this process
    assert ds.snapshot("a").last_loaded_at == first["a"]
    lv.archive._touched.clear()
    time.sleep(0.01)
    ds.at("a").read("frames")
    assert ds.snapshot("a").last_loaded_at > first["a"]
    ds.archive_snapshot("a")
    folder = Path(lv.archive.archived_sources(ds, ds.snapshot("a"))["frames"][0].uri).parent
    assert folder.exists()
    ds.delete_snapshot("a")
    assert not folder.exists()
    ds.create_snapshot("a")  # the name is free again, and materialized
    assert ds.snapshot("a").state == "materialized"


def test_no_archive_configured(local_lake: lv.Lake) -> None:
    ds = _three_snapshots(lv.connect(local_lake.uri, max_snapshots_per_dataset=1))
    assert len(ds.list_snapshots(changes=False)) == 3  # no archive: no limits
    with pytest.raises(lv.LakeverError, match="archive_uri"):
        ds.archive_snapshot("a")


def test_limits_archive_the_least_recently_loaded(local_lake: lv.Lake, tmp_path: Path) -> None:
    cold = str(tmp_path / "cold")
    lake = _lake(local_lake, cold, max_snapshots_per_dataset=3, min_loaded_age=timedelta(0))
    ds = _three_snapshots(lake)
    lv.archive._touched.clear()
    ds.at("a").read("labels")  # a is now the most recently loaded: b goes first
    ds.create_snapshot("d")
    states = {s.name: s.state for s in ds.list_snapshots(changes=False)}
    assert states == {"a": "materialized", "b": "archived", "c": "materialized",
                      "d": "materialized"}  # fmt: skip
    # unarchiving b needs room too: the least recently loaded other one goes
    ds.unarchive_snapshot("b")
    states = {s.name: s.state for s in ds.list_snapshots(changes=False)}
    assert states["b"] == "materialized" and list(states.values()).count("archived") == 1
    assert states["d"] == "materialized"  # the most recent snapshot never goes

    # loaded within min_loaded_age: none may go, the call fails and creates nothing
    strict = _lake(local_lake, cold, max_snapshots_per_dataset=3, min_loaded_age=timedelta(days=1))
    sd = strict.dataset("d")
    with pytest.raises(lv.LimitError, match="max_snapshots_per_dataset is 3"):
        sd.create_snapshot("e")
    assert "e" not in {s.name for s in sd.list_snapshots(changes=False)}


def test_lake_wide_limit(local_lake: lv.Lake, tmp_path: Path) -> None:
    lake = _lake(local_lake, str(tmp_path / "cold"), max_snapshots=3, min_loaded_age=timedelta(0))
    one = lake.create_dataset("one", classes=CLASSES)
    one.add_frames(frames(["x"]))
    one.create_snapshot("o1")
    one.add_frames(frames(["y"]))
    one.create_snapshot("o2")
    two = lake.create_dataset("two", classes=CLASSES)
    two.add_frames(frames(["z"]))
    two.create_snapshot("t1")
    two.add_frames(frames(["w"]))
    two.create_snapshot("t2")  # the fourth: o1 (oldest, not the newest of its dataset) goes
    assert {s.name: s.state for s in one.list_snapshots(changes=False)} == {
        "o1": "archived", "o2": "materialized"}  # fmt: skip
    one.create_snapshot("o3")  # o2 is the newest of its dataset then: t1 goes
    assert {s.name: s.state for s in two.list_snapshots(changes=False)} == {
        "t1": "archived", "t2": "materialized"}  # fmt: skip
    # made within min_loaded_age (never loaded counts from creation): none may go
    strict = _lake(local_lake, str(tmp_path / "cold"), max_snapshots=3)
    with pytest.raises(lv.LimitError, match="the lake has 3 materialized snapshots"):
        strict.dataset("one").create_snapshot("o4")


def test_settings_from_the_environment(
    local_lake: lv.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKEVER_ARCHIVE_URI", str(tmp_path / "env-cold"))
    monkeypatch.setenv("LAKEVER_MAX_SNAPSHOTS_PER_DATASET", "7")
    monkeypatch.setenv("LAKEVER_MAX_SNAPSHOTS", "9")
    monkeypatch.setenv("LAKEVER_SNAPSHOT_MIN_LOADED_AGE", "12h")
    cfg = lv.connect(local_lake.uri).archive
    assert cfg.location is not None and cfg.location.uri == str(tmp_path / "env-cold")
    assert (cfg.max_snapshots_per_dataset, cfg.max_snapshots) == (7, 9)
    assert cfg.min_loaded_age == timedelta(hours=12)
    assert lv.connect(local_lake.uri, max_snapshots=2).archive.max_snapshots == 2
    monkeypatch.setenv("LAKEVER_MAX_SNAPSHOTS", "lots")
    with pytest.raises(lv.InvalidInputError, match="LAKEVER_MAX_SNAPSHOTS"):
        lv.connect(local_lake.uri)
    for bad in ({"max_snapshots_per_dataset": 0}, {"min_loaded_age": 5}):
        with pytest.raises(lv.InvalidInputError):
            lv.connect(local_lake.uri, max_snapshots=3, **bad)  # type: ignore[arg-type]


def test_cli_archive_and_unarchive(local_lake: lv.Lake, tmp_path: Path) -> None:
    _three_snapshots(local_lake)
    env = {"LAKEVER_ARCHIVE_URI": str(tmp_path / "cold")}
    runner = CliRunner()
    base = ["--uri", local_lake.uri]
    out = runner.invoke(app, [*base, "snapshot", "archive", "d", "b"], env=env)
    assert out.exit_code == 0 and "archived" in out.output
    listing = runner.invoke(app, [*base, "--json", "snapshot", "list", "d"], env=env)
    rows = {r["name"]: r for r in json.loads(listing.output)}
    assert rows["b"]["state"] == "archived" and rows["a"]["state"] == "materialized"
    assert rows["a"]["last_loaded_at"] is None  # never read
    assert runner.invoke(app, [*base, "show", "d", "a"], env=env).exit_code == 0
    listing = runner.invoke(app, [*base, "--json", "snapshot", "list", "d"], env=env)
    assert {r["name"]: r for r in json.loads(listing.output)}["a"]["last_loaded_at"]
    show = runner.invoke(app, [*base, "show", "d", "b"], env=env)
    assert show.exit_code == 3 and "unarchive" in show.output
    back = runner.invoke(app, [*base, "snapshot", "unarchive", "d", "b"], env=env)
    assert back.exit_code == 0, back.output
    assert not os.listdir(tmp_path / "cold" / "d" / local_lake.dataset("d").info.identity)


@pytest.mark.slow
def test_unarchive_racing_gc(lake: lv.Lake, tmp_path: Path) -> None:
    """A process archives and unarchives a snapshot over and over while another runs GC
    (keeping nothing but roots): every time it comes back, it reads as it did."""
    from tests.test_crash_and_concurrency import finish, spawn, wait_ready

    ds = _three_snapshots(lake)
    want = {n: content_hash(ds.at(n)) for n in "abc"}
    opts = dict(lake.root.options)
    stop = tmp_path / "stop"
    env = {"LAKEVER_TEST_ARCHIVE": _cold(lake, tmp_path), "LAKEVER_TEST_STOP_FILE": str(stop)}
    mover = spawn("archive-loop", lake.uri, "d", "b", 5, opts, **env)
    collector = spawn("gc-loop", lake.uri, "d", "gc", 1000, opts, **env)
    wait_ready(collector)
    outs = finish([mover])
    stop.touch()
    finish([collector], ready=True)
    assert outs[0].split().count("SAME") == 5, outs[0]
    missing = [int(line.split()[1]) for line in outs[0].splitlines() if line.startswith("MISSING")]
    assert sum(missing) > 0  # GC did reclaim the archived snapshot's files meanwhile
    assert {n: content_hash(ds.at(n)) for n in "abc"} == want


def test_archive_and_unarchive_failing_midway_are_retried(
    local_lake: lv.Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = _lake(local_lake, str(tmp_path / "cold"))
    ds = _three_snapshots(lake)
    want = content_hash(ds.at("b"))
    real = lv.archive._copy
    calls: list[int] = []

    def flaky(src: object, dst: object) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise lv.StorageError("injected: copy failed")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(lv.archive, "_copy", flaky)
    with pytest.raises(lv.StorageError, match="injected"):
        ds.archive_snapshot("b")
    assert ds.snapshot("b").state == "materialized" and content_hash(ds.at("b")) == want
    assert ds.archive_snapshot("b").state == "archived"  # the retry overwrites the partial copy
    ds.gc(keep_within=timedelta(0), apply=True)
    calls.clear()
    with pytest.raises(lv.StorageError, match="injected"):
        ds.unarchive_snapshot("b")
    assert ds.snapshot("b").state == "restoring"
    assert ds.gc(keep_within=timedelta(0)).roots.filter(pl.col("name") == "b").height == 1
    monkeypatch.setattr(lv.archive, "_copy", real)
    assert ds.unarchive_snapshot("b").state == "materialized"
    assert content_hash(ds.at("b")) == want


def test_outside_readers_find_an_archived_snapshot_in_the_tag_table(
    lake: lv.Lake, tmp_path: Path
) -> None:
    """The README's Polars recipe, after archive and GC took the hot files."""
    lake = _lake(lake, _cold(lake, tmp_path))
    ds = _three_snapshots(lake)
    want = table_hash(ds.at("a").read("labels"))
    root = ds.root.uri
    options = ds.root.delta_options()

    def recipe(name: str) -> pl.DataFrame:
        tags = pl.read_delta(f"{root}/snapshots", storage_options=options)
        tags = tags.filter(pl.col("name") == name)
        t = tags.explode("tables").unnest("tables").filter(pl.col("table") == "labels")
        row = t.row(0, named=True)
        if row["state"] == "archived":
            uri = f"{row['archive_uri']}/{row['uri']}"
            return pl.read_delta(uri, version=0, storage_options=options)
        uri = f"{root}/{row['uri']}"
        return pl.scan_delta(uri, version=row["version"], storage_options=options).collect()

    assert table_hash(recipe("a")) == want
    ds.archive_snapshot("a")
    ds.gc(keep_within=timedelta(0), apply=True)
    with pytest.raises(Exception, match=r"(?i)not found|no such file|does not exist"):
        pl.scan_delta(
            f"{root}/labels",
            version=ds._tags.get("a").table_versions["labels"],
            storage_options=options,
        ).collect()  # the hot files are gone
    assert table_hash(recipe("a")) == want
    ds.unarchive_snapshot("a")
    row = (
        pl.read_delta(f"{root}/snapshots", storage_options=options)
        .filter(pl.col("name") == "a")
        .row(0, named=True)
    )
    assert (row["state"], row["archive_uri"]) == ("materialized", None)
    assert table_hash(recipe("a")) == want
