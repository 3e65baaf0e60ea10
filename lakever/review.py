"""Reviewing a dataset: evaluations of inference sets and segments of frozen elements.

`Review` holds these `Dataset` methods, so the dataset module keeps to
versioning; the work is done in `lakever.evaluation` and `lakever.segments`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, cast

import polars as pl

from lakever import evaluation, segments
from lakever.commits import Commit
from lakever.errors import InvalidInputError
from lakever.evaluation import Evaluation
from lakever.info import default_author
from lakever.refs import Ref
from lakever.segments import Segment

if TYPE_CHECKING:
    from lakever._staging import Stage
    from lakever.dataset import Dataset


class Review:
    """Evaluations and segments of a dataset (mixed into `Dataset`)."""

    def _ds(self) -> Dataset:
        return cast("Dataset", self)

    # -- evaluations -------------------------------------------------------------------

    def evaluate(
        self,
        set_name: str,
        *,
        against: Ref | None = None,
        iou_thresholds: Sequence[float] | None = None,
        max_dets: Sequence[int] = (1, 10, 100),
        area_ranges: Mapping[str, tuple[float, float]] | None = None,
        classes: Sequence[str] | None = None,
        author: str | None = None,
        store: bool = True,
    ) -> Evaluation:
        """COCO bbox metrics of an inference set against the labels of its pinned version.

        The numbers equal pycocotools' `COCOeval` on the same boxes. The
        evaluation is recorded (`evaluations`), so it can be listed and
        compared, unless `store` is False (then nothing is written: read-only
        credentials can evaluate).

        Args:
            set_name: the inference set (its predictions at HEAD).
            against: the version whose labels are the ground truth; default
                the set's pin (never HEAD unless the set is pinned there).
            iou_thresholds: default 0.50:0.05:0.95.
            max_dets: detections kept per frame and class (COCO: 1, 10, 100).
            area_ranges: label -> (min, max) box area; default COCO's all,
                small, medium, large ('all' is always added).
            classes: evaluate only these classes (default: the class map).
            author: recorded with the evaluation.
            store: record it (False writes nothing).

        Example:
            >>> ev = ds.evaluate("yolo-v9")  # doctest: +SKIP
            >>> ev.summary["AP"], ev.per_class.sort("AP").head()  # doctest: +SKIP
        """
        return evaluation.evaluate(
            self._ds(),
            set_name,
            against=against,
            iou_thresholds=iou_thresholds,
            max_dets=max_dets,
            area_ranges=area_ranges,
            classes=classes,
            author=author or (default_author(self._ds().root) if store else ""),
            store=store,
        )

    def evaluations(self, set_name: str | None = None) -> pl.DataFrame:
        """Recorded evaluations, newest first: ids, set, commits, parameters, metrics."""
        ds = self._ds()
        ds.head  # noqa: B018 - refuses a deleted dataset
        return evaluation.stored(ds, set_name)

    def compare_evaluations(self, a: Evaluation | str, b: Evaluation | str) -> pl.DataFrame:
        """Did the numbers change? AP, AP50, AP75, AR100 of a and b per class and overall.

        `a` and `b` are `Evaluation` objects or recorded evaluation ids: the same
        predictions against two dataset versions (before and after a
        relabeling), or two inference sets against one version.
        """
        return evaluation.compare(self._ds(), a, b)

    def pin_inferences(
        self, set_name: str, ref: Ref, *, message: str | None = None, author: str | None = None
    ) -> Commit:
        """Pin an inference set to another version, as a recorded commit."""
        ds = self._ds()
        ds._inference_set(set_name)
        seq = ds.resolve(ref).seq

        def op(st: Stage) -> None:
            st.pins[set_name] = seq

        return ds._run(
            [op],
            message=message or f"pin {set_name} to commit {seq}",
            author=author,
            operation="pin_inferences",
        )

    # -- segments ----------------------------------------------------------------------

    def create_segment(
        self,
        name: str,
        *,
        frame_ids: Iterable[str] = (),
        label_ids: Iterable[str] = (),
        predictions: Mapping[str, Iterable[str]] | None = None,
        description: str = "",
        state: str = "open",
        author: str | None = None,
    ) -> Segment:
        """Create a segment, with elements frozen at HEAD.

        Args:
            name: unique among the dataset's segments.
            frame_ids: frames to add.
            label_ids: labels to add.
            predictions: inference set -> prediction (label) ids to add.
            description: free text ("boxes too loose").
            state: 'open', 'resolved' or 'archived'.
            author: recorded with it.

        Example:
            >>> seg = ds.create_segment("loose boxes", label_ids=["l1", "l7"])  # doctest: +SKIP
            >>> seg.outdated()  # doctest: +SKIP
        """
        ds = self._ds()
        seg = segments.create(ds, name, description=description, state=state, author=author)
        seg.add(frame_ids=frame_ids, label_ids=label_ids, predictions=predictions, author=author)
        return seg

    def segments(self) -> pl.DataFrame:
        """Segments: name, description, state, elements, created_at, creator."""
        ds = self._ds()
        ds.head  # noqa: B018 - refuses a deleted dataset
        return segments.listing(ds)

    def segment(self, name: str) -> Segment:
        """The segment called `name` (SegmentNotFoundError if there is none)."""
        return segments.get(self._ds(), name)

    def delete_segment(self, name: str, *, author: str | None = None) -> None:
        """Delete a segment."""
        segments.delete(self._ds(), name, author=author)

    def segment_from_evaluation(
        self,
        name: str,
        ev: Evaluation,
        *,
        outcomes: Sequence[str] = ("fp", "fn"),
        description: str = "",
        author: str | None = None,
    ) -> Segment:
        """A segment of an evaluation's mistakes, in one call.

        False positives are added as predictions, frozen at the commit the
        predictions were evaluated at; false negatives as labels, frozen at
        the commit evaluated against. True positives, if asked for, add both.
        """
        ds = self._ds()
        bad = [o for o in outcomes if o not in ("tp", "fp", "fn")]
        if bad:
            raise InvalidInputError(f"outcomes must be among tp, fp, fn; got {bad!r}")
        picked = ev.matches.filter(pl.col("outcome").is_in(list(outcomes)))
        preds = picked["prediction_id"].drop_nulls().unique().sort().to_list()
        labels = picked["label_id"].drop_nulls().unique().sort().to_list()
        seg = segments.create(
            ds,
            name,
            description=description or f"{', '.join(outcomes)} of evaluation {ev.id}",
            state="open",
            author=author,
        )
        seg.add(label_ids=labels, at=ev.against, author=author)
        seg.add(
            predictions={ev.set_name: preds},
            at=ds._log.get(ev.predictions_seq),
            author=author,
        )
        return seg
