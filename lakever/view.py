"""Reading a dataset at one commit: HEAD, a snapshot, or any past version.

A `View` is pinned to one commit and reads every table at the Delta version
that commit records, so it never sees half of a later commit. Views are
read-only: every write method raises `ReadOnlyError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import polars as pl
import pyarrow as pa

from lakever import _delta
from lakever.commits import Commit
from lakever.engines import EngineReads
from lakever.errors import ReadOnlyError, TableNotFoundError
from lakever.names import check_dataset_name
from lakever.schema import INFERENCES_PREFIX, table_kind

if TYPE_CHECKING:
    from lakever.dataset import Dataset

from lakever.storage import Location


class TableReader(EngineReads):
    """Reads the tables of one dataset at the versions some commit records."""

    _dataset: Dataset

    def _reading_commit(self) -> Commit:
        raise NotImplementedError

    def _version(self, table: str) -> int:
        table_kind(table)  # rejects unknown table names with a clear message
        commit = self._reading_commit()
        try:
            return commit.table_versions[table]
        except KeyError:
            raise TableNotFoundError(
                f"dataset {self._dataset.name!r} has no table {table!r} at commit "
                f"{commit.seq}; tables there: {', '.join(commit.tables)}"
            ) from None

    def _location(self, table: str) -> Location:
        return self._dataset.table_location(table)

    def scan(self, table: str) -> pl.LazyFrame:
        """Lazily read a table ('frames', 'labels' or 'inferences/<set>').

        Example:
            >>> ds.scan("labels").filter(pl.col("cls") == "car").collect()  # doctest: +SKIP
        """
        return self._scan_at(table, self._version(table))

    def _scan_at(self, table: str, version: int) -> pl.LazyFrame:
        loc = self._dataset.table_location(table)
        _delta.check_available_once(loc, version, table=table)
        return _delta.scan(loc, version)

    def read(self, table: str) -> pl.DataFrame:
        """Read a whole table into memory.

        Raises:
            VersionUnavailableError: the version's data files were deleted
                outside lakever (`Dataset.repair` tells what is lost).
        """
        version = self._version(table)  # HEAD is resolved once per read
        loc = self._dataset.table_location(table)
        return _delta.collect(loc, version, self._scan_at(table, version), table=table)

    def to_arrow(self, table: str) -> pa.Table:
        """The rows of `table` as a pyarrow Table (read through Polars, vectors applied).

        deltalake's own `to_pyarrow_table()` refuses tables with deletion
        vectors (merge-on-read datasets); this never does.
        """
        return self.read(table).to_arrow()

    def delta_table(self, table: str) -> tuple[str, int]:
        """The (table URI, Delta version) a Spark or Polars job should read."""
        version = self._version(table)
        return self._dataset.table_location(table).uri, version

    # -- export -----------------------------------------------------------------------

    def export(self, path: str, *, format: str = "parquet", overwrite: bool = False) -> list[str]:
        """Write every table to ``path/<table>.<format>`` ('parquet', 'csv' or 'jsonl').

        `path` is a local folder or an s3:// prefix. Afterwards it holds exactly
        this export: files an earlier lakever export wrote there are replaced or
        removed (see `lakever.exports`). Returns the files written.

        Raises:
            InvalidInputError: `path` holds files no lakever export wrote, and
                `overwrite` is False (True removes them).
        """
        from lakever.exports import export_tables

        return export_tables(self._pinned(), path, format=format, overwrite=overwrite)

    def export_coco(self, path: str | None = None) -> dict[str, Any]:
        """The frames and labels as a COCO document; also written to `path` when given.

        Categories keep the ids (and supercategories) of the COCO file they
        were imported from; classes added since get the next free ids.
        `pycocotools.coco.COCO(path)` loads the file.
        """
        from lakever.exports import export_coco

        return export_coco(self._pinned(), path)

    def export_yolo(self, directory: str, *, overwrite: bool = False) -> int:
        """Write the frames and labels as a YOLO folder; return the number of frames.

        Writes ``labels/<frame_id>.txt`` (the id encoded as a safe file name by
        `lakever.filenames.encode_path`), ``data.yaml`` (the class map, in order) and
        ``images.txt`` (the image URIs). Images are not copied. The folder then
        holds exactly this export, as for `export`.
        """
        from lakever.exports import export_yolo

        return export_yolo(self._pinned(), directory, overwrite=overwrite)

    def _pinned(self) -> TableReader:
        """Return this reader fixed at one commit, so a long export never mixes versions."""
        return self

    @property
    def tables(self) -> list[str]:
        """Tables present at this commit."""
        return self._reading_commit().tables

    def _inference_set(self, set_name: str) -> str:
        """The table of an inference set present at this commit (TableNotFoundError if none)."""
        table = INFERENCES_PREFIX + check_dataset_name(set_name, what="inference set")
        if table not in self._reading_commit().table_versions:
            raise TableNotFoundError(
                f"dataset {self._dataset.name!r} has no inference set {set_name!r}; "
                f"it has: {', '.join(self.inference_sets) or 'none'}"
            )
        return table

    @property
    def inference_sets(self) -> list[str]:
        """Names of the inference sets present at this commit."""
        return [
            t.removeprefix(INFERENCES_PREFIX)
            for t in self.tables
            if t.startswith(INFERENCES_PREFIX)
        ]

    @property
    def classes(self) -> tuple[str, ...]:
        """The class map at this commit."""
        return self._reading_commit().classes


_WRITE_METHODS = (
    "add_frames",
    "upsert_frames",
    "update_frames",
    "delete_frames",
    "upsert_labels",
    "delete_labels",
    "replace_labels",
    "upsert_inferences",
    "delete_inferences",
    "drop_inferences",
    "extend_classes",
    "transaction",
    "repair",
    "optimize",
    "revert",
    "create_snapshot",
    "delete_snapshot",
    "ingest",
    "import_coco",
    "import_coco_results",
    "import_yolo",
    "gc",
    "archive_snapshot",
    "unarchive_snapshot",
)


class View(TableReader):
    """A read-only view of a dataset at one commit.

    Attributes:
        commit: the commit this view reads.
        ref: what the user asked for (snapshot name, commit id, seq or time).
    """

    def __init__(
        self,
        dataset: Dataset,
        commit: Commit,
        ref: Any,
        *,
        sources: Mapping[str, tuple[Location, int]] | None = None,
    ) -> None:
        self._dataset = dataset
        self.commit = commit
        self.ref = ref
        # where each table is read instead of the dataset's own (an archived snapshot)
        self.sources: Mapping[str, tuple[Location, int]] = dict(sources or {})

    def _reading_commit(self) -> Commit:
        return self.commit

    @property
    def dataset(self) -> Dataset:
        """The dataset this view belongs to."""
        return self._dataset

    def __repr__(self) -> str:
        return f"View({self._dataset.name!r}, ref={self.ref!r}, commit={self.commit.seq})"

    def __getattr__(self, name: str) -> Any:
        if name in _WRITE_METHODS:
            return self._refuse(name)
        raise AttributeError(name)

    def _refuse(self, name: str) -> Any:
        def refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
            raise ReadOnlyError(
                f"{name}() refused: this is a read-only view of dataset "
                f"{self._dataset.name!r} at {self.ref!r} (commit {self.commit.seq}); "
                "write through the Dataset, or revert to this version first"
            )

        return refuse
