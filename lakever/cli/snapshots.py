"""Snapshot commands: create, list, show, delete (archive and unarchive live in lifecycle)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

import lakever as lv
from lakever.cli import _output as o
from lakever.cli.app import Json, Uri, Verbose, Yes, _guard, open_dataset, snapshot_app


def _parse_meta(items: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise lv.InvalidInputError(f"metadata must be KEY=VALUE, got {item!r}")
        try:
            meta[key] = json.loads(value)
        except ValueError:
            meta[key] = value
    return meta


@snapshot_app.command("create")
@_guard
def snapshot_create(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    name: Annotated[
        str | None,
        typer.Argument(
            metavar="NAME",
            help="Snapshot name (default: snap-<seq>-<UTC time>, e.g. "
            "snap-7-20261202T074526123456Z: no spaces or colons, so it can be typed as a ref).",
        ),
    ] = None,
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    ref: Annotated[str | None, typer.Option(help="Snapshot this ref instead of HEAD.")] = None,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    meta: Annotated[list[str] | None, typer.Option(help="KEY=VALUE metadata, repeatable.")] = None,
) -> None:
    """Freeze a named, read-only snapshot of HEAD."""
    ds = open_dataset(uri, dataset)
    snap = ds.create_snapshot(
        name, ref=ref, description=description, metadata=_parse_meta(meta or [])
    )
    if json_out:
        o.emit_json(snap.to_dict())
    else:
        o.out.print(f"created snapshot {snap.name!r} at commit {snap.commit_seq}")


@snapshot_app.command("list")
@_guard
def snapshot_list(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """List snapshots, oldest first."""
    snaps = open_dataset(uri, dataset).list_snapshots()
    if json_out:
        o.emit_json([s.to_dict() for s in snaps])
    else:
        o.snapshots_table(snaps)


@snapshot_app.command("show")
@_guard
def snapshot_show(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="Snapshot name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """Show one snapshot and where its tables live."""
    ds = open_dataset(uri, dataset)
    snap = ds.snapshot(name)
    if snap.state == "archived":  # its tables are read from the archive
        sources = lv.archive.archived_sources(ds, snap) or {}
        tables = {t: {"uri": loc.uri, "version": v} for t, (loc, v) in sources.items()}
    else:
        view = ds.at(snap)
        tables = {
            t: dict(zip(("uri", "version"), view.delta_table(t), strict=True)) for t in view.tables
        }
    if json_out:
        o.emit_json({**snap.to_dict(), "tables": tables})
        return
    o.snapshots_table([snap])
    o.table(
        "tables",
        ["table", "delta version", "uri"],
        [(t, d["version"], d["uri"]) for t, d in tables.items()],
    )
    if snap.metadata:
        o.out.print("metadata: " + json.dumps(dict(snap.metadata), sort_keys=True), markup=False)


@snapshot_app.command("delete")
@_guard
def snapshot_delete(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="Snapshot name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    yes: Yes = False,
) -> None:
    """Delete a snapshot (needs --yes)."""
    ds = open_dataset(uri, dataset)
    snap = ds.snapshot(name)
    if not yes:
        raise lv.InvalidInputError(
            f"deleting snapshot {name!r} (commit {snap.commit_seq}) needs --yes"
        )
    ds.delete_snapshot(name)
    if json_out:
        o.emit_json({"deleted": name})
    else:
        o.out.print(f"deleted snapshot {name!r}")
