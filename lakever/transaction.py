"""Transactions: several writes to frames, labels and inference sets as one commit.

A `Transaction` records operations; nothing touches storage until it commits
(when its ``with`` block exits cleanly). At commit, the operations are replayed
on HEAD and published atomically, and replayed again on the new HEAD if a
concurrent writer got there first, so rules that depend on the current data
(a label's frame must exist, added frames must be new) are checked against
the state the commit really lands on.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import polars as pl

from lakever._protocol import Operation
from lakever._staging import Stage
from lakever.commits import Commit
from lakever.errors import InvalidInputError, RowError, RowNotFoundError, ValidationError
from lakever.names import check_dataset_name
from lakever.schema import FRAMES, INFERENCES_PREFIX, LABELS, to_polars

if TYPE_CHECKING:
    from lakever.dataset import Dataset


def inference_table(set_name: str) -> str:
    """The table name of an inference set."""
    return INFERENCES_PREFIX + check_dataset_name(set_name, what="inference set")


def _ids(values: Iterable[str] | str) -> list[str]:
    if isinstance(values, str):
        return [values]
    try:
        return [str(v) for v in values]
    except TypeError:
        raise InvalidInputError(
            f"expected ids (a string or a list of strings), got a {type(values).__name__}: "
            f"{values!r:.80}"
        ) from None


class Transaction:
    """Collects writes and publishes them as one commit.

    Example:
        >>> with ds.transaction(message="relabel batch 7", author="etl") as tx:  # doctest: +SKIP
        ...     tx.upsert_frames(frames)
        ...     tx.upsert_labels(labels)
        >>> tx.result.seq  # doctest: +SKIP
    """

    def __init__(
        self, dataset: Dataset, *, message: str | None, author: str | None, operation: str
    ) -> None:
        self._dataset = dataset
        self._message = message
        self._author = author
        self._operation = operation
        self._ops: list[Operation] = []
        self._summary: list[str] = []
        self._keys: dict[str, list[pl.Series]] = {}  # keys whose rows each table will need
        self.result: Commit | None = None

    def __enter__(self) -> Transaction:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()

    def commit(self) -> Commit:
        """Publish the recorded writes as one commit (HEAD if they change nothing)."""
        if self.result is not None:
            return self.result
        message = self._message or "; ".join(self._summary) or self._operation
        ops = [self._prefetch, *self._ops] if self._keys else self._ops
        self.result = self._dataset._run(
            ops, message=message, author=self._author, operation=self._operation
        )
        return self.result

    def _prefetch(self, st: Stage) -> None:
        """Look up every key the operations will ask about in one read per table."""
        for table, parts in self._keys.items():
            if not st.base_is_empty(table):  # a bulk import has nothing to look up
                st.base_rows(table, pl.concat(parts).unique())

    def _expect(self, table: str, values: Any) -> None:
        """Note keys of `table` whose rows the operations will look up (bad values ignored)."""
        if values is None:
            return
        try:
            series = pl.Series(values).cast(pl.String, strict=False).drop_nulls()
        except Exception:
            return  # validation reports it when the operation runs
        self._keys.setdefault(table, []).append(series.rename("key"))

    def _add(self, summary: str, op: Operation, *, rows: int) -> None:
        if self.result is not None:
            raise InvalidInputError("this transaction has already committed; start a new one")
        if rows == 0:
            return  # an empty batch changes nothing
        self._ops.append(op)
        self._summary.append(summary)

    # -- frames -------------------------------------------------------------------

    def add_frames(self, frames: Any) -> None:
        """Add new frames; any frame_id that already exists is refused."""
        df = to_polars(frames)
        self._expect(FRAMES, df.get_column("frame_id", default=None))

        def op(st: Stage) -> None:
            st.put(FRAMES, st.validate(FRAMES, df), require=False)

        self._add(f"add {df.height} frames", op, rows=df.height)

    def upsert_frames(self, frames: Any) -> None:
        """Create frames, or update those whose frame_id exists."""
        df = to_polars(frames)
        self._expect(FRAMES, df.get_column("frame_id", default=None))

        def op(st: Stage) -> None:
            st.put(FRAMES, st.validate(FRAMES, df))

        self._add(f"upsert {df.height} frames", op, rows=df.height)

    def update_frames(self, frames: Any) -> None:
        """Change some columns of existing frames (frame_id + only the columns to change)."""
        df = to_polars(frames)

        def op(st: Stage) -> None:
            st.put(FRAMES, st.validate(FRAMES, df, partial=True), require=True)

        self._add(f"update {df.height} frames", op, rows=df.height)

    def delete_frames(self, frame_ids: Iterable[str] | str, *, missing_ok: bool = False) -> None:
        """Delete frames and, in the same commit, their labels."""
        ids = _ids(frame_ids)

        def op(st: Stage) -> None:
            gone = st.delete(FRAMES, ids, missing_ok=missing_ok)
            labels = st.current_by(LABELS, "frame_id", pl.Series(sorted(gone), dtype=pl.String))
            st.delete(LABELS, labels["label_id"].to_list(), missing_ok=True)

        self._add(f"delete {len(ids)} frames", op, rows=len(ids))

    # -- labels -------------------------------------------------------------------

    def upsert_labels(self, labels: Any) -> None:
        """Create labels, or update those whose label_id exists."""
        df = to_polars(labels)
        self._expect(LABELS, df.get_column("label_id", default=None))

        def op(st: Stage) -> None:
            rows = st.validate(LABELS, df)
            st.require_frames(LABELS, rows)
            st.put(LABELS, rows)

        self._add(f"upsert {df.height} labels", op, rows=df.height)

    def delete_labels(self, label_ids: Iterable[str] | str, *, missing_ok: bool = False) -> None:
        """Delete labels by label_id."""
        ids = _ids(label_ids)
        self._expect(LABELS, ids)

        def op(st: Stage) -> None:
            st.delete(LABELS, ids, missing_ok=missing_ok)

        self._add(f"delete {len(ids)} labels", op, rows=len(ids))

    def replace_labels(self, labels: Any, *, frame_ids: Iterable[str] | None = None) -> None:
        """Make each listed frame's labels exactly these.

        Args:
            labels: the complete new labels of the frames.
            frame_ids: the frames whose labels are replaced; default: the frames the
                labels name. A listed frame with no rows here loses all its labels.
        """
        df = to_polars(labels)
        listed = None if frame_ids is None else _ids(frame_ids)

        def op(st: Stage) -> None:
            rows = st.validate(LABELS, df)
            frames = listed if listed is not None else rows["frame_id"].unique().to_list()
            stray = rows.filter(~pl.col("frame_id").is_in(frames))
            if not stray.is_empty():
                raise ValidationError(
                    LABELS,
                    [
                        RowError("frame_not_listed", k, "frame_id", f, "frame not in frame_ids")
                        for k, f in zip(
                            stray["label_id"].to_list(), stray["frame_id"].to_list(), strict=True
                        )
                    ],
                )
            frame_series = pl.Series(frames, dtype=pl.String)
            present = set(st.existing_keys(FRAMES, frame_series).to_list())
            missing = [f for f in frames if f not in present]
            if missing:
                raise RowNotFoundError(
                    f"cannot replace labels of {len(missing)} frame(s) that do not exist: "
                    f"{', '.join(map(repr, missing[:20]))}; nothing was written"
                )
            current = st.current_by(LABELS, "frame_id", frame_series)
            keep = set(rows["label_id"].to_list())
            st.delete(
                LABELS, [k for k in current["label_id"].to_list() if k not in keep], missing_ok=True
            )
            st.put(LABELS, rows)

        count = df.height if listed is None else len(listed) + df.height
        self._add(f"replace labels of {len(listed) if listed else 'their'} frames", op, rows=count)

    # -- inference sets -------------------------------------------------------------

    def upsert_inferences(self, set_name: str, inferences: Any, *, pinned_to: Any = None) -> None:
        """Create or update predictions in an inference set (created on first write).

        An inference set is pinned to the dataset version its predictions were
        made against. Each row's frame must exist at that version or in the
        dataset as this commit leaves it, so predictions on frames deleted
        since the pin stay valid, and deleting frames leaves pinned
        predictions alone.

        Args:
            set_name: the inference set.
            inferences: rows as labels, plus `confidence` in [0, 1].
            pinned_to: the ref the predictions were made against; default: the
                set keeps its pin, and a new set is pinned to the commit that
                creates it (so frames added in the same transaction count).
        """
        table = inference_table(set_name)
        df = to_polars(inferences)
        pin = None if pinned_to is None else self._dataset.resolve(pinned_to).seq

        def op(st: Stage) -> None:
            rows = st.validate(table, df)
            if pin is not None:
                st.pins[set_name] = pin
            else:
                st.pins.setdefault(set_name, st.next_seq)
            st.require_frames(table, rows, pinned=st.pins[set_name])
            st.put(table, rows)

        self._add(f"upsert {df.height} inferences into {set_name}", op, rows=df.height)

    def delete_inferences(
        self, set_name: str, label_ids: Iterable[str] | str, *, missing_ok: bool = False
    ) -> None:
        """Delete predictions from an inference set by label_id."""
        table = inference_table(set_name)
        ids = _ids(label_ids)

        def op(st: Stage) -> None:
            st.delete(table, ids, missing_ok=missing_ok)

        self._add(f"delete {len(ids)} inferences from {set_name}", op, rows=len(ids))
