"""Diff figures: summaries and rows between snapshots, history, status.

The naive way, in the same run: a full-scan Polars keyed diff of the two
table versions (read both, join on label_id, compare every column), and for
history, reading the row at every commit's version.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import polars as pl

import lakever as lv
from benchmarks._common import build_dataset, fmt_s, fresh_dir, markdown, stream_batch
from lakever import _delta, sample

CHANGES = (1_000, 10_000, 100_000)


def naive_diff(uri: str, va: int, vb: int, *, rows: bool) -> pl.DataFrame:
    """Keyed full-scan diff of two versions with Polars alone."""
    a = pl.scan_delta(uri, version=va)
    b = pl.scan_delta(uri, version=vb)
    cols = [c for c in a.collect_schema().names() if c != "label_id"]
    joined = a.join(b, on="label_id", how="full", suffix="_b", coalesce=False)
    same = pl.all_horizontal([pl.col(c).eq_missing(pl.col(f"{c}_b")) for c in cols])
    change = (
        pl.when(pl.col("label_id").is_null()).then(pl.lit("added"))
        .when(pl.col("label_id_b").is_null()).then(pl.lit("deleted"))
        .when(~same).then(pl.lit("modified"))
    )  # fmt: skip
    changed = joined.with_columns(change.alias("change")).filter(pl.col("change").is_not_null())
    if rows:
        return changed.collect()
    return changed.group_by("change").agg(pl.len()).collect()


def _change_batch(labels: pl.DataFrame, n: int, seed: int) -> tuple[pl.DataFrame, list[str]]:
    """n scattered changes: 80% relabeled or moved boxes, 10% new labels, 10% deletions."""
    rng = np.random.default_rng(seed)
    picked = labels.sample(n=n, seed=seed)
    n_mod, n_del = int(n * 0.8), n // 10
    modified = picked.head(n_mod).with_columns(
        pl.Series("cls", rng.choice(sample.CLASSES, size=n_mod)),
        (pl.col("x") + 1.0).alias("x"),
    )
    deleted = picked.slice(n_mod, n_del)["label_id"].to_list()
    added = picked.tail(n - n_mod - n_del).with_columns(
        (pl.col("label_id") + pl.lit(f"-new{seed}")).alias("label_id")
    )
    return pl.concat([modified, added]), deleted


def _timed(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        _delta._cache.clear()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_diffs(
    work: Path, sizes: list[int], changes: tuple[int, ...], repeat: int
) -> tuple[str, dict[int, lv.Dataset]]:
    rows = []
    at_10k: dict[int, float] = {}
    built: dict[int, lv.Dataset] = {}
    for n in sizes:
        ds, _, labels = build_dataset(fresh_dir(work / f"diff-{n}"), "bench", n)
        built[n] = ds
        ds.create_snapshot("base")
        prev = "base"
        for i, c in enumerate(changes):
            current = ds.read("labels") if i else labels
            upserts, deletes = _change_batch(current, c, seed=i + 1)
            with ds.transaction(message=f"{c} changes") as tx:
                tx.upsert_labels(upserts)
                tx.delete_labels(deletes)
            name = f"after-{c}"
            ds.create_snapshot(name)
            uri, vb = ds.at(name).delta_table("labels")
            _, va = ds.at(prev).delta_table("labels")
            got = (
                ds.diff(prev, name).summary().filter(pl.col("table") == "labels").row(0, named=True)
            )
            assert got["added"] + got["deleted"] + got["modified"] == c, got
            t_sum = _timed(lambda d=ds, p=prev, nm=name: d.diff(p, nm).summary(), repeat)
            t_rows = _timed(lambda d=ds, p=prev, nm=name: d.diff(p, nm).rows("labels"), repeat)
            n_sum = _timed(lambda u=uri, a=va, b=vb: naive_diff(u, a, b, rows=False), repeat)
            n_rows = _timed(lambda u=uri, a=va, b=vb: naive_diff(u, a, b, rows=True), repeat)
            if c == 10_000:
                at_10k[n] = t_sum
            rows.append(
                (
                    f"{labels.height:,}",
                    f"{c:,}",
                    fmt_s(t_sum),
                    fmt_s(n_sum),
                    f"{n_sum / t_sum:.1f}x",
                    fmt_s(t_rows),
                    fmt_s(n_rows),
                    f"{n_rows / t_rows:.1f}x",
                )
            )
            prev = name
    notes = [
        f"Median of {repeat} runs each, caches cleared before every run; changes are "
        "scattered (80% modified, 10% added, 10% deleted) in one commit between two "
        "snapshots (goal: >= 20x at 10k changes on 10M labels)."
    ]
    if len(at_10k) >= 2:
        small, big = min(at_10k), max(at_10k)
        notes.append(
            f"Same 10k-change summary on {small:,} vs {big:,} labels: "
            f"{fmt_s(at_10k[small])} vs {fmt_s(at_10k[big])}, ratio "
            f"{at_10k[big] / at_10k[small]:.2f} (goal: <= 1.5)."
        )
    section = markdown(
        "Diff between two snapshots",
        [
            "labels",
            "changes",
            "summary()",
            "naive summary",
            "speed-up",
            "rows()",
            "naive rows",
            "speed-up",
        ],
        rows,
        notes,
    )
    return section, built


def bench_status(ds: lv.Dataset, commits: int, repeat: int) -> str:
    labels_n = ds.scan("labels").select(pl.len()).collect().item()
    snap = ds.list_snapshots()[-1].name
    fids = ds.scan("frames").select("frame_id").head(10_000).collect()["frame_id"].to_list()
    for i in range(commits):
        ds.upsert_labels(stream_batch("st", i, fids, 100), message=f"stream {i}")
    uri, va = ds.at(snap).delta_table("labels")
    _, vb = ds.delta_table("labels")
    ours = _timed(lambda: ds.changes_since_snapshot().summary(), repeat)
    naive = _timed(lambda: naive_diff(uri, va, vb, rows=False), repeat)
    got = ds.changes_since_snapshot().counts()["labels"]
    assert got.added == commits * 100, got
    return markdown(
        f"changes_since_snapshot() after {commits} small commits ({labels_n:,} labels)",
        ["lakever", "naive full-scan diff", "speed-up"],
        [(fmt_s(ours), fmt_s(naive), f"{naive / ours:.1f}x")],
        [f"Median of {repeat}; each commit added 100 labels (goal: <= 0.5 s on 10M labels)."],
    )


def bench_history(work: Path, commits: int, repeat: int) -> str:
    root = fresh_dir(work / "history")
    frames = sample.sample_frames(2_000)
    ds = lv.connect(root).create_dataset("hist", classes=sample.CLASSES)
    ds.add_frames(frames)
    ds.upsert_labels(sample.sample_labels(frames))
    target = ds.read("labels")["label_id"][777]
    fids = frames["frame_id"].to_list()
    for i in range(commits):
        batch = stream_batch("h", i, fids, 99)
        if i % 50 == 0:  # the label we trace is edited now and then
            batch = pl.concat(
                [
                    batch,
                    ds.read("labels")
                    .filter(pl.col("label_id") == target)
                    .select(batch.columns)
                    .with_columns(x=pl.lit(float(i))),
                ]
            )
        ds.upsert_labels(batch, message=f"stream {i}")
    log = ds.log()

    def naive() -> None:
        uri = ds.table_location("labels").uri
        for c in log:
            pl.scan_delta(uri, version=c.table_versions["labels"]).filter(
                pl.col("label_id") == target
            ).collect()

    ours = _timed(lambda: ds.history(label_id=target), repeat)
    naive_t = _timed(naive, 1)
    entries = ds.history(label_id=target).height
    return markdown(
        f"history(label_id=...) on a dataset with {len(log):,} commits",
        ["lakever", "naive: read the row at every commit", "speed-up", "entries"],
        [(fmt_s(ours), fmt_s(naive_t), f"{naive_t / ours:.1f}x", entries)],
        [f"Median of {repeat} (naive: one run); goal <= 1 s."],
    )


def run(
    work: Path,
    *,
    sizes: list[int],
    changes: tuple[int, ...],
    repeat: int,
    status_commits: int,
    history_commits: int,
) -> list[str]:
    sections = []
    section, built = bench_diffs(work, sizes, changes, repeat)
    print(section, flush=True)
    sections.append(section)
    for s in (
        bench_status(built[max(built)], status_commits, repeat),
        bench_history(work, history_commits, repeat),
    ):
        print(s, flush=True)
        sections.append(s)
    return sections
