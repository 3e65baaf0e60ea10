"""The lake: a root URI holding a catalog of datasets.

Each dataset lives under ``<lake>/datasets/<name>/`` and is described by its
``_lakever/dataset.json``, created with put-if-absent so that two processes
creating the same name cannot both succeed.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone

import polars as pl

from lakever import _delta
from lakever.commits import now_utc
from lakever.dataset import Dataset, DatasetInfo, default_author
from lakever.errors import (
    CorruptLakeError,
    DatasetExistsError,
    DatasetNotFoundError,
    SnapshotsExistError,
)
from lakever.names import check_dataset_name
from lakever.schema import normalize_classes
from lakever.storage import Location, resolve_uri

DATASETS_DIR = "datasets"


def _aware(when: datetime | None) -> datetime | None:
    if when is None or when.tzinfo is not None:
        return when
    return when.replace(tzinfo=timezone.utc)


class Lake:
    """A lake of datasets under one root URI.

    Example:
        >>> lake = lv.connect("./lakever-data")  # doctest: +SKIP
        >>> ds = lake.create_dataset("traffic", classes=["car", "person"])  # doctest: +SKIP
    """

    def __init__(self, root: Location) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"Lake({self.root.uri!r})"

    @property
    def uri(self) -> str:
        """The lake's root URI."""
        return self.root.uri

    def _dataset_root(self, name: str) -> Location:
        return self.root.child(DATASETS_DIR, check_dataset_name(name))

    def _info(self, name: str) -> DatasetInfo:
        path = self._dataset_root(name).child("_lakever", "dataset.json")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            known = self._names()
            hint = f"; datasets here: {', '.join(known[:10])}" if known else "; the lake is empty"
            raise DatasetNotFoundError(f"no dataset named {name!r} in {self.uri}{hint}") from None
        try:
            return DatasetInfo.from_json(data)
        except (ValueError, KeyError) as exc:
            raise CorruptLakeError(f"{path.uri} is unreadable: {exc}") from exc

    def _names(self) -> list[str]:
        return self.root.child(DATASETS_DIR).list_names()

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
    ) -> Dataset:
        """Create an empty dataset with a fixed class map.

        Args:
            name: unique name (letters, digits, '.', '_', '-').
            classes: the valid label classes.
            description: free text.
            tags: free-form tags for finding it later.
            project: the project it belongs to.
            exist_ok: return the existing dataset instead of raising.
            creator: recorded creator (default: $LAKEVER_AUTHOR or the OS user).

        Raises:
            DatasetExistsError: the name is taken and `exist_ok` is False.
        """
        root = self._dataset_root(name)
        info = DatasetInfo(
            name=name,
            project=project,
            description=description,
            tags=tuple(tags),
            creator=creator or default_author(),
            created_at=now_utc(),
            classes=normalize_classes(classes),
        )
        if not root.child("_lakever", "dataset.json").put_if_absent(info.to_json()):
            if exist_ok:
                return self.dataset(name)
            raise DatasetExistsError(
                f"a dataset named {name!r} already exists in {self.uri}; open it with "
                "lake.dataset(name) or pass exist_ok=True"
            )
        ds = Dataset(root, info)
        ds.head  # noqa: B018 - creates the tables and commit 0
        return ds

    def dataset(self, name: str) -> Dataset:
        """Open a dataset; DatasetNotFoundError if there is none of that name."""
        return Dataset(self._dataset_root(name), self._info(name))

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

        Args:
            name_like: a glob ('traffic-*') or, without wildcards, a substring.
            project: exact project.
            tag: datasets carrying this tag.
            created_after: created at or after this time.
            created_before: created before this time.
            edited_after: last commit at or after this time.
        """
        created_after, created_before = _aware(created_after), _aware(created_before)
        edited_after = _aware(edited_after)
        rows = []
        for name in self._names():
            if name_like:
                pattern = name_like if any(ch in name_like for ch in "*?[") else f"*{name_like}*"
                if not fnmatch.fnmatchcase(name, pattern):
                    continue
            try:
                ds = self.dataset(name)
            except (DatasetNotFoundError, CorruptLakeError):
                continue  # a creation or deletion in progress
            info = ds.info
            if project is not None and info.project != project:
                continue
            if tag is not None and tag not in info.tags:
                continue
            if created_after is not None and info.created_at < created_after:
                continue
            if created_before is not None and info.created_at >= created_before:
                continue
            head = ds.head
            if edited_after is not None and head.created_at < edited_after:
                continue
            rows.append(
                {
                    "name": info.name,
                    "project": info.project,
                    "description": info.description,
                    "tags": list(info.tags),
                    "creator": info.creator,
                    "created_at": info.created_at,
                    "edited_at": head.created_at,
                    "head_seq": head.seq,
                    "classes": len(head.classes),
                }
            )
        columns: dict[str, pl.DataType] = {
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
        return pl.DataFrame(rows, schema=columns)

    def delete_dataset(self, name: str, *, force: bool = False) -> None:
        """Delete a dataset and all its data.

        Raises:
            SnapshotsExistError: it has snapshots and `force` is False.
        """
        ds = self.dataset(name)
        snaps = ds.list_snapshots(changes=False)
        if snaps and not force:
            names = ", ".join(repr(s.name) for s in snaps[:5])
            raise SnapshotsExistError(
                f"dataset {name!r} has {len(snaps)} snapshot(s) ({names}); delete them "
                "first or pass force=True to delete the dataset with its snapshots"
            )
        ds.root.remove_tree()
        _delta.forget(ds.root.uri)


def connect(
    uri: str | os.PathLike[str] | None = None,
    *,
    storage_options: Mapping[str, str] | None = None,
) -> Lake:
    """Open a lake: a local folder or an S3 prefix.

    Args:
        uri: local path, file:// or s3://bucket/prefix. None: $LAKEVER_URI, else
            ./lakever-data.
        storage_options: deltalake-style options (AWS_ENDPOINT_URL, AWS_REGION,
            AWS_ACCESS_KEY_ID, ...). Missing ones come from the AWS environment.

    Example:
        >>> opts = {"AWS_REGION": "eu-west-1"}
        >>> lake = lv.connect("s3://bucket/lake", storage_options=opts)  # doctest: +SKIP
    """
    return Lake(Location(resolve_uri(uri), dict(storage_options or {})))
