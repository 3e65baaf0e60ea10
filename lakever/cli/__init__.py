"""The `lakever` command line: thin commands over the public API."""

from lakever.cli.app import app, main

__all__ = ["app", "main"]
