"""`python -m lakever`: the `lakever` command, for environments without its script on PATH."""

from lakever.cli import main

main()
