"""lakever: versioned computer-vision and ML datasets on Delta Lake.

Example:
    >>> import lakever as lv
    >>> lake = lv.connect("./lakever-data")  # doctest: +SKIP
    >>> ds = lake.create_dataset("traffic", classes=["car", "person"])  # doctest: +SKIP
    >>> ds.add_frames(frames)  # doctest: +SKIP
    >>> ds.create_snapshot("v1")  # doctest: +SKIP
    >>> ds.at("v1").read("labels")  # doctest: +SKIP
"""

from lakever import access, archive, dask, spark
from lakever.branches import Branch
from lakever.catalog import Lake, connect
from lakever.clone import ClonedFrom
from lakever.commits import ChangeCounts, Commit
from lakever.dataset import Dataset
from lakever.diff import ClassChanges, Diff, diff
from lakever.dsmerge import DatasetMergeReport
from lakever.engines import scan
from lakever.errors import (
    AccessDeniedError,
    BranchNotFoundError,
    ClassMapMismatchError,
    CommitNotFoundError,
    ConflictError,
    CorruptLakeError,
    DatasetExistsError,
    DatasetNotFoundError,
    InvalidInputError,
    InvalidNameError,
    InvalidRefError,
    LakeNotFoundError,
    LakeverError,
    LimitError,
    MergeConflictError,
    ReadOnlyError,
    RowError,
    RowNotFoundError,
    SegmentExistsError,
    SegmentNotFoundError,
    SnapshotArchivedError,
    SnapshotExistsError,
    SnapshotNotFoundError,
    SnapshotsExistError,
    SourceNotFoundError,
    StorageError,
    TableNotFoundError,
    UnsupportedEngineError,
    UploadNotFoundError,
    ValidationError,
    VersionPrunedError,
    VersionUnavailableError,
)
from lakever.evaluation import Evaluation
from lakever.gc import GCReport
from lakever.merge import MergeResult
from lakever.refs import Ref
from lakever.repair import RepairReport
from lakever.segments import Segment
from lakever.tags import Snapshot
from lakever.transaction import Transaction
from lakever.uploads import Upload
from lakever.view import View

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "access",
    "archive",
    "dask",
    "scan",
    "UnsupportedEngineError",
    "spark",
    "ChangeCounts",
    "ClassChanges",
    "ClassMapMismatchError",
    "ClonedFrom",
    "DatasetMergeReport",
    "Commit",
    "BranchNotFoundError",
    "CommitNotFoundError",
    "ConflictError",
    "CorruptLakeError",
    "Dataset",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "Diff",
    "Evaluation",
    "GCReport",
    "InvalidInputError",
    "InvalidNameError",
    "InvalidRefError",
    "Lake",
    "LakeNotFoundError",
    "LakeverError",
    "LimitError",
    "MergeConflictError",
    "ReadOnlyError",
    "Ref",
    "RepairReport",
    "RowError",
    "RowNotFoundError",
    "Segment",
    "SegmentExistsError",
    "SegmentNotFoundError",
    "Snapshot",
    "Branch",
    "MergeResult",
    "SnapshotArchivedError",
    "SnapshotExistsError",
    "SnapshotNotFoundError",
    "SnapshotsExistError",
    "StorageError",
    "SourceNotFoundError",
    "TableNotFoundError",
    "Transaction",
    "Upload",
    "UploadNotFoundError",
    "ValidationError",
    "VersionPrunedError",
    "VersionUnavailableError",
    "View",
    "__version__",
    "connect",
    "diff",
]
