"""`lakever quickstart`: the main job, end to end, on a sample dataset."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import polars as pl

import lakever as lv
from lakever import sample
from lakever.cli import _output as o


@contextlib.contextmanager
def _step(text: str, quiet: bool) -> Iterator[None]:
    """Show a spinner on a terminal; stay silent in scripts and CI."""
    if quiet or not o.err.is_terminal:
        yield
        return
    with o.err.status(text):
        yield


def _free_name(lake: lv.Lake, name: str) -> str:
    taken = set(lake._names())  # anything under the name, debris included, makes it taken
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


def run_quickstart(lake: lv.Lake, *, name: str, n_frames: int, json_out: bool) -> None:
    """Create, commit, snapshot, relabel, snapshot, and print what happened."""
    name = _free_name(lake, name)
    with _step("generating sample frames and labels", json_out):
        frames = sample.sample_frames(n_frames)
        labels = sample.sample_labels(frames)
    ds = lake.create_dataset(
        name,
        classes=sample.CLASSES,
        description="Street scenes: image batches and dash-cam videos (synthetic sample)",
        tags=("sample", "street"),
        project="quickstart",
    )
    with (
        _step(f"committing {frames.height} frames and {labels.height} labels", json_out),
        ds.transaction(message="import from labeling vendor", author="quickstart") as tx,
    ):
        tx.add_frames(frames)
        tx.upsert_labels(labels)
    first = ds.create_snapshot("v1-import", description="as delivered by the vendor")
    with _step("relabeling a batch", json_out):
        relabeled = sample.relabel(labels, fraction=0.05)
        dropped = labels.filter(pl.col("w") < 8).head(200)["label_id"].to_list()
        with ds.transaction(
            message="relabel pass 1: fix classes, tighten boxes", author="qa"
        ) as tx:
            tx.upsert_labels(relabeled)
            tx.delete_labels(dropped, missing_ok=True)
    second = ds.create_snapshot("v2-relabel", description="after QA relabel pass 1")
    commits = ds.log()
    snaps = ds.list_snapshots()
    if json_out:
        o.emit_json(
            {
                "lake": lake.uri,
                "dataset": ds.name,
                "frames": frames.height,
                "labels": ds.scan("labels").select(pl.len()).collect().item(),
                "log": [c.to_dict() for c in commits],
                "snapshots": [s.to_dict() for s in snaps],
                "diff": ds.diff(first.name, second.name).summary().to_dicts(),
            }
        )
        return
    o.out.print(
        f"Created dataset [bold]{ds.name}[/bold] in {lake.uri}: {frames.height} frames, "
        f"{labels.height} labels, {len(sample.CLASSES)} classes.\n"
    )
    o.commits_table(commits, title="log")
    o.snapshots_table(snaps, title="snapshots")
    d = ds.diff(first.name, second.name)
    o.table(
        f"diff {first.name} -> {second.name}",
        ["table", "added", "deleted", "modified"],
        d.summary().iter_rows(),
    )
    moves = d.class_changes().transitions.head(5)
    o.table("most frequent class changes", ["from", "to", "count"], moves.iter_rows())
    uri, version = ds.at(first.name).delta_table("labels")
    o.out.print(
        "\nTry next:\n"
        f"  lakever diff {ds.name} {first.name} {second.name} --rows\n"
        f"  lakever status {ds.name}\n"
        f"  lakever history {ds.name} --label-id {relabeled['label_id'][0]}\n"
        f"  lakever snapshot show {ds.name} {second.name}\n"
        f"  lakever revert {ds.name} {first.name}\n"
        f"  python -c \"import lakever as lv; print(lv.connect('{lake.uri}')"
        f".dataset('{ds.name}').at('{first.name}').read('labels'))\"\n"
        f"  # any Polars job, without lakever:\n"
        f"  python -c \"import polars as pl; print(pl.read_delta('{uri}', version={version}))\"",
        markup=False,
    )
