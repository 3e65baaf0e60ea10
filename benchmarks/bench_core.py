"""Core engine figures: snapshots, snapshot reads, edits, small commits.

Each figure is compared, in the same run, with the naive way:
- snapshot: copy the tables per snapshot (what a clone-per-snapshot tool does);
- read: `pl.scan_delta(uri, version=v).collect()` on the same table;
- edit: a plain delta-rs MERGE into a table written with default settings;
- small commits: HEAD opened after 10 commits against after 1,000.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import polars as pl
from deltalake import DeltaTable, write_deltalake

import lakever as lv
from benchmarks._common import (
    build_dataset,
    fmt_b,
    fmt_s,
    fresh_dir,
    markdown,
    median_time,
    stream_batch,
    tree_bytes,
    version_bytes,
)
from lakever import _delta, sample


def bench_snapshots(work: Path, sizes: list[int], repeat: int) -> tuple[str, dict[int, lv.Dataset]]:
    rows = []
    built: dict[int, lv.Dataset] = {}
    for n in sizes:
        root = fresh_dir(work / f"snap-{n}")
        ds, _, labels = build_dataset(root, "bench", n)
        built[n] = ds
        before = tree_bytes(ds.root.uri)
        times = []
        for i in range(repeat):
            t = time.perf_counter()
            ds.create_snapshot(f"s-{i}")
            times.append(time.perf_counter() - t)
        per_snap = (tree_bytes(ds.root.uri) - before) / repeat
        # the naive way: copy every table per snapshot
        copies = fresh_dir(work / f"copies-{n}")
        naive_times, naive_bytes = [], []
        for i in range(max(2, repeat // 5)):
            dest = copies / f"c{i}"
            t = time.perf_counter()
            for table in ("frames", "labels"):
                shutil.copytree(Path(ds.root.uri) / table, dest / table)
            naive_times.append(time.perf_counter() - t)
            naive_bytes.append(tree_bytes(dest))
        shutil.rmtree(copies)
        ours, naive = statistics.median(times), statistics.median(naive_times)
        rows.append(
            (
                f"{labels.height:,}",
                fmt_s(ours),
                fmt_b(per_snap),
                fmt_s(naive),
                fmt_b(statistics.median(naive_bytes)),
                f"{naive / ours:.1f}x",
            )
        )
    section = markdown(
        "Snapshot creation",
        [
            "labels",
            "lakever median",
            "lakever bytes/snapshot",
            "copy median",
            "copy bytes",
            "speed-up",
        ],
        rows,
        [f"{repeat} lakever snapshots per size (goal: <= 50 ms and <= 64 KiB at every size)."],
    )
    return section, built


def bench_read(ds: lv.Dataset, repeat: int) -> str:
    snap = ds.list_snapshots()[0]
    uri, version = ds.at(snap.name).delta_table("labels")

    def ours() -> None:
        _delta._cache.clear()  # include resolving the snapshot and loading the log
        lv.connect(Path(ds.root.uri).parent.parent).dataset(ds.name).at(snap.name).read("labels")

    def naive() -> None:
        pl.scan_delta(uri, version=version).collect()

    rows_n = ds.at(snap.name).scan("labels").select(pl.len()).collect().item()
    t_ours, t_naive = [], []
    for _ in range(repeat):  # interleaved, so machine noise hits both alike
        t_naive.append(median_time(naive, repeat=1))
        t_ours.append(median_time(ours, repeat=1))
    a, b = statistics.median(t_ours), statistics.median(t_naive)
    return markdown(
        f"Reading a snapshot of {rows_n:,} labels into Polars",
        [
            "lakever `ds.at(name).read('labels')`",
            "`pl.scan_delta(uri, version=v).collect()`",
            "ratio",
        ],
        [(fmt_s(a), fmt_s(b), f"{a / b:.2f}x")],
        [
            f"Median of {repeat}, interleaved; lakever's time includes opening the lake, "
            "resolving the snapshot and loading the Delta log (goal: <= 1.2x)."
        ],
    )


def _edit_batch(labels: pl.DataFrame, n_frames: int, start_frame: int) -> pl.DataFrame:
    """One label on each of a contiguous 1% range of frames, relabeled."""
    lo = sample.frame_id(start_frame)
    hi = sample.frame_id(start_frame + n_frames // 100 - 1)
    batch = (
        labels.filter(pl.col("frame_id").is_between(pl.lit(lo), pl.lit(hi)))
        .group_by("frame_id", maintain_order=True)
        .first()
        .select(labels.columns)
    )
    return batch.with_columns(
        pl.when(pl.col("cls") == "car").then(pl.lit("truck")).otherwise(pl.lit("car")).alias("cls"),
        (pl.col("w") + 1.0).alias("w"),
    )


def bench_edit(work: Path, ds: lv.Dataset, repeat: int) -> str:
    labels = ds.read("labels")
    n_frames = ds.scan("frames").select(pl.len()).collect().item()
    uri, _ = ds.delta_table("labels")
    # the naive table: the same rows written with delta-rs defaults
    naive_uri = str(fresh_dir(work / "naive-edit") / "labels")
    write_deltalake(
        naive_uri, labels.to_arrow(), configuration={"delta.enableChangeDataFeed": "true"}
    )
    ours_t, ours_b, naive_t, naive_b = [], [], [], []
    total = 0
    for i in range(repeat):
        batch = _edit_batch(labels, n_frames, start_frame=(n_frames // 7) * (i + 1))
        before = ds.head.table_versions["labels"]
        t = time.perf_counter()
        commit = ds.upsert_labels(batch, message=f"relabel range {i}")
        ours_t.append(time.perf_counter() - t)
        added, total = version_bytes(uri, before, commit.table_versions["labels"])
        ours_b.append(added)
        dt = DeltaTable(naive_uri)
        v0 = dt.version()
        t = time.perf_counter()
        (
            dt.merge(
                batch.to_arrow(), "t.label_id = s.label_id", source_alias="s", target_alias="t"
            )
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
        naive_t.append(time.perf_counter() - t)
        a = pl.DataFrame(DeltaTable(naive_uri, version=v0).get_add_actions(flatten=True))
        b = pl.DataFrame(DeltaTable(naive_uri).get_add_actions(flatten=True))
        naive_total = int(a["size_bytes"].sum())
        naive_b.append(
            int(b.filter(~pl.col("path").is_in(a["path"].implode()))["size_bytes"].sum())
            / naive_total
        )
    ob = statistics.median(ours_b)
    return markdown(
        f"Upserting {len(batch):,} labels on a contiguous 1% of frames ({labels.height:,} labels)",
        ["", "median time", "bytes rewritten", "share of table bytes"],
        [
            ("lakever", fmt_s(statistics.median(ours_t)), fmt_b(ob), f"{ob / total:.1%}"),
            (
                "delta-rs MERGE, default layout",
                fmt_s(statistics.median(naive_t)),
                "",
                f"{statistics.median(naive_b):.1%}",
            ),
        ],
        [
            f"Median of {repeat} edits of different frame ranges (goal: <= 2 s, <= 5% rewritten). "
            f"Layout: rows sorted by frame_id, files of {_delta.TARGET_FILE_SIZE // 2**20} MiB, "
            "merge restricted to the touched frame_id range."
        ],
    )


def bench_small_commits(work: Path, commits: int) -> str:
    root = fresh_dir(work / "small")
    frames = sample.sample_frames(10_000)
    ds = lv.connect(root).create_dataset("stream", classes=sample.CLASSES)
    ds.add_frames(frames)
    fids = frames["frame_id"].to_list()

    def open_head() -> None:
        _delta._cache.clear()
        d = lv.connect(root).dataset("stream")
        d.delta_table("labels")
        _delta.table_at(d.table_location("labels"), d.head.table_versions["labels"])

    def read_head() -> None:
        _delta._cache.clear()
        lv.connect(root).dataset("stream").read("labels")

    latencies = []
    marks: dict[int, tuple[float, float]] = {}
    for i in range(commits):
        batch = stream_batch("s", i, fids, 100, classes=sample.CLASSES)
        t = time.perf_counter()
        ds.upsert_labels(batch, message=f"stream {i}")
        latencies.append(time.perf_counter() - t)
        if i + 1 in (10, commits):
            marks[i + 1] = (median_time(open_head, repeat=5), median_time(read_head, repeat=5))
    first, last = marks[10], marks[commits]
    return markdown(
        f"{commits:,} small commits of 100 labels each",
        ["", "value"],
        [
            ("median commit latency", fmt_s(statistics.median(latencies))),
            ("p90 commit latency", fmt_s(sorted(latencies)[int(len(latencies) * 0.9)])),
            ("open HEAD after commit 10", fmt_s(first[0])),
            (f"open HEAD after commit {commits}", fmt_s(last[0])),
            ("ratio", f"{last[0] / first[0]:.2f}x"),
            ("read all labels at HEAD after commit 10", fmt_s(first[1])),
            (f"read all labels at HEAD after commit {commits}", fmt_s(last[1])),
        ],
        [
            "Open HEAD = open the lake and dataset, resolve HEAD, load the labels table's Delta "
            "log at HEAD's version (goals: median commit <= 150 ms; open ratio <= 2x)."
        ],
    )


def run(work: Path, *, sizes: list[int], repeat: int, commits: int) -> list[str]:
    sections = []
    snap_section, built = bench_snapshots(work, sizes, repeat)
    sections.append(snap_section)
    print(snap_section, flush=True)
    largest = built[max(built)]
    for section in (
        bench_read(largest, 5),
        bench_edit(work, largest, 3),
        bench_small_commits(work, commits),
    ):
        print(section, flush=True)
        sections.append(section)
    return sections
