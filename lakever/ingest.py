"""Streaming uploads with partial success: `Dataset.ingest`.

An upload reads its sources (frames, then labels, then each inference set) as
one stream of rows and cuts it into chunks of `chunk_rows`. Each chunk is one
commit made through the ordinary commit protocol, so concurrent writers and
uploads interleave safely. Inside the commit, every row is screened against
every rule; the good rows are written and each bad one is recorded with its
rule, column and value instead of refusing the chunk.

Exactly-once: the chunk's commit carries the upload id, the chunk number, the
attempt id and the counts so far (`Commit.meta`). After it, the chunk's errors
and a chunk row are appended to the upload tables (`lakever.uploads`). A
retry with the same upload id reads where the last recorded chunk left off;
if the process died between a chunk's commit and its chunk row, the commit is
found in the log after the last recorded HEAD and its row is written from it
(its errors were saved next to the upload before the commit could publish).
The retry then skips the rows already received and goes on. Calling it again
once it finished makes no commit.
"""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from lakever._progress import progress_bar
from lakever._rowstream import KeySet, RowDigest, same_rows
from lakever._sources import batches
from lakever._staging import Stage
from lakever.commits import Commit, now_utc
from lakever.errors import ConflictError, InvalidInputError, RowError, ValidationError
from lakever.info import default_author
from lakever.schema import FRAMES, LABELS, Rule, key_column, screen_rows, table_kind
from lakever.storage import Location
from lakever.transaction import inference_table
from lakever.uploads import ERROR_SCHEMA, Counts, Upload, UploadRecords, event_row

if TYPE_CHECKING:
    from lakever.dataset import Dataset

MODES = ("upsert", "add", "replace_labels")
OPERATION = "ingest"
#: Chunk rows and errors of committed chunks are written at most this often.
FLUSH_SECONDS = 2.0


@dataclass
class _Part:
    """Rows of one table inside a chunk, and the index of the first in its source."""

    table: str
    rows: pl.DataFrame
    start: int
    repeated: pl.Series  # rows whose key came earlier in the upload


@dataclass
class _State:
    """What an upload knows between chunks (rebuilt from the records on resume)."""

    upload_id: str
    attempt: str
    mode: str
    message: str
    author: str
    started_at: Any
    counts: Counts = field(default_factory=Counts)
    chunk: int = 0
    rejected_frames: set[str] = field(default_factory=set)
    replaced: dict[str, set[str]] = field(default_factory=dict)  # table -> frames done
    pin: int | None = None  # the seq inference sets are pinned to, when given
    seen: int = -1  # commits up to this seq hold no chunk of another run of this upload
    rules: dict[str, Sequence[Rule]] = field(default_factory=dict)  # the source's own rules
    expected: str | None = None  # digest of the rows received before a resume


def ingest(
    ds: Dataset,
    *,
    frames: Any,
    labels: Any,
    inferences: Mapping[str, Any] | None,
    mode: str,
    upload_id: str | None,
    chunk_rows: int,
    message: str | None,
    author: str | None,
    progress: bool | None,
    pinned_to: Any = None,
    rules: Mapping[str, Sequence[Rule]] | None = None,
) -> Upload:
    """Run (or resume) an upload; see `Dataset.ingest`.

    `rules` adds per-row rules of the source, per table (a COCO file's paths).
    """
    if mode not in MODES:
        raise InvalidInputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise InvalidInputError(f"chunk_rows must be a whole number >= 1, got {chunk_rows!r}")
    if inferences is not None and not isinstance(inferences, Mapping):
        raise InvalidInputError(
            f"inferences must map inference set names to rows, got a {type(inferences).__name__}"
        )
    sources: list[tuple[str, Any]] = [(FRAMES, frames), (LABELS, labels)]
    sources += [(inference_table(s), rows) for s, rows in (inferences or {}).items()]
    sources = [(t, s) for t, s in sources if s is not None]
    upload_id = _check_id(upload_id)
    pin = None if pinned_to is None else ds.resolve(pinned_to).seq
    records = UploadRecords(ds.root)
    head = ds.head  # refuses a deleted dataset before anything is written

    events = records.events(upload_id)
    finish = events.filter(pl.col("event") == "finish")
    if not finish.is_empty():
        _check_finished(upload_id, sources, chunk_rows, ds.root.options, finish.row(0, named=True))
        return records.get(upload_id, dataset=ds.name)
    state = _State(
        upload_id=upload_id,
        attempt=uuid.uuid4().hex,
        mode=mode,
        message=message or f"upload {upload_id}",
        author=author or default_author(ds.root),
        started_at=now_utc(),
        pin=pin,
        rules=dict(rules or {}),
    )
    if events.is_empty():
        records.append_events(
            [_event(state, "start", chunk=-1, commit_seq=None, head_seq=head.seq)]
        )
    else:
        _resume(ds, records, state, events)
    state.seen = ds.head.seq

    skip = dict(state.counts.received)
    recorder = _Recorder(records)
    reading = _Reading(state)
    with progress_bar(progress, sum(skip.values())) as advance:
        for parts in _chunks(sources, chunk_rows, skip, ds.root.options, reading):
            _run_chunk(ds, recorder, state, parts, reading.digest.value())
            advance(sum(p.rows.height for p in parts), _total(state.counts.rejected))
    committed = _total(state.counts.committed)
    rejected = _total(state.counts.rejected)
    status = "done" if not rejected else ("failed" if not committed else "partial")
    recorder.flush(
        _event(
            state,
            "finish",
            chunk=-1,
            commit_seq=None,
            head_seq=ds.head.seq,
            status=status,
            digest=reading.digest.value(),
        )
    )
    return records.get(upload_id, dataset=ds.name)


def _check_finished(
    upload_id: str,
    sources: list[tuple[str, Any]],
    chunk_rows: int,
    options: Mapping[str, str],
    finish: Mapping[str, Any],
) -> None:
    """Refuse a finished upload's id sent with other rows than it received."""
    if not finish.get("digest"):
        return  # recorded before digests: nothing to compare with
    state = _State(upload_id, "", "", "", "", None, expected=finish["digest"])
    skip = dict(Counts.from_rows(finish["tables"]).received)
    for parts in _chunks(sources, chunk_rows, skip, options, _Reading(state)):
        more = sum(p.rows.height for p in parts)
        raise ConflictError(
            f"upload {upload_id!r} already finished with {sum(skip.values())} rows, and these "
            f"sources hold at least {more} more: an upload id is one set of rows. Send new "
            "rows under a new upload_id"
        )


def _check_id(upload_id: str | None) -> str:
    if upload_id is None:
        return f"{now_utc().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    if not isinstance(upload_id, str) or not upload_id.strip() or len(upload_id) > 200:
        raise InvalidInputError(
            f"upload_id must be a non-blank string of at most 200 characters, got {upload_id!r}"
        )
    if any(ord(ch) < 32 for ch in upload_id) or "/" in upload_id:
        raise InvalidInputError(f"upload_id must not hold '/' or control characters: {upload_id!r}")
    return upload_id


def _total(counts: Mapping[str, int]) -> int:
    return sum(counts.values())


def _event(
    state: _State,
    event: str,
    *,
    chunk: int,
    commit_seq: int | None,
    head_seq: int,
    status: str = "running",
    attempt: str | None = None,
    digest: str | None = None,
) -> dict[str, Any]:
    return event_row(
        digest=digest,
        upload_id=state.upload_id,
        attempt=attempt or state.attempt,
        event=event,
        chunk=chunk,
        status=status,
        commit_seq=commit_seq,
        head_seq=head_seq,
        counts=state.counts,
        mode=state.mode,
        message=state.message,
        author=state.author,
        started_at=state.started_at,
    )


# -- resuming ------------------------------------------------------------------------


def _resume(ds: Dataset, records: UploadRecords, state: _State, events: pl.DataFrame) -> None:
    """Pick up after the last recorded chunk, healing a chunk committed but not recorded."""
    first = events.row(0, named=True)
    last = events.row(events.height - 1, named=True)
    state.started_at = first["started_at"]
    state.mode = first["mode"] or state.mode
    state.counts = Counts.from_rows(last["tables"])
    state.expected = last.get("digest")
    state.chunk = int(last["chunk"]) + 1
    head = ds.head
    for seq in range(int(last["head_seq"]) + 1, head.seq + 1):
        meta = ds._log.get(seq).meta.get("upload") or {}
        if meta.get("id") != state.upload_id or int(meta.get("chunk", -1)) < state.chunk:
            continue
        # Committed, but the process died before recording it: record it now.
        chunk, attempt = int(meta["chunk"]), str(meta["attempt"])
        state.counts = Counts.from_rows(meta["tables"])
        state.expected = meta.get("digest")
        pending = _pending(ds.root, state.upload_id, chunk, attempt)
        saved = pending.read_or_none()
        if saved is not None and not records.has_errors(state.upload_id, chunk, attempt):
            records.append_errors(pl.read_parquet(io.BytesIO(saved)))
        row = _event(
            state,
            "chunk",
            chunk=chunk,
            commit_seq=seq,
            head_seq=seq,
            attempt=attempt,
            digest=state.expected,
        )
        records.append_events([row])
        with contextlib.suppress(OSError):
            pending.remove()
        state.chunk = chunk + 1
    upload = records.get(state.upload_id, dataset=ds.name)
    frames = upload.errors.filter(pl.col("table") == FRAMES)["key"].drop_nulls()
    state.rejected_frames = set(frames.to_list())


class _Reading:
    """The upload's rows as read, in order: their digest and keys, and the resume check."""

    def __init__(self, state: _State) -> None:
        self._state = state
        self.digest = RowDigest()
        self._keys: dict[str, KeySet] = {}

    def skipped(self, table: str, rows: pl.DataFrame) -> None:
        """Rows an earlier attempt received (replace mode remembers their frames)."""
        self.taken(table, rows)
        state = self._state
        if state.mode == "replace_labels" and table != FRAMES and "frame_id" in rows.columns:
            done = state.replaced.setdefault(table, set())
            done.update(rows["frame_id"].cast(pl.String, strict=False).drop_nulls().to_list())

    def taken(self, table: str, rows: pl.DataFrame) -> pl.Series:
        """Read the next rows; return which of them repeat a key met before."""
        self.digest.feed(table, rows)
        key = key_column(table_kind(table))
        if key not in rows.columns:
            return pl.Series(key, [False] * rows.height)
        keys = rows[key].cast(pl.String, strict=False)
        return self._keys.setdefault(table, KeySet()).met_before(keys)

    def resumed(self) -> None:
        """Check that the rows read again are the rows an earlier attempt received."""
        state = self._state
        if not same_rows(state.expected, self.digest.value()):
            raise ConflictError(
                f"upload {state.upload_id!r} received other rows before: the rows it counted "
                f"({_total(state.counts.received) or 'all'} so far) differ from the start of "
                "these sources. An upload id is one set of rows: send these under a new "
                "upload_id, or resend the original rows to resume"
            )


def _pending(root: Location, upload_id: str, chunk: int, attempt: str) -> Location:
    """Where a chunk's errors wait while its commit publishes."""
    return root.child("_lakever", "pending_errors", f"{upload_id}.{chunk}.{attempt}.parquet")


# -- chunks --------------------------------------------------------------------------


def _chunks(
    sources: list[tuple[str, Any]],
    chunk_rows: int,
    skip: Mapping[str, int],
    options: Mapping[str, str],
    reading: _Reading,
) -> Iterator[list[_Part]]:
    """Cut the sources, in order, into chunks of `chunk_rows` rows (after skipping).

    Skipped rows are read too, so a resume checks they are the rows received.
    """
    current: list[_Part] = []
    room = chunk_rows
    to_skip = sum(skip.values())
    if not to_skip:
        reading.resumed()
    for table, source in sources:
        seen = 0
        for batch in batches(source, chunk_rows=chunk_rows, options=options):
            n = batch.height
            pos = max(0, min(n, skip.get(table, 0) - seen))
            if pos:
                reading.skipped(table, batch.slice(0, pos))
                to_skip -= pos
                if not to_skip:
                    reading.resumed()
            while pos < n:
                take = min(room, n - pos)
                rows = batch.slice(pos, take)
                current.append(_Part(table, rows, seen + pos, reading.taken(table, rows)))
                pos += take
                room -= take
                if room == 0:
                    yield current
                    current, room = [], chunk_rows
            seen += n
    if to_skip:
        reading.resumed()  # fewer rows than received: never the same rows
    if current:
        yield current


class _Recorder:
    """Writes chunk rows and errors to the upload tables in batches, every few seconds.

    A chunk that made a commit can wait: its commit and its saved errors are
    enough to record it on resume. A chunk that made none is written at once,
    since nothing else remembers it.
    """

    def __init__(self, records: UploadRecords) -> None:
        self._records = records
        self._events: list[dict[str, Any]] = []
        self._errors: list[pl.DataFrame] = []
        self._pending: list[Location] = []
        self._last = time.monotonic()

    def chunk(self, event: dict[str, Any], errors: pl.DataFrame, pending: Location | None) -> None:
        self._events.append(event)
        if not errors.is_empty():
            self._errors.append(errors)
        if pending is not None:
            self._pending.append(pending)
        if event["commit_seq"] is None or time.monotonic() - self._last >= FLUSH_SECONDS:
            self.flush()

    def flush(self, last: dict[str, Any] | None = None) -> None:
        """Write what waits (errors first: a chunk row is what makes them count)."""
        if self._errors:
            self._records.append_errors(pl.concat(self._errors))
        events = self._events + ([last] if last is not None else [])
        if events:
            self._records.append_events(events)
        for loc in self._pending:
            with contextlib.suppress(OSError):
                loc.remove()
        self._events, self._errors, self._pending = [], [], []
        self._last = time.monotonic()


def _run_chunk(
    ds: Dataset, recorder: _Recorder, state: _State, parts: list[_Part], digest: str
) -> None:
    op = _ChunkOp(ds.root, state, parts, ds._log.get, digest)
    result = ds._run([op], message=state.message, author=state.author, operation=OPERATION)
    mine = _made_by(result, state)
    state.seen = result.seq
    state.counts = op.counts
    state.rejected_frames = op.rejected_frames
    for table, frames in op.replaced.items():
        state.replaced.setdefault(table, set()).update(frames)
    event = _event(
        state, "chunk", chunk=state.chunk, commit_seq=result.seq if mine else None,
        head_seq=result.seq, digest=digest,
    )  # fmt: skip
    recorder.chunk(event, op.errors, op.pending)
    state.chunk += 1


def _made_by(commit: Commit, state: _State) -> bool:
    meta = commit.meta.get("upload") or {}
    return meta.get("id") == state.upload_id and meta.get("chunk") == state.chunk


class _ChunkOp:
    """One chunk, replayed on whatever HEAD the commit lands on.

    Every replay starts from the upload's state before the chunk, so the
    outcome (rows written, errors, counts) is that of the replay that published.
    """

    def __init__(
        self, root: Location, state: _State, parts: list[_Part], commit_at: Any, digest: str
    ) -> None:
        self._commit_at = commit_at
        self._digest = digest
        self._root = root
        self._state = state
        self._parts = parts
        self.counts = Counts()
        self.errors = pl.DataFrame(schema=ERROR_SCHEMA)
        self.rejected_frames: set[str] = set()
        self.replaced: dict[str, set[str]] = {}
        self.pending: Location | None = None

    def __call__(self, st: Stage) -> None:
        state = self._state
        self._no_other_run(st.head.seq)
        self.counts = Counts.from_rows(state.counts.to_rows())
        self.rejected_frames = set(state.rejected_frames)
        self.replaced = {}
        found: list[pl.DataFrame] = []
        for part in self._parts:
            errors, written = self._part(st, part)
            self.counts.add(
                part.table,
                received=part.rows.height,
                committed=written,
                rejected=part.rows.height - written,
            )
            if errors:
                found.append(_error_frame(state, part.table, errors))
        self.errors = pl.concat(found) if found else pl.DataFrame(schema=ERROR_SCHEMA)
        self.pending = None
        if not self.errors.is_empty():
            # Saved before the commit can publish, so a crash right after it
            # loses none of them (the resume records them from here).
            self.pending = _pending(self._root, state.upload_id, state.chunk, state.attempt)
            buffer = io.BytesIO()
            self.errors.write_parquet(buffer)
            self.pending.put(buffer.getvalue())
        st.meta = {
            "upload": {
                "id": state.upload_id,
                "chunk": state.chunk,
                "attempt": state.attempt,
                "tables": self.counts.to_rows(),
                "errors": self.errors.height,
                "digest": self._digest,
            }
        }

    def _no_other_run(self, head: int) -> None:
        """Refuse to go on if another process commits chunks of this very upload."""
        state = self._state
        for seq in range(state.seen + 1, head + 1):
            meta = self._commit_at(seq).meta.get("upload") or {}
            if meta.get("id") == state.upload_id and meta.get("attempt") != state.attempt:
                raise ConflictError(
                    f"upload {state.upload_id!r} is being run by another process at the same "
                    f"time (commit {seq} is its chunk {meta.get('chunk')}); this run stopped "
                    "without writing its chunk. Run it again once the other has finished: "
                    "it resumes where that one stopped"
                )

    def _part(self, st: Stage, part: _Part) -> tuple[list[RowError], int]:
        """Write the good rows of one part; return the errors and how many rows were written."""
        table = part.table
        kind = table_kind(table)
        key = key_column(kind)
        existing = st.schema(table)
        rows = _drop_empty_new_columns(part.rows, existing)
        index = pl.int_range(part.start, part.start + rows.height, eager=True, dtype=pl.Int64)
        repeated = part.repeated
        errors: list[RowError] = []
        if repeated.any():
            keys = rows[key].cast(pl.String, strict=False)
            detail = "this key came earlier in the same upload; the first copy is kept"
            errors += [
                RowError("duplicate_key", k, key, k, detail, row=r)
                for k, r in zip(keys.filter(repeated), index.filter(repeated), strict=True)
            ]
            rows, index = rows.filter(~repeated), index.filter(~repeated)
        screened = screen_rows(
            table,
            rows,
            index=index,
            classes=st.classes,
            existing=existing,
            rules=self._state.rules.get(table, ()),
        )
        errors += screened.errors
        rows, index = screened.rows, screened.index
        if self._state.mode == "add" and not rows.is_empty():
            present = st.existing_keys(table, rows[key])
            bad = rows[key].is_in(present.implode())
            errors += _errors(rows, index, bad, "exists", key, key, "already exists (mode 'add')")
            rows, index = rows.filter(~bad), index.filter(~bad)
        if kind != "frames" and not rows.is_empty():
            rows, index = self._with_frames(st, table, rows, index, errors)
        if kind == "frames":
            rejected = {e.key for e in errors if e.key is not None}
            self.rejected_frames |= rejected - set(rows[key].to_list())
            self.rejected_frames -= set(rows[key].to_list())
        elif self._state.mode == "replace_labels" and not rows.is_empty():
            self._replace(st, table, rows)
        st.put(table, rows)
        return errors, rows.height

    def _with_frames(
        self, st: Stage, table: str, rows: pl.DataFrame, index: pl.Series, errors: list[RowError]
    ) -> tuple[pl.DataFrame, pl.Series]:
        """Drop rows whose frame does not exist (or was rejected in this upload)."""
        pin = None
        if table != LABELS:
            name = table.split("/", 1)[1]
            if self._state.pin is not None:
                st.pins[name] = self._state.pin
            st.pins.setdefault(name, st.next_seq)
            pin = st.pins[name]
        try:
            st.require_frames(table, rows, pinned=pin)
            return rows, index
        except ValidationError as exc:
            missing = {e.key for e in exc.errors}
        key = key_column(table_kind(table))
        bad = rows[key].is_in(list(missing))
        lost = rows["frame_id"].is_in(list(self.rejected_frames))
        errors += _errors(
            rows,
            index,
            bad & lost,
            "frame_rejected",
            key,
            "frame_id",
            "its frame was rejected earlier in this upload",
        )
        detail = "no frame with this frame_id"
        errors += _errors(rows, index, bad & ~lost, "missing_frame", key, "frame_id", detail)
        return rows.filter(~bad), index.filter(~bad)

    def _replace(self, st: Stage, table: str, rows: pl.DataFrame) -> None:
        """Frames met for the first time in this upload lose the labels it does not send."""
        done = self._state.replaced.get(table, set())
        frames = [f for f in rows["frame_id"].unique().to_list() if f not in done]
        if not frames:
            return
        self.replaced.setdefault(table, set()).update(frames)
        current = st.current_by(table, "frame_id", pl.Series(frames, dtype=pl.String))
        keep = rows["label_id"].implode()
        stale = current.filter(~pl.col("label_id").is_in(keep))["label_id"].to_list()
        st.delete(table, stale, missing_ok=True)


def _drop_empty_new_columns(
    rows: pl.DataFrame, existing: Mapping[str, pl.DataType]
) -> pl.DataFrame:
    """Columns the table lacks and this batch holds no value of say nothing: drop them."""
    empty = [
        c
        for c in rows.columns
        if c not in existing and rows[c].dtype == pl.Null and not c.startswith("_")
    ]
    return rows.drop(empty) if empty else rows


def _errors(
    rows: pl.DataFrame,
    index: pl.Series,
    mask: pl.Series,
    rule: str,
    key: str,
    column: str,
    detail: str,
) -> list[RowError]:
    picked = rows.filter(mask)
    return [
        RowError(rule, k, column, v, detail, row=r)
        for k, v, r in zip(
            picked[key].to_list(),
            picked[column].to_list(),
            index.filter(mask).to_list(),
            strict=True,
        )
    ]


def _error_frame(state: _State, table: str, errors: list[RowError]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "upload_id": [state.upload_id] * len(errors),
            "attempt": [state.attempt] * len(errors),
            "chunk": [state.chunk] * len(errors),
            "table": [table] * len(errors),
            "row": [e.row for e in errors],
            "key": [e.key for e in errors],
            "rule": [e.rule for e in errors],
            "column": [e.column for e in errors],
            "value": [None if e.value is None else str(e.value) for e in errors],
            "message": [e.detail for e in errors],
        },
        schema=ERROR_SCHEMA,
    )
