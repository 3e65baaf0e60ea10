"""Where one machine ends: import, edit, diff and read at 1M to 50M labels.

For each size, every step runs in its own process (time and that process's
peak memory; the data it starts from is read from Parquet before the clock
starts):

- import: ``upsert_labels`` of every label into a dataset holding only its
  frames, against a default ``write_deltalake`` and Lance's
  ``write_dataset`` of the same rows (median of 3 alternated runs below 20M,
  one run above);
- edit: a commit of 10k scattered changes (6k relabels, 2k new labels, 2k
  deletions), three in a row, median time and the process's peak memory;
- diff: summary and rows between the snapshot before those edits and after;
- read: ``ds.read("labels")`` of HEAD after them.

The data is generated in chunks of 500k frames and kept on disk, so the
parent never holds a whole dataset. ``target_mib`` sets lakever's target data
file size for one run (to choose it from measurements).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from benchmarks import bench_writes
from benchmarks._common import fmt_b, fmt_s, fresh_dir, in_child, markdown
from lakever import sample

CHUNK_FRAMES = 500_000
EDITS = 3
CHANGES = 10_000

_SETUP = """
import polars as pl
import lakever as lv
from lakever import _delta
if args['target']:
    _delta.TARGET_FILE_SIZE = args['target']
result = {}
"""

_IMPORT = {
    "lakever": _SETUP
    + """
frames = pl.read_parquet(args['frames'])
labels = pl.read_parquet(args['labels'])
ds = lv.connect(args['root']).create_dataset('bench', classes=args['classes'])
ds.add_frames(frames)
del frames
started = time.perf_counter()
ds.upsert_labels(labels)
result['import'] = time.perf_counter() - started
ds.create_snapshot('base')
""",
    "write_deltalake": _SETUP
    + """
from deltalake import write_deltalake
labels = pl.read_parquet(args['labels']).to_arrow()
started = time.perf_counter()
write_deltalake(args['root'] + '/plain', labels)
result['import'] = time.perf_counter() - started
""",
    "Lance": _SETUP
    + """
import lance
labels = pl.read_parquet(args['labels']).to_arrow()
started = time.perf_counter()
lance.write_dataset(labels, args['root'] + '/labels.lance')
result['import'] = time.perf_counter() - started
""",
}

_EDIT = (
    _SETUP
    + """
ds = lv.connect(args['root']).dataset('bench')
times = []
for i in range(args['edits']):
    upserts = pl.read_parquet(f"{args['edit_dir']}/upserts-{i}.parquet")
    deleted = pl.read_parquet(f"{args['edit_dir']}/deleted-{i}.parquet")['label_id'].to_list()
    started = time.perf_counter()
    with ds.transaction(message=f'edit {i}') as tx:
        tx.upsert_labels(upserts)
        tx.delete_labels(deleted)
    times.append(time.perf_counter() - started)
ds.create_snapshot('edited')
result['times'] = times
"""
)

_DIFF = (
    _SETUP
    + """
ds = lv.connect(args['root']).dataset('bench')
summary, rows = [], []
for _ in range(3):
    started = time.perf_counter()
    s = ds.diff('base', 'edited').summary()
    summary.append(time.perf_counter() - started)
    started = time.perf_counter()
    r = ds.diff('base', 'edited').rows('labels')
    rows.append(time.perf_counter() - started)
result['summary'] = sorted(summary)[1]
result['rows'] = sorted(rows)[1]
result['changed'] = r.height
"""
)

_READ = (
    _SETUP
    + """
ds = lv.connect(args['root']).dataset('bench')
started = time.perf_counter()
n = ds.read('labels').height
result['read'] = time.perf_counter() - started
result['rows'] = n
"""
)


def _generate(base: Path, n_labels: int) -> tuple[Path, Path, int]:
    """Frames and labels of about `n_labels` labels as Parquet files, built a chunk at a time."""
    frames_path, labels_path = base / "frames.parquet", base / "labels.parquet"
    n_frames = max(1, n_labels // 10)
    frame_parts, label_parts = [], []
    for i, start in enumerate(range(0, n_frames, CHUNK_FRAMES)):
        frames = sample.sample_frames(min(CHUNK_FRAMES, n_frames - start), seed=i, start=start)
        labels = sample.sample_labels(frames, seed=i)
        frame_parts.append(base / f"frames-{i:03d}.parquet")
        label_parts.append(base / f"labels-{i:03d}.parquet")
        frames.write_parquet(frame_parts[-1])
        labels.write_parquet(label_parts[-1])
    pl.scan_parquet(frame_parts).sink_parquet(frames_path)
    pl.scan_parquet(label_parts).sink_parquet(labels_path)
    for p in [*frame_parts, *label_parts]:
        p.unlink()
    total = pl.scan_parquet(labels_path).select(pl.len()).collect().item()
    return frames_path, labels_path, int(total)


def _edits(base: Path, labels_path: Path, n_rows: int) -> Path:
    """`EDITS` edits of `CHANGES` scattered changes each, as Parquet files."""
    out = fresh_dir(base / "edits")
    rng = np.random.default_rng(7)
    picked = rng.choice(n_rows, size=EDITS * 8_000, replace=False)
    rows = (
        pl.scan_parquet(labels_path)
        .with_row_index("__i")
        .filter(pl.col("__i").is_in(pl.Series(picked).cast(pl.UInt32).implode()))
        .collect()
        .sample(fraction=1.0, shuffle=True, seed=7)
        .drop("__i")
    )
    for i in range(EDITS):
        mine = rows.slice(i * 8_000, 8_000)
        relabel = sample.relabel(mine.head(6_000), fraction=1.0, seed=i)
        new = mine.slice(6_000, 2_000).with_columns(pl.col("label_id") + f"-new{i}")
        pl.concat([relabel, new]).write_parquet(out / f"upserts-{i}.parquet")
        mine.tail(2_000).select("label_id").write_parquet(out / f"deleted-{i}.parquet")
    return out


def _import_runs(base: Path, args: dict[str, Any], repeat: int) -> dict[str, dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in _IMPORT}
    for r in range(repeat):
        for name, code in _IMPORT.items():
            root = fresh_dir(base / f"import-{name}")
            res = in_child(code, **args, root=str(root))
            runs[name].append(res)
            if r < repeat - 1 or name != "lakever":
                fresh_dir(root)
    out = {}
    for name, rs in runs.items():
        out[name] = {
            "import": statistics.median(x["import"] for x in rs),
            "peak_rss": max(x["peak_rss"] for x in rs),
        }
    return out


def measure(work: Path, n_labels: int, *, target_mib: int | None = None) -> dict[str, Any]:
    base = fresh_dir(work / f"scale-{n_labels}")
    frames_path, labels_path, n_rows = _generate(base, n_labels)
    edit_dir = _edits(base, labels_path, n_rows)
    args = {
        "frames": str(frames_path),
        "labels": str(labels_path),
        "classes": list(sample.CLASSES),
        "target": target_mib * 2**20 if target_mib else 0,
    }
    imports = _import_runs(base, args, 3 if n_labels < 20_000_000 else 1)
    lake = str(base / "import-lakever")
    edit = in_child(_EDIT, **args, root=lake, edit_dir=str(edit_dir), edits=EDITS)
    diff = in_child(_DIFF, **args, root=lake)
    read = in_child(_READ, **args, root=lake)
    out = {
        "labels": n_rows,
        "imports": imports,
        "edit": statistics.median(edit["times"]),
        "edit_peak": edit["peak_rss"],
        "summary": diff["summary"],
        "rows": diff["rows"],
        "diff_peak": diff["peak_rss"],
        "read": read["read"],
        "read_peak": read["peak_rss"],
    }
    fresh_dir(base)
    return out


def run(
    work: Path, *, sizes: list[int], target_mib: int | None = None, spark_labels: int = 0
) -> list[str]:
    results = [measure(work, n, target_mib=target_mib) for n in sizes]
    spark = bench_writes.spark_write(work, spark_labels) if spark_labels else None
    rows = []
    for r in results:
        imp = r["imports"]
        lv_t, dl_t, lance_t = (imp[k]["import"] for k in ("lakever", "write_deltalake", "Lance"))
        rows.append(
            [
                f"{r['labels']:,}",
                f"{fmt_s(lv_t)} ({fmt_b(imp['lakever']['peak_rss'])})",
                f"{fmt_s(dl_t)} = {lv_t / dl_t:.2f}x",
                f"{fmt_s(lance_t)} = {lv_t / lance_t:.2f}x",
                f"{fmt_s(r['edit'])} ({fmt_b(r['edit_peak'])})",
                f"{fmt_s(r['summary'])} / {fmt_s(r['rows'])} ({fmt_b(r['diff_peak'])})",
                f"{fmt_s(r['read'])} ({fmt_b(r['read_peak'])})",
            ]
        )
    notes = [
        "Peak memory (in brackets) is the whole process's, including the Python "
        "interpreter and the Parquet read of the rows an import starts from "
        "(done before the clock starts).",
    ]
    by_size = {round(r["labels"] / 1_000_000): r for r in results}
    small, large = (5 if 5 in by_size else min(by_size)), max(by_size)
    if small != large:
        a, b = by_size[small], by_size[large]
        notes.append(
            f"From {small}M to {large}M labels: edit {b['edit'] / a['edit']:.2f}x, "
            f"diff summary {b['summary'] / a['summary']:.2f}x, "
            f"diff rows {b['rows'] / a['rows']:.2f}x, read {b['read'] / a['read']:.2f}x, "
            f"import {b['imports']['lakever']['import'] / a['imports']['lakever']['import']:.2f}x."
        )
    if spark is not None:
        notes.append(
            f"lakever.spark.write of {spark['rows']:,} labels from Sail (local, "
            f"{spark['partitions']} files): {fmt_s(spark['lakever'])} (Sail writing the staged "
            f"files {fmt_s(spark['stage'])}, then the driver's validation and commit "
            f"{fmt_s(spark['commit'])}), against Sail writing the same rows as a plain "
            f"Delta table {fmt_s(spark['plain'])}: {spark['lakever'] / spark['plain']:.2f}x."
        )
    title = "Scale: import, an edit of 10k scattered changes, diff and read"
    if target_mib:
        title += f" (data files of {target_mib} MiB)"
    return [
        markdown(
            title,
            [
                "labels",
                "import (peak)",
                "default write_deltalake",
                "Lance",
                f"edit, median of {EDITS} (peak)",
                "diff summary / rows (peak)",
                "read HEAD (peak)",
            ],
            rows,
            notes,
        )
    ]
