"""Commands that move data in and out: import, export, show, uploads."""

from __future__ import annotations

import re
from typing import Annotated, Any

import polars as pl
import typer

import lakever as lv
from lakever.cli import _output as o
from lakever.cli.app import Json, Uri, Verbose, _guard, app, branch_option, open_dataset
from lakever.exports import FORMATS

upload_app = typer.Typer(help="Show one upload and its rejected rows.", no_args_is_help=True)
app.add_typer(upload_app, name="upload")

IMPORT_FORMATS = ("coco", "yolo", *FORMATS)
EXPORT_FORMATS = ("coco", "yolo", *FORMATS)


def _report(ds: lv.Dataset, up: lv.Upload, json_out: bool) -> None:
    if json_out:
        o.emit_json(_upload_dict(up))
        return
    o.out.print(up.summary(), markup=False)
    o.table(
        None,
        ["table", "received", "committed", "rejected"],
        [
            (t, up.rows_received.get(t, 0), up.rows_committed.get(t, 0), up.rows_rejected.get(t, 0))
            for t in up.rows_received
        ],
    )
    if sum(up.rows_rejected.values()):
        by_rule = up.errors.group_by("table", "rule").len().sort("len", descending=True)
        o.table("rejected rows by rule", ["table", "rule", "rows"], by_rule.iter_rows())
        o.out.print(
            f"see them with: lakever upload show {ds.name} {up.id} --errors [--out errors.csv]",
            markup=False,
        )


def _upload_dict(up: lv.Upload) -> dict[str, Any]:
    return {
        "upload_id": up.id,
        "status": up.status,
        "rows_received": up.rows_received,
        "rows_committed": up.rows_committed,
        "rows_rejected": up.rows_rejected,
        "commits": up.commits,
        "started_at": up.started_at,
        "finished_at": up.finished_at,
        "author": up.author,
        "mode": up.mode,
    }


@app.command("import")
@_guard
def import_cmd(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help="coco, yolo, parquet, csv, jsonl.")],
    source: Annotated[
        str, typer.Argument(metavar="SOURCE", help="File, glob or folder (local or s3://).")
    ],
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    table: Annotated[
        str, typer.Option(help="Table for parquet/csv/jsonl: frames, labels, inferences/<set>.")
    ] = "labels",
    mode: Annotated[str, typer.Option(help="upsert, add or replace_labels.")] = "upsert",
    upload_id: Annotated[
        str | None, typer.Option(help="Upload id; run again with it to resume.")
    ] = None,
    chunk_rows: Annotated[int, typer.Option(help="Rows per commit.")] = 100_000,
    images_root: Annotated[
        str | None, typer.Option(help="COCO: prefix joined to each file_name.")
    ] = None,
) -> None:
    """Bring rows in as one upload: good rows are committed, bad ones recorded.

    `import coco` and `import yolo` create the dataset when it does not exist.
    """
    if fmt not in IMPORT_FORMATS:
        choices = ", ".join(IMPORT_FORMATS)
        raise lv.InvalidInputError(f"FORMAT must be one of {choices}, not {fmt!r}")
    lake = lv.connect(uri)
    exists = _exists(lake, dataset)
    if fmt == "coco":
        if exists:
            ds = lake.dataset(dataset, branch=branch_option())
            up = ds.import_coco(
                source,
                images_root=images_root,
                upload_id=upload_id,
                mode=mode,
                chunk_rows=chunk_rows,
            )
        else:
            ds, up = lake.import_coco(
                dataset,
                source,
                images_root=images_root,
                upload_id=upload_id,
                chunk_rows=chunk_rows,
            )
    elif fmt == "yolo":
        from lakever import yolo

        if not exists:
            names = yolo.read_names(source, lake.root.options)
            if not names:
                raise lv.InvalidInputError(
                    f"{source!r} has no data.yaml with class names; create the dataset first "
                    "with `lakever create --classes ...`"
                )
            lake.create_dataset(dataset, classes=names, exist_ok=True)
        ds = lake.dataset(dataset, branch=branch_option())
        up = ds.import_yolo(source, upload_id=upload_id, mode=mode, chunk_rows=chunk_rows)
    else:
        ds = lake.dataset(dataset, branch=branch_option())
        rows: dict[str, Any] = {"frames": None, "labels": None, "inferences": None}
        if table in ("frames", "labels"):
            rows[table] = source
        elif table.startswith("inferences/"):
            rows["inferences"] = {table.removeprefix("inferences/"): source}
        else:
            raise lv.InvalidInputError(
                f"--table must be frames, labels or inferences/<set>, not {table!r}"
            )
        up = ds.ingest(**rows, mode=mode, upload_id=upload_id, chunk_rows=chunk_rows)
    _report(ds, up, json_out)


def _exists(lake: lv.Lake, name: str) -> bool:
    try:
        lake.dataset(name)
    except (lv.DatasetNotFoundError, lv.LakeNotFoundError):
        return False
    return True


@app.command("export")
@_guard
def export_cmd(
    args: Annotated[list[str], typer.Argument(metavar="DATASET [REF] OUT", help="Where to write.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="coco, yolo, parquet, csv or jsonl (default: coco for OUT ending in .json, "
            "else a folder of parquet files).",
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace a folder holding files no lakever export wrote."),
    ] = False,
) -> None:
    """Write a version (default HEAD) out: COCO JSON, a YOLO folder, or a file per table."""
    if len(args) not in (2, 3):
        raise lv.InvalidInputError("give DATASET [REF] OUT")
    dataset, out = args[0], args[-1]
    ref = args[1] if len(args) == 3 else "HEAD"
    fmt = fmt or _format_of(out)
    if fmt not in EXPORT_FORMATS:
        raise lv.InvalidInputError(
            f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r}"
        )
    view = open_dataset(uri, dataset).at(ref)
    written: list[str]
    if fmt == "coco":
        doc = view.export_coco(out)
        written = [out]
        detail = f"{len(doc['images'])} images, {len(doc['annotations'])} annotations"
    elif fmt == "yolo":
        n = view.export_yolo(out, overwrite=overwrite)
        written = [out]
        detail = f"{n} frames"
    else:
        written = view.export(out, format=fmt, overwrite=overwrite)
        detail = f"{len(written)} tables"
    if json_out:
        o.emit_json({"commit": view.commit.seq, "format": fmt, "written": written})
    else:
        o.out.print(f"exported {dataset} at commit {view.commit.seq} ({detail}) to {out}")


def _format_of(out: str) -> str:
    """The export format OUT implies: COCO for a .json file, else a folder of Parquet files."""
    suffix = out.rstrip("/").rsplit("/", 1)[-1].rpartition(".")[2].lower() if "." in out else ""
    if suffix == "json":
        return "coco"
    if suffix in ("parquet", "csv", "jsonl", "yaml", "txt", "zip"):
        raise lv.InvalidInputError(
            f"cannot tell the format from {out!r}: an export of tables is a folder (one file per "
            "table); name a folder and pass --format parquet, csv or jsonl, or pass --format coco"
        )
    return "parquet"


@app.command()
@_guard
def show(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    ref: Annotated[
        str, typer.Argument(metavar="REF", help="Snapshot, commit id or seq, or time.")
    ] = "HEAD",
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    table: Annotated[str, typer.Option(help="frames, labels or inferences/<set>.")] = "labels",
    limit: Annotated[int, typer.Option(help="At most N rows.")] = 20,
    where: Annotated[
        str | None, typer.Option(help="SQL filter, e.g. \"cls = 'car' AND w > 50\".")
    ] = None,
    columns: Annotated[
        str | None, typer.Option(help="Only these columns, comma-separated: label_id,cls,x.")
    ] = None,
) -> None:
    """Print rows of a table at a version."""
    view = open_dataset(uri, dataset).at(ref)
    query = view.scan(table)
    if where:
        _check_classes(where, view.classes)
        try:
            query = query.filter(pl.sql_expr(where))
        except Exception as exc:
            raise lv.InvalidInputError(f"cannot use --where {where!r}: {exc}") from exc
    if columns:
        wanted = [c.strip() for c in columns.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in query.collect_schema().names()]
        if unknown or not wanted:
            have = ", ".join(query.collect_schema().names())
            raise lv.InvalidInputError(
                f"--columns names {', '.join(unknown) or 'nothing'} that {table} lacks; "
                f"its columns: {have}"
            )
        query = query.select(wanted)
    try:
        rows = query.head(limit).collect()
    except pl.exceptions.PolarsError as exc:
        raise lv.InvalidInputError(f"cannot use --where {where!r}: {exc}") from exc
    if json_out:
        o.emit_json(rows.to_dicts())
        return
    o.table(None, rows.columns, ([_cell(v) for v in r] for r in rows.iter_rows()))


_CLS_EQUALS = re.compile(r"\bcls\s*(?:==|=|!=|<>)\s*'((?:[^']|'')*)'", re.I)
_CLS_IN = re.compile(r"\bcls\s+(?:not\s+)?in\s*\(([^)]*)\)", re.I)
_QUOTED = re.compile(r"'((?:[^']|'')*)'")


def _check_classes(where: str, classes: tuple[str, ...]) -> None:
    """Refuse a filter comparing `cls` with a value outside the class map (a typo, say)."""
    values = _CLS_EQUALS.findall(where)
    for listed in _CLS_IN.findall(where):
        values += _QUOTED.findall(listed)
    for value in values:
        name = value.replace("''", "'")
        if name not in classes:
            raise lv.InvalidInputError(
                f"--where compares cls with {name!r}, which is not in the class map, so "
                f"no row can match; the classes are: {', '.join(classes)}"
            )


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return None if value is None else o.short(value)


@app.command()
@_guard
def uploads(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    status: Annotated[
        str | None, typer.Option(help="Only this status: running, done, partial, failed.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most N uploads.")] = None,
) -> None:
    """List uploads, newest first."""
    df = open_dataset(uri, dataset).uploads(status=status, limit=limit)
    if json_out:
        o.emit_json(df.to_dicts())
        return
    o.table(
        None,
        ["upload", "status", "received", "committed", "rejected", "commits", "started (UTC)",
         "author"],
        [
            (r["upload_id"], r["status"], r["rows_received"], r["rows_committed"],
             r["rows_rejected"], r["commits"], o.when(r["started_at"]), r["author"])
            for r in df.iter_rows(named=True)
        ],
    )  # fmt: skip


@upload_app.command("show")
@_guard
def upload_show(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    upload_id: Annotated[str, typer.Argument(metavar="ID", help="Upload id.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    errors: Annotated[bool, typer.Option("--errors", help="List the rejected rows.")] = False,
    out: Annotated[
        str | None, typer.Option("--out", help="Write the rejected rows to a CSV file.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most N rejected rows on screen.")] = 50,
) -> None:
    """Show an upload: status, counts, commits, and its rejected rows."""
    ds = open_dataset(uri, dataset)
    up = ds.upload(upload_id)
    if out is not None:
        up.errors.write_csv(out)
    if json_out:
        data = _upload_dict(up)
        if errors:
            data["errors"] = up.errors.to_dicts()
        o.emit_json(data)
        return
    _report(ds, up, json_out=False)
    seqs = ", ".join(map(str, up.commits)) or "none"
    o.out.print(f"its commits (seq): {seqs}", markup=False)
    if errors and not up.errors.is_empty():
        shown = up.errors.head(limit)
        o.table(f"rejected rows (first {shown.height})", shown.columns, shown.iter_rows())
    if out is not None:
        o.out.print(f"wrote {up.errors.height} rejected rows to {out}", markup=False)
