"""Commands for scoped access: IAM policies and vended credentials."""

from __future__ import annotations

import json
import shlex
from typing import Annotated

import typer

import lakever as lv
from lakever.archive import parse_span
from lakever.cli import _output as o
from lakever.cli.app import Json, Uri, Verbose, _guard, app

access_app = typer.Typer(
    help="Policies and temporary credentials scoped to one dataset.", no_args_is_help=True
)
app.add_typer(access_app, name="access")

Mode = Annotated[str, typer.Option(help="read, or write (also put, delete).")]
Archive = Annotated[bool, typer.Option("--archive", help="Also its archive folder.")]


@access_app.command("policy")
@_guard
def policy_cmd(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    mode: Mode = "read",
    archive: Archive = False,
) -> None:
    """Print the IAM policy that reads (or writes) one dataset and nothing else."""
    document = lv.connect(uri).access_policy(dataset, mode=mode, archive=archive)
    if json_out:
        o.emit_json(document)
    else:
        o.out.print(json.dumps(document, indent=2), markup=False, soft_wrap=True)


@access_app.command("credentials")
@_guard
def credentials_cmd(
    dataset: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name.")],
    role_arn: Annotated[str, typer.Option("--role-arn", help="The role to assume.")],
    uri: Uri = None,
    json_out: Json = False,
    verbose: Verbose = False,
    mode: Mode = "read",
    ttl: Annotated[str, typer.Option(help="How long they last: 15m to 12h.")] = "1h",
    archive: Archive = False,
) -> None:
    """Vend temporary credentials for one dataset (STS AssumeRole with its policy).

    Prints an `export` block for a shell (or, with --json, the storage options);
    this is the one command whose output holds secrets.
    """
    lake = lv.connect(uri)
    creds = lake.credentials(
        dataset, role_arn=role_arn, mode=mode, ttl=parse_span(ttl, what="--ttl"), archive=archive
    )
    if json_out:
        o.emit_json({"storage_options": dict(creds), "expires_at": creds.expires_at})
        return
    lines = [f"export {k}={shlex.quote(str(v))}" for k, v in sorted(creds.items())]
    lines.append(f"export LAKEVER_URI={shlex.quote(lake.uri)}")
    o.out.print("\n".join(lines), markup=False, soft_wrap=True)
