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
