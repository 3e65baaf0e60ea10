"""The error tree: every failure lakever raises is a `LakeverError`.

Each error also subclasses the matching builtin, so callers that already catch
`LookupError` or `ValueError` keep working. Messages name what failed, the
offending value, and what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class LakeverError(Exception):
    """Base class of every error lakever raises."""


class InvalidNameError(LakeverError, ValueError):
    """A dataset, snapshot or inference-set name is not allowed."""


class InvalidRefError(LakeverError, ValueError):
    """A ref (snapshot name, commit id or seq, datetime) matches nothing usable."""


class InvalidInputError(LakeverError, TypeError, ValueError):
    """An argument has the wrong type or value (a batch that is not a table, say)."""


class LakeNotFoundError(LakeverError, LookupError):
    """Nothing exists at the lake's URI (a missing folder or bucket)."""


class DatasetNotFoundError(LakeverError, LookupError):
    """No dataset of that name exists in the lake."""


class DatasetExistsError(LakeverError, FileExistsError):
    """A dataset of that name already exists."""


class SnapshotNotFoundError(LakeverError, LookupError):
    """No snapshot of that name exists in the dataset."""


class SnapshotExistsError(LakeverError, FileExistsError):
    """A snapshot of that name already exists in the dataset."""


class SnapshotsExistError(LakeverError, RuntimeError):
    """The operation would discard snapshots and was not told it may."""


class CommitNotFoundError(LakeverError, LookupError):
    """No commit matches the given id, seq or time."""


class TableNotFoundError(LakeverError, LookupError):
    """The table does not exist at the requested version of the dataset."""


class VersionUnavailableError(LakeverError, LookupError):
    """A table version can no longer be read: its files were deleted outside lakever.

    Attributes:
        table: the table ('frames', 'labels', 'inferences/<set>').
        version: the Delta version that cannot be read.
        missing: paths of the data files that are gone.
    """

    def __init__(self, message: str, *, table: str, version: int, missing: Sequence[str]) -> None:
        super().__init__(message)
        self.table = table
        self.version = version
        self.missing: tuple[str, ...] = tuple(missing)


class VersionPrunedError(LakeverError, LookupError):
    """A commit can no longer be read: garbage collection removed its files.

    Attributes:
        seq: the commit asked for.
        gc_id: the id of the GC run that pruned it.
        gc_seq: the seq of that run's commit.
        pruned_at: when that run started.
    """

    def __init__(
        self, message: str, *, seq: int, gc_id: str, gc_seq: int, pruned_at: datetime
    ) -> None:
        super().__init__(message)
        self.seq = seq
        self.gc_id = gc_id
        self.gc_seq = gc_seq
        self.pruned_at = pruned_at


class SnapshotArchivedError(LakeverError, LookupError):
    """A snapshot was archived to cold storage; unarchive it to read it."""


class LimitError(LakeverError, RuntimeError):
    """A snapshot limit would be exceeded and no snapshot may be archived to make room."""


class RowNotFoundError(LakeverError, LookupError):
    """A write names keys (frame or label ids) that do not exist."""


class SegmentNotFoundError(LakeverError, LookupError):
    """No segment of that name exists in the dataset."""


class SegmentExistsError(LakeverError, FileExistsError):
    """A segment of that name already exists in the dataset."""


class UploadNotFoundError(LakeverError, LookupError):
    """No upload with that id was recorded in the dataset."""


class BranchNotFoundError(LakeverError, LookupError):
    """No branch of that name exists in the dataset."""


class SourceNotFoundError(LakeverError, LookupError):
    """A file or folder named as input (a COCO file, a glob of uploads) does not exist."""


class ReadOnlyError(LakeverError, PermissionError):
    """A write was attempted through a read-only view of a past version."""


class ConflictError(LakeverError, RuntimeError):
    """Concurrent writers kept winning; the commit was not made.

    Nothing was published. Retrying later is safe.
    """


class StorageError(LakeverError, OSError):
    """The object store or the Delta log could not be read or written."""


class AccessDeniedError(StorageError, PermissionError):
    """The object store refused a request: the credentials lack the permission.

    Attributes:
        dataset: the dataset the object belongs to (None outside any dataset).
        operation: what was refused ('read', 'write', 'list', ...).
        key: the object key (or prefix) that was refused.
    """

    def __init__(self, message: str, *, dataset: str | None, operation: str, key: str) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.operation = operation
        self.key = key


class CorruptLakeError(LakeverError, RuntimeError):
    """Lakever's own metadata in the lake is unreadable."""


@dataclass(frozen=True)
class RowError:
    """One rejected row: which rule it broke, its key and the offending value."""

    rule: str
    key: str | None
    column: str | None
    value: Any
    detail: str = ""
    row: int | None = None  # index of the row in its source, when known

    def describe(self) -> str:
        """Render the error as one short human-readable line."""
        where = f"key {self.key!r}" if self.key is not None else "batch"
        col = f", column {self.column!r}" if self.column else ""
        extra = f": {self.detail}" if self.detail else ""
        return f"[{self.rule}] {where}{col}, value {self.value!r}{extra}"


class ValidationError(LakeverError, ValueError):
    """A batch of rows was refused; nothing was written.

    Attributes:
        table: the table the batch was meant for.
        errors: every bad row, each with its rule, key and value.
    """

    MAX_SHOWN = 20

    def __init__(self, table: str, errors: Sequence[RowError]) -> None:
        self.table = table
        self.errors: tuple[RowError, ...] = tuple(errors)
        rules = sorted({e.rule for e in self.errors})
        lines = [e.describe() for e in self.errors[: self.MAX_SHOWN]]
        more = len(self.errors) - len(lines)
        if more > 0:
            lines.append(f"... and {more} more (see ValidationError.errors)")
        super().__init__(
            f"{len(self.errors)} bad row(s) for table {table!r} (rules: {', '.join(rules)}); "
            "nothing was written. Fix these rows and send the batch again:\n  " + "\n  ".join(lines)
        )

    @property
    def rules(self) -> set[str]:
        """Names of the rules that were broken."""
        return {e.rule for e in self.errors}


class MergeConflictError(ConflictError):
    """A merge found conflicts and was told to fail on them; nothing was committed.

    Attributes:
        conflicts: one row per conflict (table, key, column, kind, base, ours,
            theirs), as `MergeResult.conflicts`.
    """

    def __init__(self, message: str, conflicts: Any) -> None:
        super().__init__(message)
        self.conflicts = conflicts


class ClassMapMismatchError(InvalidInputError):
    """Datasets to merge have different class maps that no remapping reconciles.

    Attributes:
        differences: one entry per class not every source has: ``class``,
            ``in`` (the sources that have it) and ``missing_from``.
    """

    def __init__(self, message: str, differences: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.differences = differences


class UnsupportedEngineError(LakeverError, RuntimeError):
    """An engine cannot read this exactly (or is not installed); the message names what works."""
