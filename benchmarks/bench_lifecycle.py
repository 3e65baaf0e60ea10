"""Garbage collection and snapshot archiving: bytes freed, and what it costs.

1. A dataset of N labels after E scattered edit commits (the edit workload of
   `bench_edits`), with 3 snapshots kept (base, middle, end): lake size before
   and after `gc(keep_within=0)`, against the floor (the union of the files
   the three snapshots read) and against a copy per snapshot (the naive way).
   The peer: delta-rs `vacuum(keep_versions=...)` on a copy of the labels
   table, which keeps the same versions but knows nothing of the change feed
   or the log.
2. GC plan and apply time on a table of about F data files, local and on S3
   (a moto server in its own process).
3. Archive and unarchive time for an N-label snapshot, and the bytes GC
   reclaims once it is archived: the base snapshot of (1), and a snapshot
   whose files a relabel of every label replaced (local and S3).
"""

from __future__ import annotations

import io
import shutil
import statistics
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from deltalake import DeltaTable

import lakever as lv
from benchmarks._common import fmt_b, fmt_s, fresh_dir, markdown, tree_bytes
from benchmarks.bench_edits import plan as edit_plan
from lakever import _datafiles, _deltalog, sample

ZERO = timedelta(0)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _floor(ds: lv.Dataset, names: list[str]) -> int:
    """Bytes of the union of the files the snapshots read (data and vectors), every table."""
    seen: dict[str, int] = {}
    for name in names:
        commit = ds.resolve(name)
        for table, version in commit.table_versions.items():
            loc = ds.table_location(table)
            files = _deltalog.files_at(loc, version)
            for path, add in files.adds.items():
                seen[f"{loc.uri}/{urllib.parse.unquote(path)}"] = int(add.get("size", 0))
                dv = add.get("deletionVector")
                rel = _deltalog.vector_path(dv) if dv else None
                if rel:
                    where = loc.child(rel)
                    seen[where.uri] = int(where.fs.size(where.path))
    return sum(seen.values())


def _copies(ds: lv.Dataset, names: list[str]) -> int:
    """Bytes of one zstd Parquet copy of every table per snapshot."""
    total = 0
    for name in names:
        view = ds.at(name)
        for table in view.tables:
            sink = io.BytesIO()
            pq.write_table(view.read(table).to_arrow(), sink, compression="zstd")
            total += len(sink.getvalue())
    return total


def gc_after_edits(work: Path, n_labels: int, edits: int) -> tuple[str, lv.Dataset, Path]:
    root = fresh_dir(work / "gc")
    frames = sample.sample_frames(max(1, n_labels // 10))
    labels = sample.sample_labels(frames)
    ds = lv.connect(str(root)).create_dataset("bench", classes=sample.CLASSES)
    ds.add_frames(frames)
    ds.upsert_labels(labels)
    ds.create_snapshot("s0")
    t_edits = time.perf_counter()
    for i, e in enumerate(edit_plan(labels, edits, seed=5)):
        with ds.transaction(message=f"edit {i}") as tx:
            tx.upsert_labels(e.upserts)
            tx.delete_labels(e.deleted)
        if i + 1 == edits // 2:
            ds.create_snapshot("s-mid")
    t_edits = time.perf_counter() - t_edits
    ds.create_snapshot("s-end")
    names = ["s0", "s-mid", "s-end"]
    hashes = {n: ds.at(n).read("labels").sort("label_id").hash_rows().sum() for n in names}
    before = tree_bytes(root)
    floor = _floor(ds, names)
    copies = _copies(ds, names)
    # the peer: delta-rs vacuum keeping the three versions, on a copy of the labels table
    peer = work / "vacuum-copy"
    shutil.rmtree(peer, ignore_errors=True)
    shutil.copytree(ds.table_location("labels").uri, peer)
    keep = [ds.resolve(n).table_versions["labels"] for n in names]
    peer_before = tree_bytes(peer)
    t_vacuum, _ = _timed(
        lambda: DeltaTable(str(peer)).vacuum(
            retention_hours=0, enforce_retention_duration=False, dry_run=False, keep_versions=keep
        )
    )
    peer_after = tree_bytes(peer)
    plans = [_timed(lambda: ds.gc(keep_within=ZERO)) for _ in range(3)]
    t_plan = statistics.median(t for t, _ in plans)
    t_apply, report = _timed(lambda: ds.gc(keep_within=ZERO, apply=True))
    after = tree_bytes(root)
    for n in names:  # nothing a snapshot reads changed
        assert ds.at(n).read("labels").sort("label_id").hash_rows().sum() == hashes[n]
    labels_before = peer_before
    labels_after = tree_bytes(ds.table_location("labels").uri)
    rows = [
        ["lake size before GC", fmt_b(before), ""],
        ["lake size after `gc(keep_within=0)`", fmt_b(after), f"{after / before:.2f}x before"],
        ["floor: union of the files the 3 snapshots read", fmt_b(floor),
         f"after GC = {after / floor:.2f}x floor"],
        ["naive: one zstd Parquet copy per snapshot", fmt_b(copies),
         f"{copies / floor:.2f}x floor"],
        ["GC plan (median of 3)", fmt_s(t_plan), f"{report.files.height:,} files to delete"],
        ["GC apply", fmt_s(t_apply), f"{len(report.unreadable)} commits pruned"],
        ["labels table: before, after lakever GC", f"{fmt_b(labels_before)} -> "
         f"{fmt_b(labels_after)}", ""],
        ["labels table: delta-rs vacuum(keep_versions) on a copy", f"{fmt_b(peer_before)} -> "
         f"{fmt_b(peer_after)}", f"{fmt_s(t_vacuum)}; keeps change data and log"],
    ]  # fmt: skip
    kinds = ", ".join(f"{k} {fmt_b(b)}" for k, b in report.bytes_by_kind().items())
    section = markdown(
        f"GC after {edits} scattered edit commits, {n_labels:,} labels, 3 snapshots kept",
        ["", "value", "note"],
        rows,
        [
            f"{edits} edit commits took {t_edits:.0f} s. Deleted by kind: {kinds}.",
            "After GC every snapshot reads the same rows (checked by row hash). What stays "
            "above the floor is the log (JSON commits and checkpoints) and the small record "
            "tables.",
        ],
    )
    return section, ds, root


@contextmanager
def _small_files(rows: int) -> Iterator[None]:
    """Merge-on-read edits write files of `rows` rows (to make many files quickly)."""
    real = _datafiles.rows_per_file
    _datafiles.rows_per_file = lambda files, sample=None: rows  # type: ignore[assignment]
    try:
        yield
    finally:
        _datafiles.rows_per_file = real  # type: ignore[assignment]


def _many_files(lake: lv.Lake, n_files: int) -> lv.Dataset:
    """A labels table of about `n_files` files, then an edit that replaces them all."""
    frames = sample.sample_frames(max(1, n_files * 2))
    labels = sample.sample_labels(frames, per_frame=10)
    ds = lake.create_dataset("many", classes=sample.CLASSES)
    ds.add_frames(frames)
    ds.upsert_labels(labels.head(1))
    per_file = max(1, labels.height // n_files)
    with _small_files(per_file):
        ds.upsert_labels(labels.with_columns(x=pl.col("x") + 1))  # MOR: many small files
        # half the labels go: every file loses half its rows and is rewritten
        ds.delete_labels(labels["label_id"].gather_every(2).to_list())
    return ds


def gc_many_files(work: Path, n_files: int, s3: Any | None) -> str:
    rows = []
    backends: list[tuple[str, str, dict[str, str]]] = [("local", str(fresh_dir(work / "many")), {})]
    if s3 is not None:
        import boto3

        opts = s3.storage_options()
        boto3.client(
            "s3", endpoint_url=s3.endpoint, aws_access_key_id="testing",
            aws_secret_access_key="testing", region_name="us-east-1",
        ).create_bucket(Bucket="lakever-bench")  # fmt: skip
        backends.append(("S3 (moto)", "s3://lakever-bench/lake", opts))
    for name, uri, opts in backends:
        lake = lv.connect(uri, storage_options=opts)
        t_build, ds = _timed(lambda lake=lake: _many_files(lake, n_files))
        labels = ds.table_location("labels")
        files = sum(1 for rel, _, _ in labels.list_tree() if rel.endswith(".parquet"))
        plans = [_timed(lambda ds=ds: ds.gc(keep_within=ZERO)) for _ in range(3)]
        t_plan = statistics.median(t for t, _ in plans)
        t_apply, report = _timed(lambda ds=ds: ds.gc(keep_within=ZERO, apply=True))
        left = sum(1 for rel, _, _ in labels.list_tree() if rel.endswith(".parquet"))
        rows.append([name, f"{files:,}", fmt_s(t_plan), fmt_s(t_apply),
                     f"{report.files.height:,} ({fmt_b(report.bytes)})", f"{left:,}",
                     fmt_s(t_build)])  # fmt: skip
    return markdown(
        f"GC of a table of about {n_files:,} data files",
        ["storage", "files in labels/", "plan (median of 3)", "apply", "deleted", "files left",
         "building it"],
        rows,
        ["The table: one merge-on-read edit writes every label into small files, a second "
         "deletes half the labels, which rewrites every file; GC then deletes the first "
         "generation. Plan = one replay of the log and one listing per table."],
    )  # fmt: skip


def _archive_case(lake: lv.Lake, cold: str, n_labels: int, name: str) -> list[str]:
    """Archive a snapshot whose files a later rewrite replaced, GC, then unarchive it."""
    frames = sample.sample_frames(max(1, n_labels // 10))
    labels = sample.sample_labels(frames)
    ds = lake.create_dataset(name, classes=sample.CLASSES)
    ds.add_frames(frames)
    ds.upsert_labels(labels)
    ds.create_snapshot("old")
    ds.upsert_labels(labels.with_columns(x=pl.col("x") + 1.0))  # every file rewritten
    ds.create_snapshot("new")
    want = ds.at("old").read("labels").sort("label_id").hash_rows().sum()
    archived = lv.connect(lake.uri, storage_options=dict(lake.root.options), archive_uri=cold)
    ds = archived.dataset(name)
    t_arch, _ = _timed(lambda: ds.archive_snapshot("old"))
    t_gc, report = _timed(lambda: ds.gc(keep_within=ZERO, apply=True))
    t_back, _ = _timed(lambda: ds.unarchive_snapshot("old"))
    assert ds.at("old").read("labels").sort("label_id").hash_rows().sum() == want
    return [fmt_s(t_arch), fmt_s(t_gc), fmt_b(report.bytes), fmt_s(t_back)]


def archive_times(work: Path, ds: lv.Dataset, root: Path, n_labels: int, s3: Any | None) -> str:
    cold = work / "cold"
    shutil.rmtree(cold, ignore_errors=True)
    lake = lv.connect(str(root), archive_uri=str(cold))
    ds = lake.dataset(ds.name)
    want = ds.at("s0").read("labels").sort("label_id").hash_rows().sum()
    t_arch, _ = _timed(lambda: ds.archive_snapshot("s0"))
    t_gc, report = _timed(lambda: ds.gc(keep_within=ZERO, apply=True))
    t_back, _ = _timed(lambda: ds.unarchive_snapshot("s0"))
    assert ds.at("s0").read("labels").sort("label_id").hash_rows().sum() == want
    rows = [["local", "s0 of the edited dataset above (files shared with later snapshots)",
             fmt_s(t_arch), fmt_s(t_gc), fmt_b(report.bytes), fmt_s(t_back)]]  # fmt: skip
    case = "a snapshot whose files a later relabel of every label replaced"
    local = lv.connect(str(fresh_dir(work / "archive-local")))
    rows.append(["local", case, *_archive_case(local, str(work / "cold2"), n_labels, "relabel")])
    if s3 is not None:
        remote = lv.connect("s3://lakever-bench/archive", storage_options=s3.storage_options())
        cold_s3 = "s3://lakever-bench/cold"
        rows.append(["S3 (moto)", case, *_archive_case(remote, cold_s3, n_labels, "relabel")])
    return markdown(
        f"Archiving a {n_labels:,}-label snapshot",
        ["storage", "snapshot", "archive", "GC after", "GC freed", "unarchive"],
        rows,
        [
            "Unarchive copies back the files GC reclaimed; every unarchived snapshot read "
            "back equal (row hash). With merge-on-read, scattered edits mark rows instead of "
            "rewriting files, so snapshots share most files and archiving one frees little; "
            "archiving frees the files only that snapshot reads.",
        ],
    )


def run(work: Path, *, n_labels: int, edits: int, n_files: int, s3: bool) -> list[str]:
    section, ds, root = gc_after_edits(work, n_labels, edits)
    sections = [section]
    server = None
    if s3:
        from tests.helpers import S3Server

        server = S3Server.start()
    try:
        sections.append(gc_many_files(work, n_files, server))
        sections.append(archive_times(work, ds, root, n_labels, server))
    finally:
        if server is not None:
            server.stop()
    return sections
