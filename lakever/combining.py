"""Datasets made from others: clones and merges of datasets (the public entry points).

`LakeCombining` gives `Lake` `clone_dataset` and `merge_datasets`;
`DatasetCombining` gives `Dataset` `merge_from`. The work is in
`lakever.clone` and `lakever.dsmerge`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from lakever.dataset import Dataset
    from lakever.dsmerge import DatasetMergeReport
    from lakever.refs import Ref
    from lakever.view import View


class LakeCombining:
    """Clone and merge datasets of a lake."""

    def clone_dataset(
        self,
        source: str,
        new: str,
        *,
        at: Ref | None = None,
        frames: pl.Expr | None = None,
        labels: pl.Expr | None = None,
        inferences: bool | Sequence[str] = True,
        snapshots: bool = False,
        project: str | None = None,
        tags: Sequence[str] = (),
        description: str = "",
        creator: str | None = None,
    ) -> Dataset:
        """A new dataset holding `source` at `at` (filtered), sharing its files, not copying rows.

        Data files are hard links locally and server-side copies on S3; rows
        the filters drop are masked with deletion vectors or their files
        rewritten (see `lakever.clone`). The clone is self-contained under its
        own prefix: it keeps working when the source is deleted or collected.

        Args:
            source: the source dataset's name.
            new: the clone's name.
            at: any ref of the source (default: its main head).
            frames: keep only frames for which this Polars expression is true;
                their labels and inference rows go with them.
            labels: keep only labels for which this expression is true.
            inferences: True (every set), False (none), or the set names.
            snapshots: also bring every snapshot at or before `at` (filtered alike).
            project: the clone's project.
            tags: its tags.
            description: its description.
            creator: recorded creator (default: $LAKEVER_AUTHOR or the OS user).

        Raises:
            DatasetExistsError: `new` is taken (nothing is created).
            DatasetNotFoundError: `source` does not exist.
            InvalidInputError: a filter names a column the table lacks, or an
                inference set the ref does not have.

        Example:
            >>> dogs = lake.clone_dataset(  # doctest: +SKIP
            ...     "street", "street-dogs", labels=pl.col("cls").is_in(["dog"]))
        """
        from lakever.catalog import Lake
        from lakever.clone import clone_dataset

        assert isinstance(self, Lake)
        return clone_dataset(
            self,
            source,
            new,
            at=at,
            frames=frames,
            labels=labels,
            inferences=inferences,
            snapshots=snapshots,
            project=project,
            tags=tags,
            description=description,
            creator=creator,
        )

    def merge_datasets(
        self,
        sources: Sequence[str | Dataset | View],
        into: str,
        *,
        class_map: Mapping[str, Mapping[str, str]] | None = None,
        on_collision: str = "error",
        project: str | None = None,
        tags: Sequence[str] = (),
        description: str = "",
        creator: str | None = None,
    ) -> DatasetMergeReport:
        """A new dataset holding the union of several, in one commit (see `lakever.dsmerge`).

        Args:
            sources: dataset names, `Dataset` handles (their head) or `View`s.
            into: the new dataset's name.
            class_map: per source name, classes to rename ({"vendor-b":
                {"pedestrian": "person"}}); after it every source must have
                the same classes.
            on_collision: a key with different rows in two sources: "error"
                (raise, write nothing), "skip" (keep the first source's row)
                or "suffix" (rename the later rows' keys to KEY-SOURCE).
            project: the new dataset's project.
            tags: its tags.
            description: its description.
            creator: recorded creator (default: $LAKEVER_AUTHOR or the OS user).

        Raises:
            ClassMapMismatchError: the class maps differ after `class_map`.
            MergeConflictError: collisions with on_collision="error" (its
                `conflicts` lists them).
            DatasetExistsError: `into` is taken. Nothing is created on any error.
        """
        from lakever.catalog import Lake
        from lakever.dsmerge import merge_datasets

        assert isinstance(self, Lake)
        return merge_datasets(
            self,
            sources,
            into,
            class_map=class_map,
            on_collision=on_collision,
            project=project,
            tags=tags,
            description=description,
            creator=creator,
        )


class DatasetCombining:
    """Merge other datasets into this one."""

    def merge_from(
        self,
        sources: Sequence[str | Dataset | View],
        *,
        class_map: Mapping[str, Mapping[str, str]] | None = None,
        on_collision: str = "error",
        message: str | None = None,
        author: str | None = None,
    ) -> DatasetMergeReport:
        """Add the rows of other datasets to this branch, in one commit.

        The same rules as `Lake.merge_datasets`, with this dataset as the first
        source: its rows are kept on a collision with on_collision="skip", and
        the class maps must agree with its own after `class_map`.

        Raises:
            ClassMapMismatchError: the class maps differ after `class_map`.
            MergeConflictError: collisions with on_collision="error"; nothing
                is committed.
        """
        from lakever.dataset import Dataset
        from lakever.dsmerge import merge_from

        assert isinstance(self, Dataset)
        return merge_from(
            self,
            sources,
            class_map=class_map,
            on_collision=on_collision,
            message=message,
            author=author,
        )
