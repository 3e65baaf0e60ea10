"""Commands for garbage collection, snapshot archiving and optimizing reads."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated

import typer

import lakever as lv
from lakever.cli import _output as o
from lakever.cli.app import (
    Json,
    Uri,
    Verbose,
    Yes,
    _guard,
    app,
    branch_option,
    open_dataset,
    snapshot_app,
)
from lakever.gc import human_size


def parse_span(text: str) -> timedelta:
    """'7d', '12h', '30m', '45s', '2w' (a bare number is days) as a timedelta."""
    bare = text.strip()
    return lv.archive.parse_span(bare + "d" if bare.replace(".", "", 1).isdigit() else bare,
                                 what="--keep-within")  # fmt: skip


@app.command("gc")
@_guard
def gc_cmd(
    dataset: Annotated[
        str | None, typer.Argument(metavar="DATASET", help="Dataset name (default: every dataset).")
    ] = None,
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    keep_within: Annotated[
        str, typer.Option(help="Keep commits newer than this (7d, 12h, 30m; 0 keeps only roots).")
    ] = "7d",
    yes: Yes = False,
    history: Annotated[bool, typer.Option("--history", help="List past runs instead.")] = False,
) -> None:
    """Show what garbage collection would delete; delete it with --yes.

    HEAD, snapshots, pinned commits, segments and commits newer than
    --keep-within stay readable; other commits become unreadable.
    """
    lake = lv.connect(uri)
    if history:
        if dataset is None:
            raise lv.InvalidInputError("--history needs a DATASET")
        runs = lake.dataset(dataset, branch=branch_option()).gc_runs()
        if json_out:
            o.emit_json(json.loads(runs.write_json()))
            return
        o.table(
            None,
            [
                "gc commit",
                "started (UTC)",
                "author",
                "kept within",
                "roots",
                "pruned",
                "files",
                "freed",
            ],
            [
                (
                    r["seq"],
                    o.when(r["started_at"]),
                    r["author"],
                    f"{timedelta(seconds=r['keep_within_seconds'])}",
                    len(json.loads(r["roots"])),
                    len(r["unreadable"]),
                    r["files"],
                    human_size(r["bytes"]),
                )
                for r in runs.iter_rows(named=True)
            ],
        )
        return
    span = parse_span(keep_within)
    if dataset is None:
        frame = lake.gc(keep_within=span, apply=yes)
        if json_out:
            o.emit_json(frame.to_dicts())
            return
        o.table(
            None,
            ["dataset", "roots", "commits pruned", "files", "bytes", "applied"],
            [
                (
                    r["dataset"],
                    r["roots"],
                    r["unreadable"],
                    r["files"],
                    human_size(r["bytes"]),
                    r["applied"],
                )
                for r in frame.iter_rows(named=True)
            ],
        )
        if not yes and int(frame["files"].sum() or 0):
            o.out.print("nothing was deleted: run again with --yes to delete", markup=False)
        return
    report = lake.dataset(dataset, branch=branch_option()).gc(keep_within=span, apply=yes)
    if json_out:
        o.emit_json(
            {
                "dataset": report.dataset,
                "applied": report.applied,
                "gc_seq": report.seq,
                "roots": report.roots.to_dicts(),
                "unreadable": report.unreadable,
                "files": report.files.height,
                "bytes": report.bytes,
                "bytes_by_kind": report.bytes_by_kind(),
            }
        )
        return
    o.out.print(report.describe(), markup=False)
    if not yes and report.files.height:
        o.out.print(
            f"nothing was deleted: run `lakever gc {dataset} --keep-within {keep_within} --yes` "
            "to delete",
            markup=False,
        )


def _move(dataset: str, name: str, uri: str | None, json_out: bool, *, back: bool) -> None:
    ds = open_dataset(uri, dataset)
    snap = ds.unarchive_snapshot(name) if back else ds.archive_snapshot(name)
    if json_out:
        o.emit_json(snap.to_dict())
    elif back:
        o.out.print(f"snapshot {snap.name!r} of {dataset} is readable again", markup=False)
    else:
        o.out.print(f"archived snapshot {snap.name!r} of {dataset}", markup=False)


@snapshot_app.command("archive")
@_guard
def snapshot_archive(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="Snapshot name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Copy a snapshot to the archive ($LAKEVER_ARCHIVE_URI) and mark it archived."""
    _move(dataset, name, uri, json_out, back=False)


@snapshot_app.command("unarchive")
@_guard
def snapshot_unarchive(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="Snapshot name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Bring an archived snapshot back so it can be read again."""
    _move(dataset, name, uri, json_out, back=True)


@app.command()
@_guard
def optimize(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Rewrite the files merge-on-read edits marked, so HEAD reads like a fresh table.

    One commit; rows, diffs and snapshots are unchanged.
    """
    ds = open_dataset(uri, dataset)
    before = ds.head
    commit = ds.optimize()
    if json_out:
        o.emit_json({"optimized": commit.seq != before.seq, "commit": commit.to_dict()})
        return
    if commit.seq == before.seq:
        o.out.print(
            f"{dataset}: nothing to optimize (no file carries a deletion vector)", markup=False
        )
    else:
        o.out.print(f"{dataset}: commit {commit.seq} rewrote the marked files", markup=False)
