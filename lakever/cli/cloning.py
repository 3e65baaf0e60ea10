"""Commands that make one dataset from others: clone (and merge-datasets)."""

from __future__ import annotations

from typing import Annotated

import polars as pl
import typer

import lakever as lv
from lakever.cli import _output as o
from lakever.cli.app import Json, Uri, Verbose, _guard, app


def sql_filter(text: str | None, option: str) -> pl.Expr | None:
    """A SQL WHERE clause as a Polars expression (InvalidInputError naming it if it is not)."""
    if text is None:
        return None
    try:
        return pl.sql_expr(text)
    except Exception as exc:
        raise lv.InvalidInputError(f"cannot use {option} {text!r}: {exc}") from exc


@app.command("clone")
@_guard
def clone_cmd(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Dataset to clone.")],
    new: Annotated[str, typer.Argument(metavar="NEW", help="Name of the clone.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    at: Annotated[
        str | None, typer.Option(help="Ref of the source to clone (default its main head).")
    ] = None,
    frames: Annotated[
        str | None,
        typer.Option(
            "--frames", help="Keep frames matching this SQL WHERE clause, and their rows."
        ),
    ] = None,
    labels: Annotated[
        str | None, typer.Option("--labels", help="Keep labels matching this SQL WHERE clause.")
    ] = None,
    no_inferences: Annotated[
        bool, typer.Option("--no-inferences", help="Leave the inference sets out.")
    ] = False,
    snapshots: Annotated[
        bool, typer.Option("--snapshots", help="Bring the snapshots at or before --at too.")
    ] = False,
) -> None:
    """Clone a dataset without copying rows (hard links locally, server-side copies on S3)."""
    clone = lv.connect(uri).clone_dataset(
        source,
        new,
        at=at,
        frames=sql_filter(frames, "--frames"),
        labels=sql_filter(labels, "--labels"),
        inferences=not no_inferences,
        snapshots=snapshots,
    )
    head = clone.head
    rows = {t: c.added for t, c in head.counts.items()}
    if json_out:
        snaps = [s.name for s in clone.list_snapshots(changes=False)]
        o.emit_json({"dataset": new, "source": source, "commit": head.seq, "rows": rows,
                     "snapshots": snaps})  # fmt: skip
        return
    detail = ", ".join(f"{n:,} {t}" for t, n in sorted(rows.items()))
    o.out.print(f"cloned {source} into {new} at commit {head.seq}: {detail}", markup=False)


def parse_maps(items: list[str]) -> dict[str, dict[str, str]]:
    """``SRC:FROM=TO`` options as {source: {from: to}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        source, sep, pair = item.partition(":")
        old, eq, new = pair.partition("=")
        if not (sep and eq and source and old and new):
            raise lv.InvalidInputError(f"--map takes SOURCE:FROM=TO, got {item!r}")
        out.setdefault(source, {})[old] = new
    return out


@app.command("merge-datasets")
@_guard
def merge_datasets_cmd(
    sources: Annotated[list[str], typer.Argument(metavar="SRC...", help="Datasets to merge.")],
    into: Annotated[str, typer.Option("--into", help="Name of the new dataset.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    maps: Annotated[
        list[str] | None,
        typer.Option("--map", help="Rename a class of one source: SRC:FROM=TO (repeatable)."),
    ] = None,
    on_collision: Annotated[
        str,
        typer.Option(help="A key with different rows in two sources: error, skip or suffix."),
    ] = "error",
) -> None:
    """Merge datasets into a new one: class maps checked, equal frames kept once."""
    report = lv.connect(uri).merge_datasets(
        sources, into, class_map=parse_maps(maps or []), on_collision=on_collision
    )
    rows = {t: c.added for t, c in report.counts.items()}
    if json_out:
        o.emit_json({"dataset": into, "commit": report.commit.seq, "rows": rows,
                     "deduplicated": dict(report.deduplicated),
                     "remapped": report.remapped.to_dicts(),
                     "collisions": report.collisions.to_dicts()})  # fmt: skip
        return
    detail = ", ".join(f"{n:,} {t}" for t, n in sorted(rows.items()))
    dedup = sum(report.deduplicated.values())
    o.out.print(
        f"merged {', '.join(sources)} into {into}: {detail}; {dedup:,} duplicate rows kept once, "
        f"{report.collisions.height} collision(s) ({on_collision})",
        markup=False,
    )
