"""Property tests: random edits on two branches merge as a Python model of three-way merge
says, and diffs between any commits of any branches equal the full-table comparison."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lakever as lv
from tests.helpers import CLASSES, frames

FIDS = [f"f{i}" for i in range(3)]
KEYS = [f"l{i}" for i in range(6)]
Row = tuple[str, float]  # cls, x


def _row(key: str, cls: str, x: float) -> dict[str, Any]:
    return {"label_id": key, "frame_id": FIDS[int(key[1:]) % 3], "cls": cls, "x": x,
            "y": 0.0, "w": 1.0, "h": 1.0}  # fmt: skip


edit = st.tuples(
    st.sampled_from(["ours", "theirs"]),
    st.sampled_from(KEYS),
    st.one_of(st.none(), st.tuples(st.sampled_from(CLASSES[:3]), st.sampled_from([1.0, 2.0]))),
)


def _apply(ds: lv.Dataset, state: dict[str, Row], key: str, value: Row | None) -> None:
    if value is None:
        if key in state:
            ds.delete_labels([key])
            del state[key]
        return
    ds.upsert_labels([_row(key, *value)])
    state[key] = value


def _model(
    base: dict[str, Row], ours: dict[str, Row], theirs: dict[str, Row], side: str
) -> tuple[dict[str, Row], set[tuple[str, str | None]]]:
    """Three-way merge in cell mode; conflicts as (key, column or None)."""
    out: dict[str, Row] = {}
    conflicts: set[tuple[str, str | None]] = set()
    for k in set(base) | set(ours) | set(theirs):
        b, o, t = base.get(k), ours.get(k), theirs.get(k)
        if t == b or o == t:
            result = o
        elif o == b:
            result = t
        elif o is None or t is None or b is None:
            conflicts.add((k, None))
            result = t if side == "theirs" else o
        else:
            cells = []
            for i, column in enumerate(("cls", "x")):
                if t[i] == b[i] or o[i] == t[i]:
                    cells.append(o[i])
                elif o[i] == b[i]:
                    cells.append(t[i])
                else:
                    conflicts.add((k, column))
                    cells.append(t[i] if side == "theirs" else o[i])
            result = (cells[0], cells[1])
        if result is not None:
            out[k] = result
    return out, conflicts


def _state(view: lv.Dataset | lv.View) -> dict[str, Row]:
    df = view.read("labels").select("label_id", "cls", "x")
    return {k: (c, x) for k, c, x in df.iter_rows()}


@pytest.mark.slow
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    start=st.dictionaries(st.sampled_from(KEYS), st.tuples(st.sampled_from(CLASSES[:3]),
                                                            st.sampled_from([1.0, 2.0]))),
    edits=st.lists(edit, max_size=8),
    side=st.sampled_from(["ours", "theirs"]),
)  # fmt: skip
def test_merges_equal_the_model_and_diffs_equal_full_comparison(
    tmp_path_factory: pytest.TempPathFactory,
    start: dict[str, Row],
    edits: list[tuple[str, str, Row | None]],
    side: str,
) -> None:
    lake = lv.connect(tmp_path_factory.mktemp("merge") / "lake")
    ds = lake.create_dataset("d", classes=CLASSES)
    ds.add_frames(frames(FIDS))
    if start:
        ds.upsert_labels([_row(k, *v) for k, v in start.items()])
    qa = ds.create_branch("qa")
    states = {"ours": dict(start), "theirs": dict(start)}
    handles = {"ours": ds, "theirs": qa}
    for who, key, value in edits:
        _apply(handles[who], states[who], key, value)
    assert _state(ds) == states["ours"] and _state(qa) == states["theirs"]
    want, conflicts = _model(start, states["ours"], states["theirs"], side)
    preview = ds.merge("qa", dry_run=True, on_conflict=side)
    got_conflicts = {(k, c) for k, c in preview.conflicts.select("key", "column").iter_rows()}
    assert got_conflicts == conflicts
    result = ds.merge("qa", on_conflict=side)
    assert _state(ds) == want
    if result.commit is not None and not result.fast_forward:
        assert result.counts == preview.counts
    # diffs between any two commits of any branch equal reading both in full
    commits = {c.seq: c for b in ds.branches() for c in ds.on_branch(b.name).log()}
    seqs = sorted(commits)
    for a, b in zip(seqs, reversed(seqs), strict=True):
        rows = ds.diff(a, b).rows("labels")
        before, after = _state(ds.at(a)), _state(ds.at(b))
        expected = {
            k: ("added" if k not in before else "deleted" if k not in after else "modified")
            for k in set(before) | set(after)
            if before.get(k) != after.get(k)
        }
        assert dict(zip(rows["label_id"], rows["change"], strict=True)) == expected, (a, b)
