"""Commands of the `lakever` CLI. Each is a thin call into the public API."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import polars as pl
import typer
from typer.core import TyperGroup

import lakever as lv
from lakever.cli import _output as o
from lakever.cli.quickstart import run_quickstart

try:  # typer 0.2x carries its own copy of click
    from typer._click import exceptions as _usage
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click import exceptions as _usage  # type: ignore[no-redef]

#: Options every command takes; they may also come before the command's name.
_GLOBAL_FLAGS = ("--json", "--verbose", "-v")
_GLOBAL_VALUES = ("--uri",)


#: The branch `--branch` names for this invocation (None: 'main').
_branch: list[str | None] = [None]


def branch_option() -> str | None:
    """The branch this invocation's `--branch` names, if any."""
    return _branch[0]


def open_dataset(uri: str | None, name: str) -> lv.Dataset:
    """The dataset a command works on, on the branch `--branch` names."""
    return lv.connect(uri).dataset(name, branch=branch_option())


def _take_branch(args: list[str]) -> list[str]:
    """Remove `--branch NAME` (anywhere) from the arguments and remember NAME."""
    _branch[0] = None
    out: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--branch" and rest:
            _branch[0] = rest.pop(0)
        elif arg.startswith("--branch="):
            _branch[0] = arg.split("=", 1)[1]
        else:
            out.append(arg)
    return out


class _Root(TyperGroup):
    """The root command: global options before a subcommand are handed to it."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        moved: list[str] = []
        rest = _take_branch(args)
        while rest:
            head = rest[0]
            if head in _GLOBAL_FLAGS:
                moved.append(rest.pop(0))
            elif head in _GLOBAL_VALUES and len(rest) > 1:
                moved += [rest.pop(0), rest.pop(0)]
            elif head.split("=", 1)[0] in _GLOBAL_VALUES and "=" in head:
                moved.append(rest.pop(0))
            else:
                break
        if rest and moved:
            rest += moved
        else:
            rest = moved + rest
        return super().parse_args(ctx, rest)


app = typer.Typer(
    cls=_Root,
    help="Version computer-vision datasets stored as Delta Lake tables. "
    "--uri, --json and --verbose go before or after the command's name; --branch NAME "
    "makes any command that reads or writes one dataset work on that branch.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
snapshot_app = typer.Typer(help="Create, list, show and delete snapshots.", no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")

Uri = Annotated[
    str | None,
    typer.Option("--uri", envvar="LAKEVER_URI", help="Lake URI (default ./lakever-data)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks on errors.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Confirm a destructive operation.")]

F = TypeVar("F", bound=Callable[..., Any])


def _version(value: bool) -> None:
    if value:
        o.out.print(f"lakever {lv.__version__}", markup=False)
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Global options (see the app's help)."""


#: Exit codes, by what went wrong (documented in the README).
EXIT_ERROR = 1  # storage, corruption, anything else
EXIT_INVALID = 2  # bad input: a value, a name, a ref, a batch
EXIT_NOT_FOUND = 3  # no such lake, dataset, snapshot, commit, row; a version whose files are gone
EXIT_CONFLICT = 4  # already exists, or concurrent writers kept winning
EXIT_DENIED = 5  # the object store refused the request: the credentials lack a permission
EXIT_INTERRUPTED = 130


def exit_code(exc: BaseException) -> int:
    """The exit code for an error that reached the command line."""
    conflicts = (
        lv.ConflictError,
        lv.DatasetExistsError,
        lv.SnapshotExistsError,
        lv.SegmentExistsError,
        lv.SnapshotsExistError,
    )
    if isinstance(exc, conflicts):
        return EXIT_CONFLICT
    if isinstance(exc, lv.AccessDeniedError):
        return EXIT_DENIED
    if isinstance(exc, LookupError):
        return EXIT_NOT_FOUND
    if isinstance(exc, (ValueError, TypeError)):
        return EXIT_INVALID
    return EXIT_ERROR


def _guard(fn: F) -> F:
    """Turn every error into one line on stderr (a JSON object on stdout with --json).

    Tracebacks only with --verbose. The exit code tells the kind of failure.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            o.err.print("interrupted", markup=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            if kwargs.get("verbose"):
                raise
            code = exit_code(exc)
            text = str(exc) or type(exc).__name__
            if kwargs.get("json_out"):
                o.emit_json(
                    {"error": {"type": type(exc).__name__, "message": text, "exit_code": code}}
                )
            else:
                o.err.print(f"error: {text.splitlines()[0]}", markup=False)
            raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@_guard
def quickstart(
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    dataset: Annotated[str, typer.Option(help="Dataset name to create.")] = "traffic-demo",
    frames: Annotated[int, typer.Option(help="How many frames to generate.")] = 5000,
) -> None:
    """Create a sample dataset, snapshot it, relabel a batch, snapshot again."""
    run_quickstart(lv.connect(uri), name=dataset, n_frames=frames, json_out=json_out)


@app.command()
@_guard
def datasets(
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    name_like: Annotated[
        str | None, typer.Option(help="SQL LIKE pattern ('val%'), glob, or substring.")
    ] = None,
    project: Annotated[str | None, typer.Option(help="Only this project.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only datasets with this tag.")] = None,
) -> None:
    """List the datasets in the lake."""
    lake = lv.connect(uri)
    df = lake.list_datasets(name_like=name_like, project=project, tag=tag)
    if verbose:
        for entry in lake.invalid_entries().iter_rows(named=True):
            o.err.print(f"skipped {entry['name']!r}: {entry['reason']}", markup=False)
    if json_out:
        o.emit_json(df.to_dicts())
        return
    o.table(
        None,
        ["name", "project", "head", "edited (UTC)", "classes", "tags", "description"],
        [
            (
                r["name"],
                r["project"],
                r["head_seq"],
                o.when(r["edited_at"]),
                r["classes"],
                ", ".join(r["tags"]),
                r["description"],
            )
            for r in df.iter_rows(named=True)
        ],
    )


@app.command()
@_guard
def create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Dataset name.")],
    classes: Annotated[str, typer.Option(help="Comma-separated class names.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    project: Annotated[str | None, typer.Option(help="Project name.")] = None,
    tags: Annotated[str, typer.Option(help="Comma-separated tags.")] = "",
    exist_ok: Annotated[
        bool, typer.Option("--exist-ok", help="Succeed if the dataset exists already.")
    ] = False,
    edits: Annotated[
        str,
        typer.Option(
            help="merge-on-read (deletion vectors, the default) or copy-on-write "
            "(for readers without deletion-vector support)."
        ),
    ] = "merge-on-read",
) -> None:
    """Create an empty dataset."""
    lake = lv.connect(uri)
    existed = False
    if exist_ok:
        with contextlib.suppress(lv.DatasetNotFoundError, lv.LakeNotFoundError):
            existed = lake.dataset(name) is not None
    ds = lake.create_dataset(
        name,
        classes=[c.strip() for c in classes.split(",") if c.strip()],
        description=description,
        project=project,
        tags=[t.strip() for t in tags.split(",") if t.strip()],
        exist_ok=exist_ok,
        edits=edits,
    )
    if json_out:
        o.emit_json(ds.head.to_dict())
    else:
        verb = "dataset exists:" if existed else "created dataset"
        o.out.print(f"{verb} {ds.name} with {len(ds.classes)} classes")


@app.command("log")
@_guard
def log_cmd(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    limit: Annotated[int | None, typer.Option(help="Show at most N commits.")] = None,
) -> None:
    """Show the commit log, newest first."""
    commits = open_dataset(uri, dataset).log(limit=limit)
    if json_out:
        o.emit_json([{**c.to_dict(), "pruned_by": c.pruned_by} for c in commits])
    else:
        o.commits_table(commits)


@app.command()
@_guard
def revert(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    ref: Annotated[
        str, typer.Argument(metavar="REF", help="Snapshot name, commit id or seq, or ISO time.")
    ],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    discard_newer_snapshots: Annotated[
        bool, typer.Option(help="Also delete snapshots made after REF (needs --yes).")
    ] = False,
    message: Annotated[str | None, typer.Option(help="Commit message.")] = None,
    yes: Yes = False,
) -> None:
    """Make a new commit whose content equals REF (history is kept)."""
    ds = open_dataset(uri, dataset)
    before = ds.head
    if discard_newer_snapshots:
        target = ds.resolve(ref)
        doomed = [s.name for s in ds.list_snapshots(changes=False) if s.commit_seq > target.seq]
        if doomed and not yes:
            raise lv.InvalidInputError(
                f"this would delete {len(doomed)} snapshot(s): {', '.join(doomed)}; "
                "add --yes to confirm"
            )
    commit = ds.revert(ref, discard_newer_snapshots=discard_newer_snapshots, message=message)
    if json_out:
        o.emit_json({**commit.to_dict(), "changed": commit.seq != before.seq})
    elif commit.seq == before.seq:
        o.out.print(f"HEAD already equals {ref}: nothing to revert (no commit made)", markup=False)
    else:
        o.out.print(f"reverted {dataset} to {ref}: commit {commit.seq} ({o.counts_text(commit)})")


def _show_diff(d: lv.Diff, *, table: str | None, rows: bool, limit: int, json_out: bool) -> None:
    summary = d.summary()
    if table is not None:
        summary = summary.filter(pl.col("table") == table)
    tables = [table] if table else d.tables
    label_tables = [t for t in tables if t != "frames"]
    classes = {t: d.class_changes(t) for t in label_tables}
    changed: dict[str, pl.DataFrame] = {}
    if rows:
        for t in tables:
            changed[t] = d.rows(t).head(limit)
    a, b = d.commits
    if json_out:
        o.emit_json(
            {
                "from": {"dataset": d.a.dataset.name, "seq": a.seq, "commit_id": a.id},
                "to": {"dataset": d.b.dataset.name, "seq": b.seq, "commit_id": b.id},
                "summary": summary.to_dicts(),
                "class_changes": {
                    t: {"by_class": c.by_class.to_dicts(), "transitions": c.transitions.to_dicts()}
                    for t, c in classes.items()
                },
                "rows": {t: df.to_dicts() for t, df in changed.items()},
            }
        )
        return
    o.out.print(f"changes from commit {a.seq} to commit {b.seq}", markup=False)
    o.table(None, ["table", "added", "deleted", "modified"], summary.iter_rows())
    for t, c in classes.items():
        if not c.by_class.is_empty():
            o.table(f"{t} by class", c.by_class.columns, c.by_class.iter_rows())
        if not c.transitions.is_empty():
            o.table(
                f"{t} class changes", ["from", "to", "count"], c.transitions.head(limit).iter_rows()
            )
    for t, df in changed.items():
        if df.is_empty():
            continue
        key = df.columns[0]
        o.table(
            f"{t} rows (first {limit})",
            [key, "change", "old → new"],
            [(r[key], r["change"], o.change_cell(*_cells(r))) for r in df.iter_rows(named=True)],
        )


def _cells(r: dict[str, Any]) -> tuple[str, list[str], Any, Any]:
    return r["change"], r["changed"], r["before"], r["after"]


@app.command("diff")
@_guard
def diff_cmd(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    a: Annotated[
        str, typer.Argument(metavar="A", help="From: snapshot, commit id or seq, or ISO time.")
    ],
    b: Annotated[str | None, typer.Argument(metavar="B", help="To (default HEAD).")] = None,
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    table: Annotated[str | None, typer.Option(help="Only this table.")] = None,
    rows: Annotated[bool, typer.Option("--rows", help="Also list the changed rows.")] = False,
    limit: Annotated[int, typer.Option(help="At most N rows per table.")] = 20,
) -> None:
    """Show what changed between two versions: counts, class changes, rows."""
    ds = open_dataset(uri, dataset)
    _show_diff(ds.diff(a, b), table=table, rows=rows, limit=limit, json_out=json_out)


@app.command()
@_guard
def status(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    snapshot: Annotated[str | None, typer.Option(help="Compare with this snapshot.")] = None,
) -> None:
    """Show the changes since the latest snapshot (or --snapshot), like git status."""
    ds = open_dataset(uri, dataset)
    d = ds.changes_since_snapshot(snapshot)
    if not json_out:
        name = snapshot or ds.list_snapshots(changes=False)[-1].name
        o.out.print(f"on commit {ds.head.seq}; since snapshot {name!r}:", markup=False)
    _show_diff(d, table=None, rows=False, limit=20, json_out=json_out)


@app.command()
@_guard
def history(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    frame_id: Annotated[
        str | None, typer.Option(help="A frame: its versions and its labels'.")
    ] = None,
    label_id: Annotated[str | None, typer.Option(help="One label.")] = None,
) -> None:
    """Show every version of a frame (and its labels) or of a label."""
    if (frame_id is None) == (label_id is None):
        raise lv.InvalidInputError("give exactly one of --frame-id or --label-id")
    h = open_dataset(uri, dataset).history(frame_id=frame_id, label_id=label_id)
    rows = [
        {
            **r,
            "before": None if r["before"] is None else json.loads(r["before"]),
            "after": None if r["after"] is None else json.loads(r["after"]),
        }
        for r in h.iter_rows(named=True)
    ]
    if json_out:
        o.emit_json(rows)
        return
    o.table(
        None,
        ["seq", "time (UTC)", "author", "table", "key", "change", "old → new", "message"],
        [
            (
                r["seq"],
                o.when(r["created_at"]),
                r["author"],
                r["table"],
                r["key"],
                r["change"],
                o.change_cell(r["change"], r["changed"], r["before"], r["after"]),
                r["message"],
            )
            for r in rows
        ],
    )


@app.command()
@_guard
def delete(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    force: Annotated[bool, typer.Option(help="Also delete its snapshots.")] = False,
    yes: Yes = False,
) -> None:
    """Delete a dataset and all its data (needs --yes; finishes an interrupted deletion)."""
    if not yes:
        raise lv.InvalidInputError(f"deleting dataset {dataset!r} and all its data needs --yes")
    lv.connect(uri).delete_dataset(dataset, force=force)
    if json_out:
        o.emit_json({"deleted": dataset})
    else:
        o.out.print(f"deleted dataset {dataset}", markup=False)


@app.command()
@_guard
def repair(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    yes: Yes = False,
) -> None:
    """Report table versions whose files are gone; with --yes, make HEAD writable again."""
    report = open_dataset(uri, dataset).repair(apply=yes)
    if json_out:
        o.emit_json(
            {
                "head_seq": report.head_seq,
                "unreadable": report.unreadable.to_dicts(),
                "applied": report.applied,
                "commit": None if report.commit is None else report.commit.to_dict(),
            }
        )
        return
    o.out.print(report.describe(), markup=False)
    if report.head_broken and not yes:
        o.out.print(f"run `lakever repair {dataset} --yes` to apply", markup=False)


def main() -> None:
    """Entry point of the `lakever` command.

    Usage errors (an unknown command or option) follow the same contract as
    every other failure: one line on stderr, or an ``{"error": ...}`` object
    on stdout with --json, and exit code 2.
    """
    args = sys.argv[1:]
    try:
        code = app(args=args, prog_name="lakever", standalone_mode=False)
    except _usage.NoArgsIsHelpError as exc:
        o.out.print(exc.ctx.get_help() if exc.ctx else "", markup=False)
        sys.exit(0)
    except _usage.UsageError as exc:
        text = exc.format_message()
        if "--json" in args:
            error = {"type": "UsageError", "message": text, "exit_code": EXIT_INVALID}
            o.emit_json({"error": error})
        else:
            hint = f"; see `{exc.ctx.command_path} --help`" if exc.ctx else ""
            o.err.print(f"error: {text}{hint}", markup=False)
        sys.exit(EXIT_INVALID)
    except (typer.Abort, KeyboardInterrupt):
        o.err.print("interrupted", markup=False)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)
