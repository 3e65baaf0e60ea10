"""Names users give things: datasets, snapshots, inference sets.

Dataset and inference-set names become path segments in the lake, so they are
restricted to a safe alphabet. Snapshot names live only inside the tag table,
so they may hold spaces and punctuation, but never path separators, `..` or
control characters.
"""

from __future__ import annotations

import re
import unicodedata

from lakever.errors import InvalidNameError

MAX_NAME_LENGTH = 128
MAX_SNAPSHOT_NAME_LENGTH = 200

_PATH_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

#: Snapshot names refs resolve before snapshots, so they cannot name one.
RESERVED_SNAPSHOT_NAMES = ("head",)


def check_dataset_name(name: str, *, what: str = "dataset") -> str:
    """Return the name if it is a valid dataset (or inference set) name, else raise."""
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} name must be a string, got {type(name).__name__}")
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"{what} name {name!r} must be 1 to {MAX_NAME_LENGTH} characters long"
        )
    if ".." in name or not _PATH_SAFE.fullmatch(name):
        raise InvalidNameError(
            f"{what} name {name!r} is not allowed: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, and no '..'"
        )
    return name


def check_snapshot_name(name: str) -> str:
    """Return the name if it is a valid snapshot name, else raise InvalidNameError."""
    if not isinstance(name, str):
        raise InvalidNameError(f"snapshot name must be a string, got {type(name).__name__}")
    if not name.strip() or len(name) > MAX_SNAPSHOT_NAME_LENGTH:
        raise InvalidNameError(
            f"snapshot name {name!r} must be 1 to {MAX_SNAPSHOT_NAME_LENGTH} characters "
            "and not blank"
        )
    if name != name.strip():
        raise InvalidNameError(f"snapshot name {name!r} must not start or end with spaces")
    if "/" in name or "\\" in name or ".." in name:
        raise InvalidNameError(f"snapshot name {name!r} must not contain '/', '\\' or '..'")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidNameError(f"snapshot name {name!r} must not contain control characters")
    if name.lower() in RESERVED_SNAPSHOT_NAMES:
        raise InvalidNameError(
            f"snapshot name {name!r} is reserved: 'HEAD' always means the latest commit; "
            "pick another name"
        )
    return name
