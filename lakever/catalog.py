"""The lake: a root URI holding a catalog of datasets.

Each dataset lives under ``<lake>/datasets/<name>/`` and is described by its
``_lakever/dataset.json``, created with put-if-absent so that two processes
creating the same name cannot both succeed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from lakever import _building, _delta
from lakever._progress import phase
from lakever._protocol import DELETE_OPERATION, EDIT_MODES, MERGE_ON_READ
from lakever.access import LakeAccess
from lakever.archive import ArchiveSettings, settings
from lakever.combining import LakeCombining
from lakever.commits import aware
from lakever.dataset import Dataset
from lakever.errors import (
    AccessDeniedError,
    CorruptLakeError,
    DatasetExistsError,
    DatasetNotFoundError,
    InvalidInputError,
    LakeNotFoundError,
    SnapshotsExistError,
)
from lakever.gc import DEFAULT_KEEP_WITHIN, check_keep_within
from lakever.info import DatasetInfo, default_author
from lakever.names import check_dataset_name
from lakever.schema import normalize_classes
from lakever.storage import Location, resolve_uri
from lakever.uploads import Upload

log = logging.getLogger("lakever")

DATASETS_DIR = "datasets"

_GC_SCHEMA: dict[str, pl.DataType] = {
    "dataset": pl.String(),
    "roots": pl.Int64(),
    "unreadable": pl.Int64(),
    "files": pl.Int64(),
    "bytes": pl.Int64(),
    "applied": pl.Boolean(),
}
_LISTING_SCHEMA: dict[str, pl.DataType] = {
    "name": pl.String(),
    "project": pl.String(),
    "description": pl.String(),
    "tags": pl.List(pl.String()),
    "creator": pl.String(),
    "created_at": pl.Datetime("us", "UTC"),
    "edited_at": pl.Datetime("us", "UTC"),
    "head_seq": pl.Int64(),
    "classes": pl.Int64(),
}


@dataclass(frozen=True)
class _Entry:
    """One entry of `datasets/`: a dataset, or something else and why."""

    name: str
    dataset: Dataset | None
    head_seq: int | None
    edited_at: datetime | None
    reason: str


def like_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a name pattern: SQL LIKE (``%``, ``_``; backslash escapes) or a glob (``*``, ``?``).

    A pattern with no wildcard matches names that contain it.
    """
    if not any(ch in pattern for ch in "%_*?"):
        return re.compile(".*" + re.escape(pattern) + ".*", re.DOTALL)
    out = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append(re.escape(next(chars, "\\")))
        elif ch in "%*":
            out.append(".*")
        elif ch in "_?":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


class Lake(LakeCombining, LakeAccess):
    """A lake of datasets under one root URI.

    Example:
        >>> lake = lv.connect("./lakever-data")  # doctest: +SKIP
        >>> ds = lake.create_dataset("traffic", classes=["car", "person"])  # doctest: +SKIP
    """

    def __init__(self, root: Location, *, archive: ArchiveSettings | None = None) -> None:
        self.root = root
        self.archive = archive or ArchiveSettings()

    def __repr__(self) -> str:
        return f"Lake({self.root.uri!r})"

    @property
    def uri(self) -> str:
        """The lake's root URI."""
        return self.root.uri

    def _dataset_root(self, name: str) -> Location:
        return self.root.child(DATASETS_DIR, check_dataset_name(name))

    def _open(self, root: Location, info: DatasetInfo) -> Dataset:
        return Dataset(root, info, lake=self, archive=self.archive)

    def _datasets(self) -> list[Dataset]:
        """Every dataset of the lake (entries that are not datasets skipped)."""
        return [e.dataset for e in self._entries() if e.dataset is not None]

    def _require_lake(self) -> None:
        if not self.root.root_exists():
            what = "folder" if self.root.is_local else "bucket"
            raise LakeNotFoundError(
                f"no lake at {self.uri}: the {what} does not exist. Check the URI (or "
                "$LAKEVER_URI); a lake is made by creating its first dataset"
            )

    def _info(self, name: str) -> DatasetInfo:
        path = self._dataset_root(name).child("_lakever", "dataset.json")
        data = path.read_or_none()
        if data is None:
            self._require_lake()
            known = [e.name for e in self._entries() if e.dataset is not None]
            hint = f"; datasets here: {', '.join(known[:10])}" if known else "; the lake is empty"
            raise DatasetNotFoundError(f"no dataset named {name!r} in {self.uri}{hint}")
        try:
            info = DatasetInfo.from_json(data)
        except (ValueError, KeyError) as exc:
            raise CorruptLakeError(f"{path.uri} is unreadable: {exc}") from exc
        if info.creating:
            raise DatasetNotFoundError(
                f"dataset {name!r} in {self.uri} is still being built (a clone or a merge of "
                "datasets under way), or its build was interrupted; it appears when complete"
            )
        return info

    def _names(self) -> list[str]:
        return self.root.child(DATASETS_DIR).list_names()

    def _entries(self) -> list[_Entry]:
        """Every entry of `datasets/`, each either a dataset or the reason it is not one."""
        out = []
        for name in self._names():
            try:
                root = self._dataset_root(name)
            except ValueError:
                out.append(_Entry(name, None, None, None, "not a dataset name"))
                continue
            try:
                data = root.child("_lakever", "dataset.json").read_or_none()
            except AccessDeniedError:
                out.append(_Entry(name, None, None, None, "not readable with these credentials"))
                continue
            if data is None:
                reason = "no _lakever/dataset.json: not a dataset, or a deletion was interrupted"
                out.append(_Entry(name, None, None, None, reason))
                continue
            try:
                info = DatasetInfo.from_json(data)
                if info.creating:
                    reason = "being built (a clone or merge of datasets), or the build stopped"
                    out.append(_Entry(name, None, None, None, reason))
                    continue
                ds = self._open(root, info)
                head = ds._log.head()
            except (ValueError, KeyError, CorruptLakeError, DatasetNotFoundError) as exc:
                out.append(_Entry(name, None, None, None, f"unreadable metadata: {exc}"))
                continue
            if head is None:
                reason = "no first commit: its creation is under way or was interrupted"
                out.append(_Entry(name, None, None, None, reason))
            elif head.operation == DELETE_OPERATION:
                out.append(_Entry(name, None, None, None, "being deleted"))
            else:
                out.append(_Entry(name, ds, head.seq, head.created_at, ""))
        return out

    def create_dataset(
        self,
        name: str,
        *,
        classes: Iterable[str],
        description: str = "",
        tags: Iterable[str] = (),
        project: str | None = None,
        exist_ok: bool = False,
        creator: str | None = None,
        edits: str = MERGE_ON_READ,
    ) -> Dataset:
        """Create an empty dataset with a fixed class map.

        Args:
            name: unique name (letters, digits, '.', '_', '-').
            classes: the valid label classes.
            description: free text.
            tags: free-form tags for finding it later.
            project: the project it belongs to.
            exist_ok: return the existing dataset instead of raising (and finish
                its creation if that was interrupted).
            creator: recorded creator (default: $LAKEVER_AUTHOR or the OS user).
            edits: "merge-on-read" (default): updates and deletes mark old rows
                in Delta deletion vectors and write only the new rows.
                "copy-on-write": they rewrite every file holding a touched row,
                for readers that cannot read deletion vectors (see the README).

        Raises:
            DatasetExistsError: the name is taken and `exist_ok` is False, or an
                interrupted deletion left files under it (delete it again first).
        """
        if edits not in EDIT_MODES:
            raise InvalidInputError(
                f"edits must be one of {', '.join(map(repr, EDIT_MODES))}, not {edits!r}"
            )
        root = self._dataset_root(name)
        info = DatasetInfo.new(
            name,
            project=project,
            description=description,
            tags=tuple(tags),
            creator=creator or default_author(self.root),
            classes=normalize_classes(classes),
            edits=edits,
        )
        marker = root.child("_lakever", "dataset.json")
        if marker.read_or_none() is None and root.list_names():
            raise DatasetExistsError(
                f"files of a dataset named {name!r} are left in {root.uri} by a deletion that "
                f"did not finish; run lake.delete_dataset({name!r}) (or `lakever delete {name} "
                "--yes`) to finish it, then create the dataset again"
            )
        if not marker.put_if_absent(info.to_json()) and not (
            _building.clear_abandoned(self, name) and marker.put_if_absent(info.to_json())
        ):
            if exist_ok:
                ds = self.dataset(name)
                if ds._log.head() is None:
                    ds._initialize()  # another creator's, or an interrupted one: finish it
                return ds
            raise DatasetExistsError(
                f"a dataset named {name!r} already exists in {self.uri}; open it with "
                "lake.dataset(name) or pass exist_ok=True"
            )
        ds = self._open(root, info)
        ds._initialize()
        return ds

    def dataset(self, name: str, *, branch: str | None = None) -> Dataset:
        """Open a dataset, on its 'main' branch or on `branch`.

        Raises:
            DatasetNotFoundError: there is no dataset of that name.
            BranchNotFoundError: it has no such branch.
        """
        ds = self._open(self._dataset_root(name), self._info(name))
        return ds if branch is None or branch == "main" else ds.on_branch(branch)

    def import_coco(
        self,
        name: str,
        annotations: str | Mapping[str, Any],
        *,
        images_root: str | None = None,
        exist_ok: bool = False,
        upload_id: str | None = None,
        chunk_rows: int = 100_000,
    ) -> tuple[Dataset, Upload]:
        """Create a dataset from a COCO annotation file (its categories are the classes).

        Args:
            name: the new dataset's name.
            annotations: a COCO JSON path (local or s3://), or the loaded document.
            images_root: joined in front of each ``file_name`` to make the frame's URI.
            exist_ok: import into the dataset of that name if it exists (its
                class map must hold every category of the file).
            upload_id: the upload's id (a retry with the same id resumes it).
            chunk_rows: rows per commit, as for `Dataset.ingest`.

        Returns:
            The dataset and the `Upload` that filled it.

        Example:
            >>> ds, up = lake.import_coco("street", "instances_val.json")  # doctest: +SKIP
        """
        from lakever import coco

        root = self._dataset_root(name)
        if isinstance(annotations, Mapping):
            doc = dict(annotations)
        else:
            with phase(f"reading {annotations}"):
                doc = coco.read_document(str(annotations), root.options)
        exists = root.child("_lakever", "dataset.json").read_or_none() is not None
        if exists and not exist_ok:
            raise DatasetExistsError(
                f"a dataset named {name!r} already exists in {self.uri}; pass exist_ok=True "
                "to import into it"
            )
        ds = self.create_dataset(name, classes=coco.category_names(doc), exist_ok=True)
        up = ds.import_coco(
            doc, images_root=images_root, upload_id=upload_id, chunk_rows=chunk_rows
        )
        return ds, up

    def list_datasets(
        self,
        *,
        name_like: str | None = None,
        project: str | None = None,
        tag: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        edited_after: datetime | None = None,
    ) -> pl.DataFrame:
        """List datasets, one row each, filtered by every condition given.

        Entries of `datasets/` that are not datasets (stray files, a creation
        or deletion under way or interrupted) are skipped; `invalid_entries`
        lists them. Listing never writes, so read-only credentials suffice.

        Args:
            name_like: SQL LIKE pattern ('Validation%', 'cam__'), or a glob
                ('traffic-*'); without wildcards, a substring.
            project: exact project.
            tag: datasets carrying this tag.
            created_after: created at or after this time (naive: local time).
            created_before: created before this time.
            edited_after: last commit at or after this time.

        Raises:
            LakeNotFoundError: the lake's folder or bucket does not exist.
        """
        self._require_lake()
        pattern = None if name_like is None else like_pattern(name_like)
        rows = []
        for entry in self._entries():
            ds = entry.dataset
            if ds is None or entry.edited_at is None:
                log.info("skipping %s in %s: %s", entry.name, self.uri, entry.reason)
                continue
            info = ds.info
            checks = (
                pattern is None or pattern.fullmatch(info.name) is not None,
                project is None or info.project == project,
                tag is None or tag in info.tags,
                created_after is None or info.created_at >= aware(created_after),
                created_before is None or info.created_at < aware(created_before),
                edited_after is None or entry.edited_at >= aware(edited_after),
            )
            if not all(checks):
                continue
            rows.append(
                {
                    "name": info.name,
                    "project": info.project,
                    "description": info.description,
                    "tags": list(info.tags),
                    "creator": info.creator,
                    "created_at": info.created_at,
                    "edited_at": entry.edited_at,
                    "head_seq": entry.head_seq,
                    "classes": len(ds._log.get(entry.head_seq or 0).classes),
                }
            )
        return pl.DataFrame(rows, schema=_LISTING_SCHEMA)

    def gc(
        self,
        *,
        keep_within: timedelta = DEFAULT_KEEP_WITHIN,
        apply: bool = False,
        author: str | None = None,
    ) -> pl.DataFrame:
        """Garbage-collect every dataset (`Dataset.gc`); one row per dataset.

        Columns: dataset, roots, unreadable (commits that stop being readable),
        files, bytes, applied.
        """
        check_keep_within(keep_within)
        self._require_lake()
        rows = []
        for entry in self._entries():
            if entry.dataset is None:
                continue
            report = entry.dataset.gc(keep_within=keep_within, apply=apply, author=author)
            rows.append(
                {
                    "dataset": report.dataset,
                    "roots": report.roots.height,
                    "unreadable": len(report.unreadable),
                    "files": report.files.height,
                    "bytes": report.bytes,
                    "applied": report.applied,
                }
            )
        return pl.DataFrame(rows, schema=_GC_SCHEMA)

    def invalid_entries(self) -> pl.DataFrame:
        """Entries of `datasets/` that are not (or no longer, or not yet) datasets, and why."""
        self._require_lake()
        rows = [{"name": e.name, "reason": e.reason} for e in self._entries() if e.dataset is None]
        return pl.DataFrame(rows, schema={"name": pl.String(), "reason": pl.String()})

    def delete_dataset(self, name: str, *, force: bool = False) -> None:
        """Delete a dataset and all its data.

        Crash-safe and resumable: the deletion first publishes a commit that
        marks the dataset deleted (a writer racing it either committed before
        or is refused), then removes ``dataset.json``, the commit records
        oldest first (the marking one last), then everything else.
        Killed at any point, calling it again finishes the job, and the name
        can then be created afresh.

        Raises:
            SnapshotsExistError: it has snapshots and `force` is False.
            DatasetNotFoundError: there is no dataset (and nothing left) of that name.
        """
        root = self._dataset_root(name)
        marker = root.child("_lakever", "dataset.json")
        data = marker.read_or_none()
        if data is None:
            if root.list_names():  # what an interrupted deletion left behind
                root.remove_tree()
                _delta.forget(root.uri)
                return
            self._info(name)  # raises the usual not-found error
        assert data is not None
        ds = self._open(root, DatasetInfo.from_json(data))
        head = ds._log.head()
        if head is not None and head.operation != DELETE_OPERATION:
            snaps = ds._tags.snapshots()
            if snaps and not force:
                names = ", ".join(repr(s.name) for s in snaps[:5])
                raise SnapshotsExistError(
                    f"dataset {name!r} has {len(snaps)} snapshot(s) ({names}); delete them "
                    "first, or pass force=True (CLI: --force) to delete the dataset with its "
                    "snapshots"
                )
            ds._runner.publish_tombstone(author=default_author(root))
        marker.remove()
        # Commit records go oldest first, so the tombstone (the newest) is the
        # last of them: a stale handle finds it until no record is left.
        records = root.child("_lakever", "commits")
        done = [n for n in records.list_names() if n.endswith(".json")]
        records.remove_many([records.child(n) for n in done[:-1]])
        records.remove_many([records.child(n) for n in done[-1:]])
        root.remove_tree()
        _delta.forget(root.uri)
        if self.archive.location is not None:  # its archived snapshots go too
            self.archive.location.child(name, ds.info.identity).remove_tree()


def connect(
    uri: str | os.PathLike[str] | None = None,
    *,
    storage_options: Mapping[str, str] | None = None,
    archive_uri: str | os.PathLike[str] | None = None,
    max_snapshots_per_dataset: int | None = None,
    max_snapshots: int | None = None,
    min_loaded_age: timedelta | None = None,
) -> Lake:
    """Open a lake: a local folder or an S3 prefix.

    Args:
        uri: local path, file:// or s3://bucket/prefix. None: $LAKEVER_URI, else
            ./lakever-data.
        storage_options: deltalake-style options (AWS_ENDPOINT_URL, AWS_REGION,
            AWS_ACCESS_KEY_ID, ...). Missing ones come from the AWS environment.
        archive_uri: where archived snapshots go (local folder or S3 prefix,
            reached with the same storage options); default
            $LAKEVER_ARCHIVE_URI. Without one there are no snapshot limits.
        max_snapshots_per_dataset: materialized snapshots a dataset may have
            before the least recently loaded is archived (default
            $LAKEVER_MAX_SNAPSHOTS_PER_DATASET, else 20).
        max_snapshots: the same for the whole lake (default
            $LAKEVER_MAX_SNAPSHOTS, else 100).
        min_loaded_age: a snapshot read more recently than this is never
            archived automatically (default $LAKEVER_SNAPSHOT_MIN_LOADED_AGE
            like "1d" or "12h", else one day).

    Example:
        >>> opts = {"AWS_REGION": "eu-west-1"}
        >>> lake = lv.connect("s3://bucket/lake", storage_options=opts)  # doctest: +SKIP
    """
    options = dict(storage_options or {})
    archive = settings(
        options,
        archive_uri=archive_uri,
        max_snapshots_per_dataset=max_snapshots_per_dataset,
        max_snapshots=max_snapshots,
        min_loaded_age=min_loaded_age,
    )
    return Lake(Location(resolve_uri(uri), options), archive=archive)
