"""`lakever sql`: DuckDB SQL over tables named DATASET@REF.TABLE."""

from __future__ import annotations

import re
import sys
from typing import Annotated

import polars as pl
import typer

import lakever as lv
from lakever.cli import _output as o
from lakever.cli.app import Json, Uri, Verbose, _guard, app

#: DATASET@REF.TABLE, TABLE one of frames, labels, inferences/SET (REF: any ref without spaces).
TABLE_REF = re.compile(
    r"(?P<ds>[A-Za-z0-9_][A-Za-z0-9_.-]*?)@(?P<ref>[^\s,;()]+?)"
    r"\.(?P<table>frames|labels|inferences/[A-Za-z0-9_.-]+)\b"
)


def run_sql(lake: lv.Lake, query: str) -> pl.DataFrame:
    """Run `query` with every DATASET@REF.TABLE read at that version (vectors applied)."""
    from lakever.engines import duckdb_connection

    con = duckdb_connection(options=lake.root.delta_options() or {})
    views: dict[tuple[str, str, str], str] = {}

    def swap(m: re.Match[str]) -> str:
        key = (m["ds"], m["ref"], m["table"])
        if key not in views:
            name = f"lakever_{len(views)}"
            lake.dataset(m["ds"]).at(m["ref"]).to_duckdb(m["table"], connection=con).create_view(
                name
            )
            views[key] = name
        return views[key]

    rewritten = TABLE_REF.sub(swap, query)
    if not views:
        raise lv.InvalidInputError(
            "the query names no table: write tables as DATASET@REF.TABLE, like "
            "street@train-v1.labels or street@HEAD.frames"
        )
    try:
        return pl.from_arrow(con.sql(rewritten).arrow())  # type: ignore[return-value]
    except Exception as exc:
        raise lv.InvalidInputError(f"DuckDB refused the query: {exc}") from exc


@app.command("sql")
@_guard
def sql_cmd(
    query: Annotated[
        str, typer.Argument(metavar="QUERY", help="SQL; tables as DATASET@REF.TABLE.")
    ],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
) -> None:
    """Query tables of any version with DuckDB: FROM street@train-v1.labels."""
    result = run_sql(lv.connect(uri), query)
    if json_out:
        o.emit_json(result.to_dicts())
    elif csv:
        sys.stdout.write(result.write_csv())
    else:
        o.table(None, result.columns, result.rows())
