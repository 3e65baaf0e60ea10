"""Data in: streaming uploads and their records, and COCO / YOLO imports.

`DataIO` holds the `Dataset` methods that bring rows in from outside, so the
dataset module keeps to versioning. The work is done in `lakever.ingest`
(uploads), `lakever.uploads` (their records) and `lakever.formats` (COCO and
YOLO).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import polars as pl

from lakever.uploads import Upload, UploadRecords

if TYPE_CHECKING:
    from lakever.dataset import Dataset


class DataIO:
    """Uploads and imports of a dataset (mixed into `Dataset`)."""

    def _self(self) -> Dataset:
        return cast("Dataset", self)

    def ingest(
        self,
        frames: Any = None,
        labels: Any = None,
        inferences: Mapping[str, Any] | None = None,
        *,
        mode: str = "upsert",
        upload_id: str | None = None,
        chunk_rows: int = 100_000,
        message: str | None = None,
        author: str | None = None,
        progress: bool | None = None,
    ) -> Upload:
        """Stream rows in, committing the good ones and recording the bad ones.

        Sources are read in order (frames, labels, then each inference set)
        and cut into chunks of `chunk_rows` rows; each chunk is one commit.
        A bad row is recorded in `Upload.errors` with its rule and value and
        the upload carries on; a label whose frame was rejected earlier in the
        same upload is rejected with rule ``frame_rejected``.

        Args:
            frames: rows for the frames table.
            labels: rows for the labels table.
            inferences: inference set name -> rows (pinned as `upsert_inferences` pins).
            mode: 'upsert' (create or update), 'add' (existing keys are
                rejected with rule ``exists``), or 'replace_labels' (each frame
                the upload sends labels for ends up with exactly those labels;
                frames it sends no labels for keep theirs).
            upload_id: the caller's id. Running the same id again (after a
                crash, say) resumes after its last committed chunk and never
                duplicates a row or a commit; once it finished, it returns
                the same `Upload` and commits nothing. Send the same rows again.
            chunk_rows: rows per commit.
            message: commit message (default names the upload).
            author: commit author.
            progress: show a progress bar (default: on a terminal, not under
                CI; $LAKEVER_PROGRESS=0/1 overrides).

        Each source may be a Polars/Arrow/pandas frame, a list of dicts, an
        iterable of rows or of batches (a stream), or a path or glob of
        Parquet, CSV or JSON-lines files, local or s3://.

        Returns:
            The `Upload`: status ('done', 'partial', 'failed'), counts per
            table, commits, errors.

        Example:
            >>> up = ds.ingest(labels="batch-*.parquet", upload_id="v-06-01")  # doctest: +SKIP
            >>> up.status, up.rows_rejected, up.errors.head()  # doctest: +SKIP
        """
        from lakever.ingest import ingest

        return ingest(
            self._self(),
            frames=frames,
            labels=labels,
            inferences=inferences,
            mode=mode,
            upload_id=upload_id,
            chunk_rows=chunk_rows,
            message=message,
            author=author,
            progress=progress,
        )

    def uploads(self, *, status: str | None = None, limit: int | None = None) -> pl.DataFrame:
        """Every upload, newest first: id, status, rows received/committed/rejected, times.

        Args:
            status: only uploads in this status ('running', 'done', 'partial', 'failed').
            limit: at most this many.
        """
        ds = self._self()
        ds.head  # noqa: B018 - refuses a deleted dataset
        return UploadRecords(ds.root).listing(status=status, limit=limit)

    def upload(self, upload_id: str) -> Upload:
        """The upload with this id (UploadNotFoundError if there is none)."""
        ds = self._self()
        ds.head  # noqa: B018 - refuses a deleted dataset
        return UploadRecords(ds.root).get(upload_id, dataset=ds.name)
