"""Property-based: random edit sequences; CDF diff, full diff and a Python model agree.

Hypothesis drives adds, upserts, updates, deletes and replaces of frames and
labels, transactions, reverts and identical re-uploads, while a plain-Python
model tracks what every commit should contain. Then, for every pair of
versions, the change-feed diff, the full-comparison diff and the model's
brute-force diff must agree exactly, and `history()` must replay to each row's
value at every commit.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lakever as lv
from lakever import _changes
from lakever.history import row_json
from tests.helpers import core_schema

CLASSES = ["car", "person", "bike"]
FRAME_POOL = [f"f{i}" for i in range(6)]
LABEL_POOL = [f"l{i}" for i in range(10)]
FRAME_COLS = list(core_schema("frames"))
LABEL_COLS = list(core_schema("labels"))

State = dict[str, dict[str, dict[str, Any]]]  # table -> key -> row
_names = itertools.count()


def frame_row(fid: str, width: int) -> dict[str, Any]:
    return {
        "frame_id": fid,
        "uri": f"s3://m/{fid}.jpg",
        "media_type": "image",
        "width": width,
        "height": 480,
        "group_id": None,
        "sequence": None,
        "captured_at": None,
    }


def label_row(lid: str, fid: str, cls: str, x: float) -> dict[str, Any]:
    return {"label_id": lid, "frame_id": fid, "cls": cls, "x": x, "y": 1.0, "w": 2.0, "h": 3.0}


def frames_df(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=core_schema("frames"))


def labels_df(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=core_schema("labels"))


def copy(state: State) -> State:
    return {t: {k: dict(r) for k, r in rows.items()} for t, rows in state.items()}


def one_op(data: st.DataObject, tx: Any, state: State, versions: list[State]) -> str:
    """Draw one valid operation for the current model state, apply it to tx and model."""
    frames, labels = state["frames"], state["labels"]
    choices = ["add_frames", "upsert_frames"]
    if frames:
        choices += ["update_frames", "delete_frames", "upsert_labels", "replace_labels"]
    if labels:
        choices += ["delete_labels", "reupload_labels"]
    kind = data.draw(st.sampled_from(choices))
    width = data.draw(st.sampled_from([320, 640]))
    if kind in ("add_frames", "upsert_frames"):
        pool = [f for f in FRAME_POOL if f not in frames] if kind == "add_frames" else FRAME_POOL
        if not pool:
            return "skip"
        ids = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
        rows = [frame_row(f, width) for f in ids]
        getattr(tx, kind)(frames_df(rows))
        for r in rows:
            frames[r["frame_id"]] = r
    elif kind == "update_frames":
        ids = data.draw(
            st.lists(st.sampled_from(sorted(frames)), min_size=1, max_size=2, unique=True)
        )
        tx.update_frames([{"frame_id": f, "width": width} for f in ids])
        for f in ids:
            frames[f]["width"] = width
    elif kind == "delete_frames":
        ids = data.draw(
            st.lists(st.sampled_from(sorted(frames)), min_size=1, max_size=2, unique=True)
        )
        tx.delete_frames(ids)
        for f in ids:
            del frames[f]
        for k in [k for k, r in labels.items() if r["frame_id"] in ids]:
            del labels[k]
    elif kind == "upsert_labels":
        ids = data.draw(st.lists(st.sampled_from(LABEL_POOL), min_size=1, max_size=3, unique=True))
        rows = [
            label_row(
                k,
                data.draw(st.sampled_from(sorted(frames))),
                data.draw(st.sampled_from(CLASSES)),
                data.draw(st.sampled_from([0.0, 1.5])),
            )
            for k in ids
        ]
        tx.upsert_labels(labels_df(rows))
        for r in rows:
            labels[r["label_id"]] = r
    elif kind == "replace_labels":
        fid = data.draw(st.sampled_from(sorted(frames)))
        ids = data.draw(st.lists(st.sampled_from(LABEL_POOL), max_size=2, unique=True))
        rows = [label_row(k, fid, data.draw(st.sampled_from(CLASSES)), 0.0) for k in ids]
        tx.replace_labels(labels_df(rows), frame_ids=[fid])
        for k in [k for k, r in labels.items() if r["frame_id"] == fid and k not in ids]:
            del labels[k]
        for r in rows:
            labels[r["label_id"]] = r
    elif kind == "delete_labels":
        ids = data.draw(
            st.lists(st.sampled_from(sorted(labels)), min_size=1, max_size=2, unique=True)
        )
        tx.delete_labels(ids)
        for k in ids:
            del labels[k]
    else:  # identical re-upload: changes nothing
        ids = data.draw(
            st.lists(st.sampled_from(sorted(labels)), min_size=1, max_size=3, unique=True)
        )
        tx.upsert_labels(labels_df([labels[k] for k in ids]))
    return kind


def model_diff(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for k in sorted(set(a) | set(b)):
        ra, rb = a.get(k), b.get(k)
        if ra is None:
            out[k] = ("added", None, rb)
        elif rb is None:
            out[k] = ("deleted", ra, None)
        elif ra != rb:
            out[k] = ("modified", ra, rb)
    return out


def as_model(change: pl.DataFrame, cols: list[str]) -> dict[str, tuple]:
    key = change.columns[0]

    def pick(row: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if row is None else {c: row[c] for c in cols}

    return {
        r[key]: (r["change"], pick(r["before"]), pick(r["after"]))
        for r in change.iter_rows(named=True)
    }


def run_scenario(lake: lv.Lake, data: st.DataObject, steps: int) -> None:
    edits = data.draw(st.sampled_from(["merge-on-read", "copy-on-write"]), label="edits")
    ds = lake.create_dataset(f"prop{next(_names)}", classes=CLASSES, edits=edits)
    versions: list[State] = [{"frames": {}, "labels": {}}]  # index = commit seq
    for _ in range(steps):
        state = copy(versions[-1])
        head = ds.head.seq
        if len(versions) > 2 and data.draw(st.integers(0, 6)) == 0:
            target = data.draw(st.integers(0, len(versions) - 2))
            c = ds.revert(target)
            state = copy(versions[target])
        else:
            with ds.transaction() as tx:
                for _ in range(data.draw(st.integers(1, 2))):
                    one_op(data, tx, state, versions)
            c = tx.result
        assert c is not None
        if c.seq == head:  # nothing changed: no commit
            assert state == versions[-1]
            continue
        assert c.seq == len(versions)
        versions.append(state)
    head = ds.head
    assert {r["label_id"]: r for r in ds.read("labels").to_dicts()} == versions[-1]["labels"]
    commits = {c.seq: c for c in ds.log()}
    for table, key, cols in (
        ("frames", "frame_id", FRAME_COLS),
        ("labels", "label_id", LABEL_COLS),
    ):
        loc = ds.table_location(table)
        for i, j in itertools.product(range(len(versions)), repeat=2):
            expected = model_diff(versions[i][table], versions[j][table])
            va, vb = commits[i].table_versions[table], commits[j].table_versions[table]
            via_cdf = _changes.cdf_change(loc, key, va, vb)
            full = _changes.full_change(loc, va, loc, vb, key)
            assert as_model(via_cdf, cols) == expected, (table, i, j)
            assert as_model(full, cols) == expected, (table, i, j)
            counted = _changes.table_counts(loc, key, va, vb)  # what summary() uses
            assert counted == _changes.counts(via_cdf), (table, i, j)
        # history replays to the value at every commit
        for k in sorted({k for v in versions for k in v[table]}):
            h = ds.history(**{key: k}).filter(pl.col("table") == table)
            entries = {r["seq"]: r["after"] for r in h.iter_rows(named=True)}
            current = None
            for seq in range(head.seq + 1):
                if seq in entries:
                    current = entries[seq]
                row = versions[seq][table].get(k)
                assert current == (None if row is None else row_json(row)), (table, k, seq)
                if current is not None:
                    assert json.loads(current)[key] == k


@pytest.mark.slow
@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_edits_local(local_lake: lv.Lake, data: st.DataObject) -> None:
    run_scenario(local_lake, data, steps=8)


@pytest.mark.slow
@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_edits_s3(s3_server: Any, s3_bucket: str, data: st.DataObject) -> None:
    lake = lv.connect(
        f"s3://{s3_bucket}/lake{next(_names)}", storage_options=s3_server.storage_options()
    )
    run_scenario(lake, data, steps=6)
