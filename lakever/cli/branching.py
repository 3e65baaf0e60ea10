"""Commands for branches: create, list, delete, merge, publish."""

from __future__ import annotations

from typing import Annotated

import typer

import lakever as lv
from lakever.cli import _output as o
from lakever.cli.app import EXIT_CONFLICT, Json, Uri, Verbose, Yes, _guard, app, open_dataset

branch_app = typer.Typer(help="Create, list and delete branches (drafts).", no_args_is_help=True)
app.add_typer(branch_app, name="branch")


def _branch_dict(b: lv.Branch) -> dict[str, object]:
    return {
        "name": b.name,
        "head": b.head.seq,
        "base": b.base.seq,
        "state": b.state,
        "created_at": b.created_at,
        "creator": b.creator,
    }


@branch_app.command("create")
@_guard
def branch_create(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="Branch name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    at: Annotated[
        list[str] | None,
        typer.Option(help="Start at this ref (default the head); repeat to merge several."),
    ] = None,
) -> None:
    """Start a branch at a ref; nothing is copied."""
    refs = at or []
    ds = open_dataset(uri, dataset)
    branch = ds.create_branch(name, at=refs if len(refs) > 1 else (refs[0] if refs else None))
    if json_out:
        o.emit_json(_branch_dict(branch.branch(name)))
    else:
        o.out.print(f"created branch {name!r} at commit {branch.head.seq}", markup=False)


@branch_app.command("list")
@_guard
def branch_list(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
) -> None:
    """List branches, 'main' first."""
    found = lv.connect(uri).dataset(dataset).branches()
    if json_out:
        o.emit_json([_branch_dict(b) for b in found])
        return
    o.table(
        None,
        ["name", "state", "head", "base", "created (UTC)", "creator", "message"],
        [
            (b.name, b.state, b.head.seq, b.base.seq, o.when(b.created_at), b.creator,
             b.head.message)
            for b in found
        ],
    )  # fmt: skip


@branch_app.command("delete")
@_guard
def branch_delete(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="Branch name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    yes: Yes = False,
) -> None:
    """Delete a branch (needs --yes); GC may then reclaim what only it needed."""
    ds = lv.connect(uri).dataset(dataset)
    head = ds.branch(name).head
    if not yes:
        raise lv.InvalidInputError(
            f"deleting branch {name!r} (head at commit {head.seq}) needs --yes"
        )
    ds.delete_branch(name)
    if json_out:
        o.emit_json({"deleted": name})
    else:
        o.out.print(f"deleted branch {name!r}", markup=False)


@app.command("merge")
@_guard
def merge_cmd(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Branch or any ref to merge.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    into: Annotated[str | None, typer.Option(help="The branch merged into (default main).")] = None,
    on_conflict: Annotated[str, typer.Option(help="fail, ours or theirs.")] = "fail",
    granularity: Annotated[str, typer.Option(help="cell or row.")] = "cell",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show it; commit nothing.")] = False,
    message: Annotated[str | None, typer.Option(help="Commit message.")] = None,
) -> None:
    """Merge SOURCE into a branch, three-way: counts and conflicts as a table or JSON."""
    ds = lv.connect(uri).dataset(dataset, branch=into)
    try:
        result = ds.merge(
            source,
            on_conflict=on_conflict,
            granularity=granularity,
            dry_run=dry_run,
            message=message,
        )
    except lv.MergeConflictError as exc:
        if json_out:
            error = {"type": type(exc).__name__, "message": str(exc), "exit_code": EXIT_CONFLICT}
            o.emit_json({"error": error, "conflicts": exc.conflicts.to_dicts()})
        else:
            o.table("conflicts", exc.conflicts.columns, exc.conflicts.iter_rows())
            o.err.print(f"error: {str(exc).splitlines()[0]}", markup=False)
        raise typer.Exit(EXIT_CONFLICT) from None
    counts = {t: c.to_dict() for t, c in result.counts.items()}
    if json_out:
        o.emit_json(
            {
                "commit": None if result.commit is None else result.commit.seq,
                "fast_forward": result.fast_forward,
                "dry_run": dry_run,
                "counts": counts,
                "conflicts": result.conflicts.to_dicts(),
            }
        )
        return
    what = "would merge" if dry_run else "merged"
    how = " (fast-forward)" if result.fast_forward else ""
    where = "" if result.commit is None else f" as commit {result.commit.seq}"
    o.out.print(f"{what} {source} into {ds.branch_name}{how}{where}", markup=False)
    o.table(
        None,
        ["table", "added", "modified", "deleted"],
        [(t, c["added"], c["modified"], c["deleted"]) for t, c in sorted(counts.items())],
    )
    if not result.conflicts.is_empty():
        o.table("conflicts (resolved)", result.conflicts.columns, result.conflicts.iter_rows())


@app.command("publish")
@_guard
def publish_cmd(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    branch: Annotated[str, typer.Argument(metavar="BRANCH", help="The draft to publish.")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="The snapshot's name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
) -> None:
    """Snapshot a draft branch's head as NAME and close the branch."""
    snap = lv.connect(uri).dataset(dataset, branch=branch).publish(name, description=description)
    if json_out:
        o.emit_json(snap.to_dict())
    else:
        o.out.print(
            f"published branch {branch!r} as snapshot {snap.name!r} (commit {snap.commit_seq})",
            markup=False,
        )
