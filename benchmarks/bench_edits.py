"""Scattered edits: what one version costs, lakever against delta-rs MERGE and Lance.

A labels table of N rows; ten edit commits, each modifying 0.1% of rows,
deleting 0.05% and inserting 0.05%, scattered across the table (a QA pass),
with a snapshot after each. The same edits, in the same order, for:

- lakever, merge-on-read (deletion vectors; the default);
- lakever, copy-on-write (`edits="copy-on-write"`);
- plain delta-rs: `write_deltalake`, one MERGE per edit, CDF on, versions as tags;
- Lance (`pylance`): `write_dataset`, `merge_insert` + `delete` per edit, tags.

Measured: bulk import of the base, edit latency (median of 10), bytes
written per edit against the changed rows' own zstd Parquet size, lake size
after base + 10 edits + 11 snapshots, the diff summary and rows s0 -> s10,
reading HEAD into Polars after 10 edits, and (lakever merge-on-read) after
100 edits against a freshly written table holding the same rows, and
against that fresh table carrying the same fraction of masked rows, and
after `ds.optimize()`.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, write_deltalake

import lakever as lv
from benchmarks._common import fmt_b, fmt_s, fresh_dir, in_child, markdown, tree_bytes
from lakever import _delta, _deltalog, sample

EDITS = 10


@dataclass
class Edit:
    modified: pl.DataFrame  # full new rows of existing labels
    deleted: list[str]
    inserted: pl.DataFrame  # full rows of new labels

    @property
    def upserts(self) -> pl.DataFrame:
        return pl.concat([self.modified, self.inserted])

    def changed_bytes(self) -> int:
        sink = io.BytesIO()
        pq.write_table(
            pl.concat(
                [self.upserts, pl.DataFrame({"label_id": self.deleted})], how="diagonal"
            ).to_arrow(),
            sink,
            compression="zstd",
        )
        return len(sink.getvalue())


def plan(labels: pl.DataFrame, edits: int, seed: int = 7) -> list[Edit]:
    """The same scattered edits for every system."""
    rng = np.random.default_rng(seed)
    live = labels
    out = []
    n = labels.height
    for e in range(edits):
        idx = rng.choice(live.height, size=int(n * 0.0015), replace=False)
        k_mod = int(n * 0.001)
        mod = live[idx[:k_mod]].with_columns(
            cls=pl.Series(rng.choice(sample.CLASSES, size=k_mod)),
            x=pl.col("x") + 1.0,
        )
        deleted = live[idx[k_mod:]]["label_id"].to_list()
        hosts = live[rng.choice(live.height, size=int(n * 0.0005), replace=False)]
        ins = hosts.with_columns(
            label_id=pl.col("frame_id") + f"-e{e:03d}-" + pl.int_range(pl.len()).cast(pl.String)
        )
        out.append(Edit(mod, deleted, ins))
        live = (
            live.filter(~pl.col("label_id").is_in(deleted))
            .update(mod, on="label_id")
            .vstack(ins.select(live.columns))
        )
    return out


# -- the systems ---------------------------------------------------------------------


class System:
    name = ""

    def __init__(self, root: Path) -> None:
        self.root = fresh_dir(root)

    def import_base(self, frames: pl.DataFrame, labels: pl.DataFrame) -> None: ...
    def edit(self, e: Edit) -> None: ...
    def snapshot(self, name: str) -> None: ...
    def summary(self) -> Any: ...
    def rows(self) -> Any: ...
    def read_head(self) -> pl.DataFrame: ...


class Lakever(System):
    def __init__(self, root: Path, edits: str) -> None:
        super().__init__(root)
        self.name = f"lakever ({edits})"
        self.lake = lv.connect(str(self.root))
        self.ds = self.lake.create_dataset("bench", classes=sample.CLASSES, edits=edits)
        self._frames: pl.DataFrame | None = None

    def prepare(self, frames: pl.DataFrame) -> None:
        self.ds.add_frames(frames)

    def import_base(self, frames: pl.DataFrame, labels: pl.DataFrame) -> None:
        self.ds.upsert_labels(labels)

    def edit(self, e: Edit) -> None:
        with self.ds.transaction(message="edit") as tx:
            tx.upsert_labels(e.upserts)
            tx.delete_labels(e.deleted)

    def snapshot(self, name: str) -> None:
        self.ds.create_snapshot(name)

    def summary(self) -> Any:
        return self.ds.diff("s0", f"s{EDITS}").summary()

    def rows(self) -> Any:
        return self.ds.diff("s0", f"s{EDITS}").rows("labels")

    def read_head(self) -> pl.DataFrame:
        return self.ds.read("labels")


class DeltaMerge(System):
    name = "delta-rs MERGE + CDF"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.uri = str(self.root / "labels")
        self.tags: dict[str, int] = {}

    def prepare(self, frames: pl.DataFrame) -> None:
        pass

    def import_base(self, frames: pl.DataFrame, labels: pl.DataFrame) -> None:
        write_deltalake(
            self.uri,
            labels.sort("frame_id", "label_id").to_arrow(),
            configuration={
                "delta.enableChangeDataFeed": "true",
                "delta.targetFileSize": str(_delta.TARGET_FILE_SIZE),
            },
            target_file_size=_delta.TARGET_FILE_SIZE,
        )

    def edit(self, e: Edit) -> None:
        src = pl.concat(
            [
                e.modified.with_columns(op=pl.lit("u")),
                e.inserted.with_columns(op=pl.lit("i")),
                pl.DataFrame({"label_id": e.deleted}).with_columns(op=pl.lit("d")),
            ],
            how="diagonal_relaxed",
        )
        dt = DeltaTable(self.uri)
        (
            dt.merge(src.to_arrow(), "t.label_id = s.label_id", source_alias="s", target_alias="t")
            .when_matched_update_all(predicate="s.op = 'u'", except_cols=["op"])
            .when_matched_delete(predicate="s.op = 'd'")
            .when_not_matched_insert_all(predicate="s.op = 'i'", except_cols=["op"])
            .execute()
        )

    def snapshot(self, name: str) -> None:
        self.tags[name] = DeltaTable(self.uri).version()

    def summary(self) -> Any:
        dt = DeltaTable(self.uri)
        cdf = pl.DataFrame(
            dt.load_cdf(starting_version=self.tags["s0"] + 1, ending_version=self.tags["s10"])
        )
        return cdf.group_by("_change_type").len()

    def rows(self) -> Any:
        return self.summary()

    def read_head(self) -> pl.DataFrame:
        return pl.read_delta(self.uri)


class Lance(System):
    name = "Lance"

    def __init__(self, root: Path) -> None:
        import lance

        super().__init__(root)
        self.lance = lance
        self.uri = str(self.root / "labels.lance")

    def prepare(self, frames: pl.DataFrame) -> None:
        pass

    def import_base(self, frames: pl.DataFrame, labels: pl.DataFrame) -> None:
        self.lance.write_dataset(labels.to_arrow(), self.uri, enable_stable_row_ids=True)

    def edit(self, e: Edit) -> None:
        ds = self.lance.dataset(self.uri)
        ds.merge_insert("label_id").when_matched_update_all().when_not_matched_insert_all().execute(
            e.upserts.to_arrow()
        )
        quoted = ",".join("'" + k.replace("'", "''") + "'" for k in e.deleted)
        self.lance.dataset(self.uri).delete(f"label_id IN ({quoted})")

    def snapshot(self, name: str) -> None:
        ds = self.lance.dataset(self.uri)
        ds.tags.create(name, ds.version)

    def summary(self) -> Any:
        ds = self.lance.dataset(self.uri)
        tags = ds.tags.list()
        d = ds.delta(begin_version=tags["s0"]["version"], end_version=tags["s10"]["version"])
        ins = sum(b.num_rows for b in d.get_inserted_rows())
        upd = sum(b.num_rows for b in d.get_updated_rows())
        return ins, upd

    def rows(self) -> Any:
        ds = self.lance.dataset(self.uri)
        tags = ds.tags.list()
        d = ds.delta(begin_version=tags["s0"]["version"], end_version=tags["s10"]["version"])
        return pa.concat_tables([d.get_inserted_rows().read_all(), d.get_updated_rows().read_all()])

    def read_head(self) -> pl.DataFrame:
        return pl.from_arrow(self.lance.dataset(self.uri).to_table())  # type: ignore[return-value]


# -- the run -----------------------------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(system: Any, frames: pl.DataFrame, labels: pl.DataFrame, edits: list[Edit]) -> dict:
    system.prepare(frames)
    out: dict[str, Any] = {}
    out["import"] = _timed(lambda: system.import_base(frames, labels))
    system.snapshot("s0")
    latencies, written = [], []
    for i, e in enumerate(edits, start=1):
        before = tree_bytes(system.root)
        latencies.append(_timed(lambda e=e: system.edit(e)))
        written.append(tree_bytes(system.root) - before)
        system.snapshot(f"s{i}")
    out["edit"] = statistics.median(latencies)
    out["written"] = statistics.median(written)
    out["size"] = tree_bytes(system.root)
    return out


def alternated_reads(systems: list[Any], results: dict[str, dict], repeat: int = 5) -> None:
    """Diff summary, diff rows and HEAD read of every system, round-robin, medians.

    Round-robin so every system sees the same noise of the shared machine.
    """
    probes = {"summary": "summary", "rows": "rows", "read10": "read_head"}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeat):
        for system in systems:
            for key, method in probes.items():
                times.setdefault((system.name, key), []).append(_timed(getattr(system, method)))
    for (name, key), xs in times.items():
        results[name][key] = statistics.median(xs)


def plain_write(root: Path, labels: pl.DataFrame) -> float:
    """A plain `write_deltalake` of the same rows with the same layout (the import's yardstick).

    Timed from the same Polars frame the import gets: sorting it by frame
    (the layout) and handing it to Arrow are part of the work.
    """
    uri = str(fresh_dir(root) / "labels")

    def write() -> None:
        write_deltalake(
            uri,
            labels.sort("frame_id", "label_id").to_arrow(),
            configuration={"delta.enableChangeDataFeed": "true"},
            target_file_size=_delta.TARGET_FILE_SIZE,
            writer_properties=_delta._WRITER,
        )

    return _timed(write)


_OPTIMIZE = """
import lakever as lv
ds = lv.connect(args['lake']).dataset(args['dataset'])
started = time.perf_counter()  # the import is not the optimize
ds.optimize()
result = {}
"""


def read_after_many(root: Path, frames: pl.DataFrame, labels: pl.DataFrame, n: int) -> dict:
    """Read HEAD after `n` scattered edits (merge-on-read), against two fresh tables.

    `fresh` holds the same rows, freshly written. `floor` holds them too,
    plus as many extra rows as the edited table's vectors mask, deleted in
    one merge-on-read commit: the fresh layout carrying the same fraction of
    masked rows, which is what any merge-on-read table costs a reader. The
    three reads alternate, so they see the same noise. Then `ds.optimize()`
    rewrites the marked files, and HEAD is read again against `fresh`.
    """
    sys_ = Lakever(root / "many", "merge-on-read")
    sys_.prepare(frames)
    sys_.import_base(frames, labels)
    before = tree_bytes(sys_.root)
    edits = plan(labels, n, seed=11)
    latency, sizes = [], []
    for e in edits:  # nothing is deleted without GC: the tree grows by what each edit wrote
        start = tree_bytes(sys_.root)
        latency.append(_timed(lambda e=e: sys_.edit(e)))
        sizes.append(tree_bytes(sys_.root) - start)
    written = (tree_bytes(sys_.root) - before) / n
    changed = statistics.mean(e.changed_bytes() for e in edits)
    rows = sys_.read_head()
    loc = sys_.ds.table_location("labels")
    adds = _deltalog.files_at(loc, sys_.ds.head.table_versions["labels"]).adds.values()
    masked = sum(int(a["deletionVector"]["cardinality"]) for a in adds if a.get("deletionVector"))
    physical = sum(_deltalog.num_records(a) or 0 for a in adds)
    fresh = Lakever(root / "fresh", "merge-on-read")
    fresh.prepare(frames)
    fresh.import_base(frames, rows)
    floor = Lakever(root / "floor", "merge-on-read")
    floor.prepare(frames)
    hosts = rows.sample(masked, seed=3, with_replacement=True)
    suffix = "-x" + pl.int_range(pl.len()).cast(pl.String)
    extra = hosts.with_columns(label_id=pl.col("label_id") + suffix)
    floor.import_base(frames, pl.concat([rows, extra]))
    floor.ds.delete_labels(extra["label_id"].to_list())
    times: dict[str, list[float]] = {"edited": [], "fresh": [], "floor": []}
    for _ in range(7):
        for name, system in (("edited", sys_), ("fresh", fresh), ("floor", floor)):
            times[name].append(_timed(system.read_head))
    # in its own process, for its peak memory
    optimize = in_child(_OPTIMIZE, lake=str(sys_.root), dataset=sys_.ds.name)
    times["optimized"], times["fresh2"] = [], []
    for _ in range(7):
        for name, system in (("optimized", sys_), ("fresh2", fresh)):
            times[name].append(_timed(system.read_head))
    out = {k: statistics.median(v) for k, v in times.items()}
    out["optimize"], out["optimize_rss"] = optimize["seconds"], optimize["peak_rss"]
    out["edit_median"], out["edit_max"] = statistics.median(latency), max(latency)
    out["edit_max_at"] = latency.index(max(latency)) + 1
    out["bytes_max"] = max(sizes)
    out["masked"] = masked / physical if physical else 0.0
    out["written"], out["changed"] = written, changed
    return out


def import_ratio(root: Path, frames: pl.DataFrame, labels: pl.DataFrame, repeat: int = 3) -> tuple:
    """Median lakever import and median plain write, alternated so both see the same noise."""
    ours, plain = [], []
    for i in range(repeat):
        s = Lakever(root / f"import{i}", "merge-on-read")
        s.prepare(frames)
        ours.append(_timed(lambda s=s: s.import_base(frames, labels)))
        plain.append(plain_write(root / f"plain{i}", labels))
        shutil.rmtree(root / f"import{i}", ignore_errors=True)
        shutil.rmtree(root / f"plain{i}", ignore_errors=True)
    return statistics.median(ours), statistics.median(plain)


def run(work: Path, *, sizes: list[int], many: int = 100) -> list[str]:
    sections = []
    for n in sizes:
        frames = sample.sample_frames(max(1, n // 10))
        labels = sample.sample_labels(frames)
        edits = plan(labels, EDITS)
        changed = statistics.median(e.changed_bytes() for e in edits)
        systems = [
            Lakever(work / "mor", "merge-on-read"),
            Lakever(work / "cow", "copy-on-write"),
            DeltaMerge(work / "delta"),
        ]
        with contextlib.suppress(ImportError):  # pylance: pip install -e ".[bench]"
            systems.append(Lance(work / "lance"))
        results = {s.name: measure(s, frames, labels, edits) for s in systems}
        alternated_reads(systems, results)
        ours_import, yard = import_ratio(work / "imports", frames, labels)
        after = read_after_many(work / "many", frames, labels, many)
        names = list(results)
        rows = [
            ["bulk import of the base"] + [fmt_s(results[s]["import"]) for s in names],
            ["one edit commit (median of 10)"] + [fmt_s(results[s]["edit"]) for s in names],
            [f"bytes written by one edit (changed rows: {fmt_b(changed)})"]
            + [
                f"{fmt_b(results[s]['written'])} ({results[s]['written'] / changed:.1f}x)"
                for s in names
            ],
            ["lake size after base + 10 edits + 11 snapshots"]
            + [fmt_b(results[s]["size"]) for s in names],
            ["diff summary s0 → s10"] + [fmt_s(results[s]["summary"]) for s in names],
            ["diff rows s0 → s10"] + [fmt_s(results[s]["rows"]) for s in names],
            ["read HEAD into Polars after 10 edits"] + [fmt_s(results[s]["read10"]) for s in names],
        ]
        title = f"Scattered edits at {len(labels):,} labels"
        mor = results[names[0]]
        notes = [
            "- diff summary, diff rows and the read after 10 edits: medians of 5 rounds, "
            "round-robin across the systems",
            f"- bulk import, median of 3 alternated runs: lakever {fmt_s(ours_import)}, plain "
            f"`write_deltalake` of the same rows and layout {fmt_s(yard)} "
            f"({ours_import / yard:.2f}x)",
            f"- read HEAD after {many} merge-on-read edits ({after['masked']:.1%} of stored "
            f"rows masked): {fmt_s(after['edited'])}; a freshly written table with the same "
            f"rows: {fmt_s(after['fresh'])} ({after['edited'] / after['fresh']:.2f}x); the "
            f"fresh table with the same fraction masked by one delete: "
            f"{fmt_s(after['floor'])} ({after['floor'] / after['fresh']:.2f}x; medians of 7, "
            "alternated)",
            f"- those {many} edits one by one: median {fmt_s(after['edit_median'])}, slowest "
            f"{fmt_s(after['edit_max'])} (edit {after['edit_max_at']}); most bytes one edit "
            f"wrote: {fmt_b(after['bytes_max'])}",
            f"- `ds.optimize()` after those edits, in its own process: "
            f"{fmt_s(after['optimize'])}, peak memory {fmt_b(after['optimize_rss'])}; read HEAD "
            f"then: {fmt_s(after['optimized'])}, against {fmt_s(after['fresh2'])} fresh "
            f"({after['optimized'] / after['fresh2']:.2f}x)",
            f"- bytes written per edit over those {many} edits, rewrites and compactions "
            f"included: {fmt_b(after['written'])} ({after['written'] / after['changed']:.1f}x "
            "the changed rows)",
        ]
        if "Lance" in results:
            lance = results["Lance"]
            notes += [
                f"- edit latency merge-on-read / Lance: {mor['edit'] / lance['edit']:.2f}x; "
                f"lake size / Lance: {mor['size'] / lance['size']:.2f}x; "
                f"summary / Lance delta: {mor['summary'] / lance['summary']:.2f}x",
            ]
        sections.append(markdown(title, ["", *names], rows, notes))
        print(sections[-1], flush=True)
    return sections
