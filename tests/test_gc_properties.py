"""Property-based proof that garbage collection never loses what a user kept.

Hypothesis drives random sequences of edits, snapshots (of HEAD and of older
commits), snapshot deletions, reverts, pins and GC runs with and without a
window. Before each GC every root is read and hashed; after it, every root
must read back with the same hash, every diff between two roots must give the
same rows, every commit the run names unreadable must raise
`VersionPrunedError`, and every other commit must still read as before.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lakever as lv
from tests.helpers import CLASSES, content_hash, frames, labels
from tests.test_gc import _brute_history

FRAMES = [f"f{i}" for i in range(8)]
_lakes = itertools.count()

op = st.one_of(
    st.tuples(st.just("edit"), st.integers(0, 1000)),
    st.tuples(st.just("snap"), st.just(0)),
    st.tuples(st.just("snap_old"), st.integers(0, 50)),
    st.tuples(st.just("del_snap"), st.integers(0, 10)),
    st.tuples(st.just("revert"), st.integers(0, 50)),
    st.tuples(st.just("pin"), st.integers(0, 50)),
    st.tuples(st.just("gc"), st.booleans()),
)


def _edit(ds: lv.Dataset, seed: int) -> None:
    pick = [FRAMES[(seed + k) % len(FRAMES)] for k in range(1 + seed % 3)]
    cls = CLASSES[seed % len(CLASSES)]
    with ds.transaction(message=f"edit {seed}") as tx:
        tx.upsert_frames(frames(pick))  # a revert may have taken them away
        tx.upsert_labels(labels(pick, per_frame=1 + seed % 2, cls=cls, x=float(seed)))
        if seed % 4 == 0:
            tx.delete_labels([f"{pick[0]}-l0"], missing_ok=True)


def _readable(ds: lv.Dataset) -> dict[int, dict[str, str]]:
    return {c.seq: content_hash(ds.at(c.seq)) for c in ds.log() if c.pruned_by is None}


def _run(ds: lv.Dataset, action: str, arg: Any) -> None:
    log = ds.log()
    target = log[arg % len(log)]
    older, pruned = target.seq, target.pruned_by is not None
    snaps = ds.list_snapshots(changes=False)
    calls = {
        "snap_old": lambda: ds.create_snapshot(f"s{next(_lakes)}", ref=older),
        "revert": lambda: ds.revert(older),
        "pin": lambda: ds.upsert_inferences(
            "model",
            labels(FRAMES[:2], per_frame=1).with_columns(confidence=pl.lit(arg / 50)),
            pinned_to=older,
        ),
    }
    if action == "pin":
        ds.upsert_frames(
            frames(FRAMES[:2])
        )  # predictions need their frames (a revert may drop them)
    if action == "edit":
        _edit(ds, arg)
    elif action == "snap":
        ds.create_snapshot(f"s{next(_lakes)}")
    elif action == "del_snap" and snaps:
        ds.delete_snapshot(snaps[arg % len(snaps)].name)
    elif action == "revert" and snaps and arg % 2:
        ds.revert(snaps[arg % len(snaps)].name)
    elif action in calls and pruned:
        with pytest.raises(lv.VersionPrunedError) as err:
            calls[action]()
        assert err.value.seq == older
    elif action in calls:
        calls[action]()


def _check_gc(ds: lv.Dataset, keep_zero: bool) -> None:
    before = _readable(ds)
    report = ds.gc(keep_within=timedelta(0) if keep_zero else timedelta(days=1), apply=True)
    roots = set(report.roots["seq"].to_list())
    if not keep_zero:
        assert report.unreadable == []
    for seq in report.unreadable:
        with pytest.raises(lv.VersionPrunedError):
            ds.at(seq)
    after = _readable(ds)
    assert set(after) >= set(roots)
    for seq, hashes in after.items():
        if seq in before:
            assert hashes == before[seq], f"commit {seq} reads differently after GC"
    assert set(before) - set(after) == set(report.unreadable)


@pytest.mark.slow
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(op, min_size=3, max_size=14))
def test_gc_never_changes_a_root(tmp_path_factory: pytest.TempPathFactory, ops: list) -> None:
    lake = lv.connect(str(tmp_path_factory.mktemp("gcprop") / f"lake{next(_lakes)}"))
    ds = lake.create_dataset("p", classes=CLASSES)
    ds.add_frames(frames(FRAMES))
    ds.upsert_labels(labels(FRAMES, per_frame=2))
    for action, arg in [*ops, ("gc", True)]:
        if action != "gc":
            _run(ds, action, arg)
            continue
        # diffs between every pair of snapshots and HEAD, before the run
        names = ["HEAD", *[s.name for s in ds.list_snapshots(changes=False)]]
        pairs = {
            (a, b): ds.diff(a, b).rows("labels").sort("label_id")
            for a, b in itertools.combinations(names, 2)
        }
        _check_gc(ds, arg)
        for (a, b), rows in pairs.items():
            assert ds.diff(a, b).rows("labels").sort("label_id").equals(rows), (a, b)
    # the dataset stays writable and its history readable after every run
    _edit(ds, 9)
    for label_id in ds.read("labels")["label_id"].head(3):
        got = ds.history(label_id=label_id)
        assert list(zip(got["seq"], got["change"], strict=True)) == _brute_history(ds, label_id)
