"""Data in: streaming uploads and their records, and COCO / YOLO imports.

`DataIO` holds the `Dataset` methods that bring rows in from outside, so the
dataset module keeps to versioning. The work is done in `lakever.ingest`
(uploads), `lakever.uploads` (their records) and `lakever.formats` (COCO and
YOLO).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import polars as pl

from lakever._progress import phase
from lakever.errors import InvalidInputError
from lakever.refs import Ref
from lakever.uploads import Upload, UploadRecords

if TYPE_CHECKING:
    from lakever.dataset import Dataset
    from lakever.writer import StagedWriter


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
        pinned_to: Ref | None = None,
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
            upload_id: the caller's id, for one set of rows. Running the same
                id again with the same rows (after a crash, say) resumes after
                its last committed chunk and never duplicates a row or a
                commit; once it finished, it returns the same `Upload` and
                commits nothing. The same id with other rows raises
                `ConflictError` (a digest of the rows received is recorded).
                A key sent twice in one upload keeps its first copy; each
                later copy is rejected with rule ``duplicate_key``, whatever
                `chunk_rows` is.
            chunk_rows: rows per commit.
            message: commit message (default names the upload).
            author: commit author.
            progress: show a progress bar (default: on a terminal, not under
                CI; $LAKEVER_PROGRESS=0/1 overrides).
            pinned_to: pin the inference sets to this version (default: a
                set keeps its pin; a new one is pinned to its first commit).

        Each source may be a Polars/Arrow/pandas frame, a list of dicts, an
        iterable of rows or of batches (a stream), or a path or glob of
        Parquet, CSV or JSON-lines files, local or s3://.

        Returns:
            The `Upload`: status ('done', 'partial', 'failed'), counts per
            table, commits, errors.

        Example:
            >>> up = ds.ingest(labels="b7.parquet", upload_id="b7")  # doctest: +SKIP
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
            pinned_to=pinned_to,
        )

    def import_coco(
        self,
        annotations: str | Mapping[str, Any],
        *,
        images_root: str | None = None,
        upload_id: str | None = None,
        mode: str = "upsert",
        chunk_rows: int = 100_000,
    ) -> Upload:
        """Bring a COCO annotation file in as frames and labels, as one upload.

        Every category of the file must be in the class map (extend it first
        with `extend_classes`); category ids are kept for `export_coco`. See
        `lakever.coco` for how each field is stored. Bad rows are recorded in
        the upload's errors; the rest are committed.

        Args:
            annotations: a COCO JSON path (local or s3://), or the loaded document.
            images_root: joined in front of each ``file_name`` to make the frame's URI.
            upload_id: the upload's id (a retry with the same id resumes it).
            mode: as for `ingest`.
            chunk_rows: rows per commit, as for `ingest`.
        """
        ds = self._self()
        doc = _document(ds, annotations)
        return _import_coco(
            ds, doc, images_root=images_root, upload_id=upload_id, mode=mode, chunk_rows=chunk_rows
        )

    def import_coco_results(
        self,
        set_name: str,
        results: str | list[Mapping[str, Any]],
        *,
        pinned_to: Ref | None = None,
        upload_id: str | None = None,
    ) -> Upload:
        """Bring a COCO results (detections) file in as an inference set.

        Each detection (``image_id``, ``category_id``, ``bbox``, ``score``)
        becomes a prediction whose ``label_id`` is its position in the list
        and whose ``confidence`` is its score. Category ids are read with the
        ids `export_coco` writes.

        Args:
            set_name: the inference set.
            results: a JSON path (local or s3://) holding a list, or the list itself.
            pinned_to: the version the predictions were made against (default
                as `upsert_inferences`).
            upload_id: the upload's id.
        """
        from lakever import coco

        ds = self._self()
        if isinstance(results, (str, os.PathLike)):
            results = coco.read_json(results, ds.root.options, what="results file")
        if not isinstance(results, list):
            raise InvalidInputError(
                f"COCO results must be a list of detections, got a {type(results).__name__}"
            )
        names = {v: k for k, v in coco.category_ids(ds.head.classes, coco.load_meta(ds)).items()}
        rows = coco.results_frame(results, names)
        return ds.ingest(
            inferences={set_name: rows},
            upload_id=upload_id,
            pinned_to=pinned_to,
            message=f"import COCO results into {set_name}",
        )

    def import_yolo(
        self,
        root: str,
        *,
        classes: list[str] | None = None,
        upload_id: str | None = None,
        mode: str = "upsert",
        chunk_rows: int = 100_000,
    ) -> Upload:
        """Bring a YOLO folder (``images/``, ``labels/``, ``data.yaml``) in, as one upload.

        Boxes are turned from YOLO's normalised centre format into pixels
        (top-left corner and size); see `lakever.yolo`.

        Args:
            root: the folder, local or s3://.
            classes: the class names by index (default: ``names`` of data.yaml,
                else the dataset's class map).
            upload_id: the upload's id.
            mode: as for `ingest`.
            chunk_rows: rows per commit, as for `ingest`.
        """
        from lakever import yolo

        ds = self._self()
        options = ds.root.options
        names = classes or yolo.read_names(str(root), options) or list(ds.head.classes)
        _require_classes(ds, names, what="YOLO class")
        with phase(f"reading image sizes and labels under {root}"):
            frames, labels = yolo.read_dataset(str(root), names, options)
        return ds.ingest(
            frames=frames,
            labels=labels,
            upload_id=upload_id,
            mode=mode,
            chunk_rows=chunk_rows,
            message=f"import YOLO {root}",
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

    def writer(self, table: str, *, mode: str = "upsert", job_id: str) -> StagedWriter:
        """A staging folder for a distributed job's Parquet files, and the commit adopting them.

        Workers (Spark, Dask, Ray) write Parquet files with the table's
        columns and types into `StagedWriter.staging_uri`; `commit()` validates
        them and adds them as they are in one commit (see `lakever.writer`).

        Args:
            table: 'frames', 'labels' or an existing 'inferences/<set>'.
            mode: "upsert" (rows of existing keys are replaced) or "add" (none may exist).
            job_id: one commit per id, however often the driver retries.

        Example:
            >>> w = ds.writer("labels", job_id="relabel-2026-12-02")  # doctest: +SKIP
            >>> sdf.write.parquet(w.staging_uri)  # doctest: +SKIP
            >>> w.commit(message="vendor batch 7")  # doctest: +SKIP
        """
        from lakever.writer import StagedWriter

        return StagedWriter(self._self(), table, mode=mode, job_id=job_id)

    def upload(self, upload_id: str) -> Upload:
        """The upload with this id (UploadNotFoundError if there is none)."""
        ds = self._self()
        ds.head  # noqa: B018 - refuses a deleted dataset
        return UploadRecords(ds.root).get(upload_id, dataset=ds.name)


def _document(ds: Dataset, annotations: str | Mapping[str, Any]) -> dict[str, Any]:
    from lakever import coco

    if isinstance(annotations, Mapping):
        return dict(annotations)
    with phase(f"reading {annotations}"):
        return coco.read_document(str(annotations), ds.root.options)


def _require_classes(ds: Dataset, names: Sequence[str], *, what: str) -> None:
    missing = [n for n in names if n not in ds.head.classes]
    if missing:
        raise InvalidInputError(
            f"dataset {ds.name!r} has no {what}(es) {', '.join(map(repr, missing))} in its "
            f"class map; add them first with ds.extend_classes({missing!r})"
        )


def _import_coco(
    ds: Dataset,
    doc: Mapping[str, Any],
    *,
    images_root: str | None,
    upload_id: str | None,
    mode: str,
    chunk_rows: int,
) -> Upload:
    from lakever import coco
    from lakever.ingest import ingest

    _require_classes(ds, coco.category_names(doc), what="COCO categor")
    sizes = f"{len(doc['images']):,} images and {len(doc.get('annotations', [])):,} annotations"
    with phase(f"converting {sizes}"):
        frames, frame_json = coco.frames_frame(doc, images_root)
        labels, label_json = coco.labels_frame(doc)
    coco.remember(ds, doc, {"frames": frame_json, "labels": label_json})
    unsafe = ("unsafe_path", "file_name", coco.UNSAFE_FILE_NAME, coco.UNSAFE_DETAIL)
    return ingest(
        ds,
        frames=frames,
        labels=labels,
        inferences=None,
        upload_id=upload_id,
        mode=mode,
        chunk_rows=chunk_rows,
        message="import COCO annotations",
        author=None,
        progress=None,
        rules={"frames": [unsafe]} if images_root else None,
    )
