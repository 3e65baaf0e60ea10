"""The `lakever` command line: thin commands over the public API."""

from lakever.cli import access as _access  # noqa: F401 - registers access policy and credentials
from lakever.cli import branching as _branching  # noqa: F401 - registers branch and merge
from lakever.cli import cloning as _cloning  # noqa: F401 - registers clone and merge-datasets
from lakever.cli import data as _data  # noqa: F401 - registers the data commands
from lakever.cli import lifecycle as _lifecycle  # noqa: F401 - registers gc and archive commands
from lakever.cli import review as _review  # noqa: F401 - registers eval and segment commands
from lakever.cli import snapshots as _snapshots  # noqa: F401 - registers the snapshot commands
from lakever.cli import sql as _sql  # noqa: F401 - registers sql
from lakever.cli.app import app, main

__all__ = ["app", "main"]
