"""Branches: create, commit on a branch while main moves, merge, diff, read.

At each size, one labels table and the scattered-edit workload of the edits
benchmark (0.1% modified, 0.05% deleted, 0.05% inserted per commit):

- ``create_branch`` (median of 5), against Lance's ``create_branch`` (and
  Lance's edit on main and on a branch after main moved) where the installed
  pylance has it (``pip install -e ".[bench]"``);
- main makes 10 edit commits, then branch ``qa`` (started before them) makes
  5: the first pays for the switch (its tables go back to the branch's content,
  with an exact change feed for the rows main changed), the rest do not. Their
  latency and bytes written against the median edit on main;
- ``merge`` of ``qa`` into main (no conflicts) and of ``qc`` (1% of its touched
  keys also changed on main, resolved to theirs), each in its own process for
  its time and peak memory, against the idle size of a process that opened the
  dataset and read one row of each table (warm, as the edits it is compared
  with, which run in a process that has read the dataset);
- ``diff("main", "qa")`` (summary and rows) against the diff of main's own 10
  commits on its one line (``diff(s0, main)``);
- a full read of the branch head against a read of main (about the same rows).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import polars as pl

import lakever as lv
from benchmarks._common import (
    build_dataset,
    fmt_b,
    fmt_s,
    fresh_dir,
    in_child,
    markdown,
    median_time,
    tree_bytes,
)
from benchmarks.bench_edits import Edit, plan

MAIN_EDITS = 10
BRANCH_EDITS = 5


def _edit(ds: lv.Dataset, e: Edit) -> float:
    t = time.perf_counter()
    with ds.transaction(message="edit") as tx:
        tx.upsert_labels(e.upserts)
        tx.delete_labels(e.deleted, missing_ok=True)  # planned on main's line of edits
    return time.perf_counter() - t


def _with_bytes(ds: lv.Dataset, root: Path, e: Edit) -> tuple[float, int]:
    before = tree_bytes(root)
    seconds = _edit(ds, e)
    return seconds, tree_bytes(root) - before


def _conflicting(e: Edit, main_mod: pl.DataFrame, share: float) -> Edit:
    """`e` with `share` of its modified keys replaced by keys main modified, set otherwise."""
    n = max(1, int(e.modified.height * share))
    clash = main_mod.head(n).with_columns(cls=pl.lit("bus"), x=pl.col("x") + 7.0)
    rest = e.modified.tail(e.modified.height - n).join(clash, on="label_id", how="anti")
    modified = pl.concat([rest, clash.select(e.modified.columns)])
    return Edit(modified, e.deleted, e.inserted)


def _child_merge(root: Path, target: str, source: str) -> dict[str, Any]:
    code = (
        "import lakever as lv\n"
        "ds = lv.connect(args['root']).dataset('bench')\n"
        "import pyarrow.parquet\n"  # warm, as the edits measured in a running process
        "ds.scan('labels').head(1).collect(); ds.scan('frames').head(1).collect()\n"
        "idle = _peak_rss()\n"
        "t = time.perf_counter()\n"
        "r = ds.merge(args['source'], on_conflict='theirs')\n"
        "result = {'merge': time.perf_counter() - t, 'idle': idle,\n"
        "          'conflicts': r.conflicts.height, 'ff': r.fast_forward}\n"
    )
    return in_child(code, root=str(root), source=source, target=target)


def _lance_branches(root: Path, labels: pl.DataFrame, edits: list[Edit]) -> dict[str, float]:
    """Lance: create_branch, an edit on main, and an edit on a branch after main moved."""
    try:
        import lance
    except ImportError:
        return {}
    uri = str(fresh_dir(root) / "labels.lance")
    lance.write_dataset(labels.to_arrow(), uri, enable_stable_row_ids=True)
    base = lance.dataset(uri)
    if not hasattr(base, "create_branch"):
        return {}

    def edit(ds: Any, e: Edit) -> float:
        t = time.perf_counter()
        merger = ds.merge_insert("label_id").when_matched_update_all()
        merger.when_not_matched_insert_all().execute(e.upserts.to_arrow())
        quoted = ",".join("'" + k.replace("'", "''") + "'" for k in e.deleted)
        ds.delete(f"label_id IN ({quoted})")
        return time.perf_counter() - t

    times = []
    for i in range(5):
        t = time.perf_counter()
        base.create_branch(f"tmp{i}")
        times.append(time.perf_counter() - t)
    branch = base.create_branch("qa")
    main = [edit(lance.dataset(uri), e) for e in edits[:3]]
    on_branch = [edit(branch, e) for e in edits[3:6]]
    return {
        "create": statistics.median(times),
        "main_edit": statistics.median(main),
        "branch_edit": statistics.median(on_branch),
    }


def measure(work: Path, n_labels: int) -> dict[str, Any]:
    root = fresh_dir(work / f"branches-{n_labels}")
    ds, _frames, labels = build_dataset(root, "bench", n_labels)
    ds.create_snapshot("s0")
    edits = plan(labels, MAIN_EDITS + 2 * BRANCH_EDITS)
    out: dict[str, Any] = {"labels": n_labels}
    names = iter(range(100))
    out["create"] = median_time(lambda: ds.create_branch(f"tmp{next(names)}"), repeat=5)
    qa = ds.create_branch("qa", at="s0")
    qc = ds.create_branch("qc", at="s0")
    main_runs = [_with_bytes(ds, root, e) for e in edits[:MAIN_EDITS]]
    out["main_edit"] = statistics.median(s for s, _ in main_runs)
    out["main_bytes"] = statistics.median(b for _, b in main_runs)
    out["changed_bytes"] = statistics.median(e.changed_bytes() for e in edits[:MAIN_EDITS])
    branch_runs = [_with_bytes(qa, root, e) for e in edits[MAIN_EDITS : MAIN_EDITS + BRANCH_EDITS]]
    out["branch_first"], out["branch_first_bytes"] = branch_runs[0]
    out["branch_edit"] = statistics.median(s for s, _ in branch_runs[1:])
    out["branch_bytes"] = statistics.median(b for _, b in branch_runs[1:])
    main_mod = pl.concat([e.upserts for e in edits[:MAIN_EDITS]]).unique("label_id")
    for e in edits[MAIN_EDITS + BRANCH_EDITS :]:
        _edit(qc, _conflicting(e, main_mod.sample(fraction=1.0, seed=3), 0.01))
    out["diff_branch"] = median_time(lambda: ds.diff("main", "qa").summary(), repeat=3)
    out["diff_line"] = median_time(lambda: ds.diff("s0", "main").summary(), repeat=3)
    out["rows_branch"] = median_time(lambda: ds.diff("main", "qa").rows("labels"), repeat=3)
    out["rows_line"] = median_time(lambda: ds.diff("s0", "main").rows("labels"), repeat=3)
    reads = {"qa": [], "main": []}
    for _ in range(3):
        for name, handle in (("qa", qa), ("main", ds)):
            t = time.perf_counter()
            handle.read("labels")
            reads[name].append(time.perf_counter() - t)
    out["read_branch"] = statistics.median(reads["qa"])
    out["read_main"] = statistics.median(reads["main"])
    out["merge_clean"] = _child_merge(root, "main", "qa")
    out["merge_conflict"] = _child_merge(root, "main", "qc")
    out["lance"] = _lance_branches(work / f"lance-branches-{n_labels}", labels, edits)
    return out


def run(work: Path, *, sizes: list[int]) -> list[str]:
    results = [measure(work, n) for n in sizes]
    rows = []
    for r in results:
        lance = r["lance"]
        mc, mx = r["merge_clean"], r["merge_conflict"]
        rows += [
            [f"{r['labels']:,}", "create_branch (median of 5)", fmt_s(r["create"]),
             fmt_s(lance["create"]) if "create" in lance else "n/a", ""],
            [f"{r['labels']:,}", "edit commit on main (median of 10)", fmt_s(r["main_edit"]),
             fmt_s(lance["main_edit"]) if lance else "n/a",
             f"{fmt_b(r['main_bytes'])} written; changed rows {fmt_b(r['changed_bytes'])}"],
            [f"{r['labels']:,}", "first edit on the branch (switch after 10 main commits)",
             fmt_s(r["branch_first"]), "",
             f"{r['branch_first'] / r['main_edit']:.2f}x main; "
             f"{fmt_b(r['branch_first_bytes'])} written"],
            [f"{r['labels']:,}", "later edits on the branch (median of 4)",
             fmt_s(r["branch_edit"]), fmt_s(lance["branch_edit"]) if lance else "n/a",
             f"{r['branch_edit'] / r['main_edit']:.2f}x main; {fmt_b(r['branch_bytes'])} "
             f"written ({r['branch_bytes'] / r['changed_bytes']:.1f}x the changed rows)"],
            [f"{r['labels']:,}", "merge qa -> main (5 vs 10 commits, no conflicts)",
             fmt_s(mc["merge"]), "",
             f"{mc['merge'] / r['main_edit']:.2f}x an edit; peak "
             f"{fmt_b(mc['peak_rss'])} (idle {fmt_b(mc['idle'])})"],
            [f"{r['labels']:,}", "merge qc -> main (1% of touched keys in conflict)",
             fmt_s(mx["merge"]), "",
             f"{mx['merge'] / r['main_edit']:.2f}x an edit; {mx['conflicts']} conflicts; "
             f"peak {fmt_b(mx['peak_rss'])} (idle {fmt_b(mx['idle'])})"],
            [f"{r['labels']:,}", "diff summary main vs qa", fmt_s(r["diff_branch"]), "",
             f"{r['diff_branch'] / r['diff_line']:.2f}x main's own 10 commits "
             f"({fmt_s(r['diff_line'])})"],
            [f"{r['labels']:,}", "diff rows main vs qa", fmt_s(r["rows_branch"]), "",
             f"{r['rows_branch'] / r['rows_line']:.2f}x main's own 10 commits "
             f"({fmt_s(r['rows_line'])})"],
            [f"{r['labels']:,}", "full read of the branch head", fmt_s(r["read_branch"]), "",
             f"{r['read_branch'] / r['read_main']:.2f}x a read of main "
             f"({fmt_s(r['read_main'])})"],
        ]  # fmt: skip
    notes = [
        "Each size in one run, same machine; medians. The first branch commit after "
        "main moved restores its tables to the branch's content with an exact change feed "
        "(docs/ARCHITECTURE.md, Branches): it reads and writes the rows main changed.",
    ]
    return [
        markdown(
            "Branches: create, commit, merge, diff, read",
            ["labels", "operation", "lakever", "Lance", "against"],
            rows,
            notes,
        )
    ]
